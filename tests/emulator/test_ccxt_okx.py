"""Real ccxt.okx against the emulator over HTTP."""

from __future__ import annotations

import json
import time

import ccxt
import pytest

from exchange_emulator import ccxt_options, ccxt_urls

from .helpers import OKX_FIRST, okx_rows

MINUTE = 60_000


def expected(rows: list[dict[str, str]]) -> list[list]:
    return [[int(r["open_time"]), r["open"], r["high"], r["low"], r["close"], r["vol"]] for r in rows]


def test_ccxt_urls_and_options():
    assert ccxt_urls("okx", "http://h:1") == {"api": {"rest": "http://h:1"}, "test": {"rest": "http://h:1"}}
    assert ccxt_options("okx")["fetchMarkets"] == {"types": ["spot"]}


def test_load_markets_only_spot_instruments(make_exchange, live):
    ex = make_exchange("okx")
    markets = ex.load_markets()
    assert {"BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT", "DOGE/USDT"} <= set(markets)
    btc = markets["BTC/USDT"]
    assert btc["id"] == "BTC-USDT" and btc["spot"] and btc["active"]
    assert btc["precision"]["price"] == "0.1" and btc["precision"]["amount"] == "0.00000001"
    assert live.stats()["requests"]["okx"] == {"/api/v5/public/instruments": 1}
    status, _, body = live.get("/api/v5/public/instruments?instType=SWAP")
    assert status == 200 and json.loads(body) == {"code": "0", "msg": "", "data": []}
    assert ex.fetch_time() > 1_600_000_000_000


def test_fetch_ohlcv_returns_exactly_the_recorded_candles(make_exchange, live):
    ex = make_exchange("okx")
    rows = okx_rows()
    got = ex.fetch_ohlcv("BTC/USDT", "1m", since=OKX_FIRST, limit=300)
    assert got == expected(rows[:300])
    assert got[0][1:5] == ["87084", "87106.1", "87076.9", "87101.8"]
    # old data -> ccxt picks /history-candles; raw body is newest first with all 9 string columns
    assert "/api/v5/market/history-candles" in live.stats()["requests"]["okx"]
    body = json.loads(ex.last_http_response)
    assert body["code"] == "0"
    ts = [int(r[0]) for r in body["data"]]
    assert ts == sorted(ts, reverse=True) and len(ts) == 300
    r0 = rows[299]
    assert body["data"][0] == [
        r0["open_time"],
        r0["open"],
        r0["high"],
        r0["low"],
        r0["close"],
        r0["vol"],
        r0["vol_ccy"],
        r0["vol_quote"],
        r0["confirm"],
    ]
    # until is exclusive on OKX ("after" = records earlier than ts)
    since = OKX_FIRST + 300 * MINUTE
    page = ex.fetch_ohlcv("BTC/USDT", "1m", since=since, limit=300, params={"until": since + 120 * MINUTE})
    assert page == expected(rows[300:420])


def test_per_call_max_is_300_and_errors_are_enveloped(make_exchange, live):
    ex = make_exchange("okx")
    assert len(ex.fetch_ohlcv("BTC/USDT", "1m", since=OKX_FIRST, limit=1000)) == 300  # ccxt caps at 300
    status, _, body = live.get("/api/v5/market/history-candles?instId=BTC-USDT&limit=301")
    assert status == 400 and json.loads(body)["code"] == "51000"
    status, _, body = live.get("/api/v5/market/ticker?instId=NOPE-USDT")
    assert json.loads(body) == {"code": "51001", "msg": "Instrument ID does not exist", "data": []}
    with pytest.raises(ccxt.BadSymbol):
        ex.publicGetMarketTicker({"instId": "NOPE-USDT"})
    # /candles only serves the most recent 1440 bars, so the 2025 recording is not there
    status, _, body = live.get(f"/api/v5/market/candles?instId=BTC-USDT&after={OKX_FIRST + 100 * MINUTE}")
    assert json.loads(body)["data"] == []
    status, _, body = live.get(f"/api/v5/market/history-candles?instId=BTC-USDT&after={OKX_FIRST}")
    assert json.loads(body)["data"] == []  # nothing before the recording


def test_before_and_after_are_exclusive(live):
    path = f"/api/v5/market/history-candles?instId=BTC-USDT&before={OKX_FIRST}&after={OKX_FIRST + 5 * MINUTE}"
    _, _, body = live.get(path)
    assert [int(r[0]) for r in json.loads(body)["data"]] == [OKX_FIRST + k * MINUTE for k in (4, 3, 2, 1)]


def test_synthetic_in_progress_candle_and_recent_window(make_exchange):
    ex = make_exchange("okx")
    rows = ex.fetch_ohlcv("ETH/USDT", "1m", limit=5)
    now = int(time.time() * 1000)
    assert rows[-1][0] <= now < rows[-1][0] + MINUTE
    data = json.loads(ex.last_http_response)["data"]
    assert data[0][8] == "0" and all(r[8] == "1" for r in data[1:])  # newest first, in progress
    assert int(data[0][0]) > int(data[1][0])
    # utc bars for >= 6h: ccxt sends 1Dutc
    days = ex.fetch_ohlcv("ETH/USDT", "1d", limit=3)
    assert days[-1][0] % 86_400_000 == 0
    assert "bar=1Dutc" in ex.last_request_url


def test_fetch_ticker_and_tickers(make_exchange):
    ex = make_exchange("okx")
    rows = okx_rows()
    t = ex.fetch_ticker("BTC/USDT")
    assert t["last"] == rows[-1]["close"] and t["open"] == rows[1440]["open"]
    assert t["info"]["sodUtc8"] == rows[1440]["open"]  # the file's days are UTC+8 days
    s = ex.fetch_ticker("SOL/USDT")
    assert s["bid"] == s["last"] and abs(s["timestamp"] - time.time() * 1000) < 10_000
    tickers = ex.fetch_tickers()
    assert {"BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT", "DOGE/USDT"} <= set(tickers)


def test_rate_limit_429_50011(make_exchange, live):
    live.configure(okx_rate_limit_factor=0.1)  # ticker: 2 requests per 2 s
    ex = make_exchange("okx")
    ex.load_markets()
    with pytest.raises(ccxt.RateLimitExceeded):
        for _ in range(5):
            ex.fetch_ticker("BTC/USDT")
    body = json.loads(ex.last_http_response)
    assert body["code"] == "50011"
    assert live.stats()["http_429_by_cause"]["rate_limit"] == 1
