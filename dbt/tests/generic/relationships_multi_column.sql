{#-
  Multi-column foreign key check: every distinct combination of `columns` in the model (ignoring
  combinations with a NULL) must exist as `to_columns` (defaults to the same names) in `to`.

    data_tests:
      - relationships_multi_column:
          arguments:
            to: ref('markets')
            columns: [exchange, symbol]
-#}
{% test relationships_multi_column(model, to, columns, to_columns=none) %}
{%- set to_columns = to_columns or columns -%}
{%- if columns is string or to_columns is string or columns | length != to_columns | length -%}
    {{ exceptions.raise_compiler_error("relationships_multi_column: columns and to_columns must be lists of equal length") }}
{%- endif %}

with child as (
    select distinct {{ columns | join(', ') }}
    from {{ model }}
    where {% for c in columns %}{{ c }} is not null{% if not loop.last %} and {% endif %}{% endfor %}
),

parent as (
    select {% for c in to_columns %}{{ c }} as parent_{{ loop.index }}{% if not loop.last %}, {% endif %}{% endfor %}
    from {{ to }}
)

select child.*
from child
left join parent
    on {% for c in columns %}child.{{ c }} = parent.parent_{{ loop.index }}{% if not loop.last %} and {% endif %}{% endfor %}
where parent.parent_1 is null

{% endtest %}
