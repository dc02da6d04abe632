"""marketflow.notifiers.AlertNotifier as a task's on_failure_callback, called by Airflow itself
(`airflow dags test`): the failed task's alert lands in ops.alerts and reaches a real webhook."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg2
import pytest
from support.airflow_cli import AIRFLOW, metadata
from support.webhook import Webhook

from marketflow.schema import apply_ddl

PROBE_DAG_ID = "alert_notifier_probe"
PROBE = f'''
from datetime import datetime, timezone

from airflow.sdk import dag, task

from marketflow.notifiers import AlertNotifier


@dag(dag_id="{PROBE_DAG_ID}", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=timezone.utc), catchup=False)
def probe():
    @task(retries=0, on_failure_callback=AlertNotifier())
    def load_something():
        raise ValueError("planted failure for the notifier")

    load_something()


probe()
'''


@pytest.mark.airflow
def test_alert_notifier_as_on_failure_callback(airflow_env: dict[str, str], tmp_path: Path) -> None:
    webhook = Webhook()
    received = webhook.received
    probe = Path(airflow_env["AIRFLOW__CORE__DAGS_FOLDER"]) / f"{PROBE_DAG_ID}.py"
    probe.write_text(PROBE)
    env = {**airflow_env, "MARKETFLOW_ALERT_WEBHOOK": webhook.url}
    with psycopg2.connect(airflow_env["AIRFLOW_CONN_MARKETFLOW_POSTGRES"]) as conn:
        apply_ddl(conn)  # ops.alerts (the DAGs' storage preparation does this in production)
    try:
        res = subprocess.run([AIRFLOW, "dags", "test", PROBE_DAG_ID], env=env, capture_output=True, text=True,
                             timeout=600)
    finally:
        probe.unlink()
        webhook.close()
    (tmp_path / "dags_test.log").write_text(res.stdout + res.stderr)
    assert res.returncode != 0, "the probe's task fails, so its run does"
    assert metadata(env, "SELECT task_id, state FROM task_instance WHERE dag_id = ?", (PROBE_DAG_ID,)) == [
        ("load_something", "failed")]
    with psycopg2.connect(airflow_env["AIRFLOW_CONN_MARKETFLOW_POSTGRES"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT kind, subject, dag_id, run_id, message, delivered FROM ops.alerts WHERE dag_id = %s",
                    (PROBE_DAG_ID,))
        [(kind, subject, dag_id, run_id, message, delivered)] = cur.fetchall()
    assert (kind, subject, dag_id, delivered) == ("task_failed", f"{PROBE_DAG_ID}.load_something", PROBE_DAG_ID,
                                                 True)
    assert "ValueError: planted failure for the notifier" in message and run_id in message
    assert received == [{"kind": "task_failed", "subject": f"{PROBE_DAG_ID}.load_something", "message": message,
                         "dag_id": PROBE_DAG_ID, "run_id": run_id}]
