"""Production task paths under real Airflow that the hourly acceptance test does not reach.

* the minute DAG's `<exchange>.ingest` task, scheduled path (a logical date, no conf): the minute of
  its data interval, and the overlap before it, land in staging exactly as recorded;
* market_backfill's plan -> mapped ingest -> summary for a small window: the candles as recorded, the
  summary's counts from the same run;
* a DeadlineAlert's callback executed by Airflow itself: the scheduler of `airflow standalone` sees a
  run pass its deadline and the executor runs marketflow's callback, which writes ops.alerts.

The truth is the recorded exchange files (tests/support/sample.py), read without the pipeline's code.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import pytest
from support.airflow_cli import REPO, VENV_BIN, asset_events, dags_test, metadata
from support.sample import sample_candles
from support.webhook import Webhook

from marketflow.config import load_config
from scripts import stack

DEMO_CONFIG = REPO / "include" / "config" / "markets.demo.yml"
STAGING_OHLCV_URI = "postgres://warehouse:5432/marketflow/staging/ohlcv"
MINUTE_MS = 60_000
FAR_FUTURE_MS = 4_102_444_800_000  # 2100-01-01


@pytest.fixture(scope="module")
def paths_env(airflow_env, pg_server) -> Iterator[dict[str, str]]:
    """The session's Airflow with a warehouse and a MongoDB database of this module's own (empty: the
    minute task prepares storage itself, as on a fresh deploy)."""
    name = f"mf_task_paths_{os.getpid()}"
    pg_server.drop_database(name)
    pg_server.create_database(name)
    mongo = airflow_env["AIRFLOW_CONN_MARKETFLOW_MONGO"].rsplit("/", 1)[0]
    yield {**airflow_env, "AIRFLOW_CONN_MARKETFLOW_POSTGRES": pg_server.dsn(name),
           "AIRFLOW_CONN_MARKETFLOW_MONGO": f"{mongo}/{name}"}
    pg_server.drop_database(name)


def staged(dsn: str, exchange: str, symbol: str, start_ms: int, end_ms: int) -> dict[int, tuple]:
    """staging.ohlcv's 1m candles of one market in [start, end), keyed like the sample files."""
    with contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute("SELECT (extract(epoch FROM open_time) * 1000)::bigint, open, high, low, close, volume, "
                    "quote_volume, trades FROM staging.ohlcv WHERE exchange = %s AND symbol = %s AND timeframe = '1m' "
                    "AND open_time >= to_timestamp(%s / 1000.0) AND open_time < to_timestamp(%s / 1000.0)",
                    (exchange, symbol, start_ms, end_ms))
        return {int(ms): tuple(values) for ms, *values in cur.fetchall()}


def recorded(exchange: str, symbol: str, start_ms: int, end_ms: int) -> dict[int, tuple]:
    return {ms: c for ms, c in sample_candles()[(exchange, symbol)].items() if start_ms <= ms < end_ms}


def ms(text: str) -> int:
    """Epoch milliseconds of an ISO time (a naive one, as SQLite holds Airflow's, is UTC)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp() * 1000)


@pytest.mark.airflow
def test_minute_dag_ingest_lands_its_minute_as_recorded(paths_env, tmp_path) -> None:
    """A scheduled minute run (logical date, data interval from the DAG's timetable): okx.ingest lands
    the interval's minute plus overlap_minutes before it, exactly as recorded; Binance, whose recording
    is years earlier, has nothing in that window and succeeds with nothing. (OKX: a logical date before
    the DAG's start_date, 2024, would create no task instance.)"""
    tasks = dags_test(paths_env, "market_candles_1m", tmp_path / "minute.log", "2025-11-24T12:01:00+00:00")
    assert tasks == {"binance.ingest": "success", "okx.ingest": "success"}
    [(run_id, start, end)] = metadata(paths_env, "SELECT run_id, data_interval_start, data_interval_end FROM dag_run "
                                                 "WHERE dag_id = 'market_candles_1m' ORDER BY id DESC LIMIT 1")
    start_ms, end_ms = ms(start), ms(end)
    assert end_ms - start_ms == MINUTE_MS  # one minute, from Airflow's timetable
    overlap = load_config(DEMO_CONFIG, env=paths_env).overlap_minutes
    first = start_ms - overlap * MINUTE_MS
    dsn = paths_env["AIRFLOW_CONN_MARKETFLOW_POSTGRES"]
    truth = recorded("okx", "BTC/USDT", first, end_ms)
    assert len(truth) == overlap + 1
    assert staged(dsn, "okx", "BTC/USDT", 0, FAR_FUTURE_MS) == truth  # nothing outside the window either
    assert staged(dsn, "binance", "ETH/USDT", 0, FAR_FUTURE_MS) == {}
    assert {task for task, run in asset_events(paths_env, STAGING_OHLCV_URI, "market_candles_1m")
            if run == run_id} == {"binance.ingest", "okx.ingest"}


BACKFILL = {"start": "2022-08-15T18:00:00Z", "end": "2025-11-23T22:00:00Z", "chunk_hours": 2}
# Each market's window is the request clipped to its recording (history_start/history_end of the demo file).
BACKFILL_WINDOWS = {("binance", "ETH/USDT"): ("2022-08-15T18:00:00Z", "2022-08-16T00:00:00Z"),
                    ("okx", "BTC/USDT"): ("2025-11-23T16:00:00Z", "2025-11-23T22:00:00Z")}


@pytest.mark.airflow
def test_backfill_dag_loads_a_window_as_recorded_and_summarises_it(paths_env, tmp_path) -> None:
    tasks = dags_test(paths_env, "market_backfill", tmp_path / "backfill.log", conf=BACKFILL)
    assert tasks == {"prepare_storage": "success", "binance.plan": "success", "okx.plan": "success",
                     "binance.ingest[0]": "success", "okx.ingest[0]": "success", "summary": "success",
                     "run_outcome": "success"}
    dsn = paths_env["AIRFLOW_CONN_MARKETFLOW_POSTGRES"]
    for (exchange, symbol), (start, end) in BACKFILL_WINDOWS.items():
        truth = recorded(exchange, symbol, ms(start), ms(end))
        assert len(truth) == 360
        # exactly the window, clipped to the recording (the minute test's rows are on 2025-11-24)
        assert staged(dsn, exchange, symbol, 0, ms("2025-11-24T00:00:00Z")) == truth, (exchange, symbol)
    [(run_id,)] = metadata(paths_env, "SELECT run_id FROM dag_run WHERE dag_id = 'market_backfill' "
                                      "ORDER BY id DESC LIMIT 1")
    [(value,)] = metadata(paths_env, "SELECT value FROM xcom WHERE dag_id = 'market_backfill' AND run_id = ? "
                                     "AND task_id = 'summary' AND key = 'return_value'", (run_id,))
    summary = json.loads(value) if isinstance(value, str | bytes) else value
    for market in ("binance ETH/USDT", "okx BTC/USDT"):
        m = summary[market]
        assert (m["chunks"], m["expected"], m["present"], m["missing"], m["rejected"]) == (3, 360, 360, 0, 0), m
        assert m["inserted"] + m["updated"] + m["unchanged"] == 360, m
    assert {task for task, run in asset_events(paths_env, STAGING_OHLCV_URI, "market_backfill")
            if run == run_id} == {"binance.ingest", "okx.ingest"}


# A DAG of marketflow's shape (its DEFAULT_ARGS, its deadline factory and callback) whose run outlives
# a 1-second deadline; scheduled @once so the scheduler starts it as soon as it is parsed.
DEADLINE_PROBE = '''
import time
from datetime import datetime, timedelta, timezone

from airflow.sdk import dag, task

from marketflow.tasks.defaults import DEFAULT_ARGS, deadline


@dag(dag_id="deadline_probe", schedule="@once", start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
     catchup=False, is_paused_upon_creation=False, default_args=DEFAULT_ARGS,
     deadline=deadline("deadline_probe", timedelta(seconds=1)))
def deadline_probe():
    @task
    def outlive_the_deadline():
        time.sleep(10)

    outlive_the_deadline()


deadline_probe()
'''


@pytest.mark.airflow
def test_a_missed_deadline_runs_marketflows_callback_in_airflow(pg_server, mongo_uri, emulator_url, warehouse_dsn,
                                                                 test_root) -> None:
    """Airflow's scheduler notices the run past its deadline and its executor runs
    marketflow.alerts.deadline_missed (not `airflow dags test`, which never checks deadlines and
    crashes at the end of such a run, apache/airflow#73428): one deadline_missed alert in ops.alerts,
    delivered to the webhook (a local HTTP server)."""
    pid = os.getpid()
    metadata_db = f"mf_deadline_airflow_{pid}"
    pg_server.drop_database(metadata_db)
    pg_server.create_database(metadata_db)
    work = test_root / "deadline"
    home, dags, run_dir = work / "airflow", work / "dags", work / "run"
    for path in (home, dags, run_dir):
        path.mkdir(parents=True, exist_ok=True)
    (home / "passwords.json").write_text(json.dumps({"admin": "x9-not-a-word"}))
    database = warehouse_dsn.rsplit("/", 1)[1].split("?")[0]
    webhook = Webhook()
    port = stack.free_port()
    env = stack.service_env(pg_server, f"{mongo_uri.rstrip('/')}/{database}", emulator_url, database)
    env |= stack.airflow_env(home, pg_server, port, metadata_db, parallelism=4)
    env |= {"AIRFLOW__CORE__DAGS_FOLDER": str(dags), "MARKETFLOW_CONFIG": str(DEMO_CONFIG),
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False", "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "MARKETFLOW_ALERT_WEBHOOK": webhook.url}
    airflow = stack.ManagedProcess("airflow", run_dir, [str(VENV_BIN / "airflow"), "standalone"], port, env=env,
                                   ready_timeout=300)
    airflow.start()  # returns once the API server (the task and callback processes' API) answers
    try:
        # Only now: a task started before the API server is up fails its first try.
        (dags / "deadline_probe.py").write_text(DEADLINE_PROBE)
        alerts = wait_for(lambda: query(warehouse_dsn, "SELECT kind, subject, dag_id, run_id, message, delivered "
                                                       "FROM ops.alerts"),
                          timeout=240, what="the deadline alert", log=airflow.log_file)
        meta = pg_server.dsn(metadata_db)
        run = wait_for(lambda: query(meta, "SELECT run_id, state FROM dag_run WHERE dag_id = 'deadline_probe' "
                                           "AND state IN ('success', 'failed')"), 120, "the probe run ends",
                       airflow.log_file)
    finally:
        airflow.stop()
        webhook.close()
        pg_server.drop_database(metadata_db)
    [(kind, subject, dag_id, run_id, message, delivered)] = alerts
    assert (kind, subject, dag_id, run_id, delivered) == ("deadline_missed", "deadline_probe", "deadline_probe",
                                                          run[0][0], True)
    assert [(p["kind"], p["dag_id"], p["run_id"], p["message"]) for p in webhook.received] == [
        (kind, dag_id, run_id, message)]
    assert "not finished 1 seconds after it was queued" in message, message
    assert run[0][1] == "success"  # a missed deadline alerts; it does not fail the run


def query(dsn: str, sql: str) -> list[tuple]:
    with contextlib.suppress(psycopg2.Error), contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()
    return []


def wait_for(check, timeout: float, what: str, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(2)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s; Airflow's log: {log}\n"
                       + log.read_text(errors="replace")[-4000:])

