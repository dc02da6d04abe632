{{ config(materialized='view') }}

-- Where each ohlcv_1m row came from. The lineage of a mart row is the staging row of the same key
-- (the mart merges staging's current values of each candle), so ohlcv_1m stores no copy of the ids
-- (~70 bytes a candle, docs/storage.md, stage 3): this view joins them back by key. It reads
-- candles_1m (ohlcv_1m's storage) and staging by market_id: a filter on (exchange, symbol, open_time)
-- uses candles_1m's key index and probes staging's primary key per row.
-- staged_ingested_at = ingested_at: the mart row holds exactly the values of that staging row.
-- staged_ingested_at different: staging holds a newer revision (the raw payload and run of the newest
-- correction) that the next dbt run merges (a full refresh, if stamped before the lookback); staging keeps only the current revision's ids (the
-- replaced payload's id is in the detail of the staging.ohlcv_anomalies row of kind 'revised').
select
    market.exchange::text                                                   as exchange,
    market.symbol::text                                                     as symbol,
    candle.open_time,
    staged.raw_payload_id,
    staged.run_id,
    candle.ingested_at,
    staged.ingested_at                                                      as staged_ingested_at
from {{ ref('candles_1m') }} as candle
inner join {{ source('staging', 'market') }} as market
    on market.market_id = candle.market_id
left join {{ ref('stg_ohlcv') }} as staged
    on staged.market_id = candle.market_id
    and staged.open_time = candle.open_time
