"""Housekeeping of the warehouse (plugins/marketflow/housekeeping.py) on a real Postgres.

Every pruned table is filled with rows on both sides of the cut (random times, inserted in random
order, so the primary key does not follow time), more rows than one batch. The expected survivors
are computed here from the generated rows by brute force, independently of the pruning SQL.
"""

from __future__ import annotations

import logging
import random
import re
import threading
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest

from marketflow.config import HousekeepingConfig
from marketflow.housekeeping import BODY_KEEP_CHARS, BODY_PRUNE_ABOVE, prune_ops, prune_rejects

NOW = datetime(2026, 12, 1, 3, 17, tzinfo=UTC)
CONFIG = HousekeepingConfig(ops_retention_days=30, rejects_body_retention_days=30, rejects_retention_days=365,
                            ticker_retention_days=30, batch_size=250)
OPS_CUT = NOW - timedelta(days=30)
BODY_CUT = NOW - timedelta(days=30)
REJECT_CUT = NOW - timedelta(days=365)


def _times(rng: random.Random, n: int, days: int) -> list[datetime]:
    """n times spread over the ``days`` before NOW, to the microsecond, a few exactly at the cut."""
    times = [NOW - timedelta(seconds=rng.uniform(0, days * 86400)) for _ in range(n)]
    return [*times[:-2], OPS_CUT, OPS_CUT + timedelta(microseconds=1)]


def _fill_ops(conn, rng: random.Random) -> dict[str, set]:
    """Insert ops rows on both sides of the cut; returns the keys expected to survive, per table."""
    expected: dict[str, set] = {}
    with conn.cursor() as cur:
        errors = [(t, rng.choice(["binance", "okx"])) for t in _times(rng, 1200, 60)]
        rng.shuffle(errors)
        ids = []
        for at, exchange in errors:
            cur.execute("INSERT INTO ops.api_errors (occurred_at, exchange, error_class, exception, message, attempt, "
                        "will_retry) VALUES (%s, %s, 'network', 'NetworkError', 'down', 1, true) RETURNING error_id",
                        (at, exchange))
            ids.append((cur.fetchone()[0], at))
        expected["ops.api_errors"] = {i for i, at in ids if at >= OPS_CUT}

        alerts = _times(rng, 600, 90)
        rng.shuffle(alerts)
        ids = []
        for at in alerts:
            cur.execute("INSERT INTO ops.alerts (raised_at, kind, subject, message) VALUES (%s, 'failures', 's', 'm') "
                        "RETURNING alert_id", (at,))
            ids.append((cur.fetchone()[0], at))
        expected["ops.alerts"] = {i for i, at in ids if at >= OPS_CUT}

        minutes = [(ex, NOW.replace(second=0, microsecond=0) - timedelta(minutes=30 * i))
                   for ex in ("binance", "okx") for i in range(60 * 48)]  # 60 days, every 30 minutes
        rng.shuffle(minutes)
        cur.executemany("INSERT INTO ops.rate_limit_metrics (exchange, minute, tokens_used) VALUES (%s, %s, 1.5)",
                        minutes)
        expected["ops.rate_limit_metrics"] = {(ex, m) for ex, m in minutes if m >= OPS_CUT}

        lists = [("binance", "https://api.binance.com", NOW - timedelta(minutes=20)),
                 ("okx", "http://127.0.0.1:8765", NOW - timedelta(days=40)),
                 ("kraken", "https://api.kraken.com", OPS_CUT - timedelta(seconds=1))]
        cur.executemany("INSERT INTO ops.market_lists (exchange, api, loaded_at, markets) VALUES (%s, %s, %s, '{}')",
                        lists)
        expected["ops.market_lists"] = {(ex, api) for ex, api, at in lists if at >= OPS_CUT}

        tasks = []
        for i, at in enumerate(_times(rng, 800, 60)):
            status, outcome = rng.choice([("completed", "repaired"), ("completed", "repaired"),
                                          ("completed", "confirmed_empty"), ("failed", None), ("pending", None),
                                          ("running", None)])
            start = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(hours=i)
            cur.execute("INSERT INTO ops.backfill_tasks (exchange, symbol, timeframe, window_start, window_end, "
                        "status, outcome, updated_at) VALUES ('binance', 'BTC/USDT', '1m', %s, %s, %s, %s, %s) "
                        "RETURNING task_id", (start, start + timedelta(minutes=5), status, outcome, at))
            tasks.append((cur.fetchone()[0], status, outcome, at))
        # only completed repairs go: the gap marts derive a confirmed-empty or failed gap's status from its row
        expected["ops.backfill_tasks"] = {i for i, status, outcome, at in tasks
                                          if not (status == "completed" and outcome == "repaired" and at < OPS_CUT)}

        outcomes = [(f"run-{i}", rng.choice(["BTC/USDT", "ETH/USDT"]), at) for i, at in enumerate(_times(rng, 700, 60))]
        cur.executemany("INSERT INTO ops.market_task_outcomes (dag_id, run_id, task_id, exchange, symbol, try_number, "
                        "outcome, finished_at) VALUES ('market_candles_1m', %s, 'binance.ingest', 'binance', %s, 1, "
                        "'success', %s)", outcomes)
        expected["ops.market_task_outcomes"] = {run for run, _, at in outcomes if at >= OPS_CUT}

        # tickers: one market with snapshots on both sides of the cut, one whose last snapshot is old
        snapshots = [("binance", "BTC/USDT", at) for at in _times(rng, 500, 60)]
        snapshots += [("okx", "OLD/USDT", OPS_CUT - timedelta(days=d)) for d in (3, 2, 1)]
        rng.shuffle(snapshots)
        cur.executemany("INSERT INTO staging.ticker (exchange, symbol, ts, last, raw_payload_id, run_id, ingested_at) "
                        "VALUES (%s, %s, %s, 1, 'p', 'r', %s)", [(ex, sym, at, at) for ex, sym, at in snapshots])
        latest = {(ex, sym): max(at for e, s, at in snapshots if (e, s) == (ex, sym)) for ex, sym, _ in snapshots}
        expected["staging.ticker"] = {(ex, sym, at) for ex, sym, at in snapshots
                                      if at >= OPS_CUT or latest[(ex, sym)] == at}
    conn.commit()
    return expected


def _ops_keys(conn) -> dict[str, set]:
    queries = {
        "ops.api_errors": "SELECT error_id FROM ops.api_errors",
        "ops.alerts": "SELECT alert_id FROM ops.alerts",
        "ops.rate_limit_metrics": "SELECT exchange, minute FROM ops.rate_limit_metrics",
        "ops.market_lists": "SELECT exchange, api FROM ops.market_lists",
        "ops.backfill_tasks": "SELECT task_id FROM ops.backfill_tasks",
        "ops.market_task_outcomes": "SELECT run_id FROM ops.market_task_outcomes",
        "staging.ticker": "SELECT exchange, symbol, ts FROM staging.ticker",
    }
    keys = {}
    with conn.cursor() as cur:
        for table, query in queries.items():
            cur.execute(query)
            keys[table] = {row[0] if len(row) == 1 else row for row in cur.fetchall()}
    conn.commit()
    return keys


def test_ops_rows_older_than_the_retention_go_in_batches_and_the_rest_stay(pg_conn, caplog) -> None:
    expected = _fill_ops(pg_conn, random.Random(13))
    before = _ops_keys(pg_conn)
    assert all(before[t] - expected[t] for t in expected if t != "ops.market_lists"), "no rows before the cut"
    assert all(expected[t] for t in expected), "no rows after the cut"

    with caplog.at_level(logging.INFO, logger="marketflow.housekeeping"):
        pruned = {p.table: p for p in prune_ops(pg_conn, CONFIG, NOW)}
    assert _ops_keys(pg_conn) == expected
    for table, keys in before.items():
        assert pruned[table].rows == len(keys - expected[table]), table
        assert pruned[table].cut == OPS_CUT

    # more rows than one batch: several batches, none over batch_size, progress in words
    assert pruned["ops.api_errors"].rows > 2 * CONFIG.batch_size
    batch_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ops.api_errors: deleted")
                   and "(batch" in r.getMessage()]
    sizes = [int(re.match(r"ops\.api_errors: deleted ([\d,]+) rows", m).group(1).replace(",", ""))
             for m in batch_lines]
    assert len(sizes) == pruned["ops.api_errors"].batches >= 3
    assert max(sizes) == CONFIG.batch_size and sum(sizes) == pruned["ops.api_errors"].rows
    assert "older than 2026-11-01 03:17 UTC (batch 2:" in batch_lines[1]

    # idempotent: the same run again deletes nothing more
    again = prune_ops(pg_conn, CONFIG, NOW)
    assert [p.rows for p in again] == [0] * len(again)
    assert _ops_keys(pg_conn) == expected


def test_a_row_another_session_holds_is_left_for_the_next_run_without_waiting(pg_conn, warehouse_dsn) -> None:
    expected = _fill_ops(pg_conn, random.Random(5))
    old = sorted(_ops_keys(pg_conn)["ops.api_errors"] - expected["ops.api_errors"])
    holder = psycopg2.connect(warehouse_dsn)
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT error_id FROM ops.api_errors WHERE error_id = %s FOR UPDATE", (old[0],))
        done = threading.Event()
        result: list = []
        worker = threading.Thread(target=lambda: (result.append(prune_ops(pg_conn, CONFIG, NOW)), done.set()))
        worker.start()
        assert done.wait(60), "pruning waited on a row lock"
        worker.join()
        assert _ops_keys(pg_conn)["ops.api_errors"] == expected["ops.api_errors"] | {old[0]}
    finally:
        holder.rollback()
        holder.close()
    assert prune_ops(pg_conn, CONFIG, NOW)[0].rows == 1  # released: the next run takes it
    assert _ops_keys(pg_conn)["ops.api_errors"] == expected["ops.api_errors"]


def _reject_body(rng: random.Random, i: int) -> str:
    kind = i % 4
    if kind == 0:
        return '[1660435200000,"1983.5","1984.0","1983.0","oops","1.0"]'  # one bad row: small, never cut
    if kind == 1:
        return '{"code":"51001","msg":"Instrument ID does not exist","data":[' + "0," * rng.randint(600, 5000) + "0]}"
    if kind == 2:
        return "€ multi-byte body " * rng.randint(60, 400)  # 3-byte characters: cut by characters, not bytes
    return "x" * (BODY_PRUNE_ABOVE + 1)  # just over the threshold


def test_reject_bodies_are_cut_and_old_rejects_deleted(pg_conn, caplog) -> None:
    rng = random.Random(21)
    rows = []
    for i in range(700):
        at = NOW - timedelta(seconds=rng.uniform(0, 500 * 86400))
        rows.append((f"payload-{rng.randrange(10**9):09d}-{i}", -1 if i % 4 else i, at, _reject_body(rng, i)))
    rows += [("at-body-cut", -1, BODY_CUT, "y" * 5000), ("at-row-cut", -1, REJECT_CUT, "z" * 5000)]
    with pg_conn.cursor() as cur:
        cur.executemany("INSERT INTO staging.ohlcv_rejects (raw_payload_id, row_index, exchange, symbol, timeframe, "
                        "raw_row, reason, run_id, rejected_at) VALUES (%s, %s, 'okx', 'BTC/USDT', '1m', %s, "
                        "'payload: unknown envelope', 'run', %s)", [(p, r, body, at) for p, r, at, body in rows])
    pg_conn.commit()

    expected = {}
    for payload, row, at, body in rows:
        if at < REJECT_CUT:
            continue
        if at < BODY_CUT and len(body.encode()) > BODY_PRUNE_ABOVE:
            body = (body[:BODY_KEEP_CHARS] + f" … [{len(body.encode())} bytes received; only the first "
                    f"{BODY_KEEP_CHARS} characters are kept]")
        expected[(payload, row)] = (body, "payload: unknown envelope")
    cut_bodies = sum(1 for p, r, at, b in rows if REJECT_CUT <= at < BODY_CUT and len(b.encode()) > BODY_PRUNE_ABOVE)
    assert cut_bodies > CONFIG.batch_size // 2 and len(expected) < len(rows)

    def stored() -> dict:
        with pg_conn.cursor() as cur:
            cur.execute("SELECT raw_payload_id, row_index, raw_row, reason FROM staging.ohlcv_rejects")
            result = {(p, r): (body, reason) for p, r, body, reason in cur.fetchall()}
        pg_conn.commit()
        return result

    small = CONFIG.__class__(**{**CONFIG.__dict__, "batch_size": 100})
    with caplog.at_level(logging.INFO, logger="marketflow.housekeeping"):
        deleted, bodies = prune_rejects(pg_conn, small, NOW)
    assert stored() == expected
    assert bodies.rows == cut_bodies and bodies.batches >= 2
    assert deleted.rows == sum(1 for p, r, at, b in rows if at < REJECT_CUT)
    assert bodies.bytes_freed > 0 and "MB of bodies freed" in bodies.words()
    assert any(r.getMessage().startswith("staging.ohlcv_rejects.raw_row: cut to its first 200 characters in 100 "
                                         "rows older than 2026-11-01 03:17 UTC (batch 1:") for r in caplog.records)
    assert all(len(body.encode()) <= BODY_PRUNE_ABOVE for body, _ in stored().values()
               if body.endswith("characters are kept]"))

    again = prune_rejects(pg_conn, small, NOW)  # a cut body is never cut again, nothing more is deleted
    assert [p.rows for p in again] == [0, 0]
    assert stored() == expected


@pytest.mark.parametrize("table", ["ops.api_errors", "staging.ohlcv_rejects"])
def test_nothing_to_prune_says_so(pg_conn, caplog, table) -> None:
    with caplog.at_level(logging.INFO, logger="marketflow.housekeeping"):
        results = prune_ops(pg_conn, CONFIG, NOW) + prune_rejects(pg_conn, CONFIG, NOW)
    assert all(p.rows == 0 and p.batches == 0 for p in results)
    assert f"{table}: nothing older than" in caplog.text
