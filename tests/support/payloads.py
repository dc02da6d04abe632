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
