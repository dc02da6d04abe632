-- Shared rate-limit bucket usage per exchange and minute (ops.rate_limit_metrics), with the budget.
select
    m.exchange,
    m.minute,
    m.tokens_used,
    m.acquisitions,
    m.denied,
    m.wait_seconds,
    m.http_429,
    m.http_418,
    b.refill_per_second * 60 as budget_per_minute
from {{ source('ops', 'rate_limit_metrics') }} as m
left join {{ source('ops', 'rate_limit_buckets') }} as b using (exchange)
