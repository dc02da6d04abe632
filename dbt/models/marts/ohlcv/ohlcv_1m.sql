{{ config(materialized='view') }}

-- 1-minute candles with the columns, types and order ohlcv_1m always had (one row per exchange,
-- symbol, open_time). Stored in candles_1m, keyed by staging's market_id and without close_time
-- (docs/storage.md, stage 4): this view joins the market's names back from staging.market (a tiny
-- table; one hash join, or per market a nested loop into candles_1m's (market_id, open_time desc)
-- index and month partitions) and derives close_time. The candle's indicators are indicators_1m's.
--
-- A filter on exchange and symbol (and a range of open_time) reaches the market's rows by an index
-- range scan per partition. PostgreSQL 15 cannot return them in key order through the join, so an
-- ORDER BY open_time ... LIMIT 1 per market sorts the market's rows: models that probe a market's
-- newest candle read candles_1m by market_id (macro candles_1m_market_filter).
select
    market.exchange::text                                                   as exchange,
    market.symbol::text                                                     as symbol,
    candle.open_time,
    candle.open,
    candle.high,
    candle.low,
    candle.close,
    candle.volume,
    candle.quote_volume,
    candle.trades,
    candle.open_time + interval '1 minute'                                  as close_time,
    candle.ingested_at
from {{ ref('candles_1m') }} as candle
inner join {{ source('staging', 'market') }} as market
    on market.market_id = candle.market_id
