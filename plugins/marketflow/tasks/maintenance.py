"""market_maintenance: daily housekeeping tasks (the work is in housekeeping.py).

The cut is the run's logical date minus the retention, so re-running a run deletes nothing more.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import get_current_context, task

from marketflow.config import MarketflowConfig, load_config


def _run_time() -> datetime:
    """The run's logical date (the cut is relative to it, so a re-run cuts at the same place); now when
    triggered without one."""
    return get_current_context().get("logical_date") or datetime.now(UTC)


def task_timeout(config: MarketflowConfig) -> timedelta:
    return timedelta(seconds=config.timeouts.maintenance_task)


def housekeeping_tasks(config: MarketflowConfig) -> list[Any]:
    """prune_ops, prune_rejects, month_partitions and clean_airflow_metadata, independent of each other
    (one failing, e.g. without its metadata connection, does not stop the others)."""
    timeout = task_timeout(config)

    @task(execution_timeout=timeout, multiple_outputs=False)
    def prune_ops() -> dict[str, int]:
        from marketflow.connections import warehouse_connection
        from marketflow.housekeeping import prune_ops

        conn = warehouse_connection()
        try:
            return {p.table: p.rows for p in prune_ops(conn, load_config().housekeeping, _run_time())}
        finally:
            conn.close()

    @task(execution_timeout=timeout, multiple_outputs=False)
    def prune_rejects() -> dict[str, int]:
        from marketflow.connections import warehouse_connection
        from marketflow.housekeeping import prune_rejects

        conn = warehouse_connection()
        try:
            return {p.table: p.rows for p in prune_rejects(conn, load_config().housekeeping, _run_time())}
        finally:
            conn.close()

    @task(execution_timeout=timeout, multiple_outputs=False)
    def month_partitions() -> dict[str, Any]:
        from marketflow.connections import warehouse_connection
        from marketflow.housekeeping import drop_expired_partitions, ensure_month_partitions

        conn = warehouse_connection()
        try:
            now = _run_time()
            created = ensure_month_partitions(conn, now)
            dropped = drop_expired_partitions(conn, load_config().retention, now)
            return {"created": created, "dropped": {f"{d.table} {d.month}": d.rows for d in dropped}}
        finally:
            conn.close()

    @task(execution_timeout=timeout, multiple_outputs=False)
    def clean_airflow_metadata() -> dict[str, Any]:
        from marketflow.housekeeping import airflow_db_url_from_connection, clean_airflow_metadata

        housekeeping = load_config().housekeeping
        cut = _run_time() - timedelta(days=housekeeping.airflow_metadata_retention_days)
        # ends the CLI a minute before the task's own timeout, so the error names what was stopped
        return clean_airflow_metadata(airflow_db_url_from_connection(), cut, housekeeping.batch_size,
                                      timeout_s=max(60.0, timeout.total_seconds() - 60))

    return [prune_ops(), prune_rejects(), month_partitions(), clean_airflow_metadata()]
