"""dbt failures: deterministic ones fail at once, transient ones retry; failing rows are reported."""

from __future__ import annotations

import json
from pathlib import Path

from airflow.sdk import RetryAction

from marketflow.dbt_failures import DbtRetryPolicy, StoredTest, failing_test_rows, task_tests

REPO = Path(__file__).resolve().parents[2]


def test_retry_policy_separates_project_errors_from_transient_ones() -> None:
    policy = DbtRetryPolicy()
    failed_test = Exception("dbt command failed. The command returned a non-zero exit code 1.")
    unreachable = Exception("dbt command failed. The command returned a non-zero exit code 2.")
    assert policy.evaluate(failed_test, 1, 3).action == RetryAction.FAIL
    assert policy.evaluate(unreachable, 1, 3).action == RetryAction.RETRY
    assert policy.evaluate(TimeoutError("killed"), 1, 3).action == RetryAction.RETRY
    assert DbtRetryPolicy.deserialize(policy.serialize()).evaluate(failed_test, 1, 3).action == RetryAction.FAIL


def test_failing_rows_are_read_from_the_tests_stored_failures(pg_conn) -> None:
    with pg_conn.cursor() as cur:
        cur.execute("CREATE SCHEMA dbt_test__audit")
        cur.execute("CREATE TABLE dbt_test__audit.ohlcv_consistency_ohlcv_1m (exchange text, high numeric)")
        cur.execute("CREATE TABLE dbt_test__audit.not_null_ohlcv_1m_open (n int)")  # a passing test: empty
        cur.execute("CREATE TABLE dbt_test__audit.unique_markets (n int)")  # another model's failing test
        cur.execute("INSERT INTO dbt_test__audit.ohlcv_consistency_ohlcv_1m "
                    "SELECT 'binance', g FROM generate_series(1, 7) g")
        cur.execute("INSERT INTO dbt_test__audit.unique_markets VALUES (1)")
    pg_conn.commit()
    tests = [StoredTest(name, "dbt_test__audit", name) for name in
             ("ohlcv_consistency_ohlcv_1m", "not_null_ohlcv_1m_open", "never_ran_ohlcv_1m")]
    [(test, count, rows)] = failing_test_rows(pg_conn, tests, limit=3)
    assert (test.name, count, len(rows)) == ("ohlcv_consistency_ohlcv_1m", 7, 3)
    assert rows[0][0] == "binance"


def test_a_models_tests_come_from_the_manifest() -> None:
    """The project's manifest maps ohlcv_1m to its tests (detached ones excluded) and their audit tables."""
    manifest = json.loads((REPO / "dbt" / "target" / "manifest.json").read_text())
    tests = task_tests(manifest, "model.marketflow.ohlcv_1m",
                       excluded=["relationships_multi_column_ohlcv_1m_exchange__symbol__ref_markets_"])
    names = {t.name for t in tests}
    assert "ohlcv_consistency_ohlcv_1m_quote_volume__trades" in names
    assert "relationships_multi_column_ohlcv_1m_exchange__symbol__ref_markets_" not in names
    # every test of the manifest that depends on ohlcv_1m and nothing else is there (brute force over all nodes)
    alone = {n["name"] for n in manifest["nodes"].values()
             if n["resource_type"] == "test" and n["depends_on"]["nodes"] == ["model.marketflow.ohlcv_1m"]}
    assert alone <= names
    assert all(t.schema == "dbt_test__audit" and len(t.table) <= 63 for t in tests)
    [one] = task_tests(manifest, next(i for i, n in manifest["nodes"].items()
                                      if n["name"] == "ohlcv_consistency_ohlcv_1m_quote_volume__trades"))
    assert one.name == "ohlcv_consistency_ohlcv_1m_quote_volume__trades"
    assert task_tests(manifest, "model.marketflow.no_such_model") == []
