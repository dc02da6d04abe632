{{ config(materialized='view') }}

-- The flagged 1m candles behind data_quality_summary's price_spikes and volume_anomalies, one row
-- per candle: the drill-down of int_dq_candle_hours_1m's spike_times / volume_anomaly_times, with
-- the candle's close and volume (a probe of staging.ohlcv's primary key per flagged candle).
select
    h.exchange,
    h.symbol,
    t.open_time,
    t.open_time = any(h.spike_times)            as is_price_spike,
    t.open_time = any(h.volume_anomaly_times)   as is_volume_anomaly,
    c.close,
    c.volume
from {{ ref('int_dq_candle_hours_1m') }} as h
cross join lateral (
    select distinct flagged.open_time
    from unnest(h.spike_times || h.volume_anomaly_times) as flagged (open_time)
) as t
left join {{ ref('stg_ohlcv') }} as c
    on c.exchange = h.exchange
   and c.symbol = h.symbol
   and c.timeframe = '1m'
   and c.open_time = t.open_time
where h.price_spikes > 0 or h.volume_anomalies > 0
