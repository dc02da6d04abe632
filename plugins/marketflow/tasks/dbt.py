"""dbt from Airflow with astronomer-cosmos: the configuration declared once, and the task groups.

One `dbt build` task per model (its run and its tests in one dbt process); each model of the
``marts`` schema emits its own asset (assets.mart), the staging/intermediate models and the test
tasks none. Cosmos' own dataset emission (OpenLineage, URIs with the host and port of the
environment's database) is off: the assets are declared, stable across environments.
"""

from __future__ import annotations

import os
from pathlib import Path

from airflow.sdk import TaskGroup
from cosmos import DbtTaskGroup, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
from cosmos.constants import DbtResourceType, InvocationMode, LoadMode, TestBehavior
from cosmos.profiles import PostgresUserPasswordProfileMapping

from marketflow import PROJECT_ROOT
from marketflow.config import DBT_POOL, MarketflowConfig
from marketflow.connections import POSTGRES_CONN_ID
from marketflow.tasks.assets import mart
from marketflow.tasks.defaults import HOURLY_PRIORITY, seconds

MARTS_SCHEMA = "marts"

# The data tests on the big tables check the rows written since this (dbt/macros/recent_rows_filter.sql,
# at most data_test_window_hours back): the start of the DAG's last successful run (run_outcome makes
# a run with a failed test or model end failed) less an hour for loads committing late (as the
# models' ohlcv_lookback_minutes). Empty on a DAG's first run: the 48-hour window.
DATA_TEST_SINCE_ENV = "MARKETFLOW_DATA_TEST_SINCE"
DATA_TEST_SINCE = ("{{ (prev_start_date_success - macros.timedelta(minutes=60)).isoformat() "
                   "if prev_start_date_success else '' }}")

PROFILE_CONFIG = ProfileConfig(
    profile_name="marketflow", target_name="airflow",
    profile_mapping=PostgresUserPasswordProfileMapping(conn_id=POSTGRES_CONN_ID, profile_args={"schema": "marts"}),
)
EXECUTION_CONFIG = ExecutionConfig(
    dbt_executable_path=os.environ.get("MARKETFLOW_DBT_EXECUTABLE",
                                       str(PROJECT_ROOT / ".local" / "dbt-venv" / "bin" / "dbt")),
    invocation_mode=InvocationMode.SUBPROCESS,
)


def project_config() -> ProjectConfig:
    """The dbt project (``MARKETFLOW_DBT_PROJECT_DIR``, default dbt/) read from its parsed manifest."""
    project_dir = Path(os.environ.get("MARKETFLOW_DBT_PROJECT_DIR", PROJECT_ROOT / "dbt"))
    manifest = project_dir / "target" / "manifest.json"
    if not manifest.exists():
        raise FileNotFoundError(f"dbt manifest {manifest} is missing; run `make dbt-parse` (dbt parse) first")
    return ProjectConfig(dbt_project_path=project_dir, manifest_path=manifest)


def dbt_marts(config: MarketflowConfig, group_id: str = "dbt_marts", select: list[str] | None = None) -> TaskGroup:
    """The dbt project (or the ``select``ed part) as a task group: one `dbt build` task per model."""
    from marketflow.dbt_failures import DbtRetryPolicy, log_failing_tests

    group = DbtTaskGroup(
        group_id=group_id,
        project_config=project_config(),
        profile_config=PROFILE_CONFIG,
        execution_config=EXECUTION_CONFIG,
        # One `dbt build` per model (its run and its tests in one dbt process: half the process start-ups
        # of run-then-test); a failing test fails the model's task, so nothing downstream runs. A test
        # over two models (relationships) runs as its own task after both are built.
        render_config=RenderConfig(load_method=LoadMode.DBT_MANIFEST, test_behavior=TestBehavior.BUILD,
                                   should_detach_multiple_parents_tests=True, select=select or []),
        operator_args={"install_deps": False, "emit_datasets": False, "pool": DBT_POOL,
                       "env": {DATA_TEST_SINCE_ENV: DATA_TEST_SINCE}},
        default_args={"retries": 2, "retry_policy": DbtRetryPolicy(), "on_failure_callback": log_failing_tests,
                      "execution_timeout": seconds(config.timeouts.dbt_task), "weight_rule": "absolute",
                      "priority_weight": HOURLY_PRIORITY},
    )
    # Each mart model's task emits that mart's asset; test tasks and non-mart models emit nothing.
    for unique_id, node in group.dbt_graph.filtered_nodes.items():
        built = group.tasks_map.get(unique_id)
        if node.resource_type == DbtResourceType.MODEL and node.config.get("schema") == MARTS_SCHEMA and built:
            built.outlets = [mart(node.config.get("alias") or unique_id.rsplit(".", 1)[-1])]
    return group
