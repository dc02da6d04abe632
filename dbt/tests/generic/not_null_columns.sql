{#-
  The model's required columns have no NULLs: one scan of the model for all of them (one row per
  column that has NULLs, with how many), instead of one `not_null` test, scan and stored-failures
  table per column. Which columns are required is listed here, beside their descriptions.

    data_tests:
      - not_null_columns:
          arguments:
            columns: [exchange, symbol, open_time]
-#}
{% test not_null_columns(model, columns) %}
{%- if columns is string or columns | length == 0 -%}
    {{ exceptions.raise_compiler_error("not_null_columns: columns must be a non-empty list") }}
{%- endif %}

with null_counts as (
    select
        {%- for column in columns %}
        count(*) filter (where {{ adapter.quote(column) }} is null) as {{ adapter.quote(column) }}{{ ',' if not loop.last }}
        {%- endfor %}
    from {{ model }}
)

select checked.column_name, checked.null_rows
from null_counts
cross join lateral (
    values
        {%- for column in columns %}
        ('{{ column }}', null_counts.{{ adapter.quote(column) }}){{ ',' if not loop.last }}
        {%- endfor %}
) as checked (column_name, null_rows)
where checked.null_rows > 0

{% endtest %}
