{{
    config(
        materialized='incremental',
        incremental_strategy='merge',
        unique_key=['market_id', 'open_time'],
        on_schema_change='fail',
        pre_hook="set local jit = off",
        partition_by_month={'column': 'open_time', 'months_like': 'staging.candle'},
        post_hook=month_partitions_post_hooks(),
        indexes=[
            {'columns': ['market_id', 'open_time desc'], 'unique': true},
            {'columns': ['ingested_at']},
        ],
    )
}}

{#-
  The stored 1-minute candles, one row per (market_id, open_time), and on the same row the candle's
  indicators (SMA / EMA / RSI / MACD, macros/ohlcv_indicators.sql): one tuple, one key and one
  key index per candle instead of two tables of them (docs/storage.md: the biggest single saving
  of bytes per candle). Analysts read the views: marts.ohlcv_1m (the candle columns, with exchange,
  symbol and close_time joined back / derived) and marts.indicators_1m (the indicator columns, with
  close, is_closed, macd_histogram derived).

  The market is staging's market_id (staging.market, the 1m series), not its exchange and symbol:
  4 bytes of key a row and per index entry instead of ~24 of text (docs/storage.md, stage 4).
  close_time (open_time + 1 minute) is not stored. Columns in the order that needs no alignment
  padding: the 8-byte ones, then market_id (4), inputs_complete (1), then the NUMERIC values.

  Incremental runs read only staging rows written since the newest ingested_at already merged,
  minus a lookback (var ohlcv_lookback_minutes): a loader transaction that started earlier can
  commit after dbt read that maximum, and its rows carry the earlier ingested_at. Per market with
  such rows, every candle from the earliest of them on is recomputed (its indicators continue from
  the stored row before it, as indicators_1m always did); MERGE on the key makes re-reading the
  overlap idempotent, and rows equal to the stored ones are left out (the loader bumps ingested_at
  whenever it changes values), so an incremental run without new staging data writes nothing.

  Indexes: the unique (market_id, open_time desc) index is both the key and the "latest
  candle of a market" lookup (int_latest_candle_1m, latest_price: by market_id, macro
  candles_1m_market_filter); ranges in ascending order scan it backwards.
  ingested_at is indexed so the watermark's max() is an index probe, not a scan; the watermark
  is inlined as a constant so the planner uses staging's ingested_at index (macro
  incremental_watermark). The post-hook ANALYZE (a full refresh: the whole table; an incremental
  run: its newest months, a fixed cost) keeps row estimates right, so latest_price's probes are
  planned as index scans.

  Partitioned by month of open_time (macros/month_partitions.sql: a full refresh creates it
  partitioned too); a market-day query reads one partition. Candles older than the retention floor
  (months the maintenance DAG dropped, macro retention_floor) are not read from staging, so a late
  correction of an old candle or a full refresh never brings a dropped month back.

  Physical order: a full refresh writes the rows sorted by the key. Staging is in load order
  (every market's minute interleaved), and a table copied in that order puts each row of one
  market's month on its own heap page: 30 days of 1m candles of one market at 10M rows read 43,725
  buffers, 250 ms; sorted, 1,445 buffers, ~40 ms (bench figure 5c). Rows merged later by the
  incremental runs are appended in load order again, so recent history interleaves until the next
  full refresh (see dbt/README.md).
-#}

-- depends_on: {{ ref('int_indicator_functions') }}  (the ema / wilder aggregates)
-- pre_hook: JIT would spend seconds compiling this wide query for a few touched rows.
{#- The 1m candle series the indicators run over, as the two-table build had it in ohlcv_1m: on a
    full build every staged candle; on an incremental run the candles staged since the watermark
    (or `marketflow rebuild`'s slice) and, for the rest, the rows already merged. A staged change
    the watermark does not see (stamped before the lookback) stays invisible, as before: the
    rollups, which read this table by ingested_at, would not see it either. -#}
{#- No lineage ids on the row (docs/storage.md, stage 3): the lineage of a mart row is the staging row of
    the same key, shown by the view ohlcv_1m_lineage; copying raw_payload_id and run_id here cost ~70
    bytes a candle. -#}
{%- set columns = ['market_id', 'open_time', 'open', 'high', 'low', 'close', 'volume', 'quote_volume',
                   'trades', 'ingested_at'] -%}
{#- the physical order: 8-byte columns, then 4-byte, 1-byte, variable (NUMERIC): no alignment padding -#}
{%- set physical = ['open_time', 'ingested_at', 'trades', 'candle_index', 'sma_20', 'sma_50', 'sma_200', 'ema_12',
                    'ema_26', 'ema_50', 'rsi_14', 'macd_line', 'macd_signal', 'rsi_avg_gain_14', 'rsi_avg_loss_14',
                    'macd_fast_ema', 'market_id', 'inputs_complete', 'open', 'high', 'low', 'close', 'volume',
                    'quote_volume'] -%}
{%- if is_incremental() and rebuild_slice() is not none -%}
  {%- set fresh_staged = rebuild_filter('open_time', none, 'staged.') -%}
  {%- set fresh_newer = rebuild_filter('open_time', none, 'newer.') -%}
{%- elif is_incremental() -%}
  {%- set watermark = incremental_watermark('ingested_at', var('ohlcv_lookback_minutes', 60)) -%}
  {%- set fresh_staged = 'staged.ingested_at > ' ~ watermark -%}
  {%- set fresh_newer = 'newer.ingested_at > ' ~ watermark -%}
{%- endif -%}
{%- set candles -%}
(
    select {% for c in columns %}staged.{{ c }}{{ ', ' if not loop.last }}{% endfor %}
    from {{ ref('stg_ohlcv') }} as staged
    where staged.timeframe = '1m'
      and staged.open_time >= {{ retention_floor(this) }}
    {%- if is_incremental() %}
      and {{ fresh_staged }}
    union all
    -- the candles merged before and not staged anew since (a market_id is one series: its timeframe is 1m)
    select {% for c in columns %}stored.{{ c }}{{ ', ' if not loop.last }}{% endfor %}
    from {{ this }} as stored
    where not exists (
        select 1
        from {{ ref('stg_ohlcv') }} as newer
        where newer.market_id = stored.market_id
          and newer.open_time = stored.open_time
          and newer.open_time >= {{ retention_floor(this) }}
          and {{ fresh_newer }}
    )
    {%- endif %}
)
{%- endset %}
{{ ohlcv_indicators(candles, 'ingested_at', '1m', candle_columns=[
    'open', 'high', 'low', 'close', 'volume', 'quote_volume', 'trades'],
    series=['market_id'], output_columns=physical) }}
