{{
    config(
        materialized='incremental',
        incremental_strategy='merge',
        unique_key=['exchange', 'symbol', 'open_time'],
        on_schema_change='fail',
        pre_hook="set local jit = off",
        post_hook="{{ analyze_when_changed() }}",
        indexes=[
            {'columns': ['exchange', 'symbol', 'open_time desc'], 'unique': true},
            {'columns': ['last_ingested_at']},
        ],
    )
}}

-- depends_on: {{ ref('int_indicator_functions') }}  (the ema / wilder aggregates)
-- pre_hook: JIT would spend seconds compiling this wide query for a few touched rows.
-- SMA / EMA / RSI / MACD of the 1h candles (ohlcv_1h): see macros/ohlcv_indicators.sql.
{{ ohlcv_indicators(ref('ohlcv_1h'), 'last_ingested_at', '1h') }}
