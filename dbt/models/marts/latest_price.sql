{{ config(materialized='view') }}

{#-
  The latest known price of every market, evaluated when queried (a view), so `staleness_seconds`
  and the choice between candle and ticker are true at query time, and a ticker snapshot loaded
  after the last dbt run is already used.

  Cost: per market, one backward probe of ohlcv_1m's unique (exchange, symbol, open_time desc)
  index and one of staging.ticker's (exchange, symbol, ts) primary key: a few index pages per
  market however many rows the tables hold. No window function over the tables, no DISTINCT ON
  scan. The market list comes from the small int_markets table.

  price: the ticker's `last` when that snapshot is strictly newer than the end (close_time) of
  the last closed 1m candle, else that candle's close. as_of is the time of the value used
  (ticker ts, or candle close_time).
-#}

with markets as (
    select exchange, symbol
    from {{ ref('int_markets') }}
),

latest as (
    select
        markets.exchange,
        markets.symbol,
        candle.open_time    as candle_open_time,
        candle.close_time   as candle_close_time,
        candle.close        as candle_close,
        ticker.ts           as ticker_ts,
        ticker.last         as ticker_last,
        ticker.bid          as ticker_bid,
        ticker.ask          as ticker_ask
    from markets
    left join lateral (
        -- last *closed* candle: its end is not in the future
        select c.open_time, c.close_time, c.close
        from {{ ref('ohlcv_1m') }} as c
        where c.exchange = markets.exchange
          and c.symbol = markets.symbol
          and c.open_time <= now() - interval '1 minute'
        order by c.open_time desc
        limit 1
    ) as candle on true
    left join lateral (
        select t.ts, t.last, t.bid, t.ask
        from {{ ref('stg_ticker') }} as t
        where t.exchange = markets.exchange
          and t.symbol = markets.symbol
        order by t.ts desc
        limit 1
    ) as ticker on true
),

priced as (
    select
        *,
        case
            when ticker_last is not null
                 and (candle_close_time is null or ticker_ts > candle_close_time) then 'ticker'
            when candle_close is not null then 'candle'
        end as price_source
    from latest
)

select
    exchange,
    symbol,
    candle_open_time,
    candle_close_time,
    candle_close,
    ticker_ts,
    ticker_last,
    ticker_bid,
    ticker_ask,
    case price_source when 'ticker' then ticker_last when 'candle' then candle_close end          as price,
    price_source,
    case price_source when 'ticker' then ticker_ts when 'candle' then candle_close_time end       as as_of,
    extract(epoch from now() - case price_source
        when 'ticker' then ticker_ts when 'candle' then candle_close_time end)::numeric(20, 3)   as staleness_seconds
from priced
