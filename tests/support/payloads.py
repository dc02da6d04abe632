"""Raw payload documents as the extract step stores them, for load-path tests."""

from __future__ import annotations

import time

from marketflow.exchanges import HttpExchange
from marketflow.raw_store import PayloadContext, RawStore
from marketflow.timeframes import Window

T0 = 1_660_435_200_000  # 2022-08-14 00:00 UTC
MIN = 60_000
BINANCE_MARKET = {"id": "ETHUSDT", "symbol": "ETH/USDT", "base": "ETH", "quote": "USDT", "type": "spot"}
OKX_MARKET = {"id": "BTC-USDT", "symbol": "BTC/USDT", "base": "BTC", "quote": "USDT", "type": "spot"}


def kline(ts: int, o="10.0", h="11.0", low="9.0", c="10.5", v="5.0") -> list:
    return [ts, o, h, low, c, v, ts + MIN - 1, "50.0", 7, "2.0", "20.0", "0"]


def store(raw: RawStore, body: str, *, exchange="binance", symbol="ETH/USDT", status=200,
          params: dict | None = None) -> dict:
    market = BINANCE_MARKET if exchange == "binance" else OKX_MARKET
    ctx = PayloadContext(exchange, exchange, symbol, "1m", "ohlcv", Window(T0, T0 + 60 * MIN), "run-1", 1, market)
    query = "&".join(f"{k}={v}" for k, v in (params or {"symbol": market["id"], "interval": "1m"}).items())
    url = f"http://emulator/api/v3/klines?{query}"
    [pid] = raw.save_responses(ctx, [HttpExchange("GET", url, status, {}, body, int(time.time() * 1000))])
    return raw.get_payloads([pid])[0]


# A day ahead: still in the future however long the suite runs before this case.
NOW_MIN = int(time.time() * 1000) // MIN * MIN
# Malformed candle rows: (case, row, reason fragment). The corpus test puts each between two
# good rows in one payload; the parsing test checks both parse paths treat them alike.
BAD_ROWS = [
    ("high below low", kline(T0 + MIN, h="8.0"), "high 8.0 is below low 9.0"),
    ("high below close", kline(T0 + MIN, h="10.2"), "high 10.2 is below open/close"),
    ("low above open", kline(T0 + MIN, low="10.4"), "low 10.4 is above open/close"),
    ("negative volume", kline(T0 + MIN, v="-1"), "volume is negative"),
    ("negative low", kline(T0 + MIN, o="-1", low="-2", c="-1", h="-1"), "is negative"),
    ("negative quote volume", [*kline(T0 + MIN)[:7], "-5", *kline(T0 + MIN)[8:]], "quote_volume is negative"),
    ("negative trades", [*kline(T0 + MIN)[:8], -3, *kline(T0 + MIN)[9:]], "trades is negative"),
    ("fractional trades", [*kline(T0 + MIN)[:8], "7.5", *kline(T0 + MIN)[9:]], "not a whole number"),
    ("NaN close", kline(T0 + MIN, c="NaN"), "not a finite number"),
    ("infinite open", kline(T0 + MIN, o="Infinity", h="Infinity"), "not a finite number"),
    ("huge price", kline(T0 + MIN, h="1e25", c="1e25"), "too large"),
    ("misaligned open time", kline(T0 + MIN + 30_000), "not aligned to the 1m timeframe"),
    ("open time in seconds", kline((T0 + MIN) // 1000), "not aligned"),
    ("negative open time", kline(-MIN), "before 1970"),
    ("future candle", kline(NOW_MIN + 1440 * MIN), "closes after the response was received"),
    ("word for a price", kline(T0 + MIN, o="ten"), "unparseable row"),
    ("boolean price", [*kline(T0 + MIN)[:1], True, *kline(T0 + MIN)[2:]], "unparseable row"),
    ("float price", [*kline(T0 + MIN)[:1], 10.0, *kline(T0 + MIN)[2:]], "unparseable row"),
    ("missing volume", kline(T0 + MIN, v=None), "unparseable row"),
    ("short row", [T0 + MIN, "1", "2"], "unparseable row"),
    ("empty row", [], "unparseable row"),
    ("null row", None, "unparseable row"),
    ("object row", {"t": T0 + MIN, "o": "1"}, "unparseable row"),
    ("string row", "not a row", "unparseable row"),
    ("nested list price", [*kline(T0 + MIN)[:1], ["10"], *kline(T0 + MIN)[2:]], "unparseable row"),
    ("text open time", ["soon", *kline(T0 + MIN)[1:]], "unparseable row"),
]
