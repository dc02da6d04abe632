{{ config(materialized='view') }}

-- How much of each exchange's shared request budget was used per minute, and what it cost in waiting.
select
    exchange,
    minute,
    tokens_used,
    budget_per_minute,
    round(100 * tokens_used / nullif(budget_per_minute, 0), 1) as budget_used_pct,
    acquisitions,
    denied,
    round(wait_seconds, 3) as wait_seconds,
    http_429,
    http_418
from {{ ref('stg_rate_limit_metrics') }}
