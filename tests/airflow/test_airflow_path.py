"""Acceptance through Airflow itself: the hourly DAG (extract -> raw -> staging -> cosmos/dbt marts).

`airflow dags test` executes the real DAG (mapping, XComs, connections from the environment,
cosmos running dbt from its own virtualenv) against this test run's Postgres, MongoDB and
exchange emulator. The marts must hold exactly the bundled real candles, and a second run of the
same window must leave every staging and mart table byte-for-byte unchanged.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import pytest
from support.sample import sample_candles

from marketflow.staging_load import RERUN_INVARIANT_TABLES, table_checksum
from marketflow.timeframes import to_ms

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".local" / "venv" / "bin"
WINDOW = {"start": "2022-08-14T00:00:00Z", "end": "2025-11-25T16:00:00Z"}


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory, pg_server, mongo_uri, emulator_url) -> dict[str, str]:
    manifest = REPO / "dbt" / "target" / "manifest.json"
    assert manifest.exists(), "run `make dbt-parse` first (make test does)"
    name = f"mf_airflow_{os.getpid()}"
    pg_server.drop_database(name)
    pg_server.create_database(name)
    home = tmp_path_factory.mktemp("airflow_home")
    mongo = urlsplit(mongo_uri)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "False",
        "PYTHONPATH": str(REPO / "plugins"),
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "AIRFLOW_CONN_MARKETFLOW_POSTGRES": pg_server.dsn(name),
        "AIRFLOW_CONN_MARKETFLOW_MONGO": f"mongo://{mongo.netloc}/mf_airflow_{os.getpid()}",
        "MARKETFLOW_CONFIG": str(REPO / "include" / "config" / "markets.demo.yml"),
        "MARKETFLOW_EXCHANGE_URL": emulator_url,
        "MARKETFLOW_DBT_EXECUTABLE": str(REPO / ".local" / "dbt-venv" / "bin" / "dbt"),
    }
    subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True)
    yield env
    pg_server.drop_database(name)


# apache/airflow#73428: `airflow dags test` crashes while finishing a run of a DAG with `deadline=`
# (a dict is bound where the deadline alert's UUID belongs). Only that exact crash is tolerated; the
# run is judged by its task instances in the metadata database instead of the exit code.
KNOWN_DEADLINE_CRASH = ("FROM deadline_alert", "'dict' object has no attribute 'hex'")


def dags_test(env: dict[str, str], log: Path) -> None:
    res = subprocess.run([str(VENV_BIN / "airflow"), "dags", "test", "market_candles_1h", "-c", json.dumps(WINDOW)],
                         env=env, capture_output=True, text=True, timeout=1800)
    output = res.stdout + res.stderr
    log.write_text(output)
    if res.returncode != 0:
        assert all(sign in output for sign in KNOWN_DEADLINE_CRASH), (
            f"market_candles_1h failed; full log in {log}:\n{output[-6000:]}")
    db = sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db")
    try:
        [run_id] = db.execute("SELECT run_id FROM dag_run WHERE dag_id = 'market_candles_1h' "
                              "ORDER BY id DESC LIMIT 1").fetchone()
        states = dict(db.execute("SELECT state, count(*) FROM task_instance WHERE dag_id = 'market_candles_1h' "
                                 "AND run_id = ? GROUP BY state", (run_id,)).fetchall())
    finally:
        db.close()
    # Everything succeeded; the post-repair rebuild is skipped when no gap needed repairing.
    assert set(states) <= {"success", "skipped"} and states.get("success", 0) >= 10, (states, str(log))


def checksums(dsn: str) -> dict[str, tuple[int, str]]:
    with psycopg2.connect(dsn) as conn:
        return {table: table_checksum(conn, table, key, computed)
                for table, (key, computed) in RERUN_INVARIANT_TABLES.items()}


@pytest.mark.airflow
def test_hourly_dag_lands_every_sample_candle_exactly_and_reruns_change_nothing(airflow_env, tmp_path) -> None:
    dsn = airflow_env["AIRFLOW_CONN_MARKETFLOW_POSTGRES"]
    dags_test(airflow_env, tmp_path / "first.log")

    truth = sample_candles()
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT exchange, symbol, open_time, open, high, low, close, volume, quote_volume, trades "
                    "FROM marts.ohlcv_1m")
        rows = cur.fetchall()
        assert len(rows) == sum(len(c) for c in truth.values()) == 5760
        for exchange, symbol, open_time, *values in rows:
            expected = truth[(exchange, symbol)].get(to_ms(open_time))
            assert expected is not None, f"{exchange} {symbol} {open_time}: a candle the source never had"
            assert tuple(values[:5]) == expected[:5], (exchange, symbol, open_time)
            assert values[5] == expected[5]
            assert values[6] == expected[6]

        cur.execute("SELECT exchange, symbol, price FROM marts.latest_price")
        latest = {(ex, sym): price for ex, sym, price in cur.fetchall()}
        assert latest == {market: candles[max(candles)][3] for market, candles in truth.items()}

    first = checksums(dsn)
    dags_test(airflow_env, tmp_path / "second.log")
    assert checksums(dsn) == first


@pytest.mark.airflow
def test_airflow_backfill_create_plans_one_hourly_run_per_hour(airflow_env) -> None:
    """History through Airflow's own backfill over the hourly DAG (README): each hour is one run."""
    airflow = str(VENV_BIN / "airflow")
    subprocess.run([airflow, "dags", "reserialize"], env=airflow_env, check=True, capture_output=True, timeout=600)
    res = subprocess.run([airflow, "backfill", "create", "--dag-id", "market_candles_1h",
                          "--from-date", "2026-11-02T00:00:00+00:00", "--to-date", "2026-11-02T05:00:00+00:00",
                          "--dry-run"], env=airflow_env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    planned = [line for line in res.stdout.splitlines() if line.startswith("| 2026-11-02")]
    assert [line.split("|")[1].strip() for line in planned] == [
        f"2026-11-02 0{h}:00:00+00:00" for h in range(6)]
