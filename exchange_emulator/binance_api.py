"""Binance spot public market-data endpoints (/api/v3) with real wire shapes."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from exchange_emulator.candles import Candle, fixed_str
from exchange_emulator.markets import Market, Registry
from exchange_emulator.synthetic import h64
from exchange_emulator.timeframes import BINANCE_INTERVALS

FAR_FUTURE = 2**62
MAX_KLINES = 1000
DEFAULT_KLINES = 500


class BinanceError(Exception):
    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.status = status
        self.body = {"code": code, "msg": msg}


def _mandatory(name: str) -> BinanceError:
    return BinanceError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")


INVALID_SYMBOL = (-1121, "Invalid symbol.")


def _int_param(params: dict[str, str], name: str) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if not raw.lstrip("-").isdigit():
        raise BinanceError(
            -1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'."
        )
    return int(raw)


def _symbols_param(params: dict[str, str]) -> list[str] | None:
    raw = params.get("symbols")
    if raw is None:
        return None
    try:
        value = json.loads(raw)
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value) or not value:
            raise ValueError
    except ValueError:
        raise BinanceError(
            -1100,
            "Illegal characters found in parameter 'symbols'; legal range is "
            '\'^\\[("[A-Z0-9-_.]{1,20}"(,"[A-Z0-9-_.]{1,20}"){0,}){0,1}\\]$\'.',
        ) from None
    return value


def request_weight(path: str, params: dict[str, str]) -> int:
    """Binance spot IP weights (see the spot API docs 'Market Data endpoints')."""
    name = path.rsplit("/api/v3/", 1)[-1]
    if name in ("klines", "uiKlines"):
        return 2
    if name == "exchangeInfo":
        return 20
    if name in ("ticker/24hr", "ticker"):
        if "symbol" in params:
            return 2
        try:
            n = len(json.loads(params["symbols"]))
        except (KeyError, ValueError, TypeError):
            return 80
        return 2 if n <= 20 else 40 if n <= 100 else 80
    if name in ("ticker/price", "ticker/bookTicker"):
        return 2 if "symbol" in params else 4
    return 1


class BinanceApi:
    def __init__(self, registry: Registry, weight_limit: int) -> None:
        self.registry = registry
        self.weight_limit = weight_limit

    def _market(self, symbol: str | None) -> Market:
        if not symbol:
            raise _mandatory("symbol")
        market = self.registry.get("binance", symbol.upper())
        if market is None:
            raise BinanceError(*INVALID_SYMBOL)
        return market

    def _markets(self, params: dict[str, str]) -> tuple[list[Market], bool]:
        """(markets, single) for endpoints taking symbol | symbols | nothing."""
        if params.get("symbol"):
            return [self._market(params["symbol"])], True
        symbols = _symbols_param(params)
        if symbols is None:
            return self.registry.for_exchange("binance"), False
        return [self._market(s) for s in symbols], False

    def handle(self, path: str, params: dict[str, str], now_ms: int) -> Any:
        name = path[len("/api/v3/") :]
        if name == "ping":
            return {}
        if name == "time":
            return {"serverTime": now_ms}
        if name == "exchangeInfo":
            return self.exchange_info(params, now_ms)
        if name in ("klines", "uiKlines"):
            return self.klines(params, now_ms)
        if name == "ticker/24hr":
            return self.ticker_24hr(params, now_ms)
        if name == "ticker/price":
            return self._each(params, now_ms, self._price)
        if name == "ticker/bookTicker":
            return self._each(params, now_ms, self._book)
        raise LookupError(path)

    # ---- exchangeInfo ---------------------------------------------------------------------
    def exchange_info(self, params: dict[str, str], now_ms: int) -> dict:
        markets, _ = self._markets(params)
        return {
            "timezone": "UTC",
            "serverTime": now_ms,
            "rateLimits": [
                {
                    "rateLimitType": "REQUEST_WEIGHT",
                    "interval": "MINUTE",
                    "intervalNum": 1,
                    "limit": self.weight_limit or 6000,
                },
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
                {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
                {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
            ],
            "exchangeFilters": [],
            "symbols": [self._symbol_info(m) for m in markets],
        }

    @staticmethod
    def _symbol_info(m: Market) -> dict:
        tick = fixed_str(m.tick, 8)
        step = fixed_str(m.lot, 8)
        return {
            "symbol": m.id,
            "status": "TRADING",
            "baseAsset": m.base,
            "baseAssetPrecision": 8,
            "quoteAsset": m.quote,
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "baseCommissionPrecision": 8,
            "quoteCommissionPrecision": 8,
            "orderTypes": [
                "LIMIT",
                "LIMIT_MAKER",
                "MARKET",
                "STOP_LOSS",
                "STOP_LOSS_LIMIT",
                "TAKE_PROFIT",
                "TAKE_PROFIT_LIMIT",
            ],
            "icebergAllowed": True,
            "ocoAllowed": True,
            "otoAllowed": True,
            "quoteOrderQtyMarketAllowed": True,
            "allowTrailingStop": True,
            "cancelReplaceAllowed": True,
            "amendAllowed": True,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": [
                {
                    "filterType": "PRICE_FILTER",
                    "minPrice": tick,
                    "maxPrice": "1000000.00000000",
                    "tickSize": tick,
                },
                {"filterType": "LOT_SIZE", "minQty": step, "maxQty": "9000000.00000000", "stepSize": step},
                {"filterType": "ICEBERG_PARTS", "limit": 10},
                {
                    "filterType": "MARKET_LOT_SIZE",
                    "minQty": "0.00000000",
                    "maxQty": "9000000.00000000",
                    "stepSize": "0.00000000",
                },
                {
                    "filterType": "TRAILING_DELTA",
                    "minTrailingAboveDelta": 10,
                    "maxTrailingAboveDelta": 2000,
                    "minTrailingBelowDelta": 10,
                    "maxTrailingBelowDelta": 2000,
                },
                {
                    "filterType": "PERCENT_PRICE_BY_SIDE",
                    "bidMultiplierUp": "5",
                    "bidMultiplierDown": "0.2",
                    "askMultiplierUp": "5",
                    "askMultiplierDown": "0.2",
                    "avgPriceMins": 5,
                },
                {
                    "filterType": "NOTIONAL",
                    "minNotional": "5.00000000",
                    "applyMinToMarket": True,
                    "maxNotional": "9000000.00000000",
                    "applyMaxToMarket": False,
                    "avgPriceMins": 5,
                },
                {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
                {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 5},
            ],
            "permissions": ["SPOT"],
            "permissionSets": [["SPOT"]],
            "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
        }

    # ---- klines ---------------------------------------------------------------------------
    def kline_query(self, params: dict[str, str], now_ms: int) -> tuple[Market, list[Candle]]:
        market = self._market(params.get("symbol"))
        interval = params.get("interval")
        if not interval:
            raise _mandatory("interval")
        tf = BINANCE_INTERVALS.get(interval)
        if tf is None:
            raise BinanceError(-1120, "Invalid interval.")
        tz = params.get("timeZone")
        if tz not in (None, "", "0", "+0", "-0", "00:00", "+00:00", "-00:00"):
            raise BinanceError(-1130, "Data sent for parameter 'timeZone' is not valid.")
        limit = _int_param(params, "limit")
        limit = DEFAULT_KLINES if limit is None else limit
        if not 1 <= limit <= MAX_KLINES:
            raise BinanceError(-1130, "Data sent for parameter 'limit' is not valid.")
        start = _int_param(params, "startTime")
        end = _int_param(params, "endTime")
        if start is not None and end is not None and start > end:
            raise BinanceError(-1023, "Start time is greater than end time.")
        if start is not None:
            rows = market.candles(tf, start, FAR_FUTURE if end is None else end, limit, False, now_ms)
        else:
            rows = market.candles(tf, 0, now_ms if end is None else end, limit, True, now_ms)
        return market, rows

    def klines(self, params: dict[str, str], now_ms: int) -> list[list]:
        _, rows = self.kline_query(params, now_ms)
        return [
            [
                c.ts,
                c.open,
                c.high,
                c.low,
                c.close,
                c.volume,
                c.close_ts,
                c.quote_volume,
                c.trades,
                c.taker_base,
                c.taker_quote,
                "0",
            ]
            for c in rows
        ]

    # ---- tickers --------------------------------------------------------------------------
    def _each(self, params: dict[str, str], now_ms: int, fn: Any) -> Any:
        markets, single = self._markets(params)
        items = [fn(m, now_ms) for m in markets]
        items = [i for i in items if i is not None]
        return items[0] if single and items else items

    def ticker_24hr(self, params: dict[str, str], now_ms: int) -> Any:
        kind = (params.get("type") or "FULL").upper()
        if kind not in ("FULL", "MINI"):
            raise BinanceError(-1130, "Data sent for parameter 'type' is not valid.")
        return self._each(params, now_ms, lambda m, now: self._ticker(m, now, kind == "MINI"))

    def _quotes(self, m: Market, last: str, when: int) -> tuple[str, str, str, str]:
        """Deterministic top of book around ``last``: bid = last, ask = last + 1 tick."""
        h = h64(m.exchange, m.id, "book", when // 60_000)
        bid_qty = m.lot * (1 + h % 5000)
        ask_qty = m.lot * (1 + (h >> 20) % 5000)
        return (
            fixed_str(Decimal(last), 8),
            fixed_str(bid_qty, 8),
            fixed_str(Decimal(last) + m.tick, 8),
            fixed_str(ask_qty, 8),
        )

    def _ticker(self, m: Market, now_ms: int, mini: bool) -> dict | None:
        s = m.rolling_24h(now_ms)
        if s is None:
            return None
        first_id = -1
        last_id = -1
        if s.trades:
            first_id = 1_000_000 + (s.open_ms // 60_000) * 50 + h64(m.id, "ids") % 50
            last_id = first_id + s.trades - 1
        volume = Decimal(s.volume)
        if mini:
            return {
                "symbol": m.id,
                "openPrice": s.open,
                "highPrice": s.high,
                "lowPrice": s.low,
                "lastPrice": s.last,
                "volume": s.volume,
                "quoteVolume": s.quote_volume,
                "openTime": s.open_ms,
                "closeTime": s.close_ms,
                "firstId": first_id,
                "lastId": last_id,
                "count": s.trades,
            }
        change = Decimal(s.last) - Decimal(s.open)
        pct = change / Decimal(s.open) * 100 if Decimal(s.open) else Decimal(0)
        vwap = Decimal(s.quote_volume) / volume if volume else Decimal(s.last)
        bid, bid_qty, ask, ask_qty = self._quotes(m, s.last, s.close_ms)
        return {
            "symbol": m.id,
            "priceChange": fixed_str(change, 8),
            "priceChangePercent": fixed_str(pct, 3),
            "weightedAvgPrice": fixed_str(vwap, 8),
            "prevClosePrice": s.prev_close,
            "lastPrice": s.last,
            "lastQty": fixed_str(m.lot * (1 + h64(m.id, s.close_ms) % 1000), 8),
            "bidPrice": bid,
            "bidQty": bid_qty,
            "askPrice": ask,
            "askQty": ask_qty,
            "openPrice": s.open,
            "highPrice": s.high,
            "lowPrice": s.low,
            "volume": s.volume,
            "quoteVolume": s.quote_volume,
            "openTime": s.open_ms,
            "closeTime": s.close_ms,
            "firstId": first_id,
            "lastId": last_id,
            "count": s.trades,
        }

    def _last_close(self, m: Market, now_ms: int) -> tuple[str, int] | None:
        tf = m.ticker_base_timeframe()
        rows = m.candles(tf, 0, now_ms, 1, True, now_ms)
        return (rows[-1].close, min(now_ms, rows[-1].close_ts)) if rows else None

    def _price(self, m: Market, now_ms: int) -> dict | None:
        last = self._last_close(m, now_ms)
        return None if last is None else {"symbol": m.id, "price": last[0]}

    def _book(self, m: Market, now_ms: int) -> dict | None:
        last = self._last_close(m, now_ms)
        if last is None:
            return None
        bid, bid_qty, ask, ask_qty = self._quotes(m, last[0], last[1])
        return {"symbol": m.id, "bidPrice": bid, "bidQty": bid_qty, "askPrice": ask, "askQty": ask_qty}
