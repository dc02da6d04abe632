"""Acceptance through Airflow itself: the hourly DAG (extract -> raw -> staging -> cosmos/dbt marts).

`airflow dags test` executes the real DAG (mapping, XComs, connections from the environment,
cosmos running dbt from its own virtualenv) against this test run's Postgres, MongoDB and
exchange emulator. The marts must hold exactly the bundled real candles, and a second run of the
same window must leave every staging and mart table byte-for-byte unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import pytest
from support.airflow_cli import (
    AIRFLOW,
    MART_CONSUMER_DAG_ID,
    MART_OHLCV_1H_URI,
    asset_events,
    dags_test,
    mark_run_successful,
    metadata,
)
from support.sample import assert_marts_equal_sample, sample_candles

from scripts.warehouse_checks import RERUN_INVARIANT_TABLES, table_checksum

WINDOW = {"start": "2022-08-14T00:00:00Z", "end": "2025-11-25T16:00:00Z"}
HOURLY = "market_candles_1h"
STAGING_OHLCV_URI = "postgres://warehouse:5432/marketflow/staging/ohlcv"


def hourly_run(env: dict[str, str], log: Path, logical_date: str | None = None, expect_success: bool = True,
               mark_success: str | None = None) -> dict[str, str]:
    """One run of the hourly DAG over WINDOW; {task_id: state}."""
    return dags_test(env, HOURLY, log, logical_date, WINDOW, expect_success, mark_success, min_tasks=10)


# Every dbt task except the models behind RERUN_INVARIANT_TABLES' marts is marked successful instead
# of run: each cosmos task is a dbt process of about 8 s here, 85 of them in an hour with repairs.
# int_indicator_functions: candles_1m (ohlcv_1m's storage) computes the 1m indicators with its aggregates
# (a fresh warehouse has none until it runs); candles_1m_markets: the API's 1m pages look the market's id
# up in it (test_celery_path asks the API).
ONLY_RERUN_CHECKED_MARTS = (r"dbt_(marts|after_repairs)\.(?!(stg_ohlcv|stg_ticker|stg_market_health|stg_market_config"
                            r"|stg_ticker_latest|int_ohlcv_1m_days|int_markets|int_indicator_functions|candles_1m|ohlcv_1m"
                            r"|candles_1m_markets|int_latest_candle_1m|latest_price|markets)_model_build$).*")


def checksums(dsn: str) -> dict[str, tuple[int, str]]:
    with psycopg2.connect(dsn) as conn:
        return {table: table_checksum(conn, table, key, computed)
                for table, (key, computed) in RERUN_INVARIANT_TABLES.items()}


@pytest.mark.airflow
def test_hourly_dag_lands_every_sample_candle_exactly_and_reruns_change_nothing(airflow_env, tmp_path) -> None:
    dsn = airflow_env["AIRFLOW_CONN_MARKETFLOW_POSTGRES"]
    hourly_run(airflow_env, tmp_path / "first.log")

    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        assert_marts_equal_sample(cur)

        # The relations dbt made (tables, views), not the month partitions of the partitioned ones.
        cur.execute("SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = 'marts' AND c.relkind IN ('r', 'p', 'v') AND NOT c.relispartition")
        mart_relations = {table for (table,) in cur.fetchall()}

    # Assets: the loads emitted staging.ohlcv; each relation in the marts schema got an event from the
    # dbt task that built it and from no other task; the DAG scheduled on marts.ohlcv_1h is queued.
    [(run_id,)] = metadata(airflow_env, "SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1",
                           (HOURLY,))
    staged = {task for task, run in asset_events(airflow_env, STAGING_OHLCV_URI, HOURLY) if run == run_id}
    assert {"binance.reconcile", "okx.reconcile"} <= staged <= {
        "binance.reconcile", "okx.reconcile", "gap_repairs.repair_binance", "gap_repairs.repair_okx"}, staged
    marts = metadata(airflow_env, "SELECT a.uri, e.source_task_id FROM asset_event e JOIN asset a ON a.id = e.asset_id "
                                  "WHERE e.source_run_id = ? AND a.uri LIKE '%/marts/%'", (run_id,))
    assert {uri.rsplit("/", 1)[1] for uri, _ in marts} == mart_relations and len(mart_relations) >= 15
    assert all(task.split(".", 1)[1] == f"{uri.rsplit('/', 1)[1]}_model_build" for uri, task in marts), marts
    assert metadata(airflow_env, "SELECT q.target_dag_id FROM asset_dag_run_queue q JOIN asset a ON a.id = q.asset_id "
                                 "WHERE a.uri = ?", (MART_OHLCV_1H_URI,)) == [(MART_CONSUMER_DAG_ID,)]

    first, loaded_at = checksums(dsn), last_success(dsn)
    # Every task succeeded (hourly_run checks), so run_outcome lets the run end successful; the re-run's
    # data tests then check the rows written since an hour before the first run started.
    mark_run_successful(airflow_env, HOURLY, run_id)
    [(first_start,)] = metadata(airflow_env, "SELECT start_date FROM dag_run WHERE run_id = ?", (run_id,))
    # The re-run rebuilds the models behind the tables compared (the first run built every model).
    hourly_run(airflow_env, tmp_path / "second.log", mark_success=ONLY_RERUN_CHECKED_MARTS)
    assert checksums(dsn) == first
    [(rendered,)] = metadata(airflow_env, "SELECT rendered_fields FROM rendered_task_instance_fields WHERE dag_id = ? "
                                          "AND task_id = 'dbt_marts.ohlcv_1m_model_build' AND run_id != ?",
                             (HOURLY, run_id))
    since = datetime.fromisoformat(json.loads(rendered)["env"]["MARKETFLOW_DATA_TEST_SINCE"])
    expected = datetime.fromisoformat(first_start).replace(tzinfo=UTC) - timedelta(minutes=60)
    assert since == expected, (since, first_start)
    # The one column allowed to move: when the pipeline last loaded each market.
    again = last_success(dsn)
    assert again.keys() == loaded_at.keys() and all(again[m] > loaded_at[m] for m in again), (loaded_at, again)


def last_success(dsn: str) -> dict[tuple[str, str], object]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT exchange, symbol, last_success_at FROM marts.markets")
        return {(ex, sym): at for ex, sym, at in cur.fetchall()}


@pytest.mark.airflow
def test_airflow_backfill_create_plans_one_hourly_run_per_hour(airflow_env) -> None:
    """History through Airflow's own backfill over the hourly DAG (README): each hour is one run."""
    # (the DAGs were serialized into the metadata database by the airflow_env fixture)
    res = subprocess.run([AIRFLOW, "backfill", "create", "--dag-id", "market_candles_1h",
                          "--from-date", "2026-11-02T00:00:00+00:00", "--to-date", "2026-11-02T05:00:00+00:00",
                          "--dry-run"], env=airflow_env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    planned = [line for line in res.stdout.splitlines() if line.startswith("| 2026-11-02")]
    assert [line.split("|")[1].strip() for line in planned] == [
        f"2026-11-02 0{h}:00:00+00:00" for h in range(6)]


# The demo markets plus a synthetic market and one the emulator does not list (a delisted market).
FAILING_MARKET_CONFIG = """
defaults:
  timeframes: [1m]
  overlap_minutes: 0
  suspend_after_failures: 2
exchanges:
  binance:
    api_base_url: ${MARKETFLOW_EXCHANGE_URL}
    options: {fetchMarkets: {types: [spot]}}
    markets:
      - {symbol: ETH/USDT, history_start: "2022-08-14T00:00:00Z", history_end: "2022-08-16T00:00:00Z"}
      - {symbol: SOL/USDT, history_start: "2022-08-14T00:00:00Z", history_end: "2022-08-14T06:00:00Z"}
      - {symbol: LUNA/USDT, history_start: "2022-08-14T00:00:00Z", history_end: "2022-08-16T00:00:00Z"}
  okx:
    api_base_url: ${MARKETFLOW_EXCHANGE_URL}
    options: {fetchMarkets: {types: [spot]}}
    markets:
      - {symbol: BTC/USDT, history_start: "2025-11-23T16:00:00Z", history_end: "2025-11-25T16:00:00Z"}
"""


@pytest.fixture(scope="module")
def failing_market_env(tmp_path_factory, airflow_env, pg_server) -> dict[str, str]:
    """Its own warehouse, MongoDB database and Airflow home, with FAILING_MARKET_CONFIG."""
    name = f"mf_airflow_failing_{os.getpid()}"
    pg_server.drop_database(name)
    pg_server.create_database(name)
    home = tmp_path_factory.mktemp("airflow_home_failing")
    config = home / "markets.yml"
    config.write_text(FAILING_MARKET_CONFIG)
    mongo = airflow_env["AIRFLOW_CONN_MARKETFLOW_MONGO"].rsplit("/", 1)[0]
    env = {**airflow_env, "AIRFLOW_HOME": str(home), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
           "AIRFLOW_CONN_MARKETFLOW_POSTGRES": pg_server.dsn(name), "MARKETFLOW_CONFIG": str(config),
           "AIRFLOW_CONN_MARKETFLOW_MONGO": f"{mongo}/mf_airflow_failing_{os.getpid()}"}
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True)
    yield env
    pg_server.drop_database(name)


@pytest.mark.airflow
def test_a_delisted_market_never_stops_the_other_markets_marts(failing_market_env, tmp_path) -> None:
    """Two hourly runs with a market the exchange no longer lists: each hour the other three markets'
    marts are built (the dbt tasks wait for every load whatever its state), the bad market's reconcile
    fails without a retry, and the second failure in a row suspends it with one alert. (Only the models
    behind ohlcv_1m and markets are built, to keep the test short: the first test builds them all.)"""
    dsn = failing_market_env["AIRFLOW_CONN_MARKETFLOW_POSTGRES"]
    truth = sample_candles()
    for hour, logical_date in enumerate(["2026-12-01T01:00:00+00:00", "2026-12-01T02:00:00+00:00"], 1):
        tasks = hourly_run(failing_market_env, tmp_path / f"hour{hour}.log", logical_date, expect_success=False,
                           mark_success=ONLY_RERUN_CHECKED_MARTS)
        assert tasks["binance.reconcile"] == "failed", tasks
        assert tasks["okx.reconcile"] == "success" and tasks["marts_inputs"] == "success", tasks
        # ... and the run still ends failed, its last task naming the failure
        assert tasks["run_outcome"] == "failed", tasks
        assert "1 task(s) of this run failed or could not run" in (tmp_path / f"hour{hour}.log").read_text()
        dbt = {t: s for t, s in tasks.items() if t.startswith("dbt_marts.")}
        assert dbt and set(dbt.values()) == {"success"} and dbt["dbt_marts.ohlcv_1m_model_build"] == "success", dbt
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT exchange, symbol, count(*) FROM marts.ohlcv_1m GROUP BY 1, 2 ORDER BY 1, 2")
            assert cur.fetchall() == [("binance", "ETH/USDT", len(truth[("binance", "ETH/USDT")])),
                                      ("binance", "SOL/USDT", 360),
                                      ("okx", "BTC/USDT", len(truth[("okx", "BTC/USDT")]))]
            cur.execute("SELECT try_number, outcome, error_class FROM ops.market_task_outcomes "
                        "WHERE symbol = 'LUNA/USDT' ORDER BY finished_at DESC LIMIT 1")
            assert cur.fetchone() == (1, "failed_permanent", "bad_symbol")  # one try: no retry of a bad symbol
            cur.execute("SELECT status FROM ops.market_health WHERE symbol = 'LUNA/USDT'")
            assert cur.fetchone()[0] == ("failing" if hour == 1 else "suspended")
            cur.execute("SELECT status FROM marts.markets WHERE symbol = 'LUNA/USDT'")
            assert cur.fetchone()[0] == ("failing" if hour == 1 else "suspended")
            cur.execute("SELECT kind, subject FROM ops.alerts")
            assert cur.fetchall() == ([] if hour == 1 else [("market_suspended", "binance LUNA/USDT")])
