-- Anomalies the loader recorded while parsing raw payloads (duplicates, revisions, rows out of
-- order), typed. A single SELECT so filters on it use the source's (exchange, symbol, timeframe,
-- open_time) index.
select
    raw_payload_id::text        as raw_payload_id,
    kind::text                  as kind,
    open_time::timestamptz      as open_time,
    exchange::text              as exchange,
    symbol::text                as symbol,
    timeframe::text             as timeframe,
    detail::text                as detail,
    run_id::text                as run_id,
    recorded_at::timestamptz    as recorded_at
from {{ source('staging', 'ohlcv_anomalies') }}
