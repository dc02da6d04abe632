"""Every wait inside a task is bounded and ends as a classified, retryable error, never a hung slot."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg2
import pytest
from support.payloads import MIN, T0, kline, store

from marketflow.config import ConfigError, Timeouts, load_config
from marketflow.connections import session_options
from marketflow.errors import ErrorClass, classify
from marketflow.pipeline import Attempt, load_market
from marketflow.rate_limit import SharedRateLimiter
from marketflow.raw_store import RawStore

REPO = Path(__file__).resolve().parents[2]


def test_a_row_lock_held_elsewhere_ends_the_load_as_a_transient_database_error(warehouse_dsn, mongo_db) -> None:
    """Another session holds the candle's row lock (a stuck loader, an operator's open transaction):
    the load gives up after lock_timeout, rolls back, and the error is one Airflow retries."""
    import json

    raw = RawStore(mongo_db)
    doc = store(raw, json.dumps([kline(T0)]))
    extracted = {"exchange": "binance", "symbol": "ETH/USDT", "timeframe": "1m", "window_start_ms": T0,
                 "window_end_ms": T0 + 60 * MIN, "payload_ids": [doc["_id"]]}
    first = psycopg2.connect(warehouse_dsn)
    load_market(first, raw, extracted, Attempt("d", "r0", "t"))  # the row exists
    holder = psycopg2.connect(warehouse_dsn)
    with holder.cursor() as cur:
        cur.execute("SELECT * FROM staging.candle FOR UPDATE  -- the physical rows under the staging.ohlcv view")
    changed = store(raw, json.dumps([kline(T0, c="10.6")]))  # a correction must update the locked row
    loader = psycopg2.connect(warehouse_dsn, options=session_options(Timeouts(db_lock=1)))
    started = time.monotonic()
    try:
        with pytest.raises(psycopg2.errors.LockNotAvailable) as err:
            load_market(loader, raw, {**extracted, "payload_ids": [changed["_id"]]}, Attempt("d", "r1", "t"))
        assert time.monotonic() - started < 10
        assert classify(err.value) is ErrorClass.DATABASE and classify(err.value).transient
    finally:
        holder.rollback()
        for conn in (first, holder, loader):
            conn.close()


def test_session_options_bound_statements_and_idle_transactions(warehouse_dsn) -> None:
    conn = psycopg2.connect(warehouse_dsn, options=session_options(Timeouts(db_lock=7, db_statement=1)))
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW lock_timeout")
            assert cur.fetchone()[0] == "7s"
            with pytest.raises(psycopg2.errors.QueryCanceled):
                cur.execute("SELECT pg_sleep(5)")
        assert classify(psycopg2.errors.QueryCanceled()) is ErrorClass.DATABASE
    finally:
        conn.close()


def test_the_rate_limiter_gives_up_at_the_tasks_deadline(warehouse_dsn) -> None:
    conn = psycopg2.connect(warehouse_dsn)
    conn.autocommit = True
    lim = SharedRateLimiter(conn, "hung", per_minute=60, max_wait_seconds=900, deadline=time.monotonic() + 1)
    lim.ensure_bucket()
    lim.pause(600, "HTTP 418 on candles", 418)
    started = time.monotonic()
    with pytest.raises(TimeoutError) as err:
        lim.acquire(1)
    assert time.monotonic() - started < 2  # not the 900 s of max_wait_seconds, nor the 600 s ban
    assert classify(err.value) is ErrorClass.TIMEOUT
    conn.close()


def test_a_task_timeout_is_a_transient_timeout() -> None:
    from airflow.sdk.exceptions import AirflowTaskTimeout

    assert classify(AirflowTaskTimeout("Timeout, PID: 1")) is ErrorClass.TIMEOUT


def test_timeouts_come_from_the_markets_file_and_are_checked(tmp_path) -> None:
    base = (REPO / "include/config/markets.demo.yml").read_text()
    path = tmp_path / "m.yml"
    path.write_text(base.replace("  overlap_minutes: 2",
                                 "  overlap_minutes: 2\n  timeouts: {minute_task: 100, db_lock: 5}"))
    timeouts = load_config(path, env={"MARKETFLOW_EXCHANGE_URL": "http://x"}).timeouts
    assert (timeouts.minute_task, timeouts.db_lock, timeouts.hourly_task) == (100, 5, Timeouts().hourly_task)
    path.write_text(base.replace("  overlap_minutes: 2", "  overlap_minutes: 2\n  timeouts: {minute_task: 400}"))
    with pytest.raises(ConfigError, match=r"defaults.timeouts.minute_task: minute_task \(400 s\) is longer than "
                                          r"minute_run \(300 s\)"):
        load_config(path, env={"MARKETFLOW_EXCHANGE_URL": "http://x"})
    path.write_text(base.replace("  overlap_minutes: 2", "  overlap_minutes: 2\n  timeouts: {minute_tsk: 100}"))
    with pytest.raises(ConfigError, match=r"defaults\.timeouts\.minute_tsk: unknown key"):
        load_config(path, env={"MARKETFLOW_EXCHANGE_URL": "http://x"})
