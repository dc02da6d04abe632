{{ config(materialized='view') }}

-- Indicators of the 15m candles: stored on the candle's own row in ohlcv_15m (one tuple and one key
-- per candle instead of two; docs/storage.md). This view keeps the columns, their order and types as
-- they were when indicators_15m was a table: see macros/ohlcv_rollup.sql (rollup_indicators_view).
{{ rollup_indicators_view('15m') }}
