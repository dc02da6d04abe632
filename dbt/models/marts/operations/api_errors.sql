{{ config(materialized='view') }}

-- Every failed exchange call with its class; whether the pipeline retried it.
select
    occurred_at,
    exchange,
    symbol,
    error_class,
    http_status,
    endpoint,
    exception,
    message,
    attempt,
    will_retry,
    dag_id,
    run_id,
    task_id,
    try_number,
    error_id
from {{ ref('stg_api_errors') }}
