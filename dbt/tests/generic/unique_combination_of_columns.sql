{#-
  Fails for every combination of `combination_of_columns` that occurs more than once.
  Same contract as dbt_utils.unique_combination_of_columns (dbt deps is not available offline).

    data_tests:
      - unique_combination_of_columns:
          arguments:
            combination_of_columns: [exchange, symbol, open_time]
-#}
{% test unique_combination_of_columns(model, combination_of_columns) %}
{%- if combination_of_columns is string or combination_of_columns | length == 0 -%}
    {{ exceptions.raise_compiler_error("unique_combination_of_columns: combination_of_columns must be a non-empty list") }}
{%- endif -%}
{%- set columns_csv = combination_of_columns | join(', ') %}

select {{ columns_csv }}, count(*) as n_records
from {{ model }}
group by {{ columns_csv }}
having count(*) > 1

{% endtest %}
