{{ config(materialized='view') }}

-- One row per pipeline run (DAG run) that worked on markets: when its market work started and ended,
-- how many markets succeeded, failed or were skipped as suspended, the candles it loaded, and which
-- markets failed. A view: a minute run shows up as soon as its tasks finish, between dbt runs.
select
    dag_id,
    run_id,
    min(finished_at - coalesce(seconds, 0) * interval '1 second') as started_at,
    max(finished_at) as finished_at,
    count(*) as markets,
    count(*) filter (where outcome = 'success') as succeeded,
    count(*) filter (where outcome in ('failed_transient', 'failed_permanent', 'not_started')) as failed,
    count(*) filter (where outcome = 'suspended') as suspended,
    coalesce(sum(candles), 0) as candles,
    string_agg(exchange || ' ' || symbol || ': ' || coalesce(error_class, outcome), ', '
               order by exchange, symbol) filter (where outcome <> 'success' and outcome <> 'suspended')
        as failed_markets
from {{ ref('stg_market_task_outcomes') }}
group by dag_id, run_id
