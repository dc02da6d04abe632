"""What every marketflow DAG shares: default task arguments, priorities, run deadlines.

Who runs where (pools per exchange, from ``ExchangeConfig.pools()``), so live data never waits for
history:

* ``exchange_<name>``           the minute DAG's ingest task only (priority 1000)
* ``exchange_<name>_hourly``    the hourly reconcile and gap repairs (priority 10)
* ``exchange_<name>_backfill``  market_backfill (priority 1)
* ``marketflow_dbt``             dbt tasks, so they never fill the executor

On the CeleryExecutor every task that calls an exchange (those in the three pools above) also goes to
the exchange's Celery queue ``ExchangeConfig.queue`` (``exchange_<name>``, markets file ``queue``), so an
operator places the workers that call an exchange where their egress IP's limit applies; the rest (dbt,
planning, housekeeping) stay on Airflow's default queue. Workers of one egress IP share one rate-limit
bucket per exchange (``MARKETFLOW_EGRESS_ID``, rate_limit.py).

With core.parallelism at least ``MarketflowConfig.required_parallelism()`` (the sum of the pools), no
mix of history tasks can hold every executor slot while a live task waits.
History work also leaves the exchange's ``live_rate_reserve`` of the shared rate-limit bucket to the
minute path (rate_limit.py). Every task has an execution_timeout and every DAG a run timeout from
the markets file's ``defaults.timeouts``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import DeadlineAlert, DeadlineReference, SyncCallback

from marketflow.errors import retry_policy

# Absolute priorities: when executor slots are scarce the scheduler queues live work first.
LIVE_PRIORITY, HOURLY_PRIORITY, BACKFILL_PRIORITY = 1000, 10, 1

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "marketflow",
    # bad symbol, auth, bad request, data: a retry cannot help, so the task fails at once.
    "retry_policy": retry_policy(),
    "retries": 3,
    "retry_delay": timedelta(seconds=20),
    # A multiplier in Airflow 3 (True counts as 1: a constant delay): 20 s, 40 s, 80 s.
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=5),
    "weight_rule": "absolute",
    "priority_weight": HOURLY_PRIORITY,
}

DEADLINE_CALLBACK = "marketflow.alerts.deadline_missed"


def deadline(dag_id: str, limit: timedelta) -> DeadlineAlert:
    """Alert (ops.alerts, log, optional webhook) when a run is not done ``limit`` after being queued.

    Airflow 3's replacement for SLAs. Note apache/airflow#73428: `airflow dags test` crashes at the
    end of a run of a DAG with a deadline (tests/airflow tolerates exactly that crash).
    """
    total = int(limit.total_seconds())
    minutes, secs = divmod(total, 60)
    words = " ".join(([f"{minutes} minutes"] if minutes else []) + ([f"{secs} seconds"] if secs or not minutes else []))
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=limit,
        callback=SyncCallback(DEADLINE_CALLBACK, kwargs={"dag_id": dag_id, "limit": words}),
        name=f"{dag_id} not done within {words}",
    )


def seconds(value: int) -> timedelta:
    return timedelta(seconds=value)
