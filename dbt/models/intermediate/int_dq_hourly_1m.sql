{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key=['exchange', 'symbol', 'period_start'],
        on_schema_change='fail',
        post_hook=["{{ dq_delete_outside_ranges('hour') }}", "{{ analyze_when_changed() }}"],
        indexes=[
            {'columns': ['exchange', 'symbol', 'period_start'], 'unique': true},
            {'columns': ['max_ingested_at']},
            {'columns': ['period_end']},
        ],
    )
}}

{#-
  Data-quality counts of every 1m series per UTC hour of its expected range (the hour rows of
  data_quality_summary, before the day roll-up and the score). Only facts inside the series'
  expected range [range_start, range_end) are counted; the periods come from the ranges, so an
  hour without a single candle is a row with present = 0. Candle counts, flags and divergence come
  from the incremental int_dq_candle_hours_1m (per hour with candles); an hour the range cuts in
  two has its candles recounted inside the range.

  Incremental (delete+insert on the hour): per series only the hours from dq_plan's
  recompute_from on (macro dq_hourly_plan: the last hour held, hours whose candle tallies or loader
  anomalies changed since the watermark); hours outside the ranges are deleted by the post-hook.
  An hourly build costs the new hours, not a row per market-hour of history.
-#}

with {{ dq_hourly_plan(this) }},

periods as (
    select
        r.exchange,
        r.symbol,
        p.period_start,
        greatest(p.period_start, r.range_start)                         as expected_from,
        least(p.period_start + interval '1 hour', r.range_end)          as expected_to
    from dq_plan as r
    cross join lateral generate_series(
        greatest(date_trunc('hour', r.range_start, 'UTC'), r.recompute_from),
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
    from dq_plan as r
    cross join lateral (
        select x.exchange, x.symbol, x.open_time, x.kind
        from {{ ref('stg_ohlcv_anomalies') }} as x
        where x.exchange = r.exchange
          and x.symbol = r.symbol
          and x.timeframe = '1m'
          and x.open_time >= greatest(r.range_start, r.recompute_from)
          and x.open_time < r.range_end
        offset 0  -- an index range scan per series (as a join: a hash of every anomaly ever recorded)
    ) as a
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
        hours.cross_exchange_divergence_bps,
        hours.max_ingested_at
    from periods
    -- an index probe per recomputed hour (as a join: a hash of every market-hour of history)
    left join lateral (
        select h.present, h.spike_times, h.volume_anomaly_times, h.cross_exchange_divergence_bps, h.max_ingested_at
        from {{ ref('int_dq_candle_hours_1m') }} as h
        where h.exchange = periods.exchange
          and h.symbol = periods.symbol
          and h.period_start = periods.period_start
        offset 0
    ) as hours on true
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
    cross_exchange_divergence_bps,
    max_ingested_at
from counted
{%- if is_incremental() and rebuild_slice() is not none %}
where {{ rebuild_filter('period_start', '1 hour') }}  -- a rebuild writes the hours of the slice only
{%- endif %}
