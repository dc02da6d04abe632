"""Every fault switch fires, is visible on the wire / to ccxt, and is counted."""

from __future__ import annotations

import json
import time

import ccxt
import pytest

from exchange_emulator.faults import FaultBook, FaultError, RequestContext, apply_row_fault

from .helpers import BINANCE_DAY1, OKX_FIRST, binance_rows

MINUTE = 60_000
KLINES = f"/api/v3/klines?symbol=ETHUSDT&interval=1m&startTime={BINANCE_DAY1}&limit=10"
CANDLES = f"/api/v5/market/history-candles?instId=BTC-USDT&after={OKX_FIRST + 10 * MINUTE}&limit=10"


def fired(live, kind: str) -> int:
    return live.stats()["faults_fired"]["by_kind"].get(kind, 0)


def test_admin_api_validates_lists_and_clears(live):
    added = live.add_faults(
        [{"kind": "slow", "ms": 1}, {"kind": "http_5xx", "status": 502, "count": 3, "id": "x"}]
    )
    assert [f["id"] for f in added][1] == "x"
    assert [f["kind"] for f in live.faults()] == ["slow", "http_5xx"]
    assert live.faults()[1]["remaining"] == 3
    for bad in (
        {"kind": "nope"},
        {"kind": "http_5xx", "status": 501},
        {"kind": "slow", "bogus": 1},
        {"kind": "http_429", "exchange": "kraken"},
    ):
        with pytest.raises(RuntimeError, match="400"):
            live.add_faults(bad)
    live.clear_faults()
    assert live.faults() == []


def test_http_429_fault(make_exchange, live):
    ex = make_exchange("binance")
    ex.load_markets()
    live.add_faults({"kind": "http_429", "exchange": "binance", "path": "/api/v3/klines", "retry_after": 7})
    with pytest.raises(ccxt.DDoSProtection):
        ex.fetch_ohlcv("ETH/USDT", "1m", since=BINANCE_DAY1, limit=5)
    assert ex.last_response_headers["Retry-After"] == "7"
    assert "X-MBX-USED-WEIGHT-1M" in ex.last_response_headers
    assert (
        len(ex.fetch_ohlcv("ETH/USDT", "1m", since=BINANCE_DAY1, limit=5)) == 5
    )  # count=1: next one is fine
    okx = make_exchange("okx")
    okx.load_markets()
    live.add_faults({"kind": "http_429", "exchange": "okx"})
    with pytest.raises(ccxt.RateLimitExceeded):
        okx.fetch_ohlcv("BTC/USDT", "1m", since=OKX_FIRST, limit=5)
    stats = live.stats()
    assert stats["faults_fired"]["by_kind"]["http_429"] == 2 and stats["http_429_by_cause"]["fault"] == 2


def test_http_418_fault(make_exchange, live):
    ex = make_exchange("binance")
    ex.load_markets()
    live.add_faults({"kind": "http_418", "retry_after": 120})
    with pytest.raises(ccxt.DDoSProtection, match="418"):
        ex.fetch_ticker("ETH/USDT")
    assert ex.last_response_headers["Retry-After"] == "120"
    assert fired(live, "http_418") == 1 and live.stats()["http_418_sent"] == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_http_5xx_fault(live, status):
    live.add_faults(
        [
            {"kind": "http_5xx", "status": status, "exchange": "binance"},
            {"kind": "http_5xx", "status": status, "exchange": "okx"},
        ]
    )
    code, _, body = live.get(KLINES)
    assert code == status and isinstance(json.loads(body)["code"], int)
    code, _, body = live.get(CANDLES)
    assert code == status and json.loads(body)["code"].startswith("500")
    assert fired(live, "http_5xx") == 2
    assert live.get(KLINES)[0] == 200


def test_http_5xx_makes_ccxt_raise(make_exchange, live):
    ex = make_exchange("okx")
    ex.load_markets()
    live.add_faults({"kind": "http_5xx", "status": 503, "exchange": "okx"})
    with pytest.raises(ccxt.ExchangeNotAvailable):
        ex.fetch_ticker("BTC/USDT")


def test_timeout_fault(make_exchange, live):
    ex = make_exchange("binance", timeout=500)
    ex.load_markets()
    live.add_faults({"kind": "timeout", "seconds": 1.5, "path": "/api/v3/klines"})
    start = time.monotonic()
    with pytest.raises(ccxt.RequestTimeout):
        ex.fetch_ohlcv("ETH/USDT", "1m", since=BINANCE_DAY1, limit=5)
    assert time.monotonic() - start < 1.4
    assert fired(live, "timeout") == 1
    time.sleep(1.2)  # let the held connection end before the next test's reset
    assert live.stats()["responses_by_status"].get("timeout") == 1


def test_slow_fault(make_exchange, live):
    ex = make_exchange("okx")
    ex.load_markets()
    live.add_faults({"kind": "slow", "ms": 600, "symbol": "BTC/USDT"})
    start = time.monotonic()
    assert len(ex.fetch_ohlcv("BTC/USDT", "1m", since=OKX_FIRST, limit=5)) == 5
    slow = time.monotonic() - start
    start = time.monotonic()
    ex.fetch_ohlcv("BTC/USDT", "1m", since=OKX_FIRST, limit=5)
    assert slow >= 0.6 and time.monotonic() - start < slow
    assert fired(live, "slow") == 1 and live.faults()[0]["remaining"] == 0


def test_truncated_json_fault_makes_ccxt_raise(make_exchange, live):
    for ex_id, sym, since in (("binance", "ETH/USDT", BINANCE_DAY1), ("okx", "BTC/USDT", OKX_FIRST)):
        ex = make_exchange(ex_id)
        ex.load_markets()
        live.add_faults({"kind": "truncated_json", "exchange": ex_id})
        with pytest.raises(ccxt.NetworkError):  # Content-Length promised more: "Connection broken"
            ex.fetch_ohlcv(sym, "1m", since=since, limit=50)
    assert fired(live, "truncated_json") == 2
    live.add_faults({"kind": "truncated_json", "cut_connection": False})
    code, _, body = live.get(KLINES)
    full = live.get(KLINES)[2]
    assert code == 200 and body == full[: len(full) // 2]
    with pytest.raises(ValueError):
        json.loads(body)


def test_malformed_json_fault(make_exchange, live):
    live.add_faults({"kind": "malformed_json", "path": "/api/v3/klines"})
    code, _, body = live.get(KLINES)
    assert code == 200 and body[:1] == b"["
    with pytest.raises(ValueError):
        json.loads(body)
    # ccxt 4.5.90 does not raise on a complete 200 body that is not JSON: it hands the text to
    # its parsers and returns junk, so pipelines must validate what ccxt gives back
    ex = make_exchange("binance")
    ex.load_markets()
    live.add_faults({"kind": "malformed_json", "path": "/api/v3/klines"})
    junk = ex.fetch_ohlcv("ETH/USDT", "1m", since=BINANCE_DAY1, limit=5)
    assert junk != [[int(r[0]), *r[1:6]] for r in binance_rows()[:5]]
    assert all(row[1] is None for row in junk)
    assert fired(live, "malformed_json") == 2


def test_duplicate_rows_fault(live):
    live.add_faults({"kind": "duplicate_rows", "n": 2, "exchange": "binance"})
    rows = json.loads(live.get(KLINES)[2])
    ts = [r[0] for r in rows]
    assert len(rows) == 12 and len(set(ts)) == 10
    live.add_faults({"kind": "duplicate_rows", "conflicting": True, "exchange": "okx"})
    data = json.loads(live.get(CANDLES)[2])["data"]
    assert len(data) == 11
    by_ts: dict[str, list] = {}
    for r in data:
        by_ts.setdefault(r[0], []).append(r)
    ((a, b),) = [v for v in by_ts.values() if len(v) == 2]
    assert a != b and a[4] != b[4] and a[5] != b[5]  # same open time, different close and volume
    assert float(b[2]) >= float(b[4])
    assert fired(live, "duplicate_rows") == 2


def test_out_of_order_rows_fault(live):
    live.add_faults({"kind": "out_of_order_rows", "path": "/api/v3/klines"})
    rows = json.loads(live.get(KLINES)[2])
    ts = [r[0] for r in rows]
    assert sorted(ts) == [BINANCE_DAY1 + k * MINUTE for k in range(10)] and ts != sorted(ts)
    live.add_faults({"kind": "out_of_order_rows", "exchange": "okx"})
    data = json.loads(live.get(CANDLES)[2])["data"]
    ts = [int(r[0]) for r in data]
    assert ts != sorted(ts, reverse=True) and len(set(ts)) == 10
    assert fired(live, "out_of_order_rows") == 2


def test_missing_minutes_fault(live):
    gone = [BINANCE_DAY1 + 3 * MINUTE, BINANCE_DAY1 + 7 * MINUTE]
    live.add_faults({"kind": "missing_minutes", "open_times": gone, "exchange": "binance"})
    ts = [r[0] for r in json.loads(live.get(KLINES)[2])]
    assert len(ts) == 8 and not set(gone) & set(ts)
    live.add_faults({"kind": "missing_minutes", "n": 3, "exchange": "okx"})
    assert len(json.loads(live.get(CANDLES)[2])["data"]) == 7
    assert len(json.loads(live.get(CANDLES)[2])["data"]) == 10  # count=1 consumed
    assert fired(live, "missing_minutes") == 2
    # a row fault never fires on a non-candle endpoint
    live.add_faults({"kind": "missing_minutes", "n": 1})
    live.get("/api/v3/ticker/price?symbol=ETHUSDT")
    assert live.faults()[-1]["remaining"] == 1


def test_filters_count_and_probability(live):
    live.add_faults(
        [
            {"kind": "http_5xx", "symbol": "BTC/USDT", "count": 2},
            {
                "kind": "http_5xx",
                "status": 500,
                "probability": 0.5,
                "count": 1000,
                "path": "/api/v3/ticker/price",
            },
        ]
    )
    assert live.get(KLINES)[0] == 200  # ETHUSDT does not match the BTC/USDT filter
    assert live.get("/api/v5/market/ticker?instId=BTC-USDT")[0] == 503  # any spelling of the symbol
    assert live.get("/api/v3/ticker/24hr?symbol=BTCUSDT")[0] == 503
    assert live.get("/api/v3/ticker/24hr?symbol=BTCUSDT")[0] == 200  # count exhausted
    codes = [live.get("/api/v3/ticker/price?symbol=ETHUSDT")[0] for _ in range(40)]
    assert 5 < codes.count(500) < 35 and codes.count(200) == 40 - codes.count(500)
    stats = live.stats()
    assert stats["faults_fired"]["by_kind"]["http_5xx"] == 2 + codes.count(500)
    assert stats["faults_fired"]["by_id"][live.faults()[0]["id"]] == 2


def test_probability_is_seeded():
    ctx = RequestContext("binance", "/api/v3/klines", "ETH/USDT", True)

    def pattern(seed: int) -> list[bool]:
        book = FaultBook(seed)
        book.add({"kind": "http_5xx", "probability": 0.3, "id": "p"})
        return [bool(book.fire(("http_5xx",), ctx)) for _ in range(200)]

    assert pattern(42) == pattern(42)
    assert pattern(42) != pattern(43)
    assert 30 < sum(pattern(42)) < 90


def test_row_mutations_unit():
    book = FaultBook(1)
    rows = [[1000 * k, "1.0", "2.0", "0.5", "1.5", "10.00"] for k in range(5)]
    (f,) = book.add({"kind": "duplicate_rows", "conflicting": True})
    out = apply_row_fault(f, rows, "binance")
    assert len(out) == 6
    dupes = [r for r in out if sum(x[0] == r[0] for x in out) == 2]
    assert dupes[0][4] == "1.5" and dupes[1][4] == "1.6" and dupes[1][5] == "10.01"
    with pytest.raises(FaultError):
        book.add({"kind": "missing_minutes", "open_times": "nope"})
