"""The shared token bucket: one budget across workers, pauses on 429/418, metrics per minute."""

from __future__ import annotations

import threading
import time

import psycopg2
import pytest

from marketflow.rate_limit import SharedRateLimiter


def limiter(dsn: str, **kwargs) -> SharedRateLimiter:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    lim = SharedRateLimiter(conn, "testex", **{"per_minute": 1200, "share": 1.0, "burst_seconds": 1.0, **kwargs})
    lim.ensure_bucket()
    return lim


def test_workers_share_one_budget(warehouse_dsn: str) -> None:
    """4 workers x 20 calls at 20 calls/s with a burst of 20: the bucket makes them take >= 3 s together."""
    workers = [limiter(warehouse_dsn) for _ in range(4)]
    done: list[int] = []

    def work(lim: SharedRateLimiter) -> None:
        for _ in range(20):
            lim.acquire(1)
            done.append(1)
        lim.flush()

    started = time.monotonic()
    threads = [threading.Thread(target=work, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    elapsed = time.monotonic() - started
    assert len(done) == 80
    assert elapsed >= (80 - 20) / 20 * 0.97  # never faster than the shared budget allows
    with workers[0].conn.cursor() as cur:
        cur.execute("SELECT sum(acquisitions), sum(tokens_used), sum(denied) > 0 FROM ops.rate_limit_metrics "
                    "WHERE exchange = 'testex'")
        assert cur.fetchone() == (80, 80, True)


def test_pause_stops_every_worker_until_it_ends(warehouse_dsn: str) -> None:
    a, b = limiter(warehouse_dsn), limiter(warehouse_dsn)
    a.pause(1.5, "HTTP 418 on candles", 418)
    started = time.monotonic()
    b.acquire(1)  # another worker, same exchange
    assert time.monotonic() - started >= 1.4
    a.flush()
    with a.conn.cursor() as cur:
        cur.execute("SELECT pause_reason FROM ops.rate_limit_buckets WHERE exchange = 'testex'")
        assert cur.fetchone()[0] == "HTTP 418 on candles"
        cur.execute("SELECT sum(http_418) FROM ops.rate_limit_metrics WHERE exchange = 'testex'")
        assert cur.fetchone()[0] == 1


def test_gives_up_with_a_clear_error_when_no_budget_comes(warehouse_dsn: str) -> None:
    lim = limiter(warehouse_dsn, max_wait_seconds=0.5)
    lim.pause(30, "HTTP 418 on candles", 418)
    with pytest.raises(TimeoutError, match="testex: no rate-limit budget"):
        lim.acquire(1)
