"""The failure callback of a dbt task names that task's own failing tests, not every stored failure.

Real dbt against the test warehouse, real failing tests (corrupted mart rows), and the real cosmos
tasks of the hourly DAG (parsed by Airflow's DagBag): each task's callback must name exactly the
tests dbt itself reported failing for the command that task runs, while other models' failing
tests sit in dbt_test__audit too.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from support.dbt_helpers import DbtRunner

from marketflow.dbt_failures import log_failing_tests

REPO = Path(__file__).resolve().parents[2]


def failing_in_output(output: str) -> set[str]:
    """The oracle: the tests dbt's own output reports as FAIL ("3 of 12 FAIL 7 <test> ....")."""
    return set(re.findall(r"FAIL \d+ (\w+) \.", output))


@pytest.fixture
def cosmos_tasks(monkeypatch, tmp_path):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("AIRFLOW__COSMOS__ENABLE_TELEMETRY", "False")
    monkeypatch.setenv("MARKETFLOW_EXCHANGE_URL", "http://127.0.0.1:9")
    bag = DagBag(dag_folder=str(REPO / "dags" / "market_candles_1h.py"))
    assert not bag.import_errors, bag.import_errors
    return {t.task_id: t for t in bag.dags["market_candles_1h"].tasks}


def callback_log(task, caplog) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="marketflow.dbt_failures"):
        log_failing_tests({"task": task, "ti": SimpleNamespace(task_id=task.task_id)})
    return [r.getMessage() for r in caplog.records if r.name == "marketflow.dbt_failures"]


def named_tests(messages: list[str]) -> set[str]:
    return {m.split()[2] for m in messages if m.startswith("dbt test ")}


def test_callback_names_only_the_tests_of_the_failed_task(dbt: DbtRunner, loaded_warehouse, warehouse_dsn,
                                                          cosmos_tasks, monkeypatch, caplog) -> None:
    conn = loaded_warehouse
    monkeypatch.setenv("AIRFLOW_CONN_MARKETFLOW_POSTGRES", warehouse_dsn)
    dbt("build", "--exclude-resource-type", "unit_test")
    start = datetime(2030, 1, 1, tzinfo=UTC)
    with conn.cursor() as cur:
        # ohlcv_1m: two candles whose high is below their low (staging's CHECKs refuse them, the mart does not)
        for i in range(2):
            # (written into its storage, candles_1m: ohlcv_1m is a view of it)
            cur.execute("insert into marts.candles_1m (market_id, open_time, open, high, low, close, volume,"
                        " ingested_at)"
                        " values ((select market_id from marts.candles_1m_markets where exchange = 'binance'"
                        "          and symbol = 'ETH/USDT'), %s, 100, 100, 101, 100, 1, now())",
                        (start + timedelta(minutes=i),))
        # ohlcv_1h: a bucket whose volume no longer adds up (another model's tests fail)
        cur.execute("update marts.ohlcv_1h set volume = volume + 1 where (exchange, symbol, open_time) ="
                    " (select exchange, symbol, min(open_time) from marts.ohlcv_1h where exchange = 'okx'"
                    " group by exchange, symbol)")
        assert cur.rowcount == 1
    conn.commit()

    # Another task's failures are stored first: the 1h model's tests, and a rollup test of its own task.
    others = failing_in_output(dbt("test", "--select", "ohlcv_1h", expect_success=False).output)
    assert others, "the corrupted 1h bucket should fail some tests"

    # The failed task: what the cosmos task of ohlcv_1m runs (`dbt build` of the model, detached tests excluded).
    task = cosmos_tasks["dbt_marts.ohlcv_1m_model_build"]
    assert task.extra_context["dbt_node_config"]["unique_id"] == "model.marketflow.ohlcv_1m"
    build = dbt("build", "--select", task.select, "--exclude", *task.exclude.split(),
                "--exclude-resource-type", "unit_test", expect_success=False)
    own = failing_in_output(build.output)
    assert own and not own & others, (own, others)

    messages = callback_log(task, caplog)
    assert named_tests(messages) == own, messages  # each failing test of ohlcv_1m, nothing of ohlcv_1h
    assert all(" of model.marketflow.ohlcv_1m failed on " in m for m in messages if m.startswith("dbt test ")), messages
    assert any("failed on 2 rows" in m for m in messages), messages  # the two bad candles, counted

    # A detached test's own task (a rollup check over 1h and 15m) names that test alone.
    rollup = cosmos_tasks["dbt_marts.ohlcv_rollup_matches_finer_ohlcv_1h_1h_test"]
    assert rollup.select in others
    assert named_tests(callback_log(rollup, caplog)) == {rollup.select}

    # A task whose model's tests all pass names none, and says it was no test.
    markets = cosmos_tasks["dbt_marts.markets_model_build"]
    dbt("build", "--select", markets.select, "--exclude-resource-type", "unit_test")
    messages = callback_log(markets, caplog)
    assert named_tests(messages) == set() and any("without stored failing rows" in m for m in messages), messages
