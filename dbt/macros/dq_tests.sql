{#-
  Generic data tests of the data-quality models (in macros/ so they stay with the dq_ files).

    dq_expression_is_true   fails for every row where `expression` is not true (NULL fails too)
    dq_no_overlaps          fails for every pair of rows of the same `partition_by` group whose
                            [start, end) intervals overlap (optionally among rows matching `where_sql`)
-#}
{% test dq_expression_is_true(model, expression) %}
select *
from {{ model }}
where not coalesce(({{ expression }}), false)
{% endtest %}

{% test dq_no_overlaps(model, partition_by, start_column, end_column, where_sql='true') %}
with rows_ as (
    select {{ partition_by | join(', ') }}, {{ start_column }} as start_, {{ end_column }} as end_
    from {{ model }}
    where {{ where_sql }}
),
ordered as (
    select *, max(end_) over (partition by {{ partition_by | join(', ') }} order by start_, end_
                             rows between unbounded preceding and 1 preceding) as prev_end
    from rows_
)
select *
from ordered
where prev_end > start_
{% endtest %}
