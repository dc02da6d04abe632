-- One row per Airflow run, task and market: the outcome of the latest try (ops.market_task_outcomes).
select
    dag_id,
    run_id,
    task_id,
    exchange,
    symbol,
    try_number,
    outcome,
    error_class,
    error,
    candles,
    seconds,
    finished_at
from {{ source('ops', 'market_task_outcomes') }}
