"""OKX spot public market-data endpoints (/api/v5) with real wire shapes."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from exchange_emulator.candles import Candle, dec_str_trim
from exchange_emulator.markets import Market, Registry
from exchange_emulator.synthetic import h64
from exchange_emulator.timeframes import OKX_BARS

MAX_CANDLES = 300  # /market/candles; ccxt also sends up to 300 to /market/history-candles
DEFAULT_CANDLES = 100
RECENT_BARS = 1440  # /market/candles only serves the most recent 1440 bars
FAR_FUTURE = 2**62


class OkxError(Exception):
    def __init__(self, code: str, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.status = status
        self.body = {"code": code, "msg": msg, "data": []}


def envelope(data: list) -> dict:
    return {"code": "0", "msg": "", "data": data}


def _empty(name: str) -> OkxError:
    return OkxError("50014", f"Parameter {name} can not be empty.")


def _int_param(params: dict[str, str], name: str) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise OkxError("51000", f"Parameter {name} error")
    return int(raw)


class OkxApi:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def _market(self, inst_id: str | None) -> Market:
        if not inst_id:
            raise _empty("instId")
        market = self.registry.get("okx", inst_id.upper())
        if market is None:
            raise OkxError("51001", "Instrument ID does not exist")
        return market

    def handle(self, path: str, params: dict[str, str], now_ms: int) -> Any:
        name = path[len("/api/v5/") :]
        if name == "public/time":
            return envelope([{"ts": str(now_ms)}])
        if name == "public/instruments":
            return self.instruments(params)
        if name in ("market/candles", "market/history-candles"):
            return envelope(self.candles(name == "market/history-candles", params, now_ms))
        if name == "market/ticker":
            return envelope([self._ticker(self._market(params.get("instId")), now_ms)])
        if name == "market/tickers":
            inst_type = params.get("instType")
            if not inst_type:
                raise _empty("instType")
            if inst_type.upper() != "SPOT":
                return envelope([])
            items = [self._ticker(m, now_ms) for m in self.registry.for_exchange("okx")]
            return envelope([t for t in items if t is not None])
        raise LookupError(path)

    # ---- instruments ----------------------------------------------------------------------
    def instruments(self, params: dict[str, str]) -> dict:
        inst_type = params.get("instType")
        if not inst_type:
            raise _empty("instType")
        if inst_type.upper() not in ("SPOT", "MARGIN", "SWAP", "FUTURES", "OPTION"):
            raise OkxError("51000", "Parameter instType error")
        if inst_type.upper() != "SPOT":
            return envelope([])  # only spot instruments are emulated
        markets = self.registry.for_exchange("okx")
        if params.get("instId"):
            markets = [self._market(params["instId"])]
        return envelope([self._instrument(m) for m in markets])

    @staticmethod
    def _instrument(m: Market) -> dict:
        return {
            "alias": "",
            "auctionEndTime": "",
            "baseCcy": m.base,
            "category": "1",
            "ctMult": "",
            "ctType": "",
            "ctVal": "",
            "ctValCcy": "",
            "contTdSwTime": "",
            "expTime": "",
            "futureSettlement": False,
            "instFamily": "",
            "instId": m.id,
            "instIdCode": h64("okx", m.id) % 10_000_000,
            "instType": "SPOT",
            "lever": "",
            "listTime": str(m.listing_ms),
            "lotSz": dec_str_trim(m.lot),
            "maxIcebergSz": "9999999999.0000000000000000",
            "maxLmtAmt": "20000000",
            "maxLmtSz": "9999999999",
            "maxMktAmt": "1000000",
            "maxMktSz": "1000000",
            "maxStopSz": "1000000",
            "maxTriggerSz": "9999999999.0000000000000000",
            "maxTwapSz": "9999999999.0000000000000000",
            "minSz": dec_str_trim(m.lot),
            "openType": "",
            "optType": "",
            "quoteCcy": m.quote,
            "ruleType": "normal",
            "settleCcy": "",
            "state": "live",
            "stk": "",
            "tickSz": dec_str_trim(m.tick),
            "tradeQuoteCcyList": [m.quote],
            "uly": "",
        }

    # ---- candles --------------------------------------------------------------------------
    def candle_query(self, history: bool, params: dict[str, str], now_ms: int) -> list[Candle]:
        """Candles newest first for (before, after) - both exclusive."""
        market = self._market(params.get("instId"))
        tf = OKX_BARS.get(params.get("bar") or "1m")
        if tf is None:
            raise OkxError("51000", "Parameter bar error")
        limit = _int_param(params, "limit")
        limit = DEFAULT_CANDLES if limit is None else limit
        if not 1 <= limit <= MAX_CANDLES:
            raise OkxError("51000", "Parameter limit error")
        after = _int_param(params, "after")
        before = _int_param(params, "before")
        hi = FAR_FUTURE if after is None else after - 1
        lo = 0 if before is None else before + 1
        if not history:
            oldest = tf.floor(now_ms)
            if tf.ms:
                oldest -= (RECENT_BARS - 1) * tf.ms
            else:
                for _ in range(RECENT_BARS - 1):
                    oldest = tf.prev(oldest)
            lo = max(lo, oldest)
        rows = market.candles(tf, lo, min(hi, now_ms), limit, True, now_ms)
        rows.reverse()
        return rows

    def candles(self, history: bool, params: dict[str, str], now_ms: int) -> list[list[str]]:
        return [
            [str(c.ts), c.open, c.high, c.low, c.close, c.volume, c.quote_volume, c.quote_volume2, c.confirm]
            for c in self.candle_query(history, params, now_ms)
        ]

    # ---- tickers --------------------------------------------------------------------------
    def _ticker(self, m: Market, now_ms: int) -> dict | None:
        s = m.rolling_24h(now_ms)
        if s is None:
            return None
        h = h64("okx", m.id, "book", s.close_ms // 60_000)
        last = Decimal(s.last)
        return {
            "instType": "SPOT",
            "instId": m.id,
            "last": s.last,
            "lastSz": dec_str_trim(m.lot * (1 + h % 1000)),
            "askPx": dec_str_trim(last + m.tick),
            "askSz": dec_str_trim(m.lot * (1 + (h >> 12) % 5000)),
            "bidPx": s.last,
            "bidSz": dec_str_trim(m.lot * (1 + (h >> 30) % 5000)),
            "open24h": s.open,
            "high24h": s.high,
            "low24h": s.low,
            "volCcy24h": s.quote_volume,
            "vol24h": s.volume,
            "ts": str(s.close_ms),
            "sodUtc0": s.sod_utc0,
            "sodUtc8": s.sod_utc8,
        }
