{#-
  One-time upgrade of an install whose rollups were built before their indicators moved onto the
  rollup rows (docs/storage.md, "rollup indicators on the rollup rows"), without a full refresh:
  `dbt run-operation move_rollup_indicators_onto_rows`, then `dbt build -s ohlcv_5m+`.

  For when the full refresh the incremental run asks for would lose history: once retention has
  dropped months of ohlcv_1m, a rollup rebuilt from ohlcv_1m keeps only the months left (and
  refuse_rollup_rebuild_after_retention stops it). Per rollup, in one transaction: the indicator
  columns are added to ohlcv_<tf> (after last_ingested_at, the order a build creates), filled from
  the table indicators_<tf> by key, and that table is dropped (the next build creates the view of
  that name). The stored values are kept as they are, so incremental runs continue from them.
  Refused, before anything changes, when a rollup row has no indicator row (the last build of the
  earlier release stopped between the two tables): such rows would keep NULL indicators. Does
  nothing to a rollup that already has the columns: safe to run again.
-#}
{% macro move_rollup_indicators_onto_rows() %}
  {%- set typed = [('candle_index', 'bigint'), ('inputs_complete', 'boolean')] -%}
  {%- for name in ['sma_20', 'sma_50', 'sma_200', 'ema_12', 'ema_26', 'ema_50', 'rsi_14', 'macd_line', 'macd_signal',
                   'rsi_avg_gain_14', 'rsi_avg_loss_14', 'macd_fast_ema'] -%}
    {%- do typed.append((name, 'double precision')) -%}
  {%- endfor -%}
  {%- for timeframe in rollup_timeframes().keys() -%}
    {%- set rollup = ref('ohlcv_' ~ timeframe) -%}
    {%- set indicators = ref('indicators_' ~ timeframe) -%}
    {%- set kinds = run_query(
          "select coalesce((select c.relkind::text from pg_class c join pg_namespace n on n.oid = c.relnamespace"
          ~ " where n.nspname = '" ~ rollup.schema ~ "' and c.relname = '" ~ indicators.identifier ~ "'), '')"
          ~ ", exists (select 1 from information_schema.columns where table_schema = '" ~ rollup.schema
          ~ "' and table_name = '" ~ rollup.identifier ~ "' and column_name = 'candle_index')").rows[0] -%}
    {%- if kinds[1] -%}
      {{ log(rollup ~ ": has its indicator columns already", info=true) }}
    {%- elif kinds[0] != 'r' -%}
      {{ exceptions.raise_compiler_error(rollup ~ " has no indicator columns and " ~ indicators
          ~ " is not a table to move them from: rebuild the rollups once instead, dbt build --full-refresh -s ohlcv_5m+") }}
    {%- else -%}
      {%- set missing = run_query(
            "select count(*) from " ~ rollup ~ " as r where not exists (select 1 from " ~ indicators ~ " as i"
            ~ " where i.exchange = r.exchange and i.symbol = r.symbol and i.open_time = r.open_time)")
            .columns[0].values()[0] -%}
      {%- if missing > 0 -%}
        {{ exceptions.raise_compiler_error(indicators ~ " lacks " ~ missing ~ " rows of " ~ rollup
            ~ " (the last build stopped between the two): build them once with the release before this one"
            ~ " (dbt run -s indicators_" ~ timeframe ~ "), then run this again") }}
      {%- endif -%}
      {%- call statement('move_' ~ timeframe) -%}
        alter table {{ rollup }}
          {%- for name, type in typed %}
          add column {{ name }} {{ type }}{{ ',' if not loop.last }}
          {%- endfor %};
        update {{ rollup }} as r
        set {% for name, _ in typed %}{{ name }} = i.{{ name }}{{ ', ' if not loop.last }}{% endfor %}
        from {{ indicators }} as i
        where i.exchange = r.exchange and i.symbol = r.symbol and i.open_time = r.open_time;
        drop table {{ indicators }};
      {%- endcall -%}
      {%- do adapter.commit() -%}
      {{ log(rollup ~ ": indicator columns added and filled from " ~ indicators ~ " (dropped; the next build"
             ~ " creates the view)", info=true) }}
    {%- endif -%}
  {%- endfor -%}
{% endmacro %}
