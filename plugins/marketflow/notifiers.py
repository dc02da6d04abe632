"""Airflow notifiers for marketflow's alerts (a module of its own: importing airflow.sdk takes
seconds, and the pipeline code that raises alerts runs outside Airflow too)."""

from __future__ import annotations

from airflow.sdk import BaseNotifier

from marketflow.alerts import alert_from_context


class AlertNotifier(BaseNotifier):
    """Airflow notifier for marketflow's alerts: e.g. ``on_failure_callback=AlertNotifier()`` on a DAG
    or a task. Each call records an alert (ops.alerts, an ERROR log line, the webhook when
    MARKETFLOW_ALERT_WEBHOOK is set) for the run in the callback's context: ``kind`` defaults to
    ``task_failed``, the subject to ``<dag_id>.<task_id>``, the message to the run and its error."""

    template_fields = ("kind", "subject", "message")

    def __init__(self, kind: str = "task_failed", subject: str | None = None, message: str | None = None) -> None:
        super().__init__()
        self.kind, self.subject, self.message = kind, subject, message

    def notify(self, context) -> None:
        alert_from_context(self.kind, dict(context), self.subject, self.message)
