-- Candles of every timeframe, typed, with the candle's (exclusive) end time: staging.candle (storage
-- stage 2, docs/storage.md) with its series' names (staging.market), the run id (ops.run) and the
-- payload id as text joined back, and market_id for the models that key on it.
-- Deliberately a single SELECT without a `with source as (...)` CTE: PostgreSQL cannot flatten a
-- view that has a WITH clause into the query using it. LEFT joins on the small tables' primary keys
-- (every candle has its market and run): a query reading only candle columns (market_id, open_time,
-- ingested_at) does not join at all, so it scans staging.candle's (market_id, open_time) key and
-- ingested_at BRIN directly. A filter on exchange/symbol goes through staging.market: for ordered
-- per-market lookups (ORDER BY open_time ... LIMIT, min/max) filter on market_id instead
-- (macros/stg_ohlcv_series.sql), which keeps the key's order.
select
    market.exchange::text                                       as exchange,
    market.symbol::text                                         as symbol,
    market.timeframe::text                                      as timeframe,
    candle.open_time::timestamptz                               as open_time,
    candle.open_time + {{ timeframe_to_interval('market.timeframe') }} as close_time,
    candle.open::numeric                                        as open,
    candle.high::numeric                                        as high,
    candle.low::numeric                                         as low,
    candle.close::numeric                                       as close,
    candle.volume::numeric                                      as volume,
    candle.quote_volume::numeric                                as quote_volume,
    candle.trades::bigint                                       as trades,
    staging.payload_id_text(candle.raw_payload_id)              as raw_payload_id,
    run.run_id::text                                            as run_id,
    candle.ingested_at::timestamptz                             as ingested_at,
    candle.market_id::integer                                   as market_id
from {{ source('staging', 'candle') }} as candle
left join {{ source('staging', 'market') }} as market
    on market.market_id = candle.market_id
left join {{ source('ops', 'run') }} as run
    on run.run_key = candle.run_key
