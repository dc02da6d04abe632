{{ config(materialized='view') }}

-- A view so that is_active is true at query time, not at the last dbt run; everything else is
-- read from the int_markets table (a few rows per market, so this costs nothing).
select
    exchange,
    symbol,
    base,
    quote,
    first_candle_at,
    last_candle_at,
    candle_count,
    has_ticker,
    coalesce(
        last_candle_at >= now() - interval '{{ var("active_within_hours", 24) | int }} hours',
        false
    ) as is_active
from {{ ref('int_markets') }}
