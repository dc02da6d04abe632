{#-
  Reconciliation of a rollup with the 1m candles it is built from, written independently of the
  model (DISTINCT ON for open/close instead of ordered array_agg): for every bucket of the rollup
  and every bucket that 1m candles written within the test window fall in, a fresh aggregation
  of ALL the bucket's minutes must equal the stored row (count, open, high, low, close, volume,
  quote_volume, trades, first/last minute, last_ingested_at). Catches an incremental run that
  missed a late or corrected minute, or recomputed a bucket from only some of its minutes.

  Windowing: the rollup side is whatever `where` the test is configured with (the rollup ymls use
  last_ingested_at within data_test_window_hours); the 1m side is windowed here on ingested_at
  with the same var (0 = everything). A stored bucket older than one of its minutes is reported as
  missing (it is stale).

    data_tests:
      - ohlcv_rollup_matches_minutes:
          arguments:
            timeframe: 1h
            minutes: ref('ohlcv_1m')
-#}
{% test ohlcv_rollup_matches_minutes(model, timeframe, minutes) %}
{%- set width = "interval '" ~ rollup_timeframe(timeframe)[0] ~ "'" %}

with stored_rows as (
    select * from {{ model }}
),

buckets as (
    select exchange, symbol, open_time as bucket
    from stored_rows
    union
    select exchange, symbol, {{ utc_bucket('open_time', timeframe) }}
    from {{ minutes }}
    where {{ recent_rows_filter('ingested_at') }}
),

bucket_minutes as (
    select buckets.bucket, m.*
    from buckets
    inner join {{ minutes }} as m
        on m.exchange = buckets.exchange
       and m.symbol = buckets.symbol
       and m.open_time >= buckets.bucket
       and m.open_time < buckets.bucket + {{ width }}
),

firsts as (
    select distinct on (exchange, symbol, bucket) exchange, symbol, bucket, open
    from bucket_minutes
    order by exchange, symbol, bucket, open_time asc
),

lasts as (
    select distinct on (exchange, symbol, bucket) exchange, symbol, bucket, close
    from bucket_minutes
    order by exchange, symbol, bucket, open_time desc
),

totals as (
    select
        exchange, symbol, bucket,
        count(*)                                                        as candle_count,
        max(high)                                                       as high,
        min(low)                                                        as low,
        sum(volume)                                                     as volume,
        case when bool_and(quote_volume is not null) then sum(quote_volume) end  as quote_volume,
        case when bool_and(trades is not null) then sum(trades) end     as trades,
        min(open_time)                                                  as first_minute_at,
        max(open_time)                                                  as last_minute_at,
        max(ingested_at)                                                as last_ingested_at
    from bucket_minutes
    group by exchange, symbol, bucket
),

expected as (
    select totals.*, firsts.open, lasts.close
    from totals
    inner join firsts using (exchange, symbol, bucket)
    inner join lasts using (exchange, symbol, bucket)
),

compared as (
    select
        coalesce(expected.exchange, stored.exchange)    as exchange,
        coalesce(expected.symbol, stored.symbol)        as symbol,
        coalesce(expected.bucket, stored.open_time)     as open_time,
        expected.candle_count                           as expected_candle_count,
        stored.candle_count                             as stored_candle_count,
        expected.close                                  as expected_close,
        stored.close                                    as stored_close,
        case
            when stored.open_time is null then 'bucket missing from the rollup (or stale)'
            when expected.bucket is null then 'bucket has no 1m candles'
            when (stored.open, stored.high, stored.low, stored.close, stored.volume, stored.quote_volume,
                  stored.trades, stored.candle_count, stored.first_minute_at, stored.last_minute_at,
                  stored.last_ingested_at)
                 is distinct from
                 (expected.open, expected.high, expected.low, expected.close, expected.volume,
                  expected.quote_volume, expected.trades, expected.candle_count, expected.first_minute_at,
                  expected.last_minute_at, expected.last_ingested_at)
                then 'values differ from a fresh aggregation of the minutes'
        end as problem
    from expected
    full outer join (
        select stored.*
        from stored_rows as stored
        inner join buckets as b
            on b.exchange = stored.exchange and b.symbol = stored.symbol and b.bucket = stored.open_time
    ) as stored
        on stored.exchange = expected.exchange
       and stored.symbol = expected.symbol
       and stored.open_time = expected.bucket
)

select *
from compared
where problem is not null

{% endtest %}
