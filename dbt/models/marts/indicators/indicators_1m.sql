{{ config(materialized='view') }}

-- Indicators of the 1m candles: stored on the candle's own row in candles_1m (one tuple and one key
-- per candle instead of two; docs/storage.md), keyed by market_id: the market's names are joined back
-- from staging.market, as ohlcv_1m does. The columns, their order and types are every indicator view's
-- (macros/indicator_view_columns.sql); here is_closed is always true (a closed minute) and
-- last_ingested_at is the candle's ingested_at. A projection and a join on the tiny market table, so
-- filters on the key use candles_1m's (market_id, open_time desc) index and month partitions.
select
{{ indicator_view_columns({
    'exchange': 'market.exchange::text',
    'symbol': 'market.symbol::text',
    'open_time': 'candle.open_time',
    'close': 'candle.close',
    'is_closed': 'true',
    'last_ingested_at': 'ingested_at',
}) }}
from {{ ref('candles_1m') }} as candle
inner join {{ source('staging', 'market') }} as market
    on market.market_id = candle.market_id
