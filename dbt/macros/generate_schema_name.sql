{#-
  Use a model's custom schema verbatim (dbt_staging, dbt_intermediate, marts) instead of dbt's
  default "<target_schema>_<custom_schema>". The analyst-facing schema is `marts` in every
  environment, whatever schema the profile (or cosmos' profile mapping) targets; nodes without a
  custom schema fall back to the target schema.
-#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema | trim }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
