"""What a failed dbt task tells the operator, and whether retrying it can help.

dbt exits 1 when the project itself failed (a failing data test, a SQL or compilation error):
the next try fails the same way, so the task fails at once. Exit 2 is an unhandled error
(database unreachable, a killed process): worth a retry. For failing tests the callback logs
which test failed and its first failing rows, read from the tables dbt stores them in
(`store_failures`, schema dbt_test__audit).
"""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import Any

from airflow.sdk import RetryDecision, RetryPolicy

log = logging.getLogger(__name__)

AUDIT_SCHEMA = "dbt_test__audit"
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


def failing_test_rows(conn, limit: int = 5) -> list[tuple[str, int, list[tuple]]]:
    """(test, failing row count, first rows) for every stored test result that has rows."""
    with conn.cursor() as cur:
        cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY 1",
                    (AUDIT_SCHEMA,))
        tables = [r[0] for r in cur.fetchall()]
        out = []
        for table in tables:
            cur.execute(f'SELECT count(*) FROM "{AUDIT_SCHEMA}"."{table}"')
            count = cur.fetchone()[0]
            if count:
                cur.execute(f'SELECT * FROM "{AUDIT_SCHEMA}"."{table}" LIMIT %s', (limit,))
                out.append((table, int(count), cur.fetchall()))
    return out


def log_failing_tests(context: dict[str, Any]) -> None:
    """on_failure_callback for dbt tasks: name each failing test and show its first failing rows."""
    from marketflow.connections import warehouse_connection

    task_id = context["ti"].task_id
    try:
        conn = warehouse_connection()
    except Exception as exc:  # the failure itself may be the database being down
        log.warning("%s failed; could not read stored dbt test failures: %s", task_id, exc)
        return
    try:
        failures = failing_test_rows(conn)
    finally:
        conn.close()
    if not failures:
        log.error("%s failed without stored failing rows: a model or compilation error, see the dbt output above",
                  task_id)
    for test, count, rows in failures:
        log.error("dbt test %s failed on %d rows; first rows: %s (all: SELECT * FROM %s.%s)", test, count, rows,
                  AUDIT_SCHEMA, test)
