{#-
  Monthly partitions of the big 1m marts (ohlcv_1m, indicators_1m).

  A model asks for them with config(partition_by_month={'column': 'open_time', 'months_like': '<schema.table>'}):
  `months_like` is the partitioned table it is built from, whose months it mirrors on a full build.
  The partition functions are the warehouse's own (ops.*, include/sql/120_month_partitions.sql, applied
  by the migrations before any dbt run), shared with the storage preparation and the maintenance DAG.

  How the table stays partitioned: the incremental materialization creates a table only through
  create_table_as (first build, and `--full-refresh` into <name>__dbt_tmp, swapped in by renames); the
  override below creates it partitioned there, so neither path can produce a plain table. Incremental
  runs MERGE into the partitioned table (PostgreSQL routes each row to its month; a month without a
  partition goes to the DEFAULT partition, and the next storage preparation moves it out). The
  temporary table of an incremental run stays a plain temporary table.

  A full build: the parent is created with the columns the model's SQL returns (a WITH NO DATA copy,
  planned, not run), then its DEFAULT partition and one partition per month of `months_like` from the
  retention floor on, then the rows are inserted (each straight into its month). dbt's `indexes`
  config then creates the indexes on the parent, which PostgreSQL creates on every partition.
-#}

{% macro postgres__create_table_as(temporary, relation, sql) -%}
  {%- set partitioning = config.get('partition_by_month') -%}
  {%- if partitioning and not temporary -%}
    {{ create_month_partitioned_table_as(relation, sql, partitioning) }}
  {%- else -%}
    {#- dbt-postgres 1.11's postgres__create_table_as, unchanged -#}
    {%- set unlogged = config.get('unlogged', default=false) -%}
    {%- set sql_header = config.get('sql_header', none) -%}

    {{ sql_header if sql_header is not none }}

    create {% if temporary -%}
      temporary
    {%- elif unlogged -%}
      unlogged
    {%- endif %} table {{ relation }}
    {% set contract_config = config.get('contract') %}
    {% if contract_config.enforced %}
      {{ get_assert_columns_equivalent(sql) }}
    {% endif -%}
    {% if contract_config.enforced and (not temporary) -%}
        {{ get_table_columns_and_constraints() }} ;
      insert into {{ relation }} (
        {{ adapter.dispatch('get_column_names', 'dbt')() }}
      )
      {%- set sql = get_select_subquery(sql) %}
    {% else %}
      as
    {% endif %}
    (
      {{ sql }}
    );
  {%- endif -%}
{%- endmacro %}

{% macro create_month_partitioned_table_as(relation, sql, partitioning) -%}
  {%- if config.get('contract').enforced or config.get('unlogged', default=false) -%}
    {{ exceptions.raise_compiler_error("partition_by_month does not combine with contract or unlogged (" ~ relation ~ ")") }}
  {%- endif -%}
  {%- set shape = relation.identifier ~ '__shape' -%}
  {%- set sql_header = config.get('sql_header', none) -%}
  {{ sql_header if sql_header is not none }}
  create temporary table {{ shape }} as (
    {{ sql }}
  ) with no data;
  create table {{ relation }} (like {{ shape }}) partition by range ({{ adapter.quote(partitioning['column']) }});
  drop table {{ shape }};
  create table {{ relation.incorporate(path={'identifier': relation.identifier ~ '_default'}) }}
    partition of {{ relation }} default;
  select ops.ensure_month_partitions_like(
    '{{ relation }}'::regclass, '{{ partitioning['months_like'] }}'::regclass, {{ retention_floor(this) }}
  );
  insert into {{ relation }}
  {{ sql }}
  ;
{%- endmacro %}

{#-
  The first instant a 1m mart keeps: ops.partition_retention's keep_from for `relation` (what the
  maintenance DAG's retention dropped before), else -infinity. Rendered as a constant (one query at
  compile time) so the planner can use it; the model filters its source with it, so neither an
  incremental run (a late correction of an old candle) nor a full rebuild re-creates dropped months.
-#}
{% macro retention_floor(relation) -%}
  {%- if execute and model.resource_type != 'unit_test' -%}
    {%- set result = run_query(
        "select extract(epoch from keep_from) from ops.partition_retention where relation = '"
        ~ relation.schema ~ "." ~ relation.identifier ~ "'"
    ) -%}
    {%- if result.rows | length == 0 -%}
      '-infinity'::timestamptz
    {%- else -%}
      to_timestamp({{ result.columns[0].values()[0] }})
    {%- endif -%}
  {%- else -%}
    '-infinity'::timestamptz
  {%- endif -%}
{%- endmacro %}

{#-
  Post-hooks of a month-partitioned model: statistics (a full build: the whole table, so the planner
  knows it at once; an incremental run: the DEFAULT and the two newest months, what it wrote, at a
  cost that does not grow with history) and, after the swap of a full refresh, the partitions renamed
  after the table (outside the transaction: dbt drops the old table and its partitions at the commit).
-#}
{% macro month_partitions_post_hooks() -%}
  {{ return([
      "{% if should_full_refresh() %}analyze {{ this }}"
      ~ "{% else %}select ops.analyze_recent_partitions('{{ this }}'::regclass, 2){% endif %}",
      {"sql": "select ops.rename_month_partitions('{{ this }}'::regclass)", "transaction": false},
  ]) }}
{%- endmacro %}
