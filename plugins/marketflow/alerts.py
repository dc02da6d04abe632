"""Alerts: a row in ops.alerts, a log line, and (when configured) a webhook POST.

Raised by market_health.py (a market failing `alert_after_failures` times in a row, or suspended),
and by the deadline callbacks of the DAGs (Airflow 3's DeadlineAlert). MARKETFLOW_ALERT_WEBHOOK, when set, receives
`{"kind", "subject", "message", "dag_id", "run_id"}` as JSON; a failed delivery is recorded on the
alert row and never fails the pipeline.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from typing import Any

log = logging.getLogger(__name__)


def raise_alert(conn, kind: str, subject: str, message: str, dag_id: str | None = None,
                run_id: str | None = None, webhook: str | None = None) -> int:
    webhook = webhook if webhook is not None else os.environ.get("MARKETFLOW_ALERT_WEBHOOK") or None
    delivered, delivery_error = False, None
    if webhook:
        payload = {"kind": kind, "subject": subject, "message": message, "dag_id": dag_id, "run_id": run_id}
        try:
            req = urllib.request.Request(webhook, data=json.dumps(payload).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                delivered = 200 <= resp.status < 300
                delivery_error = None if delivered else f"HTTP {resp.status}"
        except Exception as exc:  # an unreachable webhook must not fail the pipeline
            delivery_error = f"{type(exc).__name__}: {exc}"
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO ops.alerts (kind, subject, message, dag_id, run_id, delivered, delivery_error) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING alert_id",
            (kind, subject, message, dag_id, run_id, delivered, delivery_error),
        )
        alert_id = int(cur.fetchone()[0])
    conn.commit()
    log.error("ALERT %s [%s] %s%s", kind, subject, message,
              f" (webhook not delivered: {delivery_error})" if delivery_error else "")
    return alert_id


def record_api_error(conn, fields: dict[str, Any]) -> None:
    cols = ("exchange", "symbol", "endpoint", "http_status", "error_class", "exception", "message", "attempt",
            "will_retry", "dag_id", "run_id", "task_id", "try_number")
    with conn.cursor() as cur:
        cur.execute(f"INSERT INTO ops.api_errors ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})",
                    [fields.get(c) for c in cols])
    conn.commit()


def deadline_missed(dag_id: str, limit: str, context: dict[str, Any] | None = None) -> None:
    """DeadlineAlert callback: a DAG run is still not done ``limit`` after it was queued.

    Runs outside any task, so the warehouse is reached from the environment when the Airflow
    connection cannot be resolved there.
    """
    import psycopg2

    from marketflow.cli import warehouse_dsn

    dag_run = (context or {}).get("dag_run") or {}
    run_id = dag_run.get("dag_run_id") or dag_run.get("run_id")
    message = (f"run {run_id} of {dag_id} is not finished {limit} after it was queued "
               f"(state {dag_run.get('state')}, queued at {dag_run.get('queued_at')})")
    try:
        from marketflow.connections import warehouse_connection

        conn = warehouse_connection()
    except Exception:
        conn = psycopg2.connect(warehouse_dsn())
    try:
        raise_alert(conn, "deadline_missed", dag_id, message, dag_id, run_id)
    finally:
        conn.close()
