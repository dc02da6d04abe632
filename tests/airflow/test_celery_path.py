"""The docker-compose topology without Docker, on Airflow's CeleryExecutor (issue 18).

The same code as `make demo EXECUTOR=celery` (scripts/stack.py, scripts/demo.py): Redis as the broker,
PgBouncer in transaction pooling in front of the warehouse, and Airflow's api-server, scheduler,
dag-processor, triggerer and two Celery workers as separate processes, each in a session of its own
and stopped by it. The hourly DAG runs through the scheduler and the workers over the bundled real
candles; the marts must hold exactly the source files' candles, and both workers must have run tasks.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from urllib.parse import quote, urlsplit

import psycopg2
import pytest
import requests
from support.celery_stack import celery_stack as start_celery_stack
from support.sample import assert_marts_equal_sample
from test_airflow_path import ONLY_RERUN_CHECKED_MARTS

from scripts import demo, stack

WINDOW = {"start": "2022-08-14T00:00:00Z", "end": "2025-11-25T16:00:00Z"}
CONFIG = stack.REPO / "include" / "config" / "markets.demo.yml"  # the two recorded markets (Bybit off)
ADMIN_PASSWORD = "celery-test-admin"


@pytest.fixture(scope="module")
def celery_stack(tmp_path_factory, pg_server, mongo_uri, emulator_url) -> Iterator[tuple[dict[str, str], list]]:
    with start_celery_stack(tmp_path_factory.mktemp("celery"), pg_server, mongo_uri, emulator_url, CONFIG,
                            ADMIN_PASSWORD) as started:
        yield started.env, started.services


def api(env: dict[str, str]) -> requests.Session:
    """A session on Airflow's REST API (the api-server of the topology), logged in as the admin."""
    base = env["AIRFLOW__API__BASE_URL"]
    token = requests.post(f"{base}/auth/token", json={"username": stack.ADMIN_USER, "password": ADMIN_PASSWORD},
                          timeout=30)
    token.raise_for_status()
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
    return session


def run_hourly(env: dict[str, str], services: list, mark_success: str | None = None,
               during: Callable[[str], None] | None = None, conf: dict | None = None) -> str:
    """Trigger the hourly DAG over WINDOW through the scheduler and wait for the workers to finish it.
    ``mark_success``: task ids (regex) set successful through the REST API before the run starts,
    like `airflow dags test --mark-success-pattern` (the DAG is paused until then). ``during(run_id)``
    runs once the run is unpaused (a fault aimed at it)."""
    demo.wait_for_dag(env, services[0].run_dir)
    demo.airflow(env, "dags", "pause", demo.DAG_ID)
    run_id = f"celery__{os.urandom(4).hex()}"
    demo.airflow(env, "dags", "trigger", demo.DAG_ID, "--run-id", run_id, "--conf", json.dumps(conf or WINDOW))
    if mark_success:
        with psycopg2.connect(demo.metadata_dsn(env)) as conn, conn.cursor() as cur:
            cur.execute("SELECT task_id FROM task_instance WHERE dag_id = %s AND run_id = %s", (demo.DAG_ID, run_id))
            marked = [t for (t,) in cur.fetchall() if re.fullmatch(mark_success, t)]
        assert marked, "no task instance to mark: the run has none yet"
        http, base = api(env), env["AIRFLOW__API__BASE_URL"]
        for task_id in marked:
            res = http.patch(f"{base}/api/v2/dags/{demo.DAG_ID}/dagRuns/{quote(run_id)}/taskInstances/{task_id}",
                             json={"new_state": "success"}, timeout=60)
            assert res.status_code == 200, (task_id, res.status_code, res.text[:500])
    demo.airflow(env, "dags", "unpause", demo.DAG_ID)
    if during is not None:
        during(run_id)
    assert demo.wait_for_run(env, run_id, timeout=1800) == "success"
    return run_id


def check_marts(env: dict[str, str]) -> None:
    """marts.ohlcv_1m and marts.latest_price hold exactly the bundled source files' candles."""
    with psycopg2.connect(demo.warehouse_dsn(env)) as conn, conn.cursor() as cur:
        assert_marts_equal_sample(cur)


def check_celery_ran_it(env: dict[str, str], services: list, run_id: str) -> None:
    with psycopg2.connect(demo.metadata_dsn(env)) as conn, conn.cursor() as cur:
        cur.execute("SELECT state, count(*) FROM task_instance WHERE dag_id = %s AND run_id = %s GROUP BY state",
                    (demo.DAG_ID, run_id))
        states = dict(cur.fetchall())
        cur.execute("SELECT DISTINCT executor FROM task_instance WHERE dag_id = %s AND run_id = %s",
                    (demo.DAG_ID, run_id))
        executors = {e for (e,) in cur.fetchall()}
    assert set(states) <= {"success", "skipped"}, states
    assert executors <= {None, "CeleryExecutor"}, executors
    # Both workers took tasks of the run off the Redis queue.
    received = {p.name: p.log_file.read_text().count(run_id) for p in services if p.name.startswith("worker")}
    assert len(received) == 2 and all(received.values()), received


@pytest.mark.airflow
def test_hourly_dag_on_two_celery_workers_through_pgbouncer_lands_every_sample_candle(celery_stack) -> None:
    """Extract, raw, staging and the dbt models behind the checked marts, on the Celery workers, every
    warehouse connection through PgBouncer in transaction pooling. (The other dbt models are marked
    successful, as test_airflow_path's re-run does: each is a dbt process of ~20 s here; the full DAG
    is the scenario test below and `make demo EXECUTOR=celery`.)"""
    env, services = celery_stack
    # One session per service, as compose has one container per service.
    names = {proc.name for proc in services}
    assert names == {"redis", "pgbouncer", "apiserver", "scheduler", "dag-processor", "triggerer", "worker1",
                     "worker2"}
    assert len({proc.pid() for proc in services}) == len(services) and all(proc.pid() for proc in services)
    # The pipeline's Airflow connection is PgBouncer's port, marked as a transaction pooler.
    assert urlsplit(env["AIRFLOW_CONN_MARKETFLOW_POSTGRES"]).port == services[1].port
    assert env["AIRFLOW_CONN_MARKETFLOW_POSTGRES"].endswith("?pooler=transaction")

    run_id = run_hourly(env, services, mark_success=ONLY_RERUN_CHECKED_MARTS)
    check_marts(env)
    check_celery_ran_it(env, services, run_id)


@pytest.mark.airflow
@pytest.mark.scenario
def test_the_whole_hourly_dag_on_two_celery_workers_through_pgbouncer(celery_stack) -> None:
    """Every task of the hourly DAG, every dbt model among them (~15 min here)."""
    env, services = celery_stack
    run_id = run_hourly(env, services)
    check_marts(env)
    check_celery_ran_it(env, services, run_id)
