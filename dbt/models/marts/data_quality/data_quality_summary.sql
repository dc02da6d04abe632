{{ config(post_hook="analyze {{ this }}") }}

{#-
  Data quality of every 1m series per UTC hour and per UTC day (grain 'hour' / 'day'): the hour
  rows of int_dq_hourly_1m, their day roll-up (sums; max for the divergence), and quality_score
  (macro dq_quality_score; formula in data_quality_summary.yml): a rate of the period's expected
  candles, so an hour and a day are on one scale (the day = its hours weighted by expected).
-#}

with hours as (
    select *
    from {{ ref('int_dq_hourly_1m') }}
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
        max(cross_exchange_divergence_bps)          as cross_exchange_divergence_bps
    from hours
    group by 1, 2, 3, 4
),

periods as (
    select
        exchange, symbol, timeframe, 'hour' as grain, period_start, period_end, expected, present, missing,
        duplicates, corrections, out_of_order, price_spikes, volume_anomalies, cross_exchange_divergence_bps
    from hours
    union all
    select
        exchange, symbol, timeframe, 'day' as grain, period_start, period_start + interval '24 hours',
        expected, present, missing, duplicates, corrections, out_of_order, price_spikes, volume_anomalies,
        cross_exchange_divergence_bps
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
                        'volume_anomalies') }} as quality_score
from periods
