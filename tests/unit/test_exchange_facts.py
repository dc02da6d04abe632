"""Exchange facts (marketflow.exchange_facts) for seven exchanges, checked three ways: against ccxt's own
describe() and features read here, against the request ccxt really sends over HTTP (a local server records
it; the facts come from a dry run that sends nothing), and against the exchanges' documented figures."""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import ccxt
import pytest

from marketflow.exchange_facts import (
    CAPABILITIES_PATH,
    EDGE_MARGIN_CANDLES,
    capabilities,
    capabilities_snapshot,
    ccxt_facts,
    exchange_facts,
)
from marketflow.exchanges import rewrite_hosts
from marketflow.timeframes import Window, floor_ms

EXCHANGES = ("binance", "okx", "bybit", "kucoin", "kraken", "gate", "coinbase")

# What the exchanges document (API references as of ccxt 4.5.90), written down here, not derived:
# candles per request; how many of the newest candles are served at all (None: back to the listing); the
# parameter that ends a candle request (None: the request has no end, the exchange answers forward from
# `since`); the order of rows in the answer.
DOCUMENTED = {
    "binance": (1000, None, "endTime", "oldest_first"),  # GET /api/v3/klines limit max 1000
    "okx": (300, None, "after", "newest_first"),  # GET /api/v5/market/candles limit max 300 (mark/index 100)
    "bybit": (1000, None, "end", "newest_first"),  # GET /v5/market/kline limit [1, 1000]
    "kucoin": (1500, None, "endAt", "newest_first"),  # GET /api/v1/market/candles at most 1500 a query
    "kraken": (720, 720, None, "oldest_first"),  # GET /0/public/OHLC: up to 720 of the most recent entries
    "gate": (1000, 10_000, "to", "oldest_first"),  # GET /spot/candlesticks: 1000 points, 10,000 back at most
    "coinbase": (300, None, "end", None),  # GET .../products/{id}/candles (ccxt pages 300)
}
# The endpoint each exchange's spot candles come from, as a path in ccxt's api definitions.
API_PATHS = {
    "binance": ("public", "get", "klines"),
    "okx": ("public", "get", "market/history-candles"),  # a page older than 1439 candles: the history endpoint
    "bybit": ("public", "get", "v5/market/kline"),
    "kucoin": ("public", "get", "market/candles"),
    "kraken": ("public", "get", "OHLC"),
    "gate": ("public", "spot", "get", "candlesticks"),
    "coinbase": ("v3", "public", "get", "brokerage/market/products/{product_id}/candles"),
}
SINCE = 1_700_000_040_000  # 2023-11-14T22:14:00Z


@pytest.mark.parametrize("ccxt_id", EXCHANGES)
def test_facts_are_what_ccxt_describes(ccxt_id: str) -> None:
    facts = ccxt_facts(ccxt_id)
    exchange = getattr(ccxt, ccxt_id)()  # its describe() merged over the base class's, as ccxt builds it
    assert facts.page_limit == exchange.features["spot"]["fetchOHLCV"]["limit"]
    assert facts.has_fetch_ohlcv is bool(exchange.has["fetchOHLCV"]) is True
    assert facts.has_fetch_tickers is bool(exchange.has["fetchTickers"])
    assert facts.timeframes == frozenset(exchange.timeframes)
    assert facts.rate_limit_ms == exchange.rateLimit == exchange.describe()["rateLimit"]
    *where, path = API_PATHS[ccxt_id]
    node = exchange.describe()["api"]
    for key in where:
        node = node[key]
    assert facts.ohlcv_cost == node[path]["cost"]
    assert facts.ohlcv_endpoint is not None and facts.ohlcv_endpoint.endswith(path.split("/")[-1])


@pytest.mark.parametrize("ccxt_id", EXCHANGES)
def test_facts_match_the_documented_figures(ccxt_id: str) -> None:
    page, history, end_param, order = DOCUMENTED[ccxt_id]
    facts = ccxt_facts(ccxt_id)
    assert (facts.page_limit, facts.history_candles, facts.row_order) == (page, history, order)
    assert (facts.paging == "forward") is (end_param is None)
    if ccxt_id == "okx":
        assert getattr(ccxt, ccxt_id)().features["spot"]["fetchOHLCV"]["mark"] == 100


class _Recorder(ThreadingHTTPServer):
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        super().__init__(("127.0.0.1", 0), _Record)


class _Record(BaseHTTPRequestHandler):
    server: _Recorder

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        self.server.requests.append((url.path, dict(urllib.parse.parse_qsl(url.query))))
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def recorder() -> Iterator[_Recorder]:
    server = _Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _sent(recorder: _Recorder, ccxt_id: str, limit: int, until: int) -> dict[str, str]:
    """The query ccxt really sends for a page of ``limit`` 1m candles from SINCE with params['until']."""
    url = f"http://127.0.0.1:{recorder.server_address[1]}"
    exchange = getattr(ccxt, ccxt_id)({"urls": {**ccxt.Exchange.deep_extend({}, getattr(ccxt, ccxt_id)().urls),
                                                "api": rewrite_hosts(getattr(ccxt, ccxt_id)().urls["api"], url)}})
    exchange.set_markets([{"id": "BTC-X", "symbol": "BTC/USDT", "base": "BTC", "quote": "USDT", "baseId": "BTC",
                           "quoteId": "USDT", "type": "spot", "spot": True, "contract": False, "active": True,
                           "precision": {}, "limits": {}, "info": {}}])
    recorder.requests.clear()
    with contextlib.suppress(ccxt.BaseError):  # the recorder's answer is no candle list; the request counts
        exchange.fetch_ohlcv("BTC/USDT", "1m", since=SINCE, limit=limit, params={"until": until})
    ((_, query),) = recorder.requests
    return query


@pytest.mark.parametrize("ccxt_id", EXCHANGES)
def test_paging_is_what_ccxt_sends_over_http(recorder: _Recorder, ccxt_id: str) -> None:
    """``until`` exchanges carry the page end in their documented end parameter; KuCoin's end is ccxt's own
    since + limit ("bounded"); Kraken's request has no end at all ("forward")."""
    page, _, end_param, _ = DOCUMENTED[ccxt_id]
    facts = ccxt_facts(ccxt_id)
    until = SINCE + (page // 2) * 60_000 + 7_000
    query = _sent(recorder, ccxt_id, page, until)
    if facts.paging == "until":
        assert query[end_param] in (str(until), str(until // 1000)), query
    elif facts.paging == "bounded":
        assert int(query[end_param]) * 1000 == SINCE + page * 60_000, query
    else:
        assert end_param is None and not {"end", "endTime", "to", "endAt", "after"} & set(query), query


def test_markets_file_overrides_win_and_say_so() -> None:
    facts = exchange_facts("kraken", {"history_candles": 0, "page_limit": 500, "row_order": None})
    assert (facts.history_candles, facts.page_limit, facts.row_order) == (None, 500, "oldest_first")
    assert facts.sources["history_candles"] == facts.sources["page_limit"] == "markets file"
    assert facts.sources["row_order"] == "marketflow parsing.kline_fields"
    assert exchange_facts("kraken").history_candles == 720


def test_history_depth_by_a_brute_force_count() -> None:
    """The oldest open time fetched is the one the newest N candles reach, less the edge margin: counted
    candle by candle back from the one forming at `now`."""
    facts = ccxt_facts("kraken")
    for tf in ("1m", "15m", "1h", "1d", "1w"):
        now = 1_767_323_849_123  # 2026-01-02T03:17:29.123Z
        forming = floor_ms(now, tf)
        served = [forming]
        while len(served) < 720:
            served.append(floor_ms(served[-1] - 1, tf))
        floor = served[-(1 + EDGE_MARGIN_CANDLES)]
        assert facts.history_floor_ms(tf, now) == floor, tf
        assert facts.history_floor_ms(tf, now, margin=0) == served[-1]
        window = Window(served[-1] - 1, served[0])
        assert facts.beyond_history(window, tf, now) == Window(window.start_ms, floor)
        assert facts.beyond_history(Window(floor, served[0]), tf, now) is None
    assert ccxt_facts("binance").beyond_history(Window(0, 10**12), "1m", 10**13) is None


def test_the_capability_snapshot_is_ccxts_own() -> None:
    """DAG parsing reads has/timeframes from the committed snapshot instead of importing ccxt; it must be what
    the installed ccxt says (regenerate: python -m marketflow.exchange_facts --capabilities > the file)."""
    committed = json.loads(CAPABILITIES_PATH.read_text())
    assert committed == capabilities_snapshot(), f"{CAPABILITIES_PATH} is stale: regenerate it"
    assert committed["ccxt_version"] == ccxt.__version__
    assert set(committed["exchanges"]) == set(ccxt.exchanges)
    for ccxt_id in EXCHANGES:
        exchange = getattr(ccxt, ccxt_id)()
        caps = capabilities(ccxt_id)
        assert (caps.fetch_ohlcv, caps.fetch_tickers, caps.timeframes) == (
            bool(exchange.has["fetchOHLCV"]), bool(exchange.has["fetchTickers"]), frozenset(exchange.timeframes))
