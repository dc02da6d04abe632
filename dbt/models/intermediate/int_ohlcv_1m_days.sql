{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key=['exchange', 'symbol', 'day'],
        on_schema_change='fail',
        post_hook="{{ analyze_when_changed() }}",
        indexes=[
            {'columns': ['exchange', 'symbol', 'day'], 'unique': true},
            {'columns': ['max_ingested_at']},
        ],
    )
}}

{#-
  Per 1m market and UTC day of ohlcv_1m: how many candles, the first and last open time, the newest
  ingested_at. What int_markets sums, so that it reads a row per market-day (1,440 times fewer than
  candles) instead of counting every candle at every build.

  Incremental (delete+insert on the day): the days holding ohlcv_1m rows ingested since the newest
  max_ingested_at held, minus var ohlcv_lookback_minutes (late-committing loads, as ohlcv_1m),
  are recounted exactly (an index-only range count of at most 1,440 rows per day), so late,
  repaired and corrected candles count once. A deleted candle is not noticed: --full-refresh.
-#}

{% if is_incremental() %}
with touched as (
    select distinct exchange, symbol, date_trunc('day', open_time, 'UTC') as day
    from {{ ref('ohlcv_1m') }}
    {%- if rebuild_slice() is not none %}
    where {{ rebuild_filter('open_time') }}  -- `marketflow rebuild`: the days holding the slice
    {%- else %}
    where ingested_at > {{ incremental_watermark('max_ingested_at', var('ohlcv_lookback_minutes', 60)) }}
    {%- endif %}
)

select t.exchange, t.symbol, t.day, counted.candles, counted.first_open_time, counted.last_open_time,
       counted.max_ingested_at
from touched as t
cross join lateral (
    select count(*) as candles, min(c.open_time) as first_open_time, max(c.open_time) as last_open_time,
           max(c.ingested_at) as max_ingested_at
    from {{ ref('ohlcv_1m') }} as c
    where c.exchange = t.exchange
      and c.symbol = t.symbol
      and c.open_time >= t.day
      and c.open_time < t.day + interval '1 day'
) as counted
{% else %}
select
    exchange,
    symbol,
    date_trunc('day', open_time, 'UTC') as day,
    count(*)            as candles,
    min(open_time)      as first_open_time,
    max(open_time)      as last_open_time,
    max(ingested_at)    as max_ingested_at
from {{ ref('ohlcv_1m') }}
group by 1, 2, 3
{% endif %}
