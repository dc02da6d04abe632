"""What a failed dbt task tells the operator, and whether retrying it can help.

dbt exits 1 when the project itself failed (a failing data test, a SQL or compilation error):
the next try fails the same way, so the task fails at once. Exit 2 is an unhandled error
(database unreachable, a killed process): worth a retry. For failing tests the callback logs
which of the task's own tests failed and their first failing rows, read from the tables dbt
stores them in (`store_failures`, schema dbt_test__audit; the manifest names each test's table).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import RetryDecision, RetryPolicy

from marketflow.logs import get_logger

log = get_logger(__name__)

_DEFAULT_PROJECT = Path(__file__).resolve().parents[2] / "dbt"
_EXIT_CODE = re.compile(r"non-zero exit code (\d+)")


class DbtRetryPolicy(RetryPolicy):
    """Fail fast on dbt's deterministic failures; retry the rest with the task's own backoff."""

    def evaluate(self, exception: BaseException, try_number: int, max_tries: int, context: Any = None
                 ) -> RetryDecision:
        match = _EXIT_CODE.search(str(exception))
        if match and match.group(1) == "1":
            return RetryDecision.fail(reason="dbt reported a failing test or a model error; a retry would fail "
                                             "the same way. Fix the data or the model, then clear the task.")
        return RetryDecision.retry(delay=timedelta(seconds=30), reason="dbt could not run; retrying")

    def serialize(self) -> dict[str, Any]:
        return {"__type": "DbtRetryPolicy"}

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> DbtRetryPolicy:
        return cls()


@dataclass(frozen=True)
class StoredTest:
    """A dbt data test and the table its failing rows are stored in (``store_failures``)."""

    name: str
    schema: str
    table: str


def manifest_for(task: Any) -> Path:
    """The manifest of the dbt project a cosmos task runs (``dbt parse`` writes it before deploy)."""
    project = getattr(task, "project_dir", None) or os.environ.get("MARKETFLOW_DBT_PROJECT_DIR") or _DEFAULT_PROJECT
    return Path(project) / "target" / "manifest.json"


def task_tests(manifest: dict[str, Any], node_id: str, excluded: Iterable[str] = ()) -> list[StoredTest]:
    """The tests a cosmos task ran for its dbt node.

    A test task ran that test; a model's `dbt build` task ran the tests that depend on the model,
    except those cosmos runs in tasks of their own (tests over several models, listed in the
    task's ``exclude``)."""
    nodes = manifest.get("nodes", {})
    node = nodes.get(node_id)
    if node is None:
        return []
    if node["resource_type"] == "test":
        tests = [node]
    else:
        skip = set(excluded)
        tests = [n for n in nodes.values() if n["resource_type"] == "test"
                 and node_id in n.get("depends_on", {}).get("nodes", []) and n["name"] not in skip]
    return sorted((StoredTest(n["name"], n["schema"], n.get("alias") or n["name"]) for n in tests),
                  key=lambda t: t.name)


def failing_test_rows(conn, tests: Iterable[StoredTest], limit: int = 5) -> list[tuple[StoredTest, int, list[tuple]]]:
    """(test, failing row count, first rows) for each of ``tests`` whose stored result has rows."""
    out = []
    with conn.cursor() as cur:
        for test in tests:
            cur.execute("SELECT to_regclass(%s)", (f'"{test.schema}"."{test.table}"',))
            if cur.fetchone()[0] is None:  # never ran with store_failures, or its schema is gone
                continue
            cur.execute(f'SELECT count(*) FROM "{test.schema}"."{test.table}"')
            count = cur.fetchone()[0]
            if count:
                cur.execute(f'SELECT * FROM "{test.schema}"."{test.table}" LIMIT %s', (limit,))
                out.append((test, int(count), cur.fetchall()))
    conn.rollback()  # read-only; leave no transaction open
    return out


def _excluded(task: Any) -> list[str]:
    exclude = getattr(task, "exclude", None) or []
    return exclude.split() if isinstance(exclude, str) else [str(e) for e in exclude]


def log_failing_tests(context: dict[str, Any]) -> None:
    """on_failure_callback for dbt tasks: name each failing test of this task's dbt node (a model's
    tests, or the test a test task ran) and show its first failing rows.

    The cosmos task carries its node's unique_id; the manifest maps the node to its tests and each
    test to the table ``store_failures`` keeps its failing rows in. Other models' stored failures
    (an older run, another task of the same run) are not this task's and are not shown."""
    from marketflow.connections import warehouse_connection

    task = context.get("task")
    task_id = getattr(task, "task_id", None) or context["ti"].task_id
    node_id = ((getattr(task, "extra_context", None) or {}).get("dbt_node_config") or {}).get("unique_id")
    if not node_id:
        log.error("%s failed; it names no dbt node, so its tests are unknown: see the dbt output above", task_id)
        return
    path = manifest_for(task)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("%s (%s) failed; could not read the dbt manifest %s to find its tests: %s. Fix: run "
                    "`dbt parse` (make dbt-parse) before deploying", task_id, node_id, path, exc)
        return
    tests = task_tests(manifest, node_id, _excluded(task))
    if not tests:
        log.error("%s (%s) failed and has no data tests: a model or compilation error, see the dbt output above",
                  task_id, node_id, node=node_id)
        return
    try:
        conn = warehouse_connection()
    except Exception as exc:  # the failure itself may be the database being down
        log.warning("%s failed; could not read the stored failures of its %d tests: %s", task_id, len(tests), exc)
        return
    try:
        failures = failing_test_rows(conn, tests)
    finally:
        conn.close()
    if not failures:
        log.error("%s (%s) failed without stored failing rows in its %d tests: a model or compilation error, "
                  "see the dbt output above", task_id, node_id, len(tests), node=node_id, tests=len(tests))
    for test, count, rows in failures:
        log.error("dbt test %s of %s failed on %d rows; first rows: %s (all: SELECT * FROM %s.%s)", test.name,
                  node_id, count, rows, test.schema, test.table, test=test.name, node=node_id, rows=count)
