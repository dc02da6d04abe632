{{ config(materialized='view') }}

{#-
  The drill-down behind data_quality_summary's per-candle counts: one row per 1m candle (open
  time) of a series' expected range that the summary counts as a price spike, volume anomaly,
  duplicate, correction or out-of-order row, with the candle's close and volume as staging holds
  them now. In `marts`, so the analyst role reads it (a view runs with its owner's rights: the
  analyst needs nothing on the schemas behind it).

  A view, not a table: nothing is recomputed by the build. Filters on exchange, symbol and
  open_time reach both sources (the grouping columns are pushed into the union's branches): the
  flags from int_dq_candle_hours_1m's spike_times / volume_anomaly_times, the loader's anomalies by
  staging.ohlcv_anomalies' (exchange, symbol, timeframe, open_time) index; the candle is one probe
  of staging.ohlcv's primary key per row.
-#}

with ranges as (
    select exchange, symbol, range_start, range_end
    from {{ ref('int_dq_expected_ranges') }}
    where timeframe = '1m'
      and range_end > range_start
),

facts as (
    select
        h.exchange,
        h.symbol,
        flagged.open_time,
        flagged.open_time = any(h.spike_times)          as is_price_spike,
        flagged.open_time = any(h.volume_anomaly_times) as is_volume_anomaly,
        false                                           as is_duplicate,
        false                                           as is_correction,
        false                                           as is_out_of_order
    from {{ ref('int_dq_candle_hours_1m') }} as h
    cross join lateral unnest(h.spike_times || h.volume_anomaly_times) as flagged (open_time)
    where h.price_spikes > 0 or h.volume_anomalies > 0

    union all

    select
        a.exchange,
        a.symbol,
        a.open_time,
        false,
        false,
        a.kind = 'duplicate_conflict',
        a.kind = 'revised',
        a.kind = 'out_of_order'
    from {{ ref('stg_ohlcv_anomalies') }} as a
    where a.timeframe = '1m'
      and a.kind in ('duplicate_conflict', 'revised', 'out_of_order')
),

per_candle as (
    select
        exchange,
        symbol,
        open_time,
        bool_or(is_price_spike)     as is_price_spike,
        bool_or(is_volume_anomaly)  as is_volume_anomaly,
        bool_or(is_duplicate)       as is_duplicate,
        bool_or(is_correction)      as is_correction,
        bool_or(is_out_of_order)    as is_out_of_order
    from facts
    group by exchange, symbol, open_time
)

select
    p.exchange,
    p.symbol,
    '1m'::text                                          as timeframe,
    p.open_time,
    date_trunc('hour', p.open_time, 'UTC')              as period_start,
    p.is_price_spike,
    p.is_volume_anomaly,
    p.is_duplicate,
    p.is_correction,
    p.is_out_of_order,
    c.close,
    c.volume
from per_candle as p
-- only what the summary counts: open times inside the series' expected range
inner join ranges as r
    on r.exchange = p.exchange
   and r.symbol = p.symbol
   and p.open_time >= r.range_start
   and p.open_time < r.range_end
left join {{ ref('stg_ohlcv') }} as c
    on c.exchange = p.exchange
   and c.symbol = p.symbol
   and c.timeframe = '1m'
   and c.open_time = p.open_time
