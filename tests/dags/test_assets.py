"""The Assets the DAGs declare, from the parsed DagBag: what writes staging emits staging.ohlcv, each mart
model's dbt task its own mart, nothing else (dbt tests, staging/intermediate models) emits one.

The marts are named from dbt's manifest (every model dbt puts in the `marts` schema), not from
marketflow's code. That a consumer DAG is then scheduled by a run is proven under Airflow in
tests/airflow/test_airflow_path.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WAREHOUSE = "postgres://warehouse:5432/marketflow"

SCRIPT = textwrap.dedent(
    """
    import json
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder="dags")
    print("RESULT" + json.dumps({dag_id: {t.task_id: sorted(o.uri for o in t.outlets) for t in dag.tasks}
                                 for dag_id, dag in bag.dags.items()}))
    """
)


@pytest.fixture(scope="module")
def outlets(tmp_path_factory) -> dict[str, dict[str, list[str]]]:
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path_factory.mktemp("airflow")),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
           "PYTHONPATH": str(REPO / "plugins"), "MARKETFLOW_EXCHANGE_URL": "http://127.0.0.1:9"}
    res = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert line, f"DAG parse crashed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return json.loads(line[len("RESULT"):])


def manifest_marts() -> set[str]:
    manifest = json.loads((REPO / "dbt" / "target" / "manifest.json").read_text())
    return {n["alias"] or n["name"] for n in manifest["nodes"].values()
            if n["resource_type"] == "model" and n["schema"] == "marts"}


def test_every_task_writing_staging_emits_staging_ohlcv(outlets) -> None:
    staging = [f"{WAREHOUSE}/staging/ohlcv"]
    writers = {"market_candles_1m": ["binance.ingest", "okx.ingest"],
               "market_candles_1h": ["binance.reconcile", "okx.reconcile", "gap_repairs.repair_binance",
                                     "gap_repairs.repair_okx"],
               "market_backfill": ["binance.ingest", "okx.ingest"]}
    for dag_id, tasks in outlets.items():
        emitting = {task for task, uris in tasks.items() if staging == uris}
        assert emitting == set(writers.get(dag_id, [])), dag_id


def test_each_mart_model_task_emits_its_own_mart_and_nothing_else_emits_one(outlets) -> None:
    marts = manifest_marts()
    assert {"ohlcv_1m", "ohlcv_1h", "latest_price", "markets", "data_quality_gaps"} <= marts
    for group in ("dbt_marts", "dbt_after_repairs"):
        dbt = {task: uris for task, uris in outlets["market_candles_1h"].items() if task.startswith(f"{group}.")}
        emitted = {task: uris for task, uris in dbt.items() if uris}
        built = {task.removeprefix(f"{group}.").removesuffix("_model_build") for task in emitted}
        assert built == marts, group  # (dbt_after_repairs selects path:models/marts: every mart again)
        for task, uris in emitted.items():
            assert uris == [f"{WAREHOUSE}/marts/{task.removeprefix(f'{group}.').removesuffix('_model_build')}"]
        # dbt's test tasks and the staging / intermediate models emit nothing
        assert any(t.endswith("_test") for t in dbt) and all(not dbt[t] for t in dbt if not t.endswith("_model_build"))
        assert all(not uris for task, uris in dbt.items()
                   if task.split(".", 1)[1].startswith(("stg_", "int_")))
