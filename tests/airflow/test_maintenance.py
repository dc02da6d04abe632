"""Airflow metadata housekeeping: the real `airflow db clean` on a real metadata database (Postgres,
migrated by `airflow db migrate`), and the market_maintenance DAG run by Airflow itself.

The metadata rows are inserted with times on both sides of the cut; which must survive is computed
here from Airflow's documented rules (a row older than the cut goes, each DAG's latest scheduled run
stays, a run's task instances and XComs go with it), independently of the cleaning code.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import pytest

from marketflow.housekeeping import AIRFLOW_DB_CONN_ID, HousekeepingError, clean_airflow_metadata

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".local" / "venv" / "bin"
RETENTION = timedelta(days=30)


def _sqlalchemy(dsn: str) -> str:
    return dsn.replace("postgresql://", "postgresql+psycopg2://", 1)


@pytest.fixture(scope="module")
def migrated_template(pg_server, tmp_path_factory) -> str:
    """One `airflow db migrate`d metadata database, copied (CREATE DATABASE ... TEMPLATE) by each test."""
    name = f"mf_afmeta_template_{os.getpid()}"
    pg_server.drop_database(name)
    pg_server.create_database(name)
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path_factory.mktemp("airflow_home")),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": _sqlalchemy(pg_server.dsn(name)),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True, timeout=600)
    yield name
    pg_server.drop_database(name)


@pytest.fixture
def metadata_dsn(pg_server, migrated_template) -> str:
    name = f"mf_afmeta_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    pg_server.psql_admin(f'CREATE DATABASE "{name}" TEMPLATE "{migrated_template}" OWNER marketflow')
    yield pg_server.dsn(name)
    pg_server.drop_database(name)


@dataclass
class Run:
    dag_id: str
    run_id: str
    run_type: str
    start: datetime


def _insert_history(dsn: str, now: datetime, at_the_cut: bool = True) -> dict[str, set]:
    """Runs, task instances, XComs, audit log and job rows on both sides of now - RETENTION (and, with
    ``at_the_cut``, exactly at it); returns the keys that must survive a clean at that cut."""
    cut = now - RETENTION
    days = lambda d: now - timedelta(days=d)  # noqa: E731
    runs = [Run("hk_minute", f"scheduled__{d}", "scheduled", days(d)) for d in (45, 44, 40, 31, 29, 2, 1)]
    runs += [Run("hk_hourly", f"scheduled__{d}", "scheduled", days(d)) for d in (50, 40, 35)]  # all old
    runs += [Run("hk_backfill", f"manual__{d}", "manual", days(d)) for d in (60, 33, 3)]
    runs += [Run("hk_mixed", "scheduled__40", "scheduled", days(40)), Run("hk_mixed", "manual__1", "manual", days(1))]
    if at_the_cut:
        runs.append(Run("hk_minute", "scheduled__exactly_at_cut", "scheduled", cut))

    # Airflow's rule: a run older than the cut goes, except the latest non-manual run of each DAG
    latest_scheduled = {}
    for r in runs:
        if r.run_type != "manual" and r.start > latest_scheduled.get(r.dag_id, r.start - timedelta(1)):
            latest_scheduled[r.dag_id] = r.start
    kept_runs = {(r.dag_id, r.run_id) for r in runs if r.start >= cut or latest_scheduled.get(r.dag_id) == r.start}

    tis, xcoms = [], []
    for r in runs:
        for i, task_id in enumerate(("extract", "load")):
            started = r.start + timedelta(minutes=1 + i)
            tis.append((r, task_id, started))
            xcoms.append((r, task_id, started))
    never_started = Run("hk_minute", "scheduled__1", "scheduled", days(1))
    tis.append((never_started, "waiting", None))  # a task instance that has not started (no start_date)
    # a task instance goes when it is older than the cut or its run goes; an XCom with its task instance
    kept_tis = {(r.dag_id, r.run_id, t) for r, t, started in tis
                if (r.dag_id, r.run_id) in kept_runs and (started is None or started >= cut)}
    kept_xcoms = {(r.dag_id, r.run_id, t) for r, t, at in xcoms if (r.dag_id, r.run_id, t) in kept_tis and at >= cut}

    log_times = [days(d) for d in (90, 45, 31, 30.5, 29.5, 10, 0.1)] + ([cut] if at_the_cut else [])
    job_times = [days(d) for d in (40, 32, 20, 0.01)]
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        ids = {}
        for r in runs:
            cur.execute("INSERT INTO dag_run (dag_id, run_id, run_type, run_after, logical_date, start_date, end_date, "
                        "state) VALUES (%s, %s, %s, %s, %s, %s, %s, 'success') RETURNING id",
                        (r.dag_id, r.run_id, r.run_type, r.start, r.start, r.start, r.start + timedelta(minutes=5)))
            ids[(r.dag_id, r.run_id)] = cur.fetchone()[0]
        for r, task_id, started in tis:
            cur.execute("INSERT INTO task_instance (id, task_id, dag_id, run_id, try_number, pool, pool_slots, "
                        "start_date, state) VALUES (%s, %s, %s, %s, 1, 'default_pool', 1, %s, %s)",
                        (str(uuid.uuid4()), task_id, r.dag_id, r.run_id, started,
                         "success" if started else "scheduled"))
        for r, task_id, at in xcoms:
            cur.execute("INSERT INTO xcom (dag_run_id, task_id, map_index, key, dag_id, run_id, value, timestamp) "
                        "VALUES (%s, %s, -1, 'return_value', %s, %s, '{\"inserted\": 60}', %s)",
                        (ids[(r.dag_id, r.run_id)], task_id, r.dag_id, r.run_id, at))
        for i, at in enumerate(log_times):
            cur.execute("INSERT INTO log (dttm, event, extra) VALUES (%s, 'hk_test', %s)", (at, str(i)))
        for i, at in enumerate(job_times):
            cur.execute("INSERT INTO job (dag_id, state, job_type, latest_heartbeat, hostname) "
                        "VALUES ('hk', 'success', 'SchedulerJob', %s, %s)", (at, f"host{i}"))
    return {
        "dag_run": kept_runs, "task_instance": kept_tis, "xcom": kept_xcoms,
        "log": {str(i) for i, at in enumerate(log_times) if at >= cut},
        "job": {f"host{i}" for i, at in enumerate(job_times) if at >= cut},
        "deleted_runs": {(r.dag_id, r.run_id) for r in runs} - kept_runs,
    }


def _metadata_keys(dsn: str) -> dict[str, set]:
    queries = {
        "dag_run": "SELECT dag_id, run_id FROM dag_run WHERE dag_id LIKE 'hk\\_%'",
        "task_instance": "SELECT dag_id, run_id, task_id FROM task_instance WHERE dag_id LIKE 'hk\\_%'",
        "xcom": "SELECT dag_id, run_id, task_id FROM xcom WHERE dag_id LIKE 'hk\\_%'",
        "log": "SELECT extra FROM log WHERE event = 'hk_test'",
        "job": "SELECT hostname FROM job WHERE dag_id = 'hk'",
    }
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        out = {}
        for table, query in queries.items():
            cur.execute(query)
            out[table] = {row if len(row) > 1 else row[0] for row in cur.fetchall()}
    return out


@pytest.mark.airflow
def test_airflow_db_clean_deletes_old_history_and_keeps_each_dags_latest_scheduled_run(
        metadata_dsn, tmp_path, monkeypatch) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    expected = _insert_history(metadata_dsn, now)
    before = _metadata_keys(metadata_dsn)
    for table in ("dag_run", "task_instance", "xcom", "log", "job"):
        assert before[table] > expected[table] and expected[table], f"{table}: rows on only one side of the cut"
    # what a task process sees in Airflow 3: its own metadata URL is blocked; the connection's URL is used
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "airflow-db-not-allowed:///")
    lines: list[str] = []
    found = clean_airflow_metadata(_sqlalchemy(metadata_dsn), now - RETENTION, batch_size=3, timeout_s=600,
                                   on_line=lines.append)

    after = _metadata_keys(metadata_dsn)
    for table in ("dag_run", "task_instance", "xcom", "log", "job"):
        assert after[table] == expected[table], table
    assert ("hk_hourly", "scheduled__35") in after["dag_run"]  # old, but the DAG's latest scheduled run
    assert ("hk_mixed", "scheduled__40") in after["dag_run"]  # a newer manual run does not replace it
    assert not {k for k in after["dag_run"] if k[0] == "hk_backfill" and k[1] != "manual__3"}  # manual: no keep
    assert found["dag_run"] == len(expected["deleted_runs"]) and found["log"] == len(before["log"] - expected["log"])
    assert sum(1 for line in lines if line.startswith("Performing Delete (batch")) > len(found) // 2  # batches of 3
    with psycopg2.connect(metadata_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE '\\_airflow\\_deleted\\_\\_%'")
        assert cur.fetchone()[0] == 0, "--skip-archive left archive tables behind"

    again = clean_airflow_metadata(_sqlalchemy(metadata_dsn), now - RETENTION, batch_size=3, timeout_s=600)
    assert set(again.values()) == {0}
    assert _metadata_keys(metadata_dsn) == after


@pytest.mark.airflow
def test_a_failing_clean_fails_loudly(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))
    with pytest.raises(HousekeepingError, match="airflow db clean exited with code"):
        clean_airflow_metadata("postgresql+psycopg2://nobody:wrong@127.0.0.1:9/none", datetime.now(UTC),
                               batch_size=100, timeout_s=300)


# apache/airflow#73428: `airflow dags test` crashes while finishing a run of a DAG with `deadline=`
# (a dict is bound where the deadline alert's UUID belongs; on Postgres psycopg2 "can't adapt type
# 'dict'"); only that crash is tolerated, the run is judged by its task instances (as in test_airflow_path).
KNOWN_DEADLINE_CRASH = ("FROM deadline_alert", "can't adapt type 'dict'")


@pytest.mark.airflow
def test_maintenance_dag_prunes_through_airflow(pg_server, metadata_dsn, warehouse_dsn, tmp_path) -> None:
    now = datetime.now(UTC)  # the run's own cut is a little later: no row within hours of it here
    expected = _insert_history(metadata_dsn, now, at_the_cut=False)
    with psycopg2.connect(warehouse_dsn) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO ops.api_errors (occurred_at, exchange, error_class, exception, message, attempt, "
                        "will_retry) VALUES (%s, 'okx', 'network', 'NetworkError', 'down', 1, true)",
                        [(now - timedelta(days=d),) for d in (90, 31, 29, 1)])
        cur.execute("INSERT INTO staging.ohlcv_rejects (raw_payload_id, row_index, exchange, symbol, timeframe, "
                    "raw_row, reason, run_id, rejected_at) VALUES ('p1', -1, 'okx', 'BTC/USDT', '1m', %s, "
                    "'unknown envelope', 'r', %s)", ("{" + "x" * 100_000 + "}", now - timedelta(days=40)))
    dags = tmp_path / "dags"  # only this DAG: the test is about it, not about parsing the others
    dags.mkdir()
    (dags / "market_maintenance.py").symlink_to(REPO / "dags" / "market_maintenance.py")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "home"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": _sqlalchemy(metadata_dsn),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
        "PYTHONPATH": str(REPO / "plugins"),
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "AIRFLOW_CONN_MARKETFLOW_POSTGRES": warehouse_dsn,
        f"AIRFLOW_CONN_{AIRFLOW_DB_CONN_ID.upper()}": metadata_dsn,
        "MARKETFLOW_CONFIG": str(REPO / "include" / "config" / "markets.yml"),
    }
    res = subprocess.run([sys.executable, "-m", "airflow", "dags", "test", "market_maintenance"], env=env,
                         capture_output=True, text=True, timeout=1200)
    output = res.stdout + res.stderr
    (tmp_path / "dags_test.log").write_text(output)
    if res.returncode != 0:
        assert all(sign in output for sign in KNOWN_DEADLINE_CRASH), output[-6000:]
    with psycopg2.connect(metadata_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT task_id, state FROM task_instance WHERE dag_id = 'market_maintenance'")
        assert dict(cur.fetchall()) == {"prune_ops": "success", "prune_rejects": "success",
                                        "month_partitions": "success", "clean_airflow_metadata": "success"}, \
            output[-6000:]
        cur.execute("SELECT value FROM xcom WHERE dag_id = 'market_maintenance' AND task_id = 'prune_ops' "
                    "AND key = 'return_value'")
        assert cur.fetchone()[0]["ops.api_errors"] == 2
    after = _metadata_keys(metadata_dsn)
    assert after["dag_run"] == expected["dag_run"] and after["xcom"] == expected["xcom"]
    with psycopg2.connect(warehouse_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM ops.api_errors")
        assert cur.fetchone()[0] == 2
        cur.execute("SELECT octet_length(raw_row), reason FROM staging.ohlcv_rejects")
        size, reason = cur.fetchone()
        assert size < 1024 and reason == "unknown envelope"
    # the progress, in words, in the task log
    logs = "\n".join(p.read_text() for p in (tmp_path / "home" / "logs").rglob("*") if p.is_file())
    assert "ops.api_errors: deleted 2 rows older than" in output + logs
    assert "airflow metadata: dag_run:" in output + logs
    assert urlsplit(metadata_dsn).password not in output + logs, "the metadata password reached the log"

