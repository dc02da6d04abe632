{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key=['exchange', 'symbol', 'timeframe', 'grain', 'period_start'],
        on_schema_change='fail',
        post_hook=[
            "{{ dq_delete_outside_ranges('hour', \"t.timeframe = '1m' and t.grain = 'hour'\") }}",
            "{{ dq_delete_outside_ranges('day', \"t.timeframe = '1m' and t.grain = 'day'\") }}",
            "{{ analyze_when_changed() }}",
        ],
        indexes=[
            {'columns': ['exchange', 'symbol', 'timeframe', 'grain', 'period_start'], 'unique': true},
            {'columns': ['max_ingested_at']},
            {'columns': ['period_end']},
        ],
    )
}}

{#-
  Data quality of every 1m series per UTC hour and per UTC day (grain 'hour' / 'day'): the hour
  rows of int_dq_hourly_1m, their day roll-up (sums; max for the divergence), and quality_score
  (macro dq_quality_score; formula in data_quality_summary.yml): a rate of the period's expected
  candles, so an hour and a day are on one scale (the day = its hours weighted by expected).

  Incremental (delete+insert on the period): the hours int_dq_hourly_1m recomputed in the same
  build (the same plan, macro dq_hourly_plan, on this table's hour rows) and the days that hold
  them (a day re-sums its up to 24 hour rows); rows outside the ranges are deleted by the
  post-hooks. The unique index (exchange, symbol, timeframe, grain, period_start) serves the
  analysts' "a market's hours or days over a period".
-#}

with {{ dq_hourly_plan(this, "s.timeframe = '1m' and s.grain = 'hour'") }},

-- the plan reads these when incremental:
-- depends_on: {{ ref('int_dq_candle_hours_1m') }}
-- depends_on: {{ ref('stg_ohlcv_anomalies') }}

hours as (
    select h.*, p.recompute_from
    from dq_plan as p
    cross join lateral (
        select *
        from {{ ref('int_dq_hourly_1m') }} as h
        where h.exchange = p.exchange
          and h.symbol = p.symbol
          and h.period_start >= date_trunc('day', p.recompute_from, 'UTC')
        offset 0  -- an index range scan per series (as a join: a hash join over all of the table)
    ) as h
),

days as (
    select
        exchange,
        symbol,
        timeframe,
        date_trunc('day', period_start, 'UTC')     as period_start,
        sum(expected)::bigint                       as expected,
        sum(present)::bigint                        as present,
        sum(missing)::bigint                        as missing,
        sum(duplicates)::bigint                     as duplicates,
        sum(corrections)::bigint                    as corrections,
        sum(out_of_order)::bigint                   as out_of_order,
        sum(price_spikes)::bigint                   as price_spikes,
        sum(volume_anomalies)::bigint               as volume_anomalies,
        max(cross_exchange_divergence_bps)          as cross_exchange_divergence_bps,
        max(max_ingested_at)                        as max_ingested_at
    from hours
    group by 1, 2, 3, 4
),

periods as (
    select
        exchange, symbol, timeframe, 'hour' as grain, period_start, period_end, expected, present, missing,
        duplicates, corrections, out_of_order, price_spikes, volume_anomalies, cross_exchange_divergence_bps,
        max_ingested_at
    from hours
    -- the hours before recompute_from are unchanged; they were read only for their days' sums
    where period_start >= recompute_from
    union all
    select
        exchange, symbol, timeframe, 'day' as grain, period_start, period_start + interval '24 hours',
        expected, present, missing, duplicates, corrections, out_of_order, price_spikes, volume_anomalies,
        cross_exchange_divergence_bps, max_ingested_at
    from days
)

select
    exchange,
    symbol,
    timeframe,
    grain,
    period_start,
    period_end,
    expected,
    present,
    missing,
    duplicates,
    corrections,
    out_of_order,
    price_spikes,
    volume_anomalies,
    cross_exchange_divergence_bps,
    {{ dq_quality_score('expected', 'present', 'duplicates', 'corrections', 'out_of_order', 'price_spikes',
                        'volume_anomalies') }} as quality_score,
    max_ingested_at
from periods
{%- if is_incremental() and rebuild_slice() is not none %}
-- a rebuild writes the hours and days of the slice only
where (grain = 'hour' and {{ rebuild_filter('period_start', '1 hour') }})
   or (grain = 'day' and {{ rebuild_filter('period_start', '1 day') }})
{%- endif %}
