{#-
  Fails the compilation of an incremental run whose existing table lacks columns the model now
  writes (an upgrade added them), with the fix, instead of a SQL error about a missing column
  half way through the run. One catalog query; nothing in full refreshes and unit tests.
  rebuild_select: what to rebuild when it is not the model and everything built from it.
  dropped: columns the model no longer writes (an upgrade removed them): an existing table that still
  has them is refused the same way, instead of dbt's generic on_schema_change='fail' message.
-#}
{% macro require_columns(columns, rebuild_select=none, dropped=[]) -%}
    {%- if is_incremental() and execute and model.resource_type != 'unit_test' -%}
        {%- set present = adapter.get_columns_in_relation(this) | map(attribute='name') | list -%}
        {%- set missing = columns | reject('in', present) | list -%}
        {%- set stale = dropped | select('in', present) | list -%}
        {%- set fix = ". Fix: rebuild it " ~ ("once: dbt build --full-refresh -s " ~ rebuild_select if rebuild_select
                else "and what is built from it once: dbt build --full-refresh -s " ~ this.identifier ~ "+") -%}
        {%- if missing -%}
            {{ exceptions.raise_compiler_error(
                this ~ " was built before it had the columns " ~ missing | join(', ') ~ fix) }}
        {%- elif stale -%}
            {{ exceptions.raise_compiler_error(
                this ~ " was built with the columns " ~ stale | join(', ') ~ ", which this version no longer"
                ~ " stores (see the README's upgrade notes)" ~ fix) }}
        {%- endif -%}
    {%- endif -%}
{%- endmacro %}
