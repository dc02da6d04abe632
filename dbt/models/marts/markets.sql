{{ config(materialized='view') }}

-- A view so that is_active and status are true at query time, not at the last dbt run: coverage
-- comes from the int_markets table (a few rows per market), the pipeline's view of each market from
-- ops.market_health. A market that never loaded anything (e.g. delisted before its first run) is
-- listed from its health row alone.
select
    coalesce(m.exchange, h.exchange)                                    as exchange,
    coalesce(m.symbol, h.symbol)                                        as symbol,
    coalesce(m.base, split_part(h.symbol, '/', 1))                      as base,
    coalesce(m.quote, split_part(split_part(h.symbol, '/', 2), ':', 1)) as quote,
    m.first_candle_at,
    m.last_candle_at,
    coalesce(m.candle_count, 0)                                         as candle_count,
    coalesce(m.has_ticker, false)                                       as has_ticker,
    coalesce(
        m.last_candle_at >= now() - interval '{{ var("active_within_hours", 24) | int }} hours',
        false
    )                                                                   as is_active,
    exists (
        select 1 from {{ ref('stg_market_config') }} as c
        where c.exchange = coalesce(m.exchange, h.exchange) and c.symbol = coalesce(m.symbol, h.symbol)
          and c.enabled and c.history_end is null
    )                                                                   as is_live,
    coalesce(h.status, 'active')                                        as status,
    case
        when h.status = 'suspended' then h.suspended_reason
        when h.status = 'failing' then h.last_error_class || ': ' || h.last_error
    end                                                                 as status_reason,
    coalesce(h.consecutive_failures, 0)                                 as consecutive_failures,
    h.last_success_at,
    h.last_failure_at
from {{ ref('int_markets') }} as m
full join {{ ref('stg_market_health') }} as h
    on h.exchange = m.exchange
   and h.symbol = m.symbol
