{{
    config(
        materialized='incremental',
        incremental_strategy='merge',
        unique_key=['exchange', 'symbol', 'open_time'],
        on_schema_change='fail',
        pre_hook="set local jit = off",
        partition_by_month={'column': 'open_time', 'months_like': 'marts.ohlcv_1m'},
        post_hook=month_partitions_post_hooks(),
        indexes=[
            {'columns': ['exchange', 'symbol', 'open_time desc'], 'unique': true},
            {'columns': ['last_ingested_at']},
        ],
    )
}}

-- depends_on: {{ ref('int_indicator_functions') }}  (the ema / wilder aggregates)
-- pre_hook: JIT would spend seconds compiling this wide query for a few touched rows.
-- Partitioned by month of open_time like ohlcv_1m (macros/month_partitions.sql); retention drops
-- both tables' old months together, and this model reads only ohlcv_1m.
-- SMA / EMA / RSI / MACD of the 1m candles (ohlcv_1m): see macros/ohlcv_indicators.sql.
{{ ohlcv_indicators(ref('ohlcv_1m'), 'ingested_at', '1m') }}
