"""
### market_maintenance

Daily housekeeping, so nothing grows without bound (`plugins/marketflow/housekeeping.py`), with the
retentions of the markets file's `housekeeping:` section:

* **prune_ops**: `ops.api_errors`, `ops.alerts`, `ops.rate_limit_metrics`, stale `ops.market_lists`,
  and completed repairs in `ops.backfill_tasks` older than `ops_retention_days` (gaps confirmed
  empty at the source keep their rows: the gap marts read them);
* **prune_rejects**: bodies of `staging.ohlcv_rejects` over 1 KB cut to their first 200 characters
  after `rejects_body_retention_days` (the row and its reason stay), rows deleted after
  `rejects_retention_days`;
* **clean_airflow_metadata**: `airflow db clean` (runs, task instances, XComs, logs, jobs, ...)
  older than `airflow_metadata_retention_days`; each DAG's latest scheduled run is kept. Needs the
  connection `marketflow_airflow_db` to the metadata database (Airflow 3 tasks cannot reach it
  otherwise).

Every table is pruned in batches of `batch_size` rows, each its own short transaction, with its
progress in the task log. The cut is the run's logical date minus the retention, so re-running a
run deletes nothing more.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import CronTriggerTimetable, dag, get_current_context, task

from marketflow.airflow_tasks import DEFAULT_ARGS, deadline
from marketflow.config import load_config

CONFIG = load_config()
TASK_TIMEOUT = timedelta(seconds=CONFIG.timeouts.maintenance_task)
# The three tasks run side by side; the run may take one retry of the slowest.
RUN_TIMEOUT = 2 * TASK_TIMEOUT


def _run_time() -> datetime:
    """The run's logical date (the cut is relative to it, so a re-run cuts at the same place); now when
    triggered without one."""
    return get_current_context().get("logical_date") or datetime.now(UTC)


@task(execution_timeout=TASK_TIMEOUT, multiple_outputs=False)
def prune_ops() -> dict[str, int]:
    from marketflow.connections import warehouse_connection
    from marketflow.housekeeping import prune_ops

    conn = warehouse_connection()
    try:
        return {p.table: p.rows for p in prune_ops(conn, load_config().housekeeping, _run_time())}
    finally:
        conn.close()


@task(execution_timeout=TASK_TIMEOUT, multiple_outputs=False)
def prune_rejects() -> dict[str, int]:
    from marketflow.connections import warehouse_connection
    from marketflow.housekeeping import prune_rejects

    conn = warehouse_connection()
    try:
        return {p.table: p.rows for p in prune_rejects(conn, load_config().housekeeping, _run_time())}
    finally:
        conn.close()


@task(execution_timeout=TASK_TIMEOUT, multiple_outputs=False)
def clean_airflow_metadata() -> dict[str, Any]:
    from marketflow.housekeeping import airflow_db_url_from_connection, clean_airflow_metadata

    housekeeping = load_config().housekeeping
    cut = _run_time() - timedelta(days=housekeeping.airflow_metadata_retention_days)
    # ends the CLI a minute before the task's own timeout, so the error names what was stopped
    return clean_airflow_metadata(airflow_db_url_from_connection(), cut, housekeeping.batch_size,
                                  timeout_s=max(60.0, TASK_TIMEOUT.total_seconds() - 60))


@dag(
    dag_id="market_maintenance",
    schedule=CronTriggerTimetable("17 3 * * *", timezone="UTC"),  # daily, off the hour the hourly DAG starts
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=RUN_TIMEOUT,
    default_args=DEFAULT_ARGS,
    deadline=deadline("market_maintenance", RUN_TIMEOUT),
    tags=["marketflow", "maintenance"],
    doc_md=__doc__,
)
def market_maintenance() -> None:
    prune_ops()
    prune_rejects()
    clean_airflow_metadata()


market_maintenance()
