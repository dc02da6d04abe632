"""The task log of a real run is JSON lines whose events carry marketflow's fields.

The minute DAG's `okx.ingest` runs as in production: the executor starts it under Airflow's task
supervisor, which talks to the execution API of a real `airflow api-server` and writes the task log
file. That file (not the console of `dags test`) is what the UI shows and a log shipper reads. The
counts in the log are checked against the recorded exchange files (tests/support/sample.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from support.airflow_cli import AIRFLOW, metadata
from support.sample import sample_candles
from test_task_paths import DEMO_CONFIG, MINUTE_MS, ms

from marketflow.config import load_config
from scripts import stack

LOGICAL_DATE = "2025-11-24T12:01:00+00:00"


@pytest.fixture(scope="module")
def executor_env(airflow_env, pg_server, tmp_path_factory) -> Iterator[dict[str, str]]:
    """The session's Airflow, its own warehouse and MongoDB database, and an API server whose execution
    API the executor's task processes call."""
    name = f"mf_task_logs_{os.getpid()}"
    pg_server.drop_database(name)
    pg_server.create_database(name)
    mongo = airflow_env["AIRFLOW_CONN_MARKETFLOW_MONGO"].rsplit("/", 1)[0]
    port = stack.free_port()
    env = {**airflow_env, "AIRFLOW_CONN_MARKETFLOW_POSTGRES": pg_server.dsn(name),
           "AIRFLOW_CONN_MARKETFLOW_MONGO": f"{mongo}/{name}",
           "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
           "AIRFLOW__API_AUTH__JWT_SECRET": "task-logs-test-secret-0123456789abcdef"}
    server_log = tmp_path_factory.mktemp("task_logs") / "api-server.log"
    with server_log.open("w") as out:
        server = subprocess.Popen([AIRFLOW, "api-server", "--port", str(port)], env=env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"airflow api-server did not start:\n{server_log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield env
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
        pg_server.drop_database(name)


# ~60 s under the shared session's Airflow (+ ~20 s to start the API server): in `make faults`, not the
# default suite, which is near its 60-minute budget.
@pytest.mark.airflow
@pytest.mark.scenario
def test_the_ingest_task_log_is_json_lines_with_the_markets_fields(executor_env, tmp_path) -> None:
    # `dags test --use-executor` can stay up after its run ends (the minute DAG's deadline, see
    # support.airflow_cli.KNOWN_DEADLINE_CRASH): the run is judged by its task instances, then stopped.
    out = (tmp_path / "dags-test.log").open("w")
    runner = subprocess.Popen([AIRFLOW, "dags", "test", "--use-executor", "market_candles_1m", LOGICAL_DATE],
                              env=executor_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            runs = metadata(executor_env, "SELECT run_id, data_interval_start, data_interval_end FROM dag_run "
                                          "WHERE dag_id = 'market_candles_1m' ORDER BY id DESC LIMIT 1")
            states = dict(metadata(executor_env, "SELECT task_id, state FROM task_instance WHERE dag_id = "
                                                 "'market_candles_1m' AND run_id = ?", (runs[0][0],))) if runs else {}
            if len(states) == 2 and all(s in {"success", "failed", "upstream_failed"} for s in states.values()):
                break
            assert runner.poll() is None and time.monotonic() < deadline, \
                (states, (tmp_path / "dags-test.log").read_text()[-6000:])
            time.sleep(1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(runner.pid, signal.SIGTERM)
        runner.wait(timeout=60)
        out.close()
    [(run_id, start, end)] = runs
    assert states == {"binance.ingest": "success", "okx.ingest": "success"}, states
    logs = Path(executor_env["AIRFLOW_HOME"]) / "logs" / "dag_id=market_candles_1m" / f"run_id={run_id}"
    [log_file] = (logs / "task_id=okx.ingest").glob("attempt=*.log")
    events = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]  # all JSON

    # the oracle: the recorded OKX candles of the data interval's minute plus the overlap before it
    overlap = load_config(DEMO_CONFIG, env=executor_env).overlap_minutes
    first_ms, end_ms = ms(start) - overlap * MINUTE_MS, ms(end)
    recorded = [t for t in sample_candles()[("okx", "BTC/USDT")] if first_ms <= t < end_ms]
    assert len(recorded) == overlap + 1

    ours = [e for e in events if str(e.get("logger", "")).startswith("marketflow.")]
    assert ours, [e["event"] for e in events]
    for e in ours:
        assert e["timestamp"] and e["level"] in {"debug", "info", "warning", "error"}, e
    [fetched] = [e for e in ours if " fetched " in e["event"] and e.get("symbol") == "BTC/USDT"]
    assert (fetched["exchange"], fetched["timeframe"], fetched["candles"]) == ("okx", "1m", len(recorded)), fetched
    assert fetched["window"] == f"{iso(first_ms)}/{iso(end_ms)}", fetched
    assert f"fetched {len(recorded)} candles" in fetched["event"]  # the words are still the sentence
    [summary] = [e for e in ours if "market(s) ingested" in e["event"]]
    assert (summary["exchange"], summary["markets"], summary["failed"], summary["inserted"]) == \
        ("okx", 1, 0, len(recorded)), summary
    # Airflow's identity of the run on the task's events (its context is not copied into worker threads)
    assert (summary["dag_id"], summary["run_id"], summary["task_id"], summary["try_number"]) == \
        ("market_candles_1m", run_id, "okx.ingest", 1), summary


def iso(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat().replace("+00:00", "Z")
