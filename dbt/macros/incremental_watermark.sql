{#-
  Lower bound for an incremental model's source filter: max(`column`) already in {{ this }}
  minus `lookback_minutes`, or -infinity when {{ this }} is empty.

  Rendered as a constant, read with one query when the model is compiled: a bound that comes from
  a scalar subquery is an unknown parameter to PostgreSQL's planner, which then assumes a third of
  staging matches, scans all of it and hash-joins the whole target (15 s at 20M rows instead of
  milliseconds). As a constant, the source's ingested_at index is used.

  Unit tests mock {{ this }} with a fixture, so there the same bound is computed in SQL from the
  fixture instead.
-#}
{% macro incremental_watermark(column, lookback_minutes) -%}
    {%- set lookback = "interval '" ~ (lookback_minutes | int) ~ " minutes'" -%}
    {%- if execute and model.resource_type != 'unit_test' -%}
        {%- set result = run_query(
            "select extract(epoch from max(" ~ column ~ ") - " ~ lookback ~ ") from " ~ this
        ) -%}
        {%- set bound = result.columns[0].values()[0] -%}
        {%- if bound is none -%}
            '-infinity'::timestamptz
        {%- else -%}
            to_timestamp({{ bound }})
        {%- endif -%}
    {%- else -%}
        ((select coalesce(max({{ column }}), '-infinity'::timestamptz) from {{ this }}) - {{ lookback }})
    {%- endif -%}
{%- endmacro %}
