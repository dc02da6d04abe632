{{ config(materialized='view') }}

-- Indicators of the 1m candles: stored on the candle's own row in candles_1m (one tuple and one key
-- per candle instead of two; docs/storage.md), keyed by market_id: the market's names are joined back
-- from staging.market, as ohlcv_1m does. This view keeps the columns and their order as they
-- were when indicators_1m was a table: close is the candle's, is_closed is always true for a
-- closed minute, macd_histogram is line - signal (the same double subtraction the table stored),
-- last_ingested_at is the candle's ingested_at. A projection and a join on the tiny market table, so
-- filters on the key use candles_1m's (market_id, open_time desc) index and month partitions.
select
    market.exchange::text                                                   as exchange,
    market.symbol::text                                                     as symbol,
    candle.open_time,
    candle.close,
    candle_index,
    true                                                                    as is_closed,
    inputs_complete,
    sma_20,
    sma_50,
    sma_200,
    ema_12,
    ema_26,
    ema_50,
    rsi_14,
    macd_line,
    macd_signal,
    macd_line - macd_signal                                                 as macd_histogram,
    rsi_avg_gain_14,
    rsi_avg_loss_14,
    macd_fast_ema,
    ingested_at                                                             as last_ingested_at
from {{ ref('candles_1m') }} as candle
inner join {{ source('staging', 'market') }} as market
    on market.market_id = candle.market_id
