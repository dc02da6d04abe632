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

from marketflow.config import ExchangeConfig, load_config
from marketflow.errors import ErrorClass, classify
from marketflow.exchange_facts import EDGE_MARGIN_CANDLES
from marketflow.exchanges import build_exchange, fetch_ohlcv_pages, ohlcv_page_limit
from marketflow.timeframes import SUPPORTED_TIMEFRAMES, Window, floor_ms, iso, timeframe_ms

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


# --- paging by the exchange's facts (marketflow/exchange_facts.py) -------------------------------------------


def client(url: str, ccxt_id: str, **facts) -> object:
    """A pipeline client for ``ccxt_id`` at ``url`` with the markets file's ``facts:`` overrides."""
    ex = build_exchange(ExchangeConfig(name=ccxt_id, ccxt_id=ccxt_id, enabled=True, markets=(), api_base_url=url,
                                       options={"fetchMarkets": {"types": ["spot"]}}, facts=facts))
    ex.enableRateLimit = False
    return ex


@pytest.mark.parametrize(("exchange", "end_param"), [("binance", "endTime"), ("okx", "after"), ("bybit", "end")])
def test_each_page_is_bounded_by_its_end(emulator_url: str, exchange: str, end_param: str) -> None:
    """Every request carries the page's end in the exchange's own parameter (ccxt maps `until` onto it), so an
    exchange answering the newest rows of a range (OKX, Bybit: newest first) answers exactly the page."""
    ex = client(emulator_url, exchange)
    window = Window(ms(2024, 3, 14, 9), ms(2024, 3, 14, 9) + 2_500 * 60_000)
    seen = []
    for page in fetch_ohlcv_pages(ex, "SOL/USDT", "1m", window):
        page_end = page.request["since"] + page.request["limit"] * 60_000
        assert page.request["until"] == page_end - 1
        assert int(page.responses[-1].params[end_param]) == page_end - 1, page.responses[-1].url
        # the answer holds the page's candles and none after it (whether the exchange's end is inclusive or not)
        assert page.open_times == brute_starts(page.request["since"], page_end, "1m")
        seen.append((page.request["since"], page.open_times))
    page_max = {"binance": 1000, "okx": 300, "bybit": 1000}[exchange]
    expected = brute_starts(window.start_ms, window.end_ms, "1m")
    assert [t for _, times in seen for t in times] == expected
    assert [since for since, _ in seen] == expected[::page_max]


def test_bybit_pages_newest_first_rows_into_the_window(emulator_url: str) -> None:
    """Bybit answers newest first, 1000 a page at most: three bounded pages hold every minute of 2,500 once,
    and the raw bodies keep Bybit's order (the loader checks it against the documented order)."""
    import json

    ex = client(emulator_url, "bybit")
    assert ex.marketflow_facts.page_limit == 1000 and ex.marketflow_facts.row_order == "newest_first"
    window = Window(ms(2024, 5, 1, 0, 7), ms(2024, 5, 1, 0, 7) + 2_500 * 60_000)
    requests, held = pages(ex, "BTC/USDT", "1m", window)
    assert held == brute_starts(window.start_ms, window.end_ms, "1m")
    assert [r["limit"] for r in requests] == [1000, 1000, 500]
    for page in fetch_ohlcv_pages(ex, "BTC/USDT", "1m", window):
        rows = json.loads(page.responses[-1].body)["result"]["list"]
        starts = [int(r[0]) for r in rows]
        assert starts == sorted(starts, reverse=True) and len(starts) == page.request["limit"]


def test_an_empty_forward_page_ends_paging_instead_of_skipping_a_page_span(emulator_url: str) -> None:
    """An exchange paged forward from `since` alone (Kraken; here Binance told so in facts:) that answers
    nothing has nothing at or after the cursor: paging stops there. Before, the pager skipped limit x step
    and asked again, a request per page span of the rest of the window."""
    ex = client(emulator_url, "binance", paging="forward", page_limit=100)
    # the recording of ETH/USDT ends 2022-08-15 23:59: 60 minutes, then nothing
    window = Window(ms(2022, 8, 15, 23), ms(2022, 8, 16, 6))
    requests, held = pages(ex, "ETH/USDT", "1m", window)
    assert held == brute_starts(ms(2022, 8, 15, 23), ms(2022, 8, 16), "1m")
    assert [(r["since"], r["limit"]) for r in requests] == [(ms(2022, 8, 15, 23), 100), (ms(2022, 8, 16), 100)]
    assert all("until" not in r for r in requests)


def _beyond_and_held(ex, symbol: str, window: Window, now_ms: int | None = None) -> tuple[list[Window], list[int],
                                                                                           list[dict]]:
    beyond, held, requests = [], [], []
    for page in fetch_ohlcv_pages(ex, symbol, "1m", window, now_ms=now_ms):
        if page.beyond_history is not None:
            beyond.append(page.beyond_history)
        if page.request is not None and page.beyond_history is None:
            requests.append(page.request)
        held += [t for t in page.open_times if window.start_ms <= t < window.end_ms]
    return beyond, held, requests


def test_the_part_of_a_window_beyond_the_history_depth_is_not_fetched(emulator_url: str) -> None:
    """An exchange serving only its newest N candles (Kraken 720; here N = 200 by facts:): the older part of a
    window is yielded as beyond_history, never asked for, and the rest is fetched whole."""
    ex = client(emulator_url, "okx", history_candles=200)
    now = ms(2026, 1, 1) + 17 * 60_000 + 29_000  # a fixed clock: what the pager thinks now is
    window = Window(now - 300 * 60_000, now - 100 * 60_000)
    beyond, held, requests = _beyond_and_held(ex, "SOL/USDT", window, now_ms=now)
    # oracle: the newest 200 open times at `now` start 199 minutes before the current minute; the pager keeps
    # EDGE_MARGIN_CANDLES away from that edge (it moves while a task runs)
    edge = floor_ms(now, "1m") - (199 - EDGE_MARGIN_CANDLES) * 60_000
    assert beyond == [Window(window.start_ms, edge)]
    assert held == brute_starts(edge, window.end_ms, "1m")
    assert min(r["since"] for r in requests) == edge
    # a window wholly inside the depth has nothing beyond it; one wholly older has nothing fetched
    assert _beyond_and_held(ex, "SOL/USDT", Window(edge, window.end_ms), now_ms=now)[0] == []
    old = Window(window.start_ms, edge - 60_000)
    assert _beyond_and_held(ex, "SOL/USDT", old, now_ms=now) == ([old], [], [])


class _RefusesOld(ThreadingHTTPServer):
    """Gate's behaviour on Binance's API: a klines request whose startTime is older than ``edge_ms`` is
    refused with HTTP 400 (Gate: "Candlestick too long ago. Maximum 10000 points ago are allowed"); any
    other request goes to the emulator."""

    def __init__(self, upstream: str, edge_ms: int) -> None:
        self.upstream, self.edge_ms, self.refused = upstream, edge_ms, 0
        super().__init__(("127.0.0.1", 0), _RefuseOrForward)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _RefuseOrForward(_Forward):
    server: _RefusesOld  # type: ignore[assignment]

    def do_GET(self) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        if "startTime" in query and int(query["startTime"][0]) < self.server.edge_ms:
            self.server.refused += 1
            body = b'{"code":-1100,"msg":"Candlestick too long ago. Maximum 10000 points ago are allowed"}'
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        url = urllib.parse.urlsplit(self.path)
        with urllib.request.urlopen(f"{self.server.upstream}{url.path}?{url.query}", timeout=10) as resp:
            status, body, kind = resp.status, resp.read(), resp.headers.get("Content-Type", "application/json")
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_window_refused_as_too_old_is_beyond_history_not_an_error(emulator_url: str) -> None:
    """The exchange's edge is a little newer than its facts say (the edge moves while a task runs): the HTTP 400
    for the oldest page is the exchange saying "beyond my history", so that part is beyond_history (the refusal
    kept for raw) and paging goes on from the edge. Far from the edge, a 400 is an error as before."""
    import time

    now = int(time.time() * 1000)
    edge = floor_ms(now, "1m") - 990 * 60_000  # the exchange serves 991 candles; the facts say 1000
    server = _RefusesOld(emulator_url, edge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        ex = client(server.url, "binance", history_candles=1000)
        window = Window(floor_ms(now, "1m") - 1_200 * 60_000, floor_ms(now, "1m") - 900 * 60_000)
        pages_seen = list(fetch_ohlcv_pages(ex, "SOL/USDT", "1m", window))
        beyond = [p for p in pages_seen if p.beyond_history is not None]
        assert len(beyond) == 2 and beyond[0].responses == [], beyond
        refusal = beyond[1]  # its responses: the market list ccxt loaded first, then the refusal
        assert refusal.responses[-1].status == 400 and server.refused == 1
        assert beyond[0].beyond_history.end_ms == refusal.beyond_history.start_ms == refusal.request["since"]
        resumed = refusal.beyond_history.end_ms
        assert resumed >= edge
        held = [t for p in pages_seen for t in p.open_times if window.start_ms <= t < window.end_ms]
        assert held == brute_starts(resumed, window.end_ms, "1m")

        # a window well inside the history refused with 400 is a bad request, raised as before
        server.edge_ms = floor_ms(now, "1m")
        with pytest.raises(ccxt.BadRequest) as err:
            list(fetch_ohlcv_pages(ex, "SOL/USDT", "1m", Window(edge + 600 * 60_000, edge + 700 * 60_000)))
        assert classify(err.value) is ErrorClass.BAD_REQUEST
    finally:
        server.shutdown()
        server.server_close()
