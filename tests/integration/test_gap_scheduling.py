"""Which open gaps the hourly run queues for repair (ops.schedule_gap_repairs), and what a repair of a window
beyond the exchange's history records (pipeline.repair_gap).

marts.data_quality_gaps is a dbt mart; here a table with its columns stands in for it, so the
rule is tested on its own (the full loop through dbt is tests/dbt/test_gap_repair_loop.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from marketflow.config import load_config
from marketflow.ops import TRAILING_GRACE_MINUTES, BackfillTask, claim_tasks, schedule_gap_repairs
from marketflow.pipeline import Attempt, repair_gap
from marketflow.raw_store import RawStore


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


def _db_now(pg_conn) -> datetime:
    """The scheduler's clock (the database's now()), to the minute: the grace is measured on it."""
    with pg_conn.cursor() as cur:
        cur.execute("SELECT date_trunc('minute', now())")
        return cur.fetchone()[0]


def test_recent_trailing_gap_is_left_to_the_minute_dag_older_ones_are_queued(pg_conn) -> None:
    now = _db_now(pg_conn)
    fresh = now - timedelta(minutes=2)  # the minutes not loaded yet when dbt ran
    stale = now - timedelta(minutes=TRAILING_GRACE_MINUTES + 50)  # the minute DAG was down for an hour
    stale_end = now - timedelta(minutes=TRAILING_GRACE_MINUTES + 1)
    hole = now - timedelta(hours=5)
    _gaps(pg_conn, [
        ("binance", "BTC/USDT", fresh, now, "trailing", "open"),
        ("binance", "ETH/USDT", stale, stale_end, "trailing", "open"),
        ("binance", "SOL/USDT", hole, hole + timedelta(minutes=3), "interior", "open"),
        ("binance", "XRP/USDT", hole, hole + timedelta(minutes=3), "interior", "confirmed_empty_at_source"),
    ])

    # A gap across 00:00 UTC is two chunks of the day grid (ETH's when the test runs 00:12-00:59 UTC).
    expected = {("ETH/USDT", ws) for ws, _ in _grid_cells(stale, stale_end, timedelta(days=1))} | {
        ("SOL/USDT", ws) for ws, _ in _grid_cells(hole, hole + timedelta(minutes=3), timedelta(days=1))}
    assert schedule_gap_repairs(pg_conn, limit=10, max_attempts=3, run_id="r1") == len(expected)
    assert _queued(pg_conn) == expected
    # Idempotent: the next hourly run queues nothing new for the same gaps.
    assert schedule_gap_repairs(pg_conn, limit=10, max_attempts=3, run_id="r2") == 0


def _tasks(pg_conn) -> list[tuple]:
    with pg_conn.cursor() as cur:
        cur.execute("SELECT exchange, symbol, window_start, window_end, status, attempts FROM ops.backfill_tasks "
                    "ORDER BY window_end DESC, symbol")
        return cur.fetchall()


def _grid_cells(gap_start: datetime, gap_end: datetime, chunk: timedelta) -> list[tuple[datetime, datetime]]:
    """Brute force: walk the UTC grid of ``chunk`` from the epoch, keep the cells the gap touches."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    cells = []
    cell = epoch + ((gap_start - epoch) // chunk) * chunk
    while cell < gap_end:
        cells.append((max(gap_start, cell), min(gap_end, cell + chunk)))
        cell += chunk
    return sorted(cells, key=lambda c: c[1], reverse=True)


def test_a_two_year_gap_is_queued_chunk_by_chunk_newest_first(pg_conn) -> None:
    """The leading gap of a market whose history starts two years back (a fresh deploy): each hourly
    run queues at most `limit` chunks per exchange on the day grid, newest first, never the whole gap."""
    start = datetime(2025, 1, 1, 0, 0, tzinfo=UTC) + timedelta(minutes=7)  # off the grid on purpose
    end = datetime(2026, 12, 1, 13, 45, tzinfo=UTC)
    _gaps(pg_conn, [("okx", "BTC/USDT", start, end, "leading", "open"),
                    ("okx", "ETH/USDT", start, end, "leading", "open"),
                    ("binance", "BTC/USDT", start, end, "leading", "open")])
    cells = _grid_cells(start, end, timedelta(days=1))
    assert len(cells) == 700 and cells[0] == (datetime(2026, 12, 1, tzinfo=UTC), end)

    assert schedule_gap_repairs(pg_conn, limit=4, max_attempts=3, run_id="r1", chunk_minutes=1440) == 8
    tasks = _tasks(pg_conn)
    okx = [(sym, ws, we) for ex, sym, ws, we, *_ in tasks if ex == "okx"]
    # newest first across the exchange's markets: the two newest cells of each market
    assert okx == [(sym, *cell) for cell in cells[:2] for sym in ("BTC/USDT", "ETH/USDT")]
    assert [(ws, we) for ex, _, ws, we, *_ in tasks if ex == "binance"] == cells[:4]
    # the queue stays bounded: with 4 pending per exchange the next run adds nothing
    assert schedule_gap_repairs(pg_conn, limit=4, max_attempts=3, run_id="r2", chunk_minutes=1440) == 0
    # the repairs of run 2 landed (the dbt gap mart now ends the gap earlier): run 3 takes the next cells
    with pg_conn.cursor() as cur:
        cur.execute("UPDATE ops.backfill_tasks SET status = 'completed', outcome = 'repaired' "
                    "WHERE exchange = 'binance'")
        cur.execute("UPDATE marts.data_quality_gaps SET gap_end = %s WHERE exchange = 'binance'", (cells[3][0],))
    pg_conn.commit()
    assert schedule_gap_repairs(pg_conn, limit=4, max_attempts=3, run_id="r3", chunk_minutes=1440) == 4
    assert [(ws, we) for ex, _, ws, we, st, _ in _tasks(pg_conn) if ex == "binance" and st == "pending"] == cells[4:8]


def test_failed_repairs_neither_block_the_queue_nor_are_forgotten(pg_conn) -> None:
    """Chunks that failed with errors max_attempts times keep no slot, and are queued again (attempts
    reset) once gap_repair_retry_failed_hours have passed.

    The gaps sit at fixed times within one UTC day, so each is one chunk of the day grid whenever the test
    runs (gaps placed from the wall clock split at midnight and shifted the expected order); the retry
    window is measured on the database's clock alone (updated_at against now())."""
    noon = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    holes = [noon - timedelta(hours=h) for h in range(2, 7)]
    assert all(len(_grid_cells(h, h + timedelta(minutes=5), timedelta(days=1))) == 1 for h in holes)
    _gaps(pg_conn, [("binance", f"S{i}/USDT", h, h + timedelta(minutes=5), "interior", "open")
                    for i, h in enumerate(holes)])
    assert schedule_gap_repairs(pg_conn, limit=2, max_attempts=3, run_id="r1") == 2
    with pg_conn.cursor() as cur:  # both repairs failed for good (e.g. the exchange errored each time)
        cur.execute("UPDATE ops.backfill_tasks SET status = 'failed', attempts = 3")
    pg_conn.commit()
    assert schedule_gap_repairs(pg_conn, limit=2, max_attempts=3, run_id="r2", retry_failed_hours=6) == 2
    assert {sym for _, sym, _, _, st, _ in _tasks(pg_conn) if st == "pending"} == {"S2/USDT", "S3/USDT"}
    with pg_conn.cursor() as cur:
        cur.execute("UPDATE ops.backfill_tasks SET status = 'completed', outcome = 'repaired' WHERE status = 'pending'")
        cur.execute("UPDATE ops.backfill_tasks SET updated_at = now() - interval '7 hours' WHERE status = 'failed'")
    pg_conn.commit()
    assert schedule_gap_repairs(pg_conn, limit=2, max_attempts=3, run_id="r3", retry_failed_hours=6) == 2
    assert sorted((sym, st, att) for _, sym, _, _, st, att in _tasks(pg_conn) if st == "pending") == [
        ("S0/USDT", "pending", 0), ("S1/USDT", "pending", 0)]


def test_chunks_confirmed_empty_near_the_end_do_not_hide_older_ones(pg_conn) -> None:
    """Before a market's listing the exchange has nothing: those chunks end confirmed empty, and the
    older chunks of the same gap are still reached."""
    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 11, tzinfo=UTC)
    _gaps(pg_conn, [("okx", "NEW/USDT", start, end, "leading", "open")])
    cells = _grid_cells(start, end, timedelta(days=1))
    with pg_conn.cursor() as cur:
        for ws, we in cells[:3]:
            cur.execute("INSERT INTO ops.backfill_tasks (exchange, symbol, timeframe, window_start, window_end, "
                        "status, outcome, attempts) VALUES ('okx', 'NEW/USDT', '1m', %s, %s, 'completed', "
                        "'confirmed_empty', 3)", (ws, we))
    pg_conn.commit()
    assert schedule_gap_repairs(pg_conn, limit=2, max_attempts=3, run_id="r1", chunk_minutes=1440) == 2
    assert [(ws, we) for _, _, ws, we, st, _ in _tasks(pg_conn) if st == "pending"] == cells[3:5]


def test_chunks_beyond_the_exchange_history_are_not_queued_again(pg_conn) -> None:
    """Kraken serves only its newest 720 candles: chunks older than that end beyond_exchange_history and, like
    confirmed-empty ones, are never queued again, without hiding the older chunks of the same gap."""
    start, end = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 6, tzinfo=UTC)
    _gaps(pg_conn, [("kraken", "BTC/USD", start, end, "leading", "open")])
    cells = _grid_cells(start, end, timedelta(days=1))
    with pg_conn.cursor() as cur:
        for ws, we in cells[:2]:
            cur.execute("INSERT INTO ops.backfill_tasks (exchange, symbol, timeframe, window_start, window_end, "
                        "status, outcome, attempts) VALUES ('kraken', 'BTC/USD', '1m', %s, %s, 'completed', "
                        "'beyond_exchange_history', 1)", (ws, we))
    pg_conn.commit()
    assert schedule_gap_repairs(pg_conn, limit=2, max_attempts=3, run_id="r1", chunk_minutes=1440) == 2
    assert [(ws, we) for _, _, ws, we, st, _ in _tasks(pg_conn) if st == "pending"] == cells[2:4]


def test_chunks_wholly_beyond_the_history_are_recorded_at_once_not_queued(pg_conn) -> None:
    """With the exchange's history edge given, every grid chunk of an open gap that ends at or before it is
    recorded beyond_exchange_history in one go (all of them, not `limit`); the chunk holding the edge and the
    newer ones are queued as usual; another timeframe or exchange is untouched."""
    start, end = datetime(2026, 3, 1, 5, tzinfo=UTC), datetime(2026, 3, 20, 7, tzinfo=UTC)
    edge = datetime(2026, 3, 18, 13, 21, tzinfo=UTC)
    _gaps(pg_conn, [("kraken", "BTC/USD", start, end, "leading", "open"),
                    ("gate", "BTC/USDT", start, end, "leading", "open")])
    cells = _grid_cells(start, end, timedelta(days=1))
    floors = [("kraken", "1m", int(edge.timestamp() * 1000)), ("kraken", "1h", 0)]
    assert schedule_gap_repairs(pg_conn, limit=2, max_attempts=3, run_id="r1", history_floors=floors) == 4
    tasks = _tasks(pg_conn)
    beyond = [(ws, we) for ex, _, ws, we, st, _ in tasks if ex == "kraken" and st == "completed"]
    assert beyond == [c for c in cells if c[1] <= edge] and len(beyond) == 17
    with pg_conn.cursor() as cur:
        cur.execute("SELECT DISTINCT outcome, attempts, candles_found FROM ops.backfill_tasks "
                    "WHERE status = 'completed'")
        assert cur.fetchall() == [("beyond_exchange_history", 0, 0)]
    assert [(ws, we) for ex, _, ws, we, st, _ in tasks if ex == "kraken" and st == "pending"] == cells[:2]
    assert [(ws, we) for ex, _, ws, we, st, _ in tasks if ex == "gate"] == cells[:2]
    # the next run records nothing twice and queues nothing beyond the edge
    assert schedule_gap_repairs(pg_conn, limit=2, max_attempts=3, run_id="r2", history_floors=floors) == 0
    assert len(_tasks(pg_conn)) == len(tasks)


def test_the_outcome_is_one_the_table_accepts_and_no_other(pg_conn) -> None:
    """Revision 0003 widened ops.backfill_tasks' outcome check by exactly beyond_exchange_history."""
    import psycopg2

    with pg_conn.cursor() as cur:
        for outcome in ("repaired", "confirmed_empty", "beyond_exchange_history"):
            cur.execute("INSERT INTO ops.backfill_tasks (exchange, symbol, timeframe, window_start, window_end, "
                        "status, outcome) VALUES ('gate', %s, '1m', now() - interval '1 hour', now(), 'completed', %s)",
                        (outcome, outcome))
    pg_conn.commit()
    with pytest.raises(psycopg2.errors.CheckViolation), pg_conn.cursor() as cur:
        cur.execute("INSERT INTO ops.backfill_tasks (exchange, symbol, timeframe, window_start, window_end, status, "
                    "outcome) VALUES ('gate', 'X/USDT', '1m', now() - interval '1 hour', now(), 'completed', 'beyond')")
    pg_conn.rollback()


MARKETS = """
exchanges:
  {name}:
    ccxt_id: {ccxt_id}
    api_base_url: {url}
    options: {{fetchMarkets: {{types: [spot]}}}}
    facts: {{history_candles: {history}}}
    markets:
      - symbol: SOL/USDT
        history_start: "2024-01-01T00:00:00Z"
"""


def _one_task(pg_conn, exchange: str, start: datetime, end: datetime) -> BackfillTask:
    with pg_conn.cursor() as cur:
        cur.execute("INSERT INTO ops.backfill_tasks (exchange, symbol, timeframe, window_start, window_end, reason, "
                    "max_attempts) VALUES (%s, 'SOL/USDT', '1m', %s, %s, 'gap', 3)", (exchange, start, end))
    pg_conn.commit()
    (task,) = claim_tasks(pg_conn, exchange, 1, "r1")
    return task


def _task_row(pg_conn) -> tuple:
    with pg_conn.cursor() as cur:
        cur.execute("SELECT status, outcome, attempts, candles_found, last_error FROM ops.backfill_tasks")
        return cur.fetchone()


def test_a_repair_wholly_beyond_the_history_is_recorded_without_calling_the_exchange(tmp_path, pg_conn,
                                                                                    mongo_db) -> None:
    """Gate serves 10,000 one-minute candles (~6.9 days): a gap chunk from 10 days ago is beyond its history at
    the first attempt, and no request is made (nothing listens at the exchange's address)."""
    path = tmp_path / "markets.yml"
    path.write_text(MARKETS.format(name="gate", ccxt_id="gate", url="http://127.0.0.1:9", history="10000"))
    config = load_config(path, env={})
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    task = _one_task(pg_conn, "gate", now - timedelta(days=10), now - timedelta(days=9))
    state = repair_gap(config, task, RawStore(mongo_db), pg_conn, Attempt("test", "r1", "repair_gate"))
    assert state == "completed/beyond_exchange_history"
    assert _task_row(pg_conn) == ("completed", "beyond_exchange_history", 1, 0, None)
    assert mongo_db.raw_market_payload.count_documents({}) == 0


def test_a_repair_reaching_into_the_history_loads_what_is_served(tmp_path, pg_conn, mongo_db, emulator_url) -> None:
    """A chunk straddling the history edge: the part inside is fetched and loaded (repaired); the older part is
    not asked for, and stays a (smaller) gap the next runs find beyond the history."""
    path = tmp_path / "markets.yml"
    path.write_text(MARKETS.format(name="binance", ccxt_id="binance", url=emulator_url, history="120"))
    config = load_config(path, env={})
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    task = _one_task(pg_conn, "binance", now - timedelta(hours=4), now - timedelta(hours=1))
    state = repair_gap(config, task, RawStore(mongo_db), pg_conn, Attempt("test", "r1", "repair_binance"))
    assert state == "completed/repaired"
    with pg_conn.cursor() as cur:
        cur.execute("SELECT min(open_time), count(*) FROM staging.ohlcv")
        first, count = cur.fetchone()
    # the newest 120 candles less the edge margin: the oldest fetched opens 114 minutes before the current minute
    # (a minute may turn during the test)
    assert now - timedelta(minutes=115) <= first <= now - timedelta(minutes=113), first
    assert count == (now - timedelta(hours=1) - first) // timedelta(minutes=1)
