{{
    config(
        materialized='incremental',
        incremental_strategy='merge',
        unique_key=['exchange', 'symbol'],
        on_schema_change='fail',
        post_hook="{{ analyze_when_changed() }}",
        indexes=[
            {'columns': ['exchange', 'symbol'], 'unique': true},
            {'columns': ['max_ingested_at']},
        ],
    )
}}

{#-
  The newest 1m candle (largest open_time) of every market in ohlcv_1m, one row per market, so
  latest_price reads 1,000 rows for 1,000 markets instead of probing ohlcv_1m's month partitions
  once per market at query time (bench figure 5d).

  Incremental (merge on the market): the markets with ohlcv_1m rows ingested since the newest
  max_ingested_at held, minus var ohlcv_lookback_minutes (late-committing loads, as ohlcv_1m), get
  their newest candle again by one backward probe of candles_1m's (market_id, open_time desc)
  index (ohlcv_1m's storage, read by market_id: through ohlcv_1m's name join PostgreSQL 15 would sort
  the market's whole history for this LIMIT 1; docs/storage.md, stage 4): a new minute, a late or corrected candle of the newest minute (the loader gives it a new
  ingested_at), a backfill of older minutes (the newest stays) all come out right, and a re-run
  without new candles writes nothing new. max_ingested_at is the newest ingested_at read for the
  market, so the watermark moves on even when a backfill of old minutes leaves the newest candle as
  it was. A market without new candles (delisted, suspended) keeps its row. `marketflow rebuild`:
  the slice's markets are probed again.
-#}

with touched as (
    {%- if is_incremental() and rebuild_slice() is not none %}
    -- `marketflow rebuild`: every 1m market of the slice (one without candles gets no row below)
    select market.market_id, null::timestamptz as max_ingested_at
    from {{ source('staging', 'market') }} as market
    where market.timeframe = '1m'
      and {{ rebuild_filter(none, prefix='market.') }}
    {%- else %}
    select market_id, max(ingested_at) as max_ingested_at
    from {{ ref('candles_1m') }}
    {%- if is_incremental() %}
    where ingested_at > {{ incremental_watermark('max_ingested_at', var('ohlcv_lookback_minutes', 60)) }}
    {%- endif %}
    group by market_id
    {%- endif %}
)

select
    market.exchange::text                                                   as exchange,
    market.symbol::text                                                     as symbol,
    newest.open_time,
    newest.open_time + interval '1 minute'                                  as close_time,
    newest.close,
    newest.ingested_at,
    {%- if is_incremental() %}
    greatest(t.max_ingested_at, held.max_ingested_at, newest.ingested_at) as max_ingested_at
    {%- else %}
    greatest(t.max_ingested_at, newest.ingested_at) as max_ingested_at
    {%- endif %}
from touched as t
inner join {{ source('staging', 'market') }} as market
    on market.market_id = t.market_id
cross join lateral (
    select c.open_time, c.close, c.ingested_at
    from {{ ref('candles_1m') }} as c
    where c.market_id = t.market_id
    order by c.open_time desc
    limit 1
) as newest
{%- if is_incremental() %}
left join {{ this }} as held
    on held.exchange = market.exchange
   and held.symbol = market.symbol
{%- endif %}
