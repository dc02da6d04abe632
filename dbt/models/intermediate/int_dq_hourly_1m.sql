{{ config(post_hook="analyze {{ this }}") }}

{#-
  Data-quality counts of every 1m series per UTC hour of its expected range (the hour rows of
  data_quality_summary, before the day roll-up and the score). Only facts inside the series'
  expected range [range_start, range_end) are counted; the periods come from the ranges, so an
  hour without a single candle is a row with present = 0. Candle counts, flags and divergence come
  from the incremental int_dq_candle_hours_1m (per hour with candles); an hour the range cuts in
  two has its candles recounted inside the range. Rebuilt every run (a row per market-hour of
  history, e.g. ~350k for 40 markets over a year: seconds).
-#}

with ranges as (
    select exchange, symbol, range_start, range_end
    from {{ ref('int_dq_expected_ranges') }}
    where timeframe = '1m'
      and range_end > range_start
),

periods as (
    select
        r.exchange,
        r.symbol,
        p.period_start,
        greatest(p.period_start, r.range_start)                         as expected_from,
        least(p.period_start + interval '1 hour', r.range_end)          as expected_to
    from ranges as r
    cross join lateral generate_series(
        date_trunc('hour', r.range_start, 'UTC'),
        r.range_end - interval '1 minute',
        interval '1 hour'
    ) as p (period_start)
),

anomalies as (
    select
        a.exchange,
        a.symbol,
        date_trunc('hour', a.open_time, 'UTC') as period_start,
        -- distinct minutes: one minute seen by the minute run, the reconcile and a repair counts once
        count(distinct a.open_time) filter (where a.kind = 'duplicate_conflict')    as duplicates,
        count(distinct a.open_time) filter (where a.kind = 'revised')               as corrections,
        count(distinct a.open_time) filter (where a.kind = 'out_of_order')          as out_of_order
    from ranges as r
    join {{ ref('stg_ohlcv_anomalies') }} as a
        on a.exchange = r.exchange
       and a.symbol = r.symbol
       and a.timeframe = '1m'
       and a.open_time >= r.range_start
       and a.open_time < r.range_end
    group by 1, 2, 3
),

counted as (
    select
        periods.exchange,
        periods.symbol,
        periods.period_start,
        (extract(epoch from periods.expected_to - periods.expected_from) / 60)::bigint as expected,
        case
            when periods.expected_from = periods.period_start
             and periods.expected_to = periods.period_start + interval '1 hour'
                then coalesce(hours.present, 0)
            -- an hour the range cuts: count only the candles inside it (an index-only probe)
            else (
                select count(*)
                from {{ ref('stg_ohlcv') }} as c
                where c.exchange = periods.exchange
                  and c.symbol = periods.symbol
                  and c.timeframe = '1m'
                  and c.open_time >= periods.expected_from
                  and c.open_time < periods.expected_to
            )
        end as present,
        coalesce(anomalies.duplicates, 0) as duplicates,
        coalesce(anomalies.corrections, 0) as corrections,
        coalesce(anomalies.out_of_order, 0) as out_of_order,
        (select count(*) from unnest(hours.spike_times) as t
         where t >= periods.expected_from and t < periods.expected_to) as price_spikes,
        (select count(*) from unnest(hours.volume_anomaly_times) as t
         where t >= periods.expected_from and t < periods.expected_to) as volume_anomalies,
        hours.cross_exchange_divergence_bps
    from periods
    left join {{ ref('int_dq_candle_hours_1m') }} as hours
        on hours.exchange = periods.exchange
       and hours.symbol = periods.symbol
       and hours.period_start = periods.period_start
    left join anomalies
        on anomalies.exchange = periods.exchange
       and anomalies.symbol = periods.symbol
       and anomalies.period_start = periods.period_start
)

select
    exchange,
    symbol,
    '1m'::text                          as timeframe,
    period_start,
    period_start + interval '1 hour'    as period_end,
    expected,
    present,
    expected - present                  as missing,
    duplicates,
    corrections,
    out_of_order,
    price_spikes,
    volume_anomalies,
    cross_exchange_divergence_bps
from counted
