-- Ticker snapshots, typed. A single SELECT (no `with source as (...)` CTE: PostgreSQL does not
-- flatten views that have a WITH clause), so latest_price's per-market "latest snapshot" lookup
-- through this view walks staging.ticker's (exchange, symbol, ts) primary key backwards.
select
    exchange::text              as exchange,
    symbol::text                as symbol,
    ts::timestamptz             as ts,
    last::numeric               as last,
    bid::numeric                as bid,
    ask::numeric                as ask,
    bid_volume::numeric         as bid_volume,
    ask_volume::numeric         as ask_volume,
    base_volume::numeric        as base_volume,
    quote_volume::numeric       as quote_volume,
    raw_payload_id::text        as raw_payload_id,
    run_id::text                as run_id,
    ingested_at::timestamptz    as ingested_at
from {{ source('staging', 'ticker') }}
