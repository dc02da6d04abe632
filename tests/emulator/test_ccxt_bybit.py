"""Real ccxt.bybit against the emulator over HTTP: Bybit v5 spot market data (synthetic markets only)."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import ccxt
import pytest

from exchange_emulator import ccxt_options, ccxt_urls
from exchange_emulator.markets import Registry
from exchange_emulator.timeframes import BYBIT_INTERVALS

from .helpers import REPO

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
JAN1 = 1704067200000  # 2024-01-01 00:00 UTC, DOGE/USDT's listing day in the emulator fixture
KLINE = "/v5/market/kline?category=spot&symbol=DOGEUSDT&interval=1"
# ccxt's own recorded Bybit replies (ccxt's static test fixtures, kept in the repository's test data)
RECORDED = REPO / "tests" / "data" / "ccxt_static" / "bybit.json"


def source(symbol: str = "DOGE/USDT", listing: str = "2024-01-01") -> object:
    """The emulator's candle source for a Bybit market, read in-process with the fixture's seed: what
    the HTTP layer must serve, row for row (order, window, limit and shape are what is under test)."""
    base, quote = symbol.split("/")
    return Registry(None, seed=42, synthetic=[f"bybit:{symbol}@{listing}"], default_synthetic=False).markets[
        ("bybit", f"{base}/{quote}")
    ]


def wire(body: bytes) -> dict:
    return json.loads(body)


def test_ccxt_urls_cover_every_bybit_api_and_options_ask_for_spot_only():
    urls = ccxt_urls("bybit", "http://h:1/")
    assert set(urls["api"]) >= set(ccxt.bybit().urls["api"]), "every bybit api url must be redirected"
    assert all(v == "http://h:1" for v in urls["api"].values())
    assert ccxt_options("bybit")["fetchMarkets"] == {"types": ["spot"]}


def test_load_markets_is_one_public_spot_request(make_exchange, live):
    ex = make_exchange("bybit")
    markets = ex.load_markets()
    assert {"BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT", "DOGE/USDT"} <= set(markets)
    btc = markets["BTC/USDT"]
    assert btc["id"] == "BTCUSDT" and btc["spot"] and btc["active"] and btc["type"] == "spot"
    assert (btc["precision"]["amount"], btc["precision"]["price"]) == ("0.00001", "0.01")
    # no private /v5/asset/coin/query-info (ccxt skips currencies without a key), no derivatives lists
    assert live.stats()["requests"]["bybit"] == {"/v5/market/instruments-info": 1}
    assert abs(ex.fetch_time() - time.time() * 1000) < 5_000
    _, _, body = live.get("/v5/market/instruments-info?category=linear")
    assert wire(body)["result"]["list"] == [] and wire(body)["retCode"] == 0


def test_fetch_ohlcv_pages_forward_and_each_page_is_newest_first(make_exchange, live):
    """Three 1000-candle pages from the listing day: ccxt's rows ascending, the wire's newest first,
    together exactly the source's first 3000 minutes."""
    ex = make_exchange("bybit")
    got: list[list] = []
    since = JAN1
    for _ in range(3):
        page = ex.fetch_ohlcv("DOGE/USDT", "1m", since=since, limit=1000)
        rows = wire(ex.last_http_response.encode())["result"]["list"]
        assert [int(r[0]) for r in rows] == [JAN1 + (len(got) + 999 - k) * MINUTE for k in range(1000)]
        assert all(len(r) == 7 and all(isinstance(v, str) for v in r) for r in rows)
        got += page
        since = page[-1][0] + MINUTE
    assert "limit=1000" in ex.last_request_url and "category=spot" in ex.last_request_url
    now = int(time.time() * 1000)
    expected = source().candles(BYBIT_INTERVALS["1"], JAN1, JAN1 + 3000 * MINUTE - 1, 3000, False, now)
    assert got == [[c.ts, c.open, c.high, c.low, c.close, c.volume] for c in expected]
    assert len({r[0] for r in got}) == 3000


def test_start_end_limit_semantics(live):
    now = int(time.time() * 1000)
    src = source()
    # start inside a candle: the candle holding it comes first (Bybit's documented quirk ccxt works around)
    _, _, body = live.get(f"{KLINE}&start={JAN1 + 30_000}&end={JAN1 + 3 * MINUTE}")
    rows = wire(body)["result"]["list"]
    assert [int(r[0]) for r in rows] == [JAN1 + k * MINUTE for k in (3, 2, 1, 0)]  # end inclusive
    one = src.candles(BYBIT_INTERVALS["1"], JAN1 + 2 * MINUTE, JAN1 + 2 * MINUTE, 1, False, now)[0]
    assert rows[1] == [str(one.ts), one.open, one.high, one.low, one.close, one.volume, one.quote_volume]
    # default limit 200, above 1000 served as 1000, 0 refused
    assert len(wire(live.get(f"{KLINE}&start={JAN1}")[2])["result"]["list"]) == 200
    assert len(wire(live.get(f"{KLINE}&start={JAN1}&limit=5000")[2])["result"]["list"]) == 1000
    status, _, body = live.get(f"{KLINE}&start={JAN1}&limit=0")
    assert status == 200 and wire(body)["retCode"] == 10001
    # before the listing: nothing; start after end: a params error
    assert wire(live.get(f"{KLINE}&start={JAN1 - DAY}&end={JAN1 - 1}")[2])["result"]["list"] == []
    assert wire(live.get(f"{KLINE}&start={JAN1 + MINUTE}&end={JAN1}")[2])["retCode"] == 10001
    # only end: the newest `limit` candles up to it
    rows = wire(live.get(f"{KLINE}&end={JAN1 + DAY}&limit=3")[2])["result"]["list"]
    assert [int(r[0]) for r in rows] == [JAN1 + DAY - k * MINUTE for k in (0, 1, 2)]


def test_in_progress_candle_is_the_first_row(make_exchange):
    ex = make_exchange("bybit")
    got = ex.fetch_ohlcv("BTC/USDT", "1m", limit=5)
    now = int(time.time() * 1000)
    rows = wire(ex.last_http_response.encode())["result"]["list"]
    newest = int(rows[0][0])
    assert newest <= now < newest + MINUTE, "the open candle comes first"
    assert [int(r[0]) for r in rows] == [newest - k * MINUTE for k in range(5)]
    assert got[-1][0] == newest
    # timeframes: D is a UTC day, W starts on Monday, 60 = 1h
    days = ex.fetch_ohlcv("BTC/USDT", "1d", limit=3)
    assert "interval=D" in ex.last_request_url and all(r[0] % DAY == 0 for r in days)
    weeks = ex.fetch_ohlcv("BTC/USDT", "1w", limit=2)
    assert all(time.gmtime(r[0] / 1000).tm_wday == 0 for r in weeks)
    hours = ex.fetch_ohlcv("BTC/USDT", "1h", since=JAN1, limit=2)
    assert "interval=60" in ex.last_request_url and [r[0] for r in hours] == [JAN1, JAN1 + HOUR]


def test_errors_are_bybit_envelopes_with_http_200(make_exchange, live):
    ex = make_exchange("bybit")
    ex.load_markets()
    status, headers, body = live.get("/v5/market/kline?category=spot&symbol=NOPEUSDT&interval=1")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    err = wire(body)
    assert (err["retCode"], err["retMsg"], err["result"], err["retExtInfo"]) == (10001, "Not supported symbols", {}, {})
    assert isinstance(err["time"], int)
    with pytest.raises(ccxt.BadSymbol):
        ex.publicGetV5MarketKline({"category": "spot", "symbol": "NOPEUSDT", "interval": "1"})
    with pytest.raises(ccxt.BadRequest, match="Invalid period"):
        ex.publicGetV5MarketKline({"category": "spot", "symbol": "BTCUSDT", "interval": "7"})
    assert wire(live.get("/v5/market/kline?symbol=BTCUSDT&interval=1")[2])["retCode"] == 10001  # no category
    status, _, body = live.get("/v5/market/orderbook?category=spot&symbol=BTCUSDT")
    assert status == 404 and wire(body)["retCode"] != 0


def test_fetch_ticker_and_tickers(make_exchange, live):
    ex = make_exchange("bybit")
    t = ex.fetch_ticker("DOGE/USDT")
    info = t["info"]
    assert set(info) == {"symbol", "bid1Price", "bid1Size", "ask1Price", "ask1Size", "lastPrice", "prevPrice24h",
                         "price24hPcnt", "highPrice24h", "lowPrice24h", "turnover24h", "volume24h", "usdIndexPrice"}
    assert t["symbol"] == "DOGE/USDT" and t["last"] == info["lastPrice"] and t["open"] == info["prevPrice24h"]
    assert t["quoteVolume"] == info["turnover24h"] and t["baseVolume"] == info["volume24h"]
    assert Decimal(t["low"]) <= Decimal(t["last"]) <= Decimal(t["high"])
    pcnt = (Decimal(t["last"]) - Decimal(t["open"])) / Decimal(t["open"])
    assert abs(Decimal(info["price24hPcnt"]) - pcnt) <= Decimal("0.00005")
    # the last price is the close of the current minute candle
    now = int(time.time() * 1000)
    newest = wire(live.get(f"{KLINE}&limit=1")[2])["result"]["list"][0]
    assert now - int(newest[0]) < 2 * MINUTE and Decimal(t["last"]) > 0
    tickers = ex.fetch_tickers()
    assert {"BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT", "DOGE/USDT"} <= set(tickers)
    assert "category=spot" in ex.last_request_url


def test_endpoint_rate_limit_is_retcode_10006_with_bapi_headers(make_exchange, live):
    live.configure(bybit_endpoint_limit=3)
    ex = make_exchange("bybit", enableRateLimit=False)
    ex.load_markets()
    remaining = []
    with pytest.raises(ccxt.RateLimitExceeded, match="Too many visits"):
        for _ in range(10):
            ex.fetch_ohlcv("BTC/USDT", "1m", since=JAN1, limit=2)
            remaining.append(int(ex.last_response_headers["X-Bapi-Limit-Status"]))
    assert remaining[:3] == [2, 1, 0] and ex.last_response_headers["X-Bapi-Limit"] == "3"
    body = wire(ex.last_http_response.encode())
    assert body["retCode"] == 10006 and ex.last_response_headers["X-Bapi-Limit-Status"] == "0"
    reset = int(ex.last_response_headers["X-Bapi-Limit-Reset-Timestamp"])
    assert 0 < reset - time.time() * 1000 <= 1_100, "the window frees up within a second"
    time.sleep(max(0.0, reset / 1000 - time.time()) + 0.05)
    assert len(ex.fetch_ohlcv("BTC/USDT", "1m", since=JAN1, limit=2)) == 2  # after the reset: served
    stats = live.stats()
    assert stats["throttled_by_exchange"]["bybit"]["rate_limit"] == 1 and "bybit" not in stats["bans_by_exchange"]


def test_ip_limit_is_403_and_a_block(make_exchange, live):
    live.configure(bybit_ip_limit=5, bybit_endpoint_limit=0, bybit_ban_seconds=1.5)
    ex = make_exchange("bybit", enableRateLimit=False)
    ex.load_markets()
    with pytest.raises(ccxt.RateLimitExceeded) as info:  # ccxt maps Bybit's HTTP 403 to RateLimitExceeded
        for _ in range(10):
            ex.fetch_time()
    assert "403" in str(info.value) and "access too frequent" in ex.last_http_response
    assert live.get("/v5/market/time")[0] == 403, "blocked, not just over the window"
    assert live.stats()["bybit_blocked_s"]["127.0.0.1"] > 0
    time.sleep(1.6)
    assert live.get("/v5/market/time")[0] == 200
    assert live.stats()["bans_by_exchange"]["bybit"]["ban"] == 2


@pytest.mark.parametrize("kind, spec, error", [
    ("http_429", {"retry_after": 2}, ccxt.RateLimitExceeded),
    ("http_418", {}, ccxt.RateLimitExceeded),
    ("http_5xx", {"status": 502}, ccxt.ExchangeNotAvailable),
    ("http_5xx", {"status": 504}, ccxt.RequestTimeout),
    ("timeout", {"seconds": 2}, ccxt.RequestTimeout),
    ("truncated_json", {}, ccxt.NetworkError),
])
def test_terminal_faults_reach_ccxt_as_bybit_would_send_them(make_exchange, live, kind, spec, error):
    ex = make_exchange("bybit", timeout=1000)
    ex.load_markets()
    live.add_faults({"kind": kind, "exchange": "bybit", "path": "/v5/market/kline", "symbol": "DOGE/USDT", **spec})
    with pytest.raises(error):
        ex.fetch_ohlcv("DOGE/USDT", "1m", since=JAN1, limit=5)
    if kind == "http_429":  # Bybit's own words: retCode 10006 on HTTP 200, the reset time in a header
        assert ex.last_http_response.startswith('{"retCode":10006')
        reset = int(ex.last_response_headers["X-Bapi-Limit-Reset-Timestamp"])
        assert 1_000 < reset - time.time() * 1000 <= 2_100
    assert len(ex.fetch_ohlcv("DOGE/USDT", "1m", since=JAN1, limit=5)) == 5  # count 1: served again
    assert live.stats()["faults_fired"]["by_kind"][kind] == 1


def test_malformed_json_is_a_200_that_is_not_json(make_exchange, live):
    ex = make_exchange("bybit")
    ex.load_markets()
    live.add_faults({"kind": "malformed_json", "exchange": "bybit", "path": "/v5/market/kline"})
    status, _, body = live.get(f"{KLINE}&start={JAN1}&limit=5")
    assert status == 200
    with pytest.raises(ValueError):
        json.loads(body)


def test_row_faults_on_the_newest_first_list(live):
    base = wire(live.get(f"{KLINE}&start={JAN1}&limit=10")[2])["result"]["list"]
    by_ts = {int(r[0]): r for r in base}
    t3, t5, t7 = JAN1 + 3 * MINUTE, JAN1 + 5 * MINUTE, JAN1 + 7 * MINUTE
    live.add_faults([
        {"kind": "duplicate_rows", "exchange": "bybit", "open_times": [t3]},
        {"kind": "missing_minutes", "exchange": "bybit", "open_times": [t5]},
        {"kind": "price_spike", "exchange": "bybit", "open_times": [t7], "factor": 2},
        {"kind": "volume_spike", "exchange": "bybit", "open_times": [t7], "factor": 10},
    ])
    rows = wire(live.get(f"{KLINE}&start={JAN1}&limit=10")[2])["result"]["list"]
    times = [int(r[0]) for r in rows]
    assert times.count(t3) == 2 and t5 not in times and len(rows) == 10
    spiked = rows[times.index(t7)]
    assert Decimal(spiked[4]) == Decimal(by_ts[t7][4]) * 2 and Decimal(spiked[2]) >= Decimal(spiked[4])
    assert Decimal(spiked[5]) == Decimal(by_ts[t7][5]) * 10 and Decimal(spiked[6]) == Decimal(by_ts[t7][6]) * 10
    live.clear_faults()
    live.add_faults({"kind": "out_of_order_rows", "exchange": "bybit", "open_times": [t3]})
    times = [int(r[0]) for r in wire(live.get(f"{KLINE}&start={JAN1}&limit=10")[2])["result"]["list"]]
    assert times != sorted(times, reverse=True) and sorted(times) == sorted(by_ts)


def test_kline_reply_has_the_shape_of_the_recorded_bybit_reply(live):
    """The emulator's kline envelope against ccxt's recorded real Bybit reply (bybit.json, fetchOHLCV
    httpResponse): the same keys at every level, rows of 7 strings, newest first. The recording holds
    retCode and time as strings where Bybit's documentation shows numbers; both parse as integers."""
    recorded = json.loads(RECORDED.read_text())["methods"]["fetchOHLCV"]["responses"][0]["httpResponse"]
    ours = wire(live.get(f"{KLINE}&start={JAN1}&limit=3")[2])
    assert set(ours) == set(recorded)
    assert set(ours["result"]) == set(recorded["result"])
    assert ours["retMsg"] == recorded["retMsg"] == "OK" and ours["retExtInfo"] == recorded["retExtInfo"] == {}
    for key in ("retCode", "time"):
        assert int(ours[key]) >= 0 and int(recorded[key]) >= 0
    assert int(ours["retCode"]) == int(recorded["retCode"]) == 0
    for rows in (ours["result"]["list"], recorded["result"]["list"]):
        assert [len(r) for r in rows] == [7] * len(rows)
        assert all(isinstance(v, str) for r in rows for v in r)
        assert [int(r[0]) for r in rows] == sorted((int(r[0]) for r in rows), reverse=True)
        assert all(Decimal(r[3]) <= min(Decimal(r[1]), Decimal(r[4])) for r in rows)
        assert all(Decimal(r[2]) >= max(Decimal(r[1]), Decimal(r[4])) for r in rows)
    assert [type(v) for v in ours["result"]["list"][0]] == [type(v) for v in recorded["result"]["list"][0]]


def test_the_pipeline_asks_again_at_the_reset_timestamp(live):
    """Bybit's 10006 carries no Retry-After, only X-Bapi-Limit-Reset-Timestamp: the pipeline's call
    (exchanges.call_with_retries) waits until then, under a second here, not a fixed 10 s pause, and
    is served on its second attempt with nothing else asked."""
    import copy

    from marketflow.exchanges import call_with_retries, client_class, rewrite_hosts

    live.configure(bybit_endpoint_limit=1)
    klass = client_class("bybit")
    urls = copy.deepcopy(ccxt.bybit().urls)
    urls["api"] = rewrite_hosts(urls["api"], live.base_url)
    ex = klass({"urls": urls, "options": live.ccxt_options("bybit"), "enableRateLimit": False, "timeout": 10_000})
    ex.load_markets()
    ex.fetch_ohlcv("BTC/USDT", "1m", since=JAN1, limit=2)  # the endpoint's one request of this second
    started = time.monotonic()
    rows, seen = call_with_retries(ex, lambda: ex.fetch_ohlcv("BTC/USDT", "1m", since=JAN1, limit=2), "klines")
    elapsed = time.monotonic() - started
    assert len(rows) == 2
    assert [json.loads(r.body)["retCode"] for r in seen] == [10006, 0]
    assert elapsed < 1.5, f"waited {elapsed:.2f} s: the reset timestamp was not read"
    assert live.stats()["throttled_by_exchange"]["bybit"]["rate_limit"] == 1
