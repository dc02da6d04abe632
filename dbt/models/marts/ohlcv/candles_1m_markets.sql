{{ config(materialized='view') }}

-- The markets of candles_1m: staging's market_id of each 1m series with its exchange and symbol, for
-- readers of the marts (the API, analysts) that read candles_1m by its key (market_id, open_time) and
-- may not read staging. One row per (exchange, symbol); a tiny table behind it (staging.market).
select
    market.market_id,
    market.exchange::text                                                   as exchange,
    market.symbol::text                                                     as symbol
from {{ source('staging', 'market') }} as market
where market.timeframe = '1m'
