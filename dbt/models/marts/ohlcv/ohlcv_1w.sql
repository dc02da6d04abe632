{{
    config(
        materialized='incremental',
        incremental_strategy='merge',
        unique_key=['exchange', 'symbol', 'open_time'],
        on_schema_change='fail',
        pre_hook=["set local jit = off", "{{ rollup_new_candles('1w') }}"],
        post_hook="{{ analyze_when_changed() }}",
        indexes=[
            {'columns': ['exchange', 'symbol', 'open_time desc'], 'unique': true},
            {'columns': ['last_ingested_at']},
        ],
    )
}}

-- depends_on: {{ ref('int_indicator_functions') }}  (the ema / wilder aggregates of its indicators)
-- pre_hook: JIT would spend seconds compiling this query for a few touched buckets
-- and their indicators.
-- 1w candles rolled up from ohlcv_1d in UTC buckets: see macros/ohlcv_rollup.sql.
{{ ohlcv_rollup('1w') }}
