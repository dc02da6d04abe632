"""Bybit v5 spot public market-data endpoints (/v5/market/...) with real wire shapes.

Every answer is Bybit's envelope ``{"retCode": 0, "retMsg": "OK", "result": {...}, "retExtInfo": {},
"time": ms}``; a business error is the same envelope with ``retCode != 0`` and an empty ``result``,
sent with HTTP 200 as Bybit does (only the IP limit answers 403, see ratelimit.BybitLimiter).
Kline rows are all strings ``[startTime, open, high, low, close, volume, turnover]``, newest first,
the in-progress candle included as the first row.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from exchange_emulator.candles import Candle, dec_str_trim
from exchange_emulator.markets import Market, Registry
from exchange_emulator.synthetic import h64
from exchange_emulator.timeframes import BYBIT_INTERVALS

PREFIX = "/v5/"
MAX_CANDLES = 1000  # documented range [1, 1000]; a larger limit is served as 1000
DEFAULT_CANDLES = 200
FAR_FUTURE = 2**62
CATEGORIES = ("spot", "linear", "inverse", "option")
STABLE_QUOTES = ("USDT", "USDC")  # usdIndexPrice is only given for markets quoted in these


class BybitError(Exception):
    """A business error: HTTP 200 with ``retCode`` != 0 (ccxt maps the code/message to its exceptions)."""

    def __init__(self, code: int, msg: str, status: int = 200) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.status = status


def envelope(result: dict, now_ms: int, code: int = 0, msg: str = "OK") -> dict:
    return {"retCode": code, "retMsg": msg, "result": result, "retExtInfo": {}, "time": now_ms}


def error_body(exc: BybitError, now_ms: int) -> dict:
    return envelope({}, now_ms, exc.code, exc.msg)


def _int_param(params: dict[str, str], name: str) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise BybitError(10001, f"params error: {name} invalid")
    return int(raw)


class BybitApi:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def handle(self, path: str, params: dict[str, str], now_ms: int) -> dict:
        name = path[len(PREFIX) :]
        if name == "market/time":
            return envelope(
                {"timeSecond": str(now_ms // 1000), "timeNano": str(now_ms * 1_000_000)}, now_ms
            )
        if name == "market/instruments-info":
            return envelope(self.instruments(params), now_ms)
        if name == "market/kline":
            return envelope(self.kline(params, now_ms), now_ms)
        if name == "market/tickers":
            return envelope(self.tickers(params, now_ms), now_ms)
        raise LookupError(path)

    @staticmethod
    def _category(params: dict[str, str]) -> str:
        category = params.get("category") or ""
        if category not in CATEGORIES:
            raise BybitError(10001, "Illegal category")
        return category

    def _market(self, symbol: str | None) -> Market:
        if not symbol:
            raise BybitError(10001, "params error: symbol invalid")
        market = self.registry.get("bybit", symbol.upper())
        if market is None:
            raise BybitError(10001, "Not supported symbols")
        return market

    # ---- instruments ----------------------------------------------------------------------
    def instruments(self, params: dict[str, str]) -> dict:
        category = self._category(params)
        if category != "spot":
            return {"category": category, "list": [], "nextPageCursor": ""}  # only spot is emulated
        markets = self.registry.for_exchange("bybit")
        if params.get("symbol"):
            found = self.registry.get("bybit", params["symbol"].upper())
            markets = [found] if found else []
        return {"category": "spot", "list": [self._instrument(m) for m in markets]}

    @staticmethod
    def _instrument(m: Market) -> dict:
        return {
            "symbol": m.id,
            "baseCoin": m.base,
            "quoteCoin": m.quote,
            "innovation": "0",
            "status": "Trading",
            "marginTrading": "utaOnly",
            "stTag": "0",
            "lotSizeFilter": {
                "basePrecision": dec_str_trim(m.lot),
                "quotePrecision": "0.00000001",
                "minOrderQty": dec_str_trim(m.lot),
                "maxOrderQty": "9999999999",
                "minOrderAmt": "1",
                "maxOrderAmt": "2000000",
            },
            "priceFilter": {"tickSize": dec_str_trim(m.tick)},
            "riskParameters": {"priceLimitRatioX": "0.05", "priceLimitRatioY": "0.1"},
        }

    # ---- kline ----------------------------------------------------------------------------
    def candle_query(self, params: dict[str, str], now_ms: int) -> tuple[Market, list[Candle]]:
        """Candles newest first. With ``start`` the window begins at the candle holding it (the
        oldest ``limit`` of [start, end]); without it the newest ``limit`` up to ``end`` (or now)."""
        category = self._category(params)
        if category != "spot":
            raise BybitError(10001, "Not supported symbols")  # no derivatives are emulated
        market = self._market(params.get("symbol"))
        tf = BYBIT_INTERVALS.get(params.get("interval") or "")
        if tf is None:
            raise BybitError(10001, "Invalid period!")
        limit = _int_param(params, "limit")
        limit = DEFAULT_CANDLES if limit is None else limit
        if limit < 1:
            raise BybitError(10001, "params error: limit invalid")
        limit = min(limit, MAX_CANDLES)
        start = _int_param(params, "start")
        end = _int_param(params, "end")
        if start is not None and end is not None and start > end:
            raise BybitError(10001, "params error: start must be less than end")
        lo = 0 if start is None else tf.floor(start)
        hi = FAR_FUTURE if end is None else end
        rows = market.candles(tf, lo, min(hi, now_ms), limit, start is None, now_ms)
        rows.reverse()
        return market, rows

    def kline(self, params: dict[str, str], now_ms: int) -> dict:
        market, rows = self.candle_query(params, now_ms)
        return {
            "symbol": market.id,
            "category": "spot",
            "list": [[str(c.ts), c.open, c.high, c.low, c.close, c.volume, c.quote_volume] for c in rows],
        }

    # ---- tickers --------------------------------------------------------------------------
    def tickers(self, params: dict[str, str], now_ms: int) -> dict:
        category = self._category(params)
        if category != "spot":
            return {"category": category, "list": []}
        symbol = params.get("symbol")
        markets = [self._market(symbol)] if symbol else self.registry.for_exchange("bybit")
        items = [self._ticker(m, now_ms) for m in markets]
        return {"category": "spot", "list": [t for t in items if t is not None]}

    @staticmethod
    def _ticker(m: Market, now_ms: int) -> dict | None:
        s = m.rolling_24h(now_ms)
        if s is None:
            return None
        h = h64("bybit", m.id, "book", s.close_ms // 60_000)
        last, prev = Decimal(s.last), Decimal(s.open)
        pcnt = ((last - prev) / prev).quantize(Decimal("0.0001"), ROUND_HALF_UP) if prev else Decimal(0)
        return {
            "symbol": m.id,
            "bid1Price": s.last,
            "bid1Size": dec_str_trim(m.lot * (1 + (h >> 30) % 5000)),
            "ask1Price": dec_str_trim(last + m.tick),
            "ask1Size": dec_str_trim(m.lot * (1 + (h >> 12) % 5000)),
            "lastPrice": s.last,
            "prevPrice24h": s.open,
            "price24hPcnt": format(pcnt, "f"),
            "highPrice24h": s.high,
            "lowPrice24h": s.low,
            "turnover24h": dec_str_trim(Decimal(s.quote_volume)),
            "volume24h": dec_str_trim(Decimal(s.volume)),
            "usdIndexPrice": s.last if m.quote in STABLE_QUOTES else "",
        }
