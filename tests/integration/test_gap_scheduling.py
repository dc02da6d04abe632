"""Which open gaps the hourly run queues for repair (ops.schedule_gap_repairs).

marts.data_quality_gaps is a dbt mart; here a table with its columns stands in for it, so the
rule is tested on its own (the full loop through dbt is tests/dbt/test_gap_repair_loop.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from marketflow.ops import TRAILING_GRACE_MINUTES, schedule_gap_repairs


def _gaps(pg_conn, rows: list[tuple[str, str, datetime, datetime, str, str]]) -> None:
    with pg_conn.cursor() as cur:
        cur.execute("CREATE SCHEMA IF NOT EXISTS marts")
        cur.execute("CREATE TABLE marts.data_quality_gaps (exchange text, symbol text, timeframe text, "
                    "gap_start timestamptz, gap_end timestamptz, gap_kind text, status text)")
        cur.executemany("INSERT INTO marts.data_quality_gaps VALUES (%s, %s, '1m', %s, %s, %s, %s)", rows)
    pg_conn.commit()


def _queued(pg_conn) -> set[tuple[str, datetime]]:
    with pg_conn.cursor() as cur:
        cur.execute("SELECT symbol, window_start FROM ops.backfill_tasks")
        return set(cur.fetchall())


def test_recent_trailing_gap_is_left_to_the_minute_dag_older_ones_are_queued(pg_conn) -> None:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    fresh = now - timedelta(minutes=2)  # the minutes not loaded yet when dbt ran
    stale = now - timedelta(minutes=TRAILING_GRACE_MINUTES + 50)  # the minute DAG was down for an hour
    hole = now - timedelta(hours=5)
    _gaps(pg_conn, [
        ("binance", "BTC/USDT", fresh, now, "trailing", "open"),
        ("binance", "ETH/USDT", stale, now - timedelta(minutes=TRAILING_GRACE_MINUTES + 1), "trailing", "open"),
        ("binance", "SOL/USDT", hole, hole + timedelta(minutes=3), "interior", "open"),
        ("binance", "XRP/USDT", hole, hole + timedelta(minutes=3), "interior", "confirmed_empty_at_source"),
    ])

    assert schedule_gap_repairs(pg_conn, limit=10, max_attempts=3, run_id="r1") == 2
    assert _queued(pg_conn) == {("ETH/USDT", stale), ("SOL/USDT", hole)}
    # Idempotent: the next hourly run queues nothing new for the same gaps.
    assert schedule_gap_repairs(pg_conn, limit=10, max_attempts=3, run_id="r2") == 0
