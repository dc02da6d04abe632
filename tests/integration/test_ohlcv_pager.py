"""The OHLCV pager against the exchange emulator over HTTP with real ccxt, every timeframe.

What it asks for (since, limit) and what it ends up holding are checked against the brute-force
calendar oracle of tests/unit/test_timeframes.py, at windows on and off bucket starts; weeks start
on Monday even though 1970-01-01 was a Thursday.
"""

from __future__ import annotations

import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import ccxt
import pytest
from support.candle_calendar import brute_floor, brute_starts

from marketflow.config import load_config
from marketflow.errors import ErrorClass, classify
from marketflow.exchanges import build_exchange, fetch_ohlcv_pages, ohlcv_page_limit
from marketflow.timeframes import SUPPORTED_TIMEFRAMES, Window, iso, timeframe_ms

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "include" / "config" / "markets.demo.yml"


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp()) * 1000


@pytest.fixture
def exchanges(emulator_url: str):
    config = load_config(DEMO_CONFIG, env={"MARKETFLOW_EXCHANGE_URL": emulator_url})
    out = {}
    for name in ("binance", "okx"):
        ex = build_exchange(config.exchange(name))
        ex.enableRateLimit = False  # the test emulator has no rate limit; requests are what is checked
        out[name] = ex
    return out


def pages(exchange, symbol: str, tf: str, window: Window) -> tuple[list[dict], list[int]]:
    requests, held = [], []
    for page in fetch_ohlcv_pages(exchange, symbol, tf, window):
        requests.append(page.request)
        held += [t for t in page.open_times if window.start_ms <= t < window.end_ms]
        assert len(requests) < 50, f"pager does not end: {requests[-3:]}"
    return requests, held


@pytest.mark.parametrize(("exchange", "symbol", "monday", "thursday", "served"), [
    # the recordings hold two days: the emulator serves only whole buckets, so no weekly candle comes back,
    # but the request is the one that matters (limit=0 before the fix: the exchange refused it)
    ("binance", "ETH/USDT", ms(2022, 8, 15), ms(2022, 8, 18), False),
    ("okx", "BTC/USDT", ms(2025, 11, 24), ms(2025, 11, 27), False),
    ("binance", "SOL/USDT", ms(2024, 1, 1), ms(2024, 1, 4), True),  # synthetic, every bucket served
    ("okx", "SOL/USDT", ms(2024, 1, 1), ms(2024, 1, 4), True),
])
def test_monday_to_thursday_fetches_its_weekly_candle(exchanges, exchange, symbol, monday, thursday, served) -> None:
    requests, held = pages(exchanges[exchange], symbol, "1w", Window(monday, thursday))
    assert [(r["since"], r["limit"]) for r in requests] == [(monday, 1)]
    assert held == ([monday] if served else [])
    # a window without a Monday in it asks for nothing
    assert pages(exchanges[exchange], symbol, "1w", Window(monday + 1, thursday)) == ([], [])


def _windows(tf: str) -> list[Window]:
    step = timeframe_ms(tf)
    base = brute_floor(ms(2024, 3, 14, 9, 37), tf)  # a Thursday, mid-bucket for most timeframes
    return [
        Window(base, base + step),  # exactly one bucket
        Window(base, base + 3 * step),
        Window(base + 1, base + 3 * step),  # starts just after a bucket start
        Window(base - 1, base + 2 * step + 1),  # just before / just after
        Window(base + step // 2, base + step // 2 + step),  # off-grid on both ends: one start inside
        Window(base + 1, base + step),  # no bucket start inside
        Window(base, base),  # empty
        Window(base, base + 1_500 * step) if step <= 3_600_000 else Window(base, base + 40 * step),  # many pages
    ]


@pytest.mark.parametrize("tf", SUPPORTED_TIMEFRAMES)
@pytest.mark.parametrize("exchange", ["binance", "okx"])
def test_pager_asks_for_exactly_the_window_every_timeframe(exchanges, exchange: str, tf: str) -> None:
    ex = exchanges[exchange]
    page_max = ohlcv_page_limit(ex)
    for window in _windows(tf):
        expected = brute_starts(window.start_ms, window.end_ms, tf)
        requests, held = pages(ex, "SOL/USDT", tf, window)
        where = f"{exchange} {tf} {window}"
        assert held == expected, where  # every open time of the window, once, in order
        assert sum(r["limit"] for r in requests) == len(expected), (where, requests)
        assert all(1 <= r["limit"] <= page_max for r in requests), (where, requests)
        assert len(requests) == -(-len(expected) // page_max), (where, requests)


class _IgnoresSince(ThreadingHTTPServer):
    """An exchange that ignores `since`: forwards to the emulator with Binance's startTime replaced by
    a fixed older time, so every page answers real candles from before the pager's cursor."""

    def __init__(self, upstream: str, start_time_ms: int) -> None:
        self.upstream, self.start_time_ms = upstream, start_time_ms
        super().__init__(("127.0.0.1", 0), _Forward)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Forward(BaseHTTPRequestHandler):
    server: _IgnoresSince

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if "startTime" in query:
            query["startTime"] = [str(self.server.start_time_ms)]
        target = f"{self.server.upstream}{url.path}?{urllib.parse.urlencode(query, doseq=True)}"
        with urllib.request.urlopen(target, timeout=10) as resp:
            status, body, kind = resp.status, resp.read(), resp.headers.get("Content-Type", "application/json")
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def ignores_since(emulator_url: str) -> Iterator[_IgnoresSince]:
    server = _IgnoresSince(emulator_url, ms(2024, 1, 1))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_page_that_does_not_advance_is_a_classified_error(ignores_since: _IgnoresSince) -> None:
    """An exchange that answers older candles than asked for: a data error naming the cursor, not an
    endless loop and not a silent jump over the window."""
    config = load_config(DEMO_CONFIG, env={"MARKETFLOW_EXCHANGE_URL": ignores_since.url})
    ex = build_exchange(config.exchange("binance"))
    window = Window(ms(2024, 2, 1), ms(2024, 2, 1, 1))
    with pytest.raises(ccxt.BadResponse) as err:
        pages(ex, "SOL/USDT", "1m", window)
    assert classify(err.value) is ErrorClass.DATA
    message = str(err.value)
    assert iso(window.start_ms) in message and "did not advance" in message, message
    assert err.value.request["since"] == window.start_ms  # type: ignore[attr-defined]
    assert err.value.responses  # type: ignore[attr-defined]  # stored in raw with the error by the extract
