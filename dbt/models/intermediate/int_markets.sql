{{
    config(
        post_hook="analyze {{ this }}",
        indexes=[{'columns': ['exchange', 'symbol'], 'unique': true}],
    )
}}

-- The unique index serves latest_price's and markets' lookups by (exchange, symbol).
-- One row per market (exchange, symbol) seen in the 1m candles or the ticker snapshots, with its
-- candle coverage. Time-independent; marts.markets adds is_active relative to query time.
-- The coverage sums the incremental per-day counts (a row per market-day), not every candle.
with candle_markets as (
    select
        exchange,
        symbol,
        min(first_open_time)    as first_candle_at,
        max(last_open_time)     as last_candle_at,
        sum(candles)::bigint    as candle_count
    from {{ ref('int_ohlcv_1m_days') }}
    group by exchange, symbol
),

ticker_markets as (
    select exchange, symbol
    from {{ distinct_markets(ref('stg_ticker')) }} as t
),

markets as (
    select
        coalesce(candle_markets.exchange, ticker_markets.exchange)  as exchange,
        coalesce(candle_markets.symbol, ticker_markets.symbol)      as symbol,
        candle_markets.first_candle_at,
        candle_markets.last_candle_at,
        coalesce(candle_markets.candle_count, 0)                    as candle_count,
        ticker_markets.exchange is not null                         as has_ticker
    from candle_markets
    full outer join ticker_markets
        on candle_markets.exchange = ticker_markets.exchange
       and candle_markets.symbol = ticker_markets.symbol
)

select
    exchange,
    symbol,
    -- ccxt unified symbols: BASE/QUOTE, derivatives BASE/QUOTE:SETTLE[-expiry-strike-type]
    split_part(symbol, '/', 1)                          as base,
    split_part(split_part(symbol, '/', 2), ':', 1)      as quote,
    first_candle_at,
    last_candle_at,
    candle_count,
    has_ticker
from markets
