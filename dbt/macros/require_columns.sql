{#-
  Fails the compilation of an incremental run whose existing table lacks columns the model now
  writes (an upgrade added them), with the fix, instead of a SQL error about a missing column
  half way through the run. One catalog query; nothing in full refreshes and unit tests.
  rebuild_select: what to rebuild when it is not the model and everything built from it.
-#}
{% macro require_columns(columns, rebuild_select=none) -%}
    {%- if is_incremental() and execute and model.resource_type != 'unit_test' -%}
        {%- set present = adapter.get_columns_in_relation(this) | map(attribute='name') | list -%}
        {%- set missing = columns | reject('in', present) | list -%}
        {%- if missing -%}
            {{ exceptions.raise_compiler_error(
                this ~ " was built before it had the columns " ~ missing | join(', ')
                ~ ". Fix: rebuild it " ~ ("once: dbt build --full-refresh -s " ~ rebuild_select if rebuild_select
                else "and what is built from it once: dbt build --full-refresh -s " ~ this.identifier ~ "+")) }}
        {%- endif -%}
    {%- endif -%}
{%- endmacro %}
