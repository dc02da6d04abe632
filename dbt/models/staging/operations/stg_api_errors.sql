-- One row per failed exchange call (ops.api_errors), as written by the extract tasks.
select
    error_id,
    occurred_at,
    exchange,
    symbol,
    endpoint,
    http_status,
    error_class,
    exception,
    message,
    attempt,
    will_retry,
    dag_id,
    run_id,
    task_id,
    try_number
from {{ source('ops', 'api_errors') }}
