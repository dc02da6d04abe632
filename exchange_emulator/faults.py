"""Switchable fault injection.

A fault spec is a JSON object::

    {"kind": "http_5xx", "exchange": "okx", "path": "/api/v5/market/history-candles",
     "symbol": "BTC/USDT", "count": 2, "status": 503}

``exchange``/``path`` (prefix)/``symbol`` (any spelling: BTC/USDT, BTCUSDT, BTC-USDT) are
optional filters. ``count`` = fire on the next N matching requests (default 1);
``probability`` = fire on each matching request with that probability, drawn from an RNG
seeded with the emulator seed (with both, ``count`` caps the number of firings).

Kinds and their arguments:

==================  =============================================================
http_429            retry_after (s, default 1)
http_418            retry_after (s, default 60)
http_5xx            status (500/502/503/504, default 503)
timeout             seconds (default 30): hold the connection, then close it unanswered
slow                ms (default 1000): delay, then answer normally
malformed_json      answer 200 with a complete body that is not valid JSON
truncated_json      answer 200 with the first half of the real body; cut_connection (default
                    true): Content-Length announces the full body and the connection is closed
                    after the half (a transfer cut short), false: a complete short response
duplicate_rows      n (default 1) candle rows repeated; conflicting: true alters one copy;
                    or open_times: [ms, ...] exactly those rows repeated once (conflicting:
                    every copy altered)
out_of_order_rows   candle rows shuffled; or open_times: [ms, ...] each of those rows swapped
                    with the row served after it (one row out of order per open time)
missing_minutes     open_times: [ms, ...] rows dropped, or n (default 1) random rows dropped
price_spike         open_times: [ms, ...] (required) close multiplied by factor (default 1.05),
                    high/low widened to keep the candle consistent; the next candle is untouched,
                    so the price jumps and reverts (a bad print)
volume_spike        open_times: [ms, ...] (required) every volume field (and the trade count)
                    multiplied by factor (default 50); factor 0 = a zero-volume candle
==================  =============================================================

Row kinds only match candle endpoints (/api/v3/klines, /api/v5/market/*candles, /v5/market/kline). With
``open_times`` a row fault only fires on a response that holds at least one of those rows, so
planting by open time does not depend on how a client pages; give it a ``count`` of at least the
number of pages the times may span (or ``probability: 1`` for every matching response).
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

TERMINAL_KINDS = ("http_429", "http_418", "http_5xx", "timeout")
DELAY_KINDS = ("slow",)
BODY_KINDS = ("malformed_json", "truncated_json")
ROW_KINDS = ("duplicate_rows", "out_of_order_rows", "missing_minutes", "price_spike", "volume_spike")
KINDS = TERMINAL_KINDS + DELAY_KINDS + BODY_KINDS + ROW_KINDS
_COMMON = {"kind", "exchange", "path", "symbol", "count", "probability", "id"}
_ARGS = {
    "http_429": {"retry_after"},
    "http_418": {"retry_after"},
    "http_5xx": {"status"},
    "timeout": {"seconds"},
    "slow": {"ms"},
    "malformed_json": set(),
    "truncated_json": {"cut_connection"},
    "duplicate_rows": {"n", "conflicting", "open_times"},
    "out_of_order_rows": {"open_times"},
    "missing_minutes": {"open_times", "n"},
    "price_spike": {"open_times", "factor"},
    "volume_spike": {"open_times", "factor"},
}
# Row kinds that can target rows by open time instead of picking them at random.
_BY_OPEN_TIME = ("duplicate_rows", "out_of_order_rows", "missing_minutes", "price_spike", "volume_spike")


class FaultError(ValueError):
    pass


@dataclass
class RequestContext:
    exchange: str  # "binance", "okx", "bybit" or "" for unknown paths
    path: str
    symbol: str | None  # unified BTC/USDT, when the request names one
    candles: bool


@dataclass
class Fault:
    id: str
    kind: str
    exchange: str | None
    path: str | None
    symbol: str | None
    count: int | None
    probability: float | None
    args: dict[str, Any]
    rng: random.Random
    fired: int = 0

    def matches(self, ctx: RequestContext) -> bool:
        if self.exchange and self.exchange != ctx.exchange:
            return False
        if self.path and not ctx.path.startswith(self.path):
            return False
        if self.symbol and self.symbol != ctx.symbol:
            return False
        if self.kind in ROW_KINDS and not ctx.candles:
            return False
        return self.active

    @property
    def active(self) -> bool:
        return self.count is None or self.count > 0

    def roll(self) -> bool:
        """Decide (and consume) one firing."""
        if not self.active:
            return False
        if self.probability is not None and self.rng.random() >= self.probability:
            return False
        if self.count is not None:
            self.count -= 1
        self.fired += 1
        return True

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "kind": self.kind}
        for key in ("exchange", "path", "symbol", "probability"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["remaining"] = self.count
        out["fired"] = self.fired
        out.update(self.args)
        return out


def _number(spec: dict, key: str, default: float, lo: float, hi: float) -> float:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise FaultError(f"fault {spec.get('kind')}: {key} must be a number in [{lo}, {hi}]")
    return value


class FaultBook:
    def __init__(self, seed: int, normalize_symbol: Any = None) -> None:
        self.seed = seed
        self._normalize = normalize_symbol or (lambda exchange, s: s)
        self._faults: list[Fault] = []
        self._next = 1
        self._lock = threading.Lock()

    def parse(self, spec: Any) -> Fault:
        if not isinstance(spec, dict):
            raise FaultError("a fault must be a JSON object")
        kind = spec.get("kind")
        if kind not in KINDS:
            raise FaultError(f"unknown fault kind {kind!r}; expected one of {', '.join(KINDS)}")
        unknown = set(spec) - _COMMON - _ARGS[kind]
        if unknown:
            raise FaultError(f"fault {kind}: unknown field(s) {sorted(unknown)}")
        exchange = spec.get("exchange")
        if exchange is not None and exchange not in ("binance", "okx", "bybit"):
            raise FaultError("fault exchange must be 'binance', 'okx' or 'bybit'")
        probability = spec.get("probability")
        count = spec.get("count")
        if probability is not None:
            probability = _number(spec, "probability", 0, 0, 1)
        if count is None and probability is None:
            count = 1
        if count is not None:
            count = int(_number(spec, "count", 1, 0, 10**9))
        args: dict[str, Any] = {}
        if kind in ("http_429", "http_418"):
            args["retry_after"] = int(_number(spec, "retry_after", 1 if kind == "http_429" else 60, 0, 10**6))
        elif kind == "http_5xx":
            status = int(_number(spec, "status", 503, 500, 599))
            if status not in (500, 502, 503, 504):
                raise FaultError("http_5xx status must be 500, 502, 503 or 504")
            args["status"] = status
        elif kind == "truncated_json":
            args["cut_connection"] = bool(spec.get("cut_connection", True))
        elif kind == "timeout":
            args["seconds"] = _number(spec, "seconds", 30, 0, 3600)
        elif kind == "slow":
            args["ms"] = _number(spec, "ms", 1000, 0, 3_600_000)
        elif kind == "duplicate_rows":
            args["n"] = int(_number(spec, "n", 1, 1, 10**6))
            args["conflicting"] = bool(spec.get("conflicting", False))
        elif kind == "missing_minutes" and "open_times" not in spec:
            args["n"] = int(_number(spec, "n", 1, 1, 10**6))
        elif kind == "price_spike":
            args["factor"] = _number(spec, "factor", 1.05, 0.001, 1000)
            if args["factor"] == 1:
                raise FaultError("price_spike factor must not be 1")
        elif kind == "volume_spike":
            args["factor"] = _number(spec, "factor", 50, 0, 10**6)
        if kind in _BY_OPEN_TIME and "open_times" in spec:
            times = spec["open_times"]
            if (
                not isinstance(times, list)
                or not times
                or not all(isinstance(t, int) and not isinstance(t, bool) for t in times)
            ):
                raise FaultError(f"{kind} open_times must be a non-empty list of ms timestamps")
            args["open_times"] = list(times)
        elif kind in ("price_spike", "volume_spike"):
            raise FaultError(f"{kind} needs open_times: [ms, ...]")
        with self._lock:
            fid = str(spec.get("id") or f"f{self._next}")
            self._next += 1
        symbol = spec.get("symbol")
        if symbol is not None:
            symbol = self._normalize(exchange, str(symbol))
        rng = random.Random(f"{self.seed}|{fid}|{kind}")
        return Fault(fid, kind, exchange, spec.get("path"), symbol, count, probability, args, rng)

    def add(self, specs: Any) -> list[Fault]:
        items = specs if isinstance(specs, list) else [specs]
        parsed = [self.parse(s) for s in items]  # validate all before installing any
        with self._lock:
            self._faults.extend(parsed)
        return parsed

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.describe() for f in self._faults]

    def fire(
        self, kinds: tuple[str, ...], ctx: RequestContext, first_only: bool = True, rows: list | None = None
    ) -> list[Fault]:
        """Faults of ``kinds`` that fire for this request (consumes counts)."""
        fired = []
        with self._lock:
            for f in self._faults:
                if f.kind not in kinds or not f.matches(ctx):
                    continue
                if rows is not None and not _applicable(f, rows, ctx.exchange):
                    continue
                if f.roll():
                    fired.append(f)
                    if first_only:
                        break
        return fired


# ---- row mutations ------------------------------------------------------------------------
def _row_ts(row: list, exchange: str) -> int:
    return int(row[0])


def _applicable(f: Fault, rows: list, exchange: str) -> bool:
    if "open_times" in f.args:
        wanted = set(f.args["open_times"])
        return any(_row_ts(r, exchange) in wanted for r in rows)
    if f.kind == "out_of_order_rows":
        return len(rows) >= 2
    return bool(rows)


def _bump(value: str) -> str:
    """Increase a decimal string by one unit in its last place, keeping its format."""
    d = Decimal(value)
    return format(d + Decimal(1).scaleb(d.as_tuple().exponent), "f")  # type: ignore[arg-type]


def _scale(value: str, factor: Decimal) -> str:
    """``value * factor`` rounded to ``value``'s own number of decimals (its tick or lot)."""
    d = Decimal(value)
    exponent = d.as_tuple().exponent
    return format((d * factor).quantize(Decimal(1).scaleb(exponent)), "f")  # type: ignore[arg-type]


def _price_spike(row: list, factor: Decimal) -> list:
    row = list(row)
    close = _scale(row[4], factor)
    if Decimal(close) == Decimal(row[4]):  # factor below one tick: move by one tick
        tick = Decimal(_bump(row[4])) - Decimal(row[4])
        close = format(Decimal(row[4]) + (tick if factor > 1 else -tick), "f")
    row[4] = close
    row[2] = max(row[2], close, key=Decimal)  # high >= close
    row[3] = min(row[3], close, key=Decimal)  # low <= close
    return row


def _volume_spike(row: list, exchange: str, factor: Decimal) -> list:
    row = list(row)
    # binance: volume, quote volume, taker base, taker quote (+ trades); okx: vol, volCcy, volCcyQuote;
    # bybit: volume, turnover
    fields = {"binance": (5, 7, 9, 10), "bybit": (5, 6)}.get(exchange, (5, 6, 7))
    for i in fields:
        if i < len(row) and isinstance(row[i], str):
            row[i] = _scale(row[i], factor)
    if exchange == "binance" and len(row) > 8 and isinstance(row[8], int):
        row[8] = int((row[8] * factor).to_integral_value())
    return row


def _apply_by_open_time(f: Fault, rows: list[list], exchange: str) -> list[list]:
    wanted = set(f.args["open_times"])
    if f.kind == "missing_minutes":
        return [r for r in rows if _row_ts(r, exchange) not in wanted]
    if f.kind == "duplicate_rows":
        out = []
        for r in rows:
            out.append(r)
            if _row_ts(r, exchange) in wanted:
                copy = list(r)
                if f.args["conflicting"]:
                    copy[4] = _bump(copy[4])  # close
                    copy[2] = max(copy[2], copy[4], key=Decimal)  # keep high >= close
                    copy[5] = _bump(copy[5])  # volume
                out.append(copy)
        return out
    if f.kind == "out_of_order_rows":
        rows = list(rows)
        for ts in f.args["open_times"]:
            i = next((k for k, r in enumerate(rows) if _row_ts(r, exchange) == ts), None)
            if i is None:
                continue
            j = i + 1 if i + 1 < len(rows) else i - 1  # the last row swaps with the one before it
            if j >= 0:
                rows[i], rows[j] = rows[j], rows[i]
        return rows
    factor = Decimal(str(f.args["factor"]))
    if f.kind == "price_spike":
        return [_price_spike(r, factor) if _row_ts(r, exchange) in wanted else r for r in rows]
    return [_volume_spike(r, exchange, factor) if _row_ts(r, exchange) in wanted else r for r in rows]


def apply_row_fault(f: Fault, rows: list[list], exchange: str) -> list[list]:
    if "open_times" in f.args:
        return _apply_by_open_time(f, rows, exchange)
    rows = list(rows)
    rng = f.rng
    if f.kind == "duplicate_rows":
        n = min(f.args["n"], len(rows))
        picks = sorted(rng.sample(range(len(rows)), n), reverse=True)
        for k, i in enumerate(picks):
            copy = list(rows[i])
            if f.args["conflicting"] and k == 0:
                copy[4] = _bump(copy[4])  # close
                copy[2] = max(copy[2], copy[4], key=Decimal)  # keep high >= close
                copy[5] = _bump(copy[5])  # volume
            rows.insert(i + 1, copy)
    elif f.kind == "out_of_order_rows":
        original = list(rows)
        rng.shuffle(rows)
        if rows == original:
            rows[0], rows[1] = rows[1], rows[0]
    elif f.kind == "missing_minutes":
        n = min(f.args["n"], len(rows))
        gone = set(rng.sample(range(len(rows)), n))
        rows = [r for i, r in enumerate(rows) if i not in gone]
    return rows


def corrupt_body(f: Fault, body: bytes) -> bytes:
    if f.kind == "truncated_json":
        return body[: len(body) // 2]
    # starts like JSON (so clients try to parse it) but is not valid JSON
    return body[:1] + b'"malformed": <emulator fault>, ' + body[1 : max(1, len(body) // 3)]
