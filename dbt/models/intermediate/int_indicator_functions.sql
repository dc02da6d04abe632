{{
    config(
        materialized='view',
        pre_hook=create_indicator_functions(),
    )
}}

{#-
  Creates (pre-hook, idempotent, concurrency-safe: macros/indicator_functions.sql) the running-state
  aggregates the indicator marts compute EMA and Wilder averages with, and shows what the
  database holds: one row per function / aggregate in the function schema. The indicator models
  depend on this model, so it always runs before them and their unit tests.
-#}
select
    n.nspname::text                                         as function_schema,
    p.proname::text                                         as function_name,
    pg_get_function_identity_arguments(p.oid)               as arguments,
    case p.prokind when 'a' then 'aggregate' else 'function' end as kind,
    obj_description(n.oid, 'pg_namespace')                  as installed_version,
    '{{ indicator_functions_version() }}'::text             as expected_version
from pg_proc as p
inner join pg_namespace as n on n.oid = p.pronamespace
where n.nspname = '{{ indicator_function_schema() }}'
