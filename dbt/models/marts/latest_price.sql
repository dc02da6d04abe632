{{ config(materialized='view') }}

{#-
  The latest known price of every market, evaluated when queried (a view), so `staleness_seconds`
  and the choice between candle and ticker are true at query time, and a ticker snapshot loaded
  after the last dbt run is already used.

  Cost: it joins three tables of one row per market (int_markets, int_latest_candle_1m,
  stg_ticker_latest over staging.ticker_latest): ~1,000 rows read for 1,000 markets, however long
  the history (bench figure 5d), instead of two index probes per market into ohlcv_1m's month
  partitions and staging.ticker. int_latest_candle_1m is built with ohlcv_1m (as fresh as it);
  staging.ticker_latest is kept by triggers as snapshots are written (as fresh as staging.ticker).

  The candle is the last *closed* one (open_time <= now() - 1 minute). int_latest_candle_1m holds a
  market's newest candle; only when that one has not closed yet at query time (never for the
  loader's candles, which are closed) is ohlcv_1m probed for the newest closed one before it: the
  probe is the second branch of a UNION ALL whose outer side filters the held rows first, so for
  closed candles it runs zero times.

  price: the ticker's `last` when that snapshot is strictly newer than the end (close_time) of
  the last closed 1m candle, else that candle's close. as_of is the time of the value used
  (ticker ts, or candle close_time).
-#}

with markets as (
    select exchange, symbol
    from {{ ref('int_markets') }}
),

held as (
    select exchange, symbol, open_time, close_time, close
    from {{ ref('int_latest_candle_1m') }}
),

-- each market's last closed candle: the held one, or (only when that one has not closed yet) the
-- newest closed candle before it from candles_1m; the second branch reads no candle otherwise
closed_candle as (
    select exchange, symbol, open_time, close_time, close
    from held
    where open_time <= now() - interval '1 minute'
    union all
    select held.exchange, held.symbol, earlier.open_time, earlier.close_time, earlier.close
    from held
    cross join lateral (
        -- ohlcv_1m's storage by market_id: one backward probe of its (market_id, open_time desc)
        -- index (through ohlcv_1m's name join PostgreSQL 15 would sort the market's history)
        select c.open_time, c.open_time + interval '1 minute' as close_time, c.close
        from {{ ref('candles_1m') }} as c
        where c.market_id = (
                select series.market_id
                from {{ source('staging', 'market') }} as series
                where series.exchange = held.exchange and series.symbol = held.symbol and series.timeframe = '1m'
            )
          and c.open_time <= now() - interval '1 minute'
        order by c.open_time desc
        limit 1
    ) as earlier
    where held.open_time > now() - interval '1 minute'
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
    left join closed_candle as candle
        on candle.exchange = markets.exchange
       and candle.symbol = markets.symbol
    left join {{ ref('stg_ticker_latest') }} as ticker
        on ticker.exchange = markets.exchange
       and ticker.symbol = markets.symbol
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
