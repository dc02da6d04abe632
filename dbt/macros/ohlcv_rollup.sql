{#-
  Candle rollups (marts ohlcv_5m ... ohlcv_1w), all built the same way from ohlcv_1m.

  rollup_timeframes()        timeframe -> (bucket width as an interval literal, minutes per bucket)
  utc_bucket(column, tf)     the start of the UTC bucket `column` falls in
  ohlcv_rollup(tf)           the model SQL (full and incremental)

  Buckets are date_bin() on the absolute time line with a fixed UTC origin, Monday
  2000-01-03 00:00 UTC: date_bin on timestamptz never looks at the session time zone (unlike
  date_trunc without its third argument), days are 24 h, and 7-day buckets start on Mondays.
  Every width divides a week, so one origin serves them all.
-#}

{% macro rollup_timeframes() -%}
    {{ return({
        '5m': ('5 minutes', 5),
        '15m': ('15 minutes', 15),
        '1h': ('1 hour', 60),
        '1d': ('1 day', 1440),
        '1w': ('7 days', 10080),
    }) }}
{%- endmacro %}

{% macro rollup_timeframe(timeframe) -%}
    {%- set spec = rollup_timeframes().get(timeframe) -%}
    {%- if spec is none -%}
        {{ exceptions.raise_compiler_error("unknown rollup timeframe '" ~ timeframe ~ "', expected one of "
                                           ~ rollup_timeframes().keys() | list) }}
    {%- endif -%}
    {{ return(spec) }}
{%- endmacro %}

{% macro utc_bucket(column, timeframe) -%}
    date_bin(interval '{{ rollup_timeframe(timeframe)[0] }}', {{ column }}, timestamptz '2000-01-03 00:00:00+00')
{%- endmacro %}

{#-
  One row per (exchange, symbol, bucket) that has at least one 1m candle.

  Values come straight from the bucket's 1m candles, ordered explicitly: open = the open of the
  earliest minute, close = the close of the latest (array_agg ... ORDER BY open_time), high/low =
  max/min, volume = sum. quote_volume and trades are the sum when EVERY minute of the bucket has
  them and NULL otherwise (a partial sum would look like a complete one). Numerics stay numeric.

  Incremental runs recompute the buckets touched by ohlcv_1m rows whose ingested_at is newer than
  the newest last_ingested_at already in the rollup minus ohlcv_lookback_minutes (the same
  watermark and lookback as ohlcv_1m, so a late-committing load that ohlcv_1m merges is seen here
  in the same run). A touched bucket is recomputed from ALL its minutes in ohlcv_1m (an index range
  scan per bucket), not only the new ones, then merged on (exchange, symbol, open_time). A
  recomputed bucket whose row is identical (as text, so even a numeric's scale counts) to the
  stored one is left out of the merge: a run without new data rewrites nothing. Both lookups are
  written so that they can only run as index probes (LATERAL, scalar subquery): the cost follows
  the number of touched buckets, whatever the planner estimates (with a join, an underestimate
  made it merge-join each market's buckets with all of its minutes: minutes instead of seconds).
-#}
{% macro ohlcv_rollup(timeframe) -%}
{%- set width, minutes = rollup_timeframe(timeframe) -%}
{%- set width = "interval '" ~ width ~ "'" -%}
with
{%- if is_incremental() %}
touched as (
    select distinct
        exchange,
        symbol,
        {{ utc_bucket('open_time', timeframe) }} as bucket
    from {{ ref('ohlcv_1m') }}
    where ingested_at > {{ incremental_watermark('last_ingested_at', var('ohlcv_lookback_minutes', 60)) }}
),

minutes as (
    -- one index range scan of ohlcv_1m per touched bucket (LATERAL: never a merge join on the
    -- market with a range filter, which the planner picks when it underestimates the buckets)
    select m.*, touched.bucket
    from touched
    cross join lateral (
        select *
        from {{ ref('ohlcv_1m') }} as minute
        where minute.exchange = touched.exchange
          and minute.symbol = touched.symbol
          and minute.open_time >= touched.bucket
          and minute.open_time < touched.bucket + {{ width }}
        offset 0  -- keeps the subquery from being flattened into a join
    ) as m
),
{%- else %}
minutes as (
    select m.*, {{ utc_bucket('m.open_time', timeframe) }} as bucket
    from {{ ref('ohlcv_1m') }} as m
),
{%- endif %}

rolled as (
    select
        exchange,
        symbol,
        bucket                                                          as open_time,
        (array_agg(open order by open_time))[1]                         as open,
        max(high)                                                       as high,
        min(low)                                                        as low,
        (array_agg(close order by open_time desc))[1]                   as close,
        sum(volume)                                                     as volume,
        case when count(quote_volume) = count(*) then sum(quote_volume) end  as quote_volume,
        case when count(trades) = count(*) then sum(trades)::bigint end as trades,
        bucket + {{ width }}                                            as close_time,
        count(*)::integer                                               as candle_count,
        count(*) = {{ minutes }}                                        as is_complete,
        min(open_time)                                                  as first_minute_at,
        max(open_time)                                                  as last_minute_at,
        max(ingested_at)                                                as last_ingested_at
    from minutes
    group by exchange, symbol, bucket
)

select *
from rolled
{%- if is_incremental() %}
-- leave out buckets equal to the stored row: one index probe per bucket (a scalar subquery, so
-- never a join whose plan depends on row estimates)
where (
    select stored::text
    from {{ this }} as stored
    where stored.exchange = rolled.exchange
      and stored.symbol = rolled.symbol
      and stored.open_time = rolled.open_time
) is distinct from rolled::text
{%- endif %}
{%- endmacro %}
