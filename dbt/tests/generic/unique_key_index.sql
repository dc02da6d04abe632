{#-
  The model's rows are unique on `columns` because the table has a unique index on exactly those
  columns: PostgreSQL then rejects a duplicate when the model is written (the CREATE INDEX after a
  full build, the MERGE of an incremental run), so a scan for duplicates could never find one.
  This test reads the catalog instead of the rows and fails (one row) when no such index holds:
  none declared, not unique, invalid (a failed concurrent build), partial, on an expression, or on
  other columns. Column order and sort direction do not matter for uniqueness.

    data_tests:
      - unique_key_index:
          arguments:
            columns: [exchange, symbol, open_time]
          config: {where: ""}   # a catalog check: no row filter (overrides a folder's +where)
-#}
{% test unique_key_index(model, columns) %}
{%- if columns is string or columns | length == 0 -%}
    {{ exceptions.raise_compiler_error("unique_key_index: columns must be a non-empty list") }}
{%- endif -%}
{%- if model is string -%}
    {{ exceptions.raise_compiler_error(
        "unique_key_index checks the catalog, not rows: give the test `config: {where: \"\"}` "
        ~ "(it got a where filter: " ~ model ~ ")") }}
{%- endif %}

with unique_indexes as (
    select
        index_class.relname                                          as index_name,
        array_agg(attribute.attname::text order by attribute.attname) as index_columns
    from pg_index as ix
    join pg_class as index_class on index_class.oid = ix.indexrelid
    join pg_attribute as attribute
        on attribute.attrelid = ix.indrelid
       and attribute.attnum = any(ix.indkey)
    where ix.indrelid = (
            select c.oid
            from pg_class as c
            join pg_namespace as n on n.oid = c.relnamespace
            where n.nspname = '{{ model.schema }}' and c.relname = '{{ model.identifier }}'
        )
      and ix.indisunique
      and ix.indisvalid
      and ix.indpred is null
      and ix.indexprs is null
    group by index_class.relname
)

select
    '{{ model.schema }}.{{ model.identifier }}'                      as relation,
    '{{ columns | join(", ") }}'                                     as key_columns,
    (select string_agg(index_name || ' (' || array_to_string(index_columns, ', ') || ')', '; ')
     from unique_indexes)                                            as unique_indexes_found
where not exists (
    select 1
    from unique_indexes
    where index_columns = array[{%- for column in columns | sort %}'{{ column }}'{{ ', ' if not loop.last }}{% endfor -%}]::text[]
)

{% endtest %}
