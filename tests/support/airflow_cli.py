"""Running DAGs with the real `airflow` CLI and reading its SQLite metadata database (tests/airflow)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".local" / "venv" / "bin"
AIRFLOW = str(VENV_BIN / "airflow")

# A downstream DAG as another team would write it: scheduled on the URI of marts.ohlcv_1h as documented
# (README, marketflow/tasks/assets.py), not on marketflow's own helper, so a change of the URI our dbt
# task emits breaks it.
MART_CONSUMER_DAG_ID = "mart_consumer"
MART_OHLCV_1H_URI = "postgres://warehouse:5432/marketflow/marts/ohlcv_1h"
MART_CONSUMER = f'''
from datetime import datetime, timezone

from airflow.sdk import Asset, dag, task


@dag(dag_id="{MART_CONSUMER_DAG_ID}", schedule=[Asset("{MART_OHLCV_1H_URI}")], is_paused_upon_creation=False,
     start_date=datetime(2024, 1, 1, tzinfo=timezone.utc), catchup=False, tags=["test"])
def consumer():
    @task
    def read_hourly_candles():
        return "marts.ohlcv_1h changed"

    read_hourly_candles()


consumer()
'''

# apache/airflow#73428: `airflow dags test` crashes while finishing a run of a DAG with `deadline=`
# (a dict is bound where the deadline alert's UUID belongs). Only that exact crash is tolerated; the
# run is judged by its task instances in the metadata database instead of the exit code.
KNOWN_DEADLINE_CRASH = ("FROM deadline_alert", "'dict' object has no attribute 'hex'")



def metadata(env: dict[str, str], sql: str, params: tuple = ()) -> list[tuple]:
    """Rows from the test's Airflow metadata database."""
    db = sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db")
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


def mark_run_successful(env: dict[str, str], dag_id: str, run_id: str) -> None:
    """Set a finished run's state to success, as the scheduler would: `airflow dags test` leaves a run of a
    DAG with a deadline `running` when it crashes at the end (apache/airflow#73428, KNOWN_DEADLINE_CRASH)."""
    db = sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db")
    try:
        db.execute("UPDATE dag_run SET state = 'success' WHERE dag_id = ? AND run_id = ?", (dag_id, run_id))
        db.commit()
    finally:
        db.close()


def dags_test(env: dict[str, str], dag_id: str, log: Path, logical_date: str | None = None,
              conf: dict | None = None, expect_success: bool = True, mark_success: str | None = None,
              min_tasks: int = 1) -> dict[str, str]:
    """Run ``dag_id`` once with ``airflow dags test``; returns {task_id[map_index]: state} of that run.
    ``mark_success``: a regex of task ids Airflow marks successful instead of running them."""
    res = subprocess.run([AIRFLOW, "dags", "test", dag_id, *([logical_date] if logical_date else []),
                          *(["-c", json.dumps(conf)] if conf is not None else []),
                          *(["--mark-success-pattern", mark_success] if mark_success else [])],
                         env=env, capture_output=True, text=True, timeout=1800)
    output = res.stdout + res.stderr
    log.write_text(output)
    # A run expected to fail exits non-zero ("DagRun failed": run_outcome failed it); that is checked
    # below, by its task instances.
    if res.returncode != 0 and expect_success:
        assert all(sign in output for sign in KNOWN_DEADLINE_CRASH), f"{dag_id} failed; full log in {log}:\n" \
                                                                     f"{output[-6000:]}"
    [(run_id,)] = metadata(env, "SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,))
    rows = metadata(env, "SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
                    (dag_id, run_id))
    tasks = {task_id if index < 0 else f"{task_id}[{index}]": state for task_id, index, state in rows}
    if expect_success:
        # Everything succeeded; the post-repair rebuild is skipped when no gap needed repairing.
        assert set(tasks.values()) <= {"success", "skipped"} and len(tasks) >= min_tasks, (tasks, str(log))
    return tasks


def asset_events(env: dict[str, str], uri: str, dag_id: str) -> list[tuple[str, str]]:
    """(source task, source run) of every event of the asset ``uri`` that a run of ``dag_id`` emitted."""
    return metadata(env, "SELECT e.source_task_id, e.source_run_id FROM asset_event e JOIN asset a "
                         "ON a.id = e.asset_id WHERE a.uri = ? AND e.source_dag_id = ? ORDER BY e.id", (uri, dag_id))
