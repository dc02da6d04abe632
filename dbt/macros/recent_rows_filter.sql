{#-
  SQL condition "`column` within the last data_test_window_hours (default 48) hours", or `true`
  when the window is 0: the same window the project's data tests on the big tables use
  (dbt_project.yml, data_tests +where), for the tests that apply it themselves (the rollup and
  indicator tests, whose rows carry last_ingested_at rather than ingested_at).
-#}
{% macro recent_rows_filter(column) -%}
    {%- set hours = var('data_test_window_hours', 48) | int -%}
    {%- if hours <= 0 -%}
        true
    {%- else -%}
        {{ column }} >= now() - interval '{{ hours }} hours'
    {%- endif -%}
{%- endmacro %}
