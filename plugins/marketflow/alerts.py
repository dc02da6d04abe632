"""Alerts: a row in ops.alerts, a log line, and (when configured) a webhook POST.

Raised by market_health.py (a market failing `alert_after_failures` times in a row, or suspended),
by the deadline callbacks of the DAGs (Airflow 3's DeadlineAlert), and by ``notifiers.AlertNotifier``,
an Airflow notifier a DAG or task can take as its ``on_failure_callback``. MARKETFLOW_ALERT_WEBHOOK,
when set, receives `{"kind", "subject", "message", "dag_id", "run_id"}` as JSON; a failed delivery
is recorded on the alert row and never fails the pipeline.
"""

from __future__ import annotations

import os
from typing import Any

from marketflow.logs import get_logger

log = get_logger(__name__)

WEBHOOK_TIMEOUT_S = 10


def post_webhook(url: str, payload: dict[str, Any]) -> str | None:
    """POST ``payload`` as JSON to ``url``; None when it was delivered (2xx), else why not."""
    import requests

    try:
        resp = requests.post(url, json=payload, timeout=WEBHOOK_TIMEOUT_S)
    except requests.RequestException as exc:  # an unreachable webhook must not fail the pipeline
        return f"{type(exc).__name__}: {exc}"
    return None if 200 <= resp.status_code < 300 else f"HTTP {resp.status_code}"


def raise_alert(conn, kind: str, subject: str, message: str, dag_id: str | None = None,
                run_id: str | None = None, webhook: str | None = None) -> int:
    webhook = webhook if webhook is not None else os.environ.get("MARKETFLOW_ALERT_WEBHOOK") or None
    delivered, delivery_error = False, None
    if webhook:
        payload = {"kind": kind, "subject": subject, "message": message, "dag_id": dag_id, "run_id": run_id}
        delivery_error = post_webhook(webhook, payload)
        delivered = delivery_error is None
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO ops.alerts (kind, subject, message, dag_id, run_id, delivered, delivery_error) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING alert_id",
            (kind, subject, message, dag_id, run_id, delivered, delivery_error),
        )
        alert_id = int(cur.fetchone()[0])
    conn.commit()
    log.error("ALERT %s [%s] %s%s", kind, subject, message,
              f" (webhook not delivered: {delivery_error})" if delivery_error else "", alert=kind, subject=subject,
              delivered=delivered)
    return alert_id


def alert_from_context(kind: str, context: dict[str, Any], subject: str | None = None,
                        message: str | None = None) -> None:
    """Record an alert for the DAG run (and task) in an Airflow callback ``context``."""
    from marketflow.connections import warehouse_connection

    dag_run = context.get("dag_run") or {}
    if not isinstance(dag_run, dict):  # a DagRun object in task and DAG callbacks, a dict in deadline ones
        dag_run = {"dag_id": dag_run.dag_id, "run_id": dag_run.run_id}
    ti = context.get("ti") or context.get("task_instance")
    dag_id = dag_run.get("dag_id") or getattr(ti, "dag_id", None)
    run_id = dag_run.get("dag_run_id") or dag_run.get("run_id")
    if subject is None:
        subject = ".".join(p for p in (dag_id, getattr(ti, "task_id", None)) if p) or "marketflow"
    if message is None:
        error = context.get("exception") or context.get("reason")
        message = f"{subject} failed in run {run_id}" + (f": {type(error).__name__}: {error}"
                                                          if isinstance(error, BaseException) else
                                                          f": {error}" if error else "")
    conn = warehouse_connection()
    try:
        raise_alert(conn, kind, subject, message, dag_id, run_id)
    finally:
        conn.close()


def record_api_error(conn, fields: dict[str, Any]) -> None:
    cols = ("exchange", "symbol", "endpoint", "http_status", "error_class", "exception", "message", "attempt",
            "will_retry", "dag_id", "run_id", "task_id", "try_number")
    with conn.cursor() as cur:
        cur.execute(f"INSERT INTO ops.api_errors ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})",
                    [fields.get(c) for c in cols])
    conn.commit()


def deadline_missed(dag_id: str, limit: str, context: dict[str, Any] | None = None) -> None:
    """DeadlineAlert callback: a DAG run is still not done ``limit`` after it was queued. Runs outside
    any task; the warehouse is reached through the same Airflow connection as everywhere else."""
    dag_run = (context or {}).get("dag_run") or {}
    run_id = dag_run.get("dag_run_id") or dag_run.get("run_id")
    message = (f"run {run_id} of {dag_id} is not finished {limit} after it was queued "
               f"(state {dag_run.get('state')}, queued at {dag_run.get('queued_at')})")
    alert_from_context("deadline_missed", {"dag_run": {**dag_run, "dag_id": dag_id}}, dag_id, message)
