-- The markets file as the database sees it: one row per configured (exchange, symbol, timeframe).
select
    exchange::text              as exchange,
    symbol::text                as symbol,
    timeframe::text             as timeframe,
    ccxt_id::text               as ccxt_id,
    history_start::timestamptz  as history_start,
    history_end::timestamptz    as history_end,
    enabled::boolean            as enabled,
    synced_at::timestamptz      as synced_at
from {{ source('ops', 'market_config') }}
