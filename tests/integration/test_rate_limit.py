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


def test_history_saturating_the_bucket_never_takes_the_live_reserve(warehouse_dsn: str) -> None:
    """Four history workers take tokens as fast as the bucket allows (a backfill at the full limit)
    while a live worker takes one call every 0.25 s: the live calls find their tokens at once (the
    reserve, 30 % of the capacity, is theirs), and history still gets the rest of the budget."""
    rate = 20.0  # calls/s: per_minute 1200 at share 1.0; capacity 20 calls (burst 1 s)
    history = [limiter(warehouse_dsn, live=False, reserve=0.3) for _ in range(4)]
    live = limiter(warehouse_dsn, live=True)
    stop = threading.Event()
    taken: list[int] = []

    def hog(lim: SharedRateLimiter) -> None:
        while not stop.is_set():
            lim.acquire(1)
            taken.append(1)

    hogs = [threading.Thread(target=hog, args=(h,)) for h in history]
    for h in hogs:
        h.start()
    time.sleep(1.5)  # the burst is spent: history is now held at the reserve
    live_waits = []
    try:
        for _ in range(16):
            live_waits.append(live.acquire(1))
            with live.conn.cursor() as cur:
                cur.execute("SELECT tokens FROM ops.rate_limit_buckets WHERE exchange = 'testex'")
                assert float(cur.fetchone()[0]) >= -1e-9
            time.sleep(0.25)
    finally:
        stop.set()
        for h in hogs:
            h.join(timeout=10)
    # Live took its calls at once: never refused by the bucket (without the reserve it races four hogs
    # for every token and is refused, then sleeps ~1/rate) ...
    assert sum(minute.denied for minute in live._pending.values()) == 0
    # ... so its waits are a database round trip (a loose bound: a loaded machine's round trips are slow)
    live_waits.sort()
    assert live_waits[len(live_waits) // 2] < 1 / rate and live_waits[-1] < 2 / rate + 0.1, live_waits
    # ... while history kept the bucket busy: about the rate minus live's share (not starved either).
    assert len(taken) >= rate * (1.5 + 16 * 0.25) * 0.5


def test_history_waits_at_the_reserve_while_live_takes_it(warehouse_dsn: str) -> None:
    # capacity 20 tokens, refilled at 0.1/s: the bucket stays where the test puts it
    slow = {"per_minute": 6, "burst_seconds": 200.0}
    live = limiter(warehouse_dsn, live=True, **slow)
    history = limiter(warehouse_dsn, live=False, reserve=0.5, max_wait_seconds=0.3, **slow)
    with live.conn.cursor() as cur:  # the bucket at exactly the reserve: 10 of 20 tokens
        cur.execute("UPDATE ops.rate_limit_buckets SET tokens = 10, refilled_at = clock_timestamp() "
                    "WHERE exchange = 'testex'")
    with pytest.raises(TimeoutError, match="history call"):
        history.acquire(1)
    assert live.acquire(1) < 0.05  # the reserve is live's


def _bucket(lim: SharedRateLimiter) -> tuple[float, float, float]:
    """(live_until, refilled_at = the last take, now) of the test bucket, by the database's clock."""
    with lim.conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM live_until), extract(epoch FROM refilled_at), "
                    "extract(epoch FROM clock_timestamp()) FROM ops.rate_limit_buckets WHERE exchange = 'testex'")
        return tuple(float(v) if v is not None else 0.0 for v in cur.fetchone())


def test_history_waits_out_a_live_burst_and_takes_at_once_outside_one(warehouse_dsn: str) -> None:
    """A live take marks a 1.5 s burst on the bucket: a history take asked for right after it is granted
    only once the burst has passed (its take time, refilled_at, against live_until), one outside a burst
    is served at once, and a history limiter that may yield for only 0.3 s takes its tokens above the
    reserve then. The bucket is full throughout: the waits are the burst's, not the refill's."""
    live = limiter(warehouse_dsn, live=True, live_burst_seconds=1.5)
    history = limiter(warehouse_dsn, live=False, reserve=0.3)
    assert history.acquire(1) < 0.3  # no burst yet
    live.acquire(1)
    live_until, live_take, _ = _bucket(live)
    assert live_until - live_take == pytest.approx(1.5, abs=0.01)
    waited = history.acquire(1)
    _, history_take, _ = _bucket(live)
    assert history_take >= live_until and waited >= 1.0, (history_take - live_until, waited)
    assert 1.0 <= history.live_yield_seconds <= waited + 0.01
    assert history.acquire(1) < 0.3  # the burst is over
    live.acquire(1)
    live_until, live_take, _ = _bucket(live)
    impatient = limiter(warehouse_dsn, live=False, reserve=0.3, max_live_yield_seconds=0.3)
    waited = impatient.acquire(1)
    _, history_take, _ = _bucket(live)
    # yielded 0.3 s of the 1.5 s burst, then took its token above the reserve, inside the burst
    assert waited >= 0.25 and history_take < live_until, (waited, live_until - history_take)
    # a live limiter without a burst (live_burst_seconds 0, the limiter's default) marks nothing
    with live.conn.cursor() as cur:
        cur.execute("UPDATE ops.rate_limit_buckets SET live_until = NULL WHERE exchange = 'testex'")
    limiter(warehouse_dsn, live=True).acquire(1)
    assert _bucket(live)[0] == 0.0 and history.acquire(1) < 0.3


def test_history_beside_live_bursts_stays_within_the_bucket_and_out_of_the_bursts(warehouse_dsn: str) -> None:
    """Brute force over every grant: two history workers at the full rate and a live worker calling in
    bursts (8 calls, then 1 s quiet) against a 20 calls/s bucket of 20. Each take happened between the
    database clock read before and after its acquire. No window of w seconds holds more takes than the
    bucket's bound, capacity + rate x w (counting the takes whose whole interval lies in the window);
    no history take certainly falls inside a 0.5 s burst (asked for after a live take and
    granted before that take + 0.5 s); and history still got calls between the bursts."""
    history = [limiter(warehouse_dsn, live=False, reserve=0.3) for _ in range(2)]
    live = limiter(warehouse_dsn, live=True, live_burst_seconds=0.5)
    takes: list[tuple[float, float, str]] = []
    stop = threading.Event()

    def clock(lim: SharedRateLimiter) -> float:
        with lim.conn.cursor() as cur:
            cur.execute("SELECT extract(epoch FROM clock_timestamp())")
            return float(cur.fetchone()[0])

    def take(lim: SharedRateLimiter, kind: str) -> None:
        before = clock(lim)
        lim.acquire(1)
        takes.append((before, clock(lim), kind))

    def hog(lim: SharedRateLimiter) -> None:
        while not stop.is_set():
            take(lim, "history")

    hogs = [threading.Thread(target=hog, args=(h,)) for h in history]
    for h in hogs:
        h.start()
    try:
        time.sleep(1.0)
        for _ in range(3):
            for _ in range(8):
                take(live, "live")
            time.sleep(1.0)
    finally:
        stop.set()
        for h in hogs:
            h.join(timeout=30)
    rate, capacity = 20.0, 20.0
    for window in (0.25, 0.5, 1.0, 2.0, 4.0):
        # takes certainly inside [start, start + w] (their whole interval is): a lower bound of the true count
        most = max(sum(1 for before, after, _ in takes if before >= start and after <= start + window)
                   for start, _, _ in takes)
        assert most <= capacity + rate * window, (window, most)
    lives = [(before, after) for before, after, kind in takes if kind == "live"]
    inside = [(before, after) for before, after, kind in takes if kind == "history"
              and any(before > l_after and after < l_before + 0.5 for l_before, l_after in lives)]
    assert not inside, inside[:5]
    between = [1 for before, _, kind in takes if kind == "history" and before > lives[0][1]]
    assert len(between) >= 10, len(between)


@pytest.mark.parametrize(("live", "threads", "endpoint"), [
    (False, 4, "/api/v5/market/history-candles"),  # 20 calls per sliding 2 s
    (True, 12, "/api/v5/market/candles"),  # 40 per 2 s; the minute path: every fetcher at once at a close
])
def test_workers_at_okxs_full_limit_never_get_a_429(warehouse_dsn: str, emulator_url: str, live: bool,
                                                    threads: int, endpoint: str) -> None:
    """Workers page OKX candles as fast as the shared bucket lets them, against the emulator's real
    OKX limits (per endpoint, sliding 2 s), starting together on a full bucket. The bucket is sized
    from OKX's window with room for the calls' jitter: with the former 2 s of burst, a full bucket
    plus 2 s of refill allowed ~32 history calls in one window. (Sized to exactly the window, bench 6c
    saw one 429 in 1,808 calls at 1,000 markets; this quiet test does not reproduce that jitter, the
    unit test test_bucket_shape shows the arithmetic.)"""
    import json
    import urllib.request
    from pathlib import Path

    from marketflow.config import load_config
    from marketflow.exchanges import build_exchange

    repo = Path(__file__).resolve().parents[2]
    config = load_config(repo / "include/config/markets.demo.yml", env={"MARKETFLOW_EXCHANGE_URL": emulator_url})
    okx = config.exchange("okx")

    def stats() -> dict:
        with urllib.request.urlopen(f"{emulator_url}/__admin/stats", timeout=10) as resp:
            return json.loads(resp.read())

    conns = [psycopg2.connect(warehouse_dsn) for _ in range(threads)]
    for conn in conns:
        conn.autocommit = True
    clients = [build_exchange(okx, conn, live=live) for conn in conns]
    clients[0].load_markets()
    for client in clients[1:]:
        client.set_markets(clients[0].markets, clients[0].currencies)
    with conns[0].cursor() as cur:  # start with a full bucket, the worst case
        cur.execute("UPDATE ops.rate_limit_buckets SET tokens = capacity, refilled_at = clock_timestamp(), "
                    "paused_until = NULL WHERE exchange = 'okx'")
    before = stats()
    start = threading.Barrier(threads)
    seconds = 6
    stop = time.monotonic() + seconds
    calls: list[int] = []

    def work(client) -> None:
        # old enough for /market/history-candles; the newest page (no since) for /market/candles
        since = None if live else 1_700_000_000_000
        start.wait()
        while time.monotonic() < stop:
            client.fetch_ohlcv("BTC/USDT", "1m", since=since, limit=100)
            calls.append(1)

    workers = [threading.Thread(target=work, args=(c,)) for c in clients]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=60)
    after = stats()
    for conn in conns:
        conn.close()
    served = after["requests"]["okx"].get(endpoint, 0) - before["requests"].get("okx", {}).get(endpoint, 0)
    assert after["http_429_sent"] - before["http_429_sent"] == 0
    per_2s = 40 if live else 20
    # the workers really ran near the limit (the bucket spends ~84 % of it), every call reached OKX
    assert served >= per_2s / 2 * seconds * 0.6 and len(calls) == served, served


def test_a_request_bigger_than_the_bucket_is_taken_at_the_exchanges_rate(warehouse_dsn: str) -> None:
    """Bybit's figures with a 1 s window (45 units a second for a burst of 0.111 s: 4.999... units in
    floating point; ccxt's kline page costs 5): the minute path's page is taken at once from a full
    bucket, and history pages, which cannot leave the 30 % reserve behind (5 + 1.5 > 5), are still
    taken: each waits for a full bucket and borrows, so six pages take 5 x 5 / 45 s and no less (the
    exchange's rate), never max_wait_seconds (a 300 s hang and a timeout before)."""
    bybit = {"per_minute": 60_000 / 20, "share": 0.9, "burst_seconds": 1.0 * (1 - 0.9) / 0.9}  # as config.py
    live = limiter(warehouse_dsn, **bybit)
    assert live.capacity < 5  # the float case
    started = time.monotonic()
    live.acquire(5)
    assert time.monotonic() - started < 0.5
    history = limiter(warehouse_dsn, **bybit, live=False, reserve=0.3, max_wait_seconds=30)
    with history.conn.cursor() as cur:  # a full bucket again
        cur.execute("UPDATE ops.rate_limit_buckets SET tokens = capacity, refilled_at = clock_timestamp() "
                    "WHERE exchange = 'testex'")
    started = time.monotonic()
    for _ in range(6):
        history.acquire(5)
    elapsed = time.monotonic() - started
    assert 5 * 5 / 45 * 0.97 <= elapsed < 5 * 5 / 45 + 3.0


def test_two_egress_identities_have_two_budgets_and_workers_behind_one_share_it(warehouse_dsn: str) -> None:
    """Two workers on identity ip-a, one on ip-b, 20 calls each at 20 calls/s with a burst of 20: the pair
    shares one bucket (>= 1 s for its 40 calls), ip-b spends its own burst at once; a ban of ip-a leaves
    ip-b calling. Two identities = two bucket rows."""
    pair = [limiter(warehouse_dsn, egress="ip-a") for _ in range(2)]
    alone = limiter(warehouse_dsn, egress="ip-b")
    took: dict[str, float] = {}

    def work(name: str, lim: SharedRateLimiter) -> None:
        started = time.monotonic()
        for _ in range(20):
            lim.acquire(1)
        took[name] = time.monotonic() - started

    threads = [threading.Thread(target=work, args=(n, w)) for n, w in (("a1", pair[0]), ("a2", pair[1]),
                                                                      ("b", alone))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert max(took["a1"], took["a2"]) >= (40 - 20) / 20 * 0.97
    assert took["b"] < 0.5, took
    with alone.conn.cursor() as cur:
        cur.execute("SELECT exchange, egress_id FROM ops.rate_limit_buckets WHERE exchange = 'testex' ORDER BY 2")
        assert cur.fetchall() == [("testex", "ip-a"), ("testex", "ip-b")]
        cur.execute("UPDATE ops.rate_limit_buckets SET tokens = capacity, refilled_at = clock_timestamp() "
                    "WHERE exchange = 'testex'")
    pair[0].pause(30, "HTTP 418 on candles", 418)
    started = time.monotonic()
    alone.acquire(1)  # the other IP is not banned
    assert time.monotonic() - started < 0.5
    with pytest.raises(TimeoutError, match="egress_id 'ip-a'"):
        limiter(warehouse_dsn, egress="ip-a", max_wait_seconds=0.5).acquire(1)


def test_the_egress_identity_comes_from_the_worker_environment() -> None:
    from marketflow.rate_limit import egress_id

    assert egress_id({}) == egress_id({"MARKETFLOW_EGRESS_ID": " "}) == "default"
    assert egress_id({"MARKETFLOW_EGRESS_ID": "203.0.113.7"}) == "203.0.113.7"
    with pytest.raises(ValueError, match="MARKETFLOW_EGRESS_ID='nat gw' is not an egress identity"):
        egress_id({"MARKETFLOW_EGRESS_ID": "nat gw"})
