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
    b.budget_per_minute
from {{ source('ops', 'rate_limit_metrics') }} as m
-- the metrics count all egress identities together, so the budget is theirs together: a bucket each
left join (
    select exchange, sum(refill_per_second) * 60 as budget_per_minute
    from {{ source('ops', 'rate_limit_buckets') }}
    group by exchange
) as b using (exchange)
