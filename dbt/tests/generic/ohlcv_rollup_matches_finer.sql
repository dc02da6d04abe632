{#-
  Reconciliation of a rollup with the next finer candle table, written independently of the model
  (window functions for open/close instead of ordered array_agg): for every bucket of the rollup
  and every bucket that finer candles written within the test window fall in, a fresh aggregation
  of ALL the bucket's finer candles must equal the stored row (count, open, high, low, close,
  volume, quote_volume, quote_volume_missing_minutes, trades, first/last minute, last_ingested_at). Catches an incremental run
  that missed a late or corrected minute, or recomputed a bucket from only some of its minutes.

  The chain 1m -> 5m -> 15m -> 1h -> 1d -> 1w: each link checks a rollup against the one below it
  (5m against ohlcv_1m). Every column composes exactly (counts and volumes add, open/close are
  the first/last, high/low the max/min, quote_volume is NULL when any part's is), so the chain
  passing means every rollup equals a fresh aggregation of the minutes, while the 1w check reads
  1d rows instead of 10,080 minutes per bucket (all five checks once read every minute).

  Windowing: the rollup side is whatever `where` the test is configured with (the rollup ymls use
  last_ingested_at within data_test_window_hours); the finer side is windowed here on its
  ingested_at / last_ingested_at with the same var (0 = everything). The buckets to check (stored
  rows in the window, buckets of finer rows written in it) are merged into runs of consecutive
  buckets, and each run's finer rows are read in one index range scan and aggregated: the cost is
  the window's buckets, not a market's history from its earliest one (an old backfill within the
  window no longer re-reads everything since). A stored bucket older than one of its parts is
  reported as missing (it is stale).

  The finer table is the one the model is built from (macro rollup_finer), so the test
  takes only the rollup's timeframe:

    data_tests:
      - ohlcv_rollup_matches_finer:
          arguments:
            timeframe: 1h
-#}
{% test ohlcv_rollup_matches_finer(model, timeframe) %}
{%- set finer_timeframe = rollup_finer_timeframe(timeframe) %}
{%- set finer, finer_ingested = rollup_finer(timeframe) %}
{%- set from_minutes = finer_timeframe == '1m' %}

with stored_rows as (
    select * from {{ model }}
),

-- The buckets to check: every stored row in the window, and the bucket of every finer row written
-- within the window; runs of consecutive buckets merged into islands (gaps and islands), so each
-- island is one index range scan of the finer table. Never from a market's first bucket on: after
-- an old backfill, the old island and the live one are read, not the history between them.
buckets as (
    select exchange, symbol, open_time as bucket
    from stored_rows
    union
    select distinct exchange, symbol, {{ utc_bucket('open_time', timeframe) }}
    from {{ finer }}
    where {{ recent_rows_filter(finer_ingested) }}
),

islands as (
    select exchange, symbol, min(bucket) as span_start, max(bucket) + interval '{{ rollup_timeframe(timeframe)[0] }}' as span_end
    from (
        select
            *,
            count(*) filter (where is_first) over (partition by exchange, symbol order by bucket) as island
        from (
            select
                *,
                bucket - interval '{{ rollup_timeframe(timeframe)[0] }}'
                    is distinct from lag(bucket) over (partition by exchange, symbol order by bucket) as is_first
            from buckets
        ) as marked
    ) as numbered
    group by exchange, symbol, island
),

-- Every finer row of the islands: one index range scan per island.
parts as (
    select p.*
    from islands as s
    cross join lateral (
        select {{ utc_bucket('c.open_time', timeframe) }} as bucket, c.exchange, c.symbol, c.open_time, c.open,
               c.high, c.low, c.close, c.volume, c.quote_volume, c.trades,
               {%- if from_minutes %}
               1 as candle_count, case when c.quote_volume is null then 1 else 0 end as quote_volume_missing_minutes,
               c.open_time as first_minute_at, c.open_time as last_minute_at, c.ingested_at as last_ingested_at
               {%- else %}
               c.candle_count, c.quote_volume_missing_minutes, c.first_minute_at, c.last_minute_at,
               c.last_ingested_at
               {%- endif %}
        from {{ finer }} as c
        where c.exchange = s.exchange
          and c.symbol = s.symbol
          and c.open_time >= s.span_start
          and c.open_time < s.span_end
        offset 0  -- keeps the range scan per island
    ) as p
),

-- open/close by window functions over the bucket's parts (the model uses ordered array_agg), one
-- window over the whole bucket.
ends as (
    select
        *,
        first_value(open) over bucket_parts                             as first_open,
        last_value(close) over bucket_parts                             as last_close
    from parts
    window bucket_parts as (
        partition by exchange, symbol, bucket order by open_time
        rows between unbounded preceding and unbounded following
    )
),

expected as (
    select
        exchange, symbol, bucket,
        min(first_open)                                                 as open,
        max(high)                                                       as high,
        min(low)                                                        as low,
        min(last_close)                                                 as close,
        sum(candle_count)                                               as candle_count,
        sum(volume)                                                     as volume,
        case when bool_and(quote_volume is not null) then sum(quote_volume) end  as quote_volume,
        case when bool_and(trades is not null) then sum(trades) end     as trades,
        sum(quote_volume_missing_minutes)                               as quote_volume_missing_minutes,
        min(first_minute_at)                                            as first_minute_at,
        max(last_minute_at)                                             as last_minute_at,
        max(last_ingested_at)                                           as last_ingested_at
    from ends
    group by exchange, symbol, bucket
),

-- Judged: every stored row in the window, and every bucket with a part written within the
-- window (its newest part's last_ingested_at is then within it too); other buckets of the span
-- were only aggregated on the way.
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
            when expected.bucket is null then 'bucket has no {{ finer_timeframe }} candles'
            when (stored.open, stored.high, stored.low, stored.close, stored.volume, stored.quote_volume,
                  stored.quote_volume_missing_minutes, stored.trades, stored.candle_count, stored.first_minute_at,
                  stored.last_minute_at, stored.last_ingested_at)
                 is distinct from
                 (expected.open, expected.high, expected.low, expected.close, expected.volume,
                  expected.quote_volume, expected.quote_volume_missing_minutes, expected.trades,
                  expected.candle_count, expected.first_minute_at, expected.last_minute_at,
                  expected.last_ingested_at)
                then 'values differ from a fresh aggregation of the {{ finer_timeframe }} candles'
        end as problem
    from expected
    full outer join stored_rows as stored
        on stored.exchange = expected.exchange
       and stored.symbol = expected.symbol
       and stored.open_time = expected.bucket
    where stored.open_time is not null
       or ({{ recent_rows_filter('expected.last_ingested_at') }})
)

select *
from compared
where problem is not null

{% endtest %}
