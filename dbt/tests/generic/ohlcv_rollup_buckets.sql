{#-
  Shape of a rollup's rows (ohlcv_5m ... ohlcv_1w): fails for every row whose bucket bookkeeping
  is wrong, with a `violations` array:
    open_time not the start of its UTC bucket / close_time not open_time + the bucket width
    candle_count outside 1 .. minutes per bucket, or more than the minutes first..last span
    is_complete not (candle_count = minutes per bucket)
    is_closed while close_time is after the build time (dq_as_of(): a forming bucket marked closed)
    quote_volume_missing_minutes outside 0 .. candle_count, or quote_volume not NULL exactly when it is 0
    first_minute_at / last_minute_at outside the bucket, or first after last

    data_tests:
      - ohlcv_rollup_buckets:
          arguments:
            timeframe: 5m
-#}
{% test ohlcv_rollup_buckets(model, timeframe) %}
{%- set width, minutes = rollup_timeframe(timeframe) %}

with checked as (
    select
        *,
        array_remove(array[
            case when open_time is distinct from {{ utc_bucket('open_time', timeframe) }}
                then 'open_time is not a UTC bucket start' end,
            case when close_time is distinct from open_time + interval '{{ width }}'
                then 'close_time is not open_time + {{ width }}' end,
            case when candle_count is null or candle_count < 1 or candle_count > {{ minutes }}
                then 'candle_count outside 1..{{ minutes }}' end,
            case when candle_count > extract(epoch from last_minute_at - first_minute_at) / 60 + 1
                then 'candle_count above the first..last minute span' end,
            case when is_complete is distinct from (candle_count = {{ minutes }})
                then 'is_complete is not candle_count = {{ minutes }}' end,
            -- (not closed with close_time in the past is fine: it closed after the build)
            case when is_closed is null or (is_closed and close_time > {{ dq_as_of() }})
                then 'is_closed before close_time' end,
            case when quote_volume_missing_minutes is null or quote_volume_missing_minutes < 0
                      or quote_volume_missing_minutes > candle_count
                      or (quote_volume is null) <> (quote_volume_missing_minutes > 0)
                then 'quote_volume_missing_minutes inconsistent' end,
            case when first_minute_at < open_time or last_minute_at >= close_time
                      or first_minute_at > last_minute_at or first_minute_at is null or last_minute_at is null
                then 'first/last minute outside the bucket' end
        ], null) as violations
    from {{ model }}
)

select *
from checked
where cardinality(violations) > 0

{% endtest %}
