{#-
  SQL condition "`column` within the data-test window", or `true` when the window is 0: the same
  window the project's data tests on the big tables use (dbt_project.yml, data_tests +where, and
  the models' ymls, which spell it out: a generic test's `where` cannot call a project macro), for
  the tests that apply it themselves (the rollup and indicator tests, whose rows carry
  last_ingested_at rather than ingested_at).

  The window: the last data_test_window_hours (default 48) hours, or, when the environment variable
  MARKETFLOW_DATA_TEST_SINCE holds a timestamp, from it if that is later. The hourly DAG sets it to
  the start of its last successful run minus an hour (marketflow/tasks/dbt.py): everything written
  before was already tested by that run, so an hourly build tests about two hours of rows, not 48.
-#}
{% macro data_test_window_start() -%}
    {%- set start = "now() - interval '" ~ (var('data_test_window_hours', 48) | int) ~ " hours'" -%}
    {%- if env_var('MARKETFLOW_DATA_TEST_SINCE', '') -%}
        {%- set start = "greatest('" ~ env_var('MARKETFLOW_DATA_TEST_SINCE') ~ "'::timestamptz, " ~ start ~ ")" -%}
    {%- endif -%}
    {{ return(start) }}
{%- endmacro %}

{% macro recent_rows_filter(column) -%}
    {%- if var('data_test_window_hours', 48) | int <= 0 -%}
        true
    {%- else -%}
        {{ column }} >= {{ data_test_window_start() }}
    {%- endif -%}
{%- endmacro %}
