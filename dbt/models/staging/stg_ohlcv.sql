-- Candles of every timeframe, typed, with the candle's (exclusive) end time.
-- Deliberately a single SELECT without a `with source as (...)` CTE: PostgreSQL cannot flatten a
-- view that has a WITH clause into the query using it, and then per-market lookups
-- (WHERE exchange/symbol ... ORDER BY ... LIMIT 1) through the view stop using the primary key.
-- As a plain projection, filters on it use staging.ohlcv's primary key and ingested_at index.
select
    exchange::text                                              as exchange,
    symbol::text                                                as symbol,
    timeframe::text                                             as timeframe,
    open_time::timestamptz                                      as open_time,
    open_time + {{ timeframe_to_interval('timeframe') }}        as close_time,
    open::numeric                                               as open,
    high::numeric                                               as high,
    low::numeric                                                as low,
    close::numeric                                              as close,
    volume::numeric                                             as volume,
    quote_volume::numeric                                       as quote_volume,
    trades::bigint                                              as trades,
    raw_payload_id::text                                        as raw_payload_id,
    run_id::text                                                as run_id,
    ingested_at::timestamptz                                    as ingested_at
from {{ source('staging', 'ohlcv') }}
