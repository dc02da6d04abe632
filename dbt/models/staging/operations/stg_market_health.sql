-- Per-market health kept by the pipeline (ops.market_health, plugins/marketflow/market_health.py).
select
    exchange::text                          as exchange,
    symbol::text                            as symbol,
    status::text                            as status,
    consecutive_failures::integer           as consecutive_failures,
    consecutive_permanent_failures::integer as consecutive_permanent_failures,
    last_error_class::text                  as last_error_class,
    last_error::text                        as last_error,
    last_failure_at::timestamptz            as last_failure_at,
    last_success_at::timestamptz            as last_success_at,
    suspended_at::timestamptz               as suspended_at,
    suspended_reason::text                  as suspended_reason,
    resumed_at::timestamptz                 as resumed_at,
    resumed_by::text                        as resumed_by
from {{ source('ops', 'market_health') }}
