"""dbt failures: deterministic ones fail at once, transient ones retry; failing rows are reported."""

from __future__ import annotations

from airflow.sdk import RetryAction

from marketflow.dbt_failures import DbtRetryPolicy, failing_test_rows


def test_retry_policy_separates_project_errors_from_transient_ones() -> None:
    policy = DbtRetryPolicy()
    failed_test = Exception("dbt command failed. The command returned a non-zero exit code 1.")
    unreachable = Exception("dbt command failed. The command returned a non-zero exit code 2.")
    assert policy.evaluate(failed_test, 1, 3).action == RetryAction.FAIL
    assert policy.evaluate(unreachable, 1, 3).action == RetryAction.RETRY
    assert policy.evaluate(TimeoutError("killed"), 1, 3).action == RetryAction.RETRY
    assert DbtRetryPolicy.deserialize(policy.serialize()).evaluate(failed_test, 1, 3).action == RetryAction.FAIL


def test_failing_rows_are_read_from_stored_failures(pg_conn) -> None:
    with pg_conn.cursor() as cur:
        cur.execute("CREATE SCHEMA dbt_test__audit")
        cur.execute("CREATE TABLE dbt_test__audit.ohlcv_consistency_ohlcv_1m (exchange text, high numeric)")
        cur.execute("CREATE TABLE dbt_test__audit.not_null_ohlcv_1m_open (n int)")  # a passing test: empty
        cur.execute("INSERT INTO dbt_test__audit.ohlcv_consistency_ohlcv_1m "
                    "SELECT 'binance', g FROM generate_series(1, 7) g")
    pg_conn.commit()
    [(test, count, rows)] = failing_test_rows(pg_conn, limit=3)
    assert (test, count, len(rows)) == ("ohlcv_consistency_ohlcv_1m", 7, 3)
    assert rows[0][0] == "binance"
