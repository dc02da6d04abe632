-- Each market's newest ticker snapshot (staging.ticker_latest, kept by triggers on staging.ticker),
-- typed as stg_ticker. A single SELECT, so latest_price's join reads the table directly.
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
from {{ source('staging', 'ticker_latest') }}
