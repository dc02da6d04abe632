"""DAG integrity: imports cleanly, with no network at parse time, and carries the operational settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter: any socket use while the DAG files are parsed raises, so a DAG
# that touched a database or an exchange at import time shows up as an import error.
PARSE_SCRIPT = textwrap.dedent(
    """
    import json, socket

    def _no_network(*args, **kwargs):
        raise RuntimeError("network I/O at DAG parse time")

    socket.socket.connect = _no_network
    socket.socket.connect_ex = _no_network
    socket.create_connection = _no_network

    from airflow.dag_processing.dagbag import DagBag

    from airflow.serialization.serialized_objects import DagSerialization

    bag = DagBag(dag_folder="dags")
    out = {"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": {}}
    for dag_id, dag in bag.dags.items():
        try:  # what the DAG processor stores and the scheduler reads back (custom timetables included)
            serialized = type(DagSerialization.from_dict(DagSerialization.to_dict(dag)).timetable).__name__
        except Exception as exc:
            serialized = f"{type(exc).__name__}: {exc}"
        out["dags"][dag_id] = {
            "serialized_timetable": serialized,
            "tags": sorted(dag.tags), "doc_md": bool(dag.doc_md), "catchup": dag.catchup,
            "max_active_runs": dag.max_active_runs, "owner": dag.owner,
            "dagrun_timeout": dag.dagrun_timeout.total_seconds() if dag.dagrun_timeout else None,
            "timetable": type(dag.timetable).__name__,
            "deadlines": [d.name for d in (dag.deadline if isinstance(dag.deadline, list) else [dag.deadline])
                          if d is not None],
            "tasks": {t.task_id: {"retries": t.retries, "pool": t.pool, "queue": t.queue,
                                  "mapped": hasattr(t, "expand_input"),
                                  "owner": t.owner, "upstream": sorted(t.upstream_task_ids),
                                  "trigger_rule": getattr(t.trigger_rule, "value", t.trigger_rule),
                                  "priority": t.priority_weight,
                                  "timeout": t.execution_timeout.total_seconds() if t.execution_timeout else None}
                      for t in dag.tasks},
        }
    print("RESULT" + json.dumps(out))
    """
)


def parse_dags(tmp_path: Path, **env: str) -> dict:
    full_env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
        "MARKETFLOW_EXCHANGE_URL": "http://127.0.0.1:9",
        **env,
    }
    res = subprocess.run([sys.executable, "-c", PARSE_SCRIPT], cwd=REPO, env=full_env, capture_output=True,
                         text=True, timeout=300)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert line, f"DAG parse crashed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return json.loads(line[len("RESULT"):])


@pytest.fixture(scope="module")
def parsed(tmp_path_factory) -> dict:
    return parse_dags(tmp_path_factory.mktemp("dagbag"))


def test_dags_import_without_errors_or_parse_time_io(parsed: dict) -> None:
    assert parsed["errors"] == {}
    assert set(parsed["dags"]) == {"market_candles_1m", "market_candles_1h", "market_backfill", "market_maintenance"}


@pytest.mark.parametrize("dag_id", ["market_candles_1m", "market_candles_1h", "market_backfill", "market_maintenance"])
def test_operational_settings(parsed: dict, dag_id: str) -> None:
    dag = parsed["dags"][dag_id]
    assert "marketflow" in dag["tags"] and dag["doc_md"]
    assert dag["owner"] == "marketflow"
    assert dag["max_active_runs"] <= 2  # catch-up is bounded
    assert len(dag["deadlines"]) == 1 and dag["deadlines"][0].startswith(f"{dag_id} not done within")
    for task_id, task in dag["tasks"].items():
        assert task["retries"] >= 1, task_id
        assert task["owner"] == "marketflow", task_id


def test_every_task_and_run_is_bounded_in_time(parsed: dict) -> None:
    for dag_id, dag in parsed["dags"].items():
        assert dag["dagrun_timeout"], dag_id
        for task_id, task in dag["tasks"].items():
            assert task["timeout"] and task["timeout"] <= dag["dagrun_timeout"], (dag_id, task_id)


def test_hourly_reconcile_is_one_task_per_exchange_in_its_hourly_pool(parsed: dict) -> None:
    tasks = parsed["dags"]["market_candles_1h"]["tasks"]
    for exchange in ("binance", "okx"):
        task = tasks[f"{exchange}.reconcile"]
        assert not task["mapped"] and task["pool"] == f"exchange_{exchange}_hourly"
        assert task["upstream"] == ["prepare_storage"]
    # the marts wait for every load whatever its state: one failing market or exchange never stops them
    gate = tasks["marts_inputs"]
    assert gate["trigger_rule"] == "all_done" and gate["upstream"] == ["binance.reconcile", "okx.reconcile"]


@pytest.mark.parametrize("dag_id", ["market_candles_1h", "market_backfill"])
def test_a_run_whose_work_goes_on_past_a_failure_still_ends_failed(parsed: dict, dag_id: str) -> None:
    # Airflow judges a run by its leaves; these DAGs go on past failed tasks (all_done gates, the repair
    # short-circuit), so their only leaf is run_outcome, after everything, failing when anything failed.
    tasks = parsed["dags"][dag_id]["tasks"]
    downstream = {up for task in tasks.values() for up in task["upstream"]}
    assert [t for t in tasks if t not in downstream] == ["run_outcome"]
    assert tasks["run_outcome"]["trigger_rule"] == "all_done"
    assert tasks["run_outcome"]["upstream"]


def test_live_work_has_a_pool_and_the_priority_of_its_own(parsed: dict) -> None:
    # The freshness path (bench figure 6): no task per market, no prepare_storage ahead of it, and
    # no other task in any DAG shares its pool.
    tasks = parsed["dags"]["market_candles_1m"]["tasks"]
    assert set(tasks) == {"binance.ingest", "okx.ingest"}
    for exchange in ("binance", "okx"):
        task = tasks[f"{exchange}.ingest"]
        assert not task["mapped"] and task["pool"] == f"exchange_{exchange}" and task["upstream"] == []
        others = [(d, t) for d, dag in parsed["dags"].items() for t, v in dag["tasks"].items()
                  if v["pool"] == f"exchange_{exchange}" and d != "market_candles_1m"]
        assert others == []
        history = [v["priority"] for d, dag in parsed["dags"].items() if d != "market_candles_1m"
                   for v in dag["tasks"].values()]
        assert task["priority"] > max(history)


def test_every_task_that_calls_an_exchange_goes_to_its_celery_queue_the_rest_to_the_default(parsed: dict) -> None:
    """On the CeleryExecutor an exchange's tasks (its three pools) go to the queue exchange_<name>, so the
    workers that call it can be placed behind the egress IP its limit applies to; dbt, planning and
    housekeeping go to Airflow's default queue, which every worker serves (scripts/topology.py)."""
    seen = set()
    for dag_id, dag in parsed["dags"].items():
        for task_id, task in dag["tasks"].items():
            exchange = next((e for e in ("binance", "okx") if task["pool"] in (
                f"exchange_{e}", f"exchange_{e}_hourly", f"exchange_{e}_backfill")), None)
            expected = f"exchange_{exchange}" if exchange else "default"
            assert task["queue"] == expected, (dag_id, task_id, task["pool"], task["queue"])
            seen.add((dag_id, expected))
    assert {("market_candles_1m", "exchange_okx"), ("market_candles_1h", "exchange_binance"),
            ("market_backfill", "exchange_okx"), ("market_candles_1h", "default")} <= seen


def test_backfill_dag_plans_then_summarises(parsed: dict) -> None:
    tasks = parsed["dags"]["market_backfill"]["tasks"]
    for exchange in ("binance", "okx"):
        # the plan reads only the markets file: it runs beside prepare_storage, one hop less before the work
        assert tasks[f"{exchange}.plan"]["upstream"] == []
        assert sorted(tasks[f"{exchange}.ingest"]["upstream"]) == sorted([f"{exchange}.plan", "prepare_storage"])
        assert tasks[f"{exchange}.ingest"]["mapped"]
        assert tasks[f"{exchange}.ingest"]["pool"] == f"exchange_{exchange}_backfill"
    assert set(tasks["summary"]["upstream"]) == {"binance.ingest", "okx.ingest"}


def test_hourly_dag_builds_marts_after_the_gate(parsed: dict) -> None:
    tasks = parsed["dags"]["market_candles_1h"]["tasks"]
    dbt_tasks = [t for t in tasks if t.startswith("dbt_marts.")]
    assert "dbt_marts.ohlcv_1m_model_build" in dbt_tasks and "dbt_marts.latest_price_model_build" in dbt_tasks
    roots = [t for t in dbt_tasks if not any(u.startswith("dbt_marts.") for u in tasks[t]["upstream"])]
    assert roots and all(tasks[root]["upstream"] == ["marts_inputs"] for root in roots)
    assert parsed["dags"]["market_candles_1h"]["catchup"] is True
    assert parsed["dags"]["market_candles_1m"]["catchup"] is False


def test_minute_runs_start_ahead_of_their_close_one_at_a_time(parsed: dict) -> None:
    dag = parsed["dags"]["market_candles_1m"]
    # created minute_run_lead_seconds before the close; the scheduler loads it back (the plugin registers it)
    assert dag["timetable"] == dag["serialized_timetable"] == "LeadingCronDataIntervalTimetable"
    assert dag["max_active_runs"] == 1  # started ahead, the next run waits while this one runs
    # the deadline still counts 5 minutes from the close, not from the earlier queueing
    assert dag["deadlines"] == ["market_candles_1m not done within 5 minutes 20 seconds"]


def test_hourly_schedule_starts_at_the_first_deploy_unless_a_start_is_set(parsed: dict, tmp_path: Path) -> None:
    # the shipped markets file sets no schedule_start: no catch-up from a date in the past
    assert parsed["dags"]["market_candles_1h"]["timetable"] == "FirstRunAtDeployTimetable"
    # the scheduler can load it back (registered by plugins/marketflow_plugin.py)
    assert {d["serialized_timetable"] for d in parsed["dags"].values()} >= {"FirstRunAtDeployTimetable"}
    for dag_id, dag in parsed["dags"].items():
        assert dag["serialized_timetable"] == dag["timetable"], dag_id
    out = parse_dags(tmp_path, MARKETFLOW_SCHEDULE_START="2026-11-01T00:00:00Z")
    assert out["dags"]["market_candles_1h"]["timetable"] == "CronDataIntervalTimetable"


def test_bad_config_fails_the_import_with_the_config_message(tmp_path: Path) -> None:
    bad = tmp_path / "markets.yml"
    bad.write_text("exchanges:\n  binance:\n    markets:\n      - symbol: BTC-USDT\n")
    out = parse_dags(tmp_path, MARKETFLOW_CONFIG=str(bad))
    assert {Path(p).name for p in out["errors"]} == {"market_candles_1m.py", "market_candles_1h.py",
                                                     "market_backfill.py", "market_maintenance.py"}
    for message in out["errors"].values():
        assert f"{bad}: exchanges.binance.markets[0].symbol: malformed symbol 'BTC-USDT'" in message


def test_hourly_dag_repairs_gaps_after_the_marts(parsed: dict) -> None:
    tasks = parsed["dags"]["market_candles_1h"]["tasks"]
    schedule = tasks["gap_repairs.schedule"]
    assert any(u.startswith("dbt_marts.") for u in schedule["upstream"])
    for exchange in ("binance", "okx"):
        repair = tasks[f"gap_repairs.repair_{exchange}"]
        assert repair["upstream"] == ["gap_repairs.schedule"]
        assert not repair["mapped"] and repair["pool"] == f"exchange_{exchange}_hourly"
    gate = tasks["gap_repairs.anything_repaired"]
    assert {"gap_repairs.repair_binance", "gap_repairs.repair_okx"} <= set(gate["upstream"])
    rebuild_roots = [t for t, v in tasks.items() if t.startswith("dbt_after_repairs.")
                     and not any(u.startswith("dbt_after_repairs.") for u in v["upstream"])]
    assert rebuild_roots and all(tasks[t]["upstream"] == ["gap_repairs.anything_repaired"] for t in rebuild_roots)
    # the repaired minutes reach data_quality_summary through the hourly tallies, rebuilt first
    upstream, todo = set(), ["dbt_after_repairs.data_quality_summary_model_build"]
    while todo:
        for u in tasks[todo.pop()]["upstream"]:
            if u not in upstream:
                upstream.add(u)
                todo.append(u)
    assert "dbt_after_repairs.int_dq_candle_hours_1m_model_build" in upstream


def test_maintenance_dag_runs_daily_without_catch_up(parsed: dict) -> None:
    dag = parsed["dags"]["market_maintenance"]
    assert dag["catchup"] is False and dag["max_active_runs"] == 1
    assert dag["timetable"] == "CronTriggerTimetable"
    # the tasks are independent: one failing (e.g. no metadata connection) does not stop the others
    assert {t: v["upstream"] for t, v in dag["tasks"].items()} == {
        "prune_ops": [], "prune_rejects": [], "month_partitions": [], "clean_airflow_metadata": []}
