"""Real ccxt.binance against the emulator over HTTP."""

from __future__ import annotations

import json
import time

import ccxt
import pytest

from exchange_emulator import ccxt_options, ccxt_urls

from .helpers import BINANCE_DAY1, binance_rows

MINUTE = 60_000


def test_ccxt_urls_and_options_are_static_dicts():
    urls = ccxt_urls("binance", "http://h:1/")
    assert urls["api"]["public"] == "http://h:1/api/v3"
    assert urls["api"]["v1"] == "http://h:1/api/v1"
    assert urls["api"]["fapiPublic"] == "http://h:1/fapi/v1"
    real = ccxt.binance().urls["api"]
    assert set(urls["api"]) >= set(real), "every binance api url must be redirected"
    assert all(v.startswith("http://h:1/") for v in urls["api"].values())
    assert ccxt_options("binance")["fetchMarkets"] == {"types": ["spot"]}
    with pytest.raises(ValueError):
        ccxt_urls("kraken", "http://h:1")


def test_load_markets_uses_only_exchange_info(make_exchange, live):
    ex = make_exchange("binance")
    markets = ex.load_markets()
    assert {"ETH/USDT", "BTC/USDT", "SOL/USDT", "XRP/USDT", "DOGE/USDT"} <= set(markets)
    eth = markets["ETH/USDT"]
    assert eth["id"] == "ETHUSDT" and eth["spot"] and eth["active"]
    assert eth["precision"]["price"] == "0.01000000"  # inferred from the recorded prices
    assert eth["precision"]["amount"] == "0.00010000"
    assert live.stats()["requests"]["binance"] == {"/api/v3/exchangeInfo": 1}
    assert ex.fetch_time() > 1_600_000_000_000


def test_fetch_ohlcv_returns_exactly_the_recorded_candles(make_exchange):
    ex = make_exchange("binance")
    raw = binance_rows()
    got = ex.fetch_ohlcv("ETH/USDT", "1m", since=BINANCE_DAY1, limit=1000)
    assert len(got) == 1000
    assert got == [[int(r[0]), r[1], r[2], r[3], r[4], r[5]] for r in raw[:1000]]
    assert got[0][1] == "1983.55000000"
    # next page + until (inclusive endTime), default limit becomes 1000 when since+until are given
    since = got[-1][0] + MINUTE
    until = since + 599 * MINUTE
    page = ex.fetch_ohlcv("ETH/USDT", "1m", since=since, params={"until": until})
    assert page == [[int(r[0]), r[1], r[2], r[3], r[4], r[5]] for r in raw[1000:1600]]
    # raw wire rows: all 12 Binance columns, ascending, exact strings
    body = json.loads(ex.last_http_response)
    assert body[0] == [
        int(raw[1000][0]),
        *raw[1000][1:6],
        int(raw[1000][6]),
        raw[1000][7],
        int(raw[1000][8]),
        raw[1000][9],
        raw[1000][10],
        "0",
    ]
    assert [r[0] for r in body] == sorted(r[0] for r in body)


def test_outside_recorded_range_is_empty_and_per_call_max_is_1000(make_exchange, live):
    ex = make_exchange("binance")
    assert (
        ex.fetch_ohlcv(
            "ETH/USDT", "1m", since=BINANCE_DAY1 - 10 * 86_400_000, params={"until": BINANCE_DAY1 - 1}
        )
        == []
    )
    assert ex.fetch_ohlcv("ETH/USDT", "1m", since=BINANCE_DAY1 + 3 * 86_400_000) == []
    assert len(ex.fetch_ohlcv("ETH/USDT", "1m", since=BINANCE_DAY1, limit=5000)) == 1000  # ccxt caps at 1000
    status, _, body = live.get("/api/v3/klines?symbol=ETHUSDT&interval=1m&limit=1001")
    assert status == 400 and json.loads(body)["code"] == -1130
    status, _, body = live.get("/api/v3/klines?symbol=ETHUSDT&interval=1m")
    assert status == 200 and len(json.loads(body)) == 500  # default limit: the last 500 recorded
    assert json.loads(body)[-1][0] == BINANCE_DAY1 + 2879 * MINUTE


def test_higher_timeframe_is_rolled_up_from_recorded_minutes(make_exchange):
    ex = make_exchange("binance")
    hours = ex.fetch_ohlcv("ETH/USDT", "1h", since=BINANCE_DAY1, limit=100)
    assert len(hours) == 48
    raw = binance_rows()[:60]
    assert hours[0][1] == raw[0][1] and hours[0][4] == raw[-1][4]
    assert hours[0][2] == max((r[2] for r in raw), key=float)


def test_synthetic_market_has_in_progress_candle(make_exchange):
    ex = make_exchange("binance")
    rows = ex.fetch_ohlcv("BTC/USDT", "1m", limit=3)
    now = int(time.time() * 1000)
    assert len(rows) == 3 and rows[-1][0] <= now < rows[-1][0] + MINUTE
    body = json.loads(ex.last_http_response)
    assert body[-1][6] > now  # close time of the current candle lies in the future
    assert body[-2][6] < now


def test_fetch_ticker_and_tickers(make_exchange):
    ex = make_exchange("binance")
    t = ex.fetch_ticker("ETH/USDT")
    raw = binance_rows()
    assert t["last"] == raw[-1][4]  # recorded market: as of the end of the recording
    assert t["open"] == raw[1440][1]
    assert t["timestamp"] == int(raw[-1][6])
    s = ex.fetch_ticker("BTC/USDT")
    assert s["bid"] == s["last"] and float(s["ask"]) > float(s["bid"])
    assert abs(s["timestamp"] - time.time() * 1000) < 10_000
    tickers = ex.fetch_tickers(["BTC/USDT", "ETH/USDT"])
    assert set(tickers) == {"BTC/USDT", "ETH/USDT"}


def test_unknown_symbol_and_bad_interval(live):
    status, headers, body = live.get("/api/v3/klines?symbol=NOPEUSDT&interval=1m")
    assert status == 400 and json.loads(body) == {"code": -1121, "msg": "Invalid symbol."}
    assert "X-MBX-USED-WEIGHT-1M" in headers
    status, _, body = live.get("/api/v3/klines?symbol=ETHUSDT&interval=7m")
    assert status == 400 and json.loads(body)["code"] == -1120
    status, _, body = live.get("/api/v3/ticker/price?symbols=%5B%22ETHUSDT%22%2C%22BTCUSDT%22%5D")
    assert status == 200 and [p["symbol"] for p in json.loads(body)] == ["ETHUSDT", "BTCUSDT"]
    status, _, body = live.get("/api/v3/ticker/bookTicker?symbol=ETHUSDT")
    assert status == 200 and json.loads(body)["bidPrice"] == binance_rows()[-1][4]


def test_weight_header_and_429_then_418(make_exchange, live):
    live.configure(binance_weight_limit=40, ban_after=2, ban_seconds=1)
    ex = make_exchange("binance")
    ex.load_markets()  # weight 20
    assert ex.last_response_headers["X-MBX-USED-WEIGHT-1M"] == "20"
    ex.fetch_ohlcv("ETH/USDT", "1m", since=BINANCE_DAY1, limit=10)  # +2
    assert ex.last_response_headers["X-MBX-USED-WEIGHT-1M"] in ("22", "2")  # "2" if a minute just began
    with pytest.raises(ccxt.DDoSProtection) as info:  # binance maps 429 to DDoSProtection
        for _ in range(40):  # (a wall-clock minute may roll over meanwhile, hence the loop)
            ex.fetch_ohlcv("ETH/USDT", "1m", since=BINANCE_DAY1, limit=10)
    assert " 429 " in str(info.value) and "-1003" in str(info.value)
    assert int(ex.last_response_headers["Retry-After"]) >= 1
    with pytest.raises(ccxt.DDoSProtection) as info:  # ignoring Retry-After gets the IP banned
        for _ in range(5):
            try:
                ex.fetch_ohlcv("ETH/USDT", "1m", since=BINANCE_DAY1, limit=10)
            except ccxt.DDoSProtection as exc:
                if " 418 " in str(exc):
                    raise
    assert " 418 " in str(info.value) and "IP banned until" in str(info.value)
    stats = live.stats()
    assert stats["http_429_by_cause"]["rate_limit"] >= 2 and stats["http_418_by_cause"]["ban"] == 1
    assert stats["binance_weight"]["127.0.0.1"]["bans"] == 1


def test_clock_offset_moves_server_time_and_the_weight_minute(live):
    """clock_offset_s runs the exchange's clock ahead: serverTime and the minute a weight budget
    lasts to follow it. The offset puts the exchange half a minute away from the host's second, so
    a Retry-After counted on the host's clock would be ~30 s off."""
    host_second = time.time() % 60
    exchange_second = (host_second + 30) % 60
    offset = exchange_second - host_second
    live.configure(binance_weight_limit=3, clock_offset_s=offset)
    assert live.admin("GET", "/config")["clock_offset_s"] == offset
    _, _, body = live.get("/api/v3/time")
    assert abs(json.loads(body)["serverTime"] / 1000 - (time.time() + offset)) < 1
    klines = f"/api/v3/klines?symbol=ETHUSDT&interval=1m&startTime={BINANCE_DAY1}&limit=10"
    assert live.get(klines)[0] == 200  # weight 2, with the time's 1 the whole budget
    status, headers, _ = live.get(klines)
    left_in_exchange_minute = 60 - (time.time() + offset) % 60
    assert status == 429 and abs(int(headers["Retry-After"]) - left_in_exchange_minute) <= 1.5
