"""Turn stored raw payloads into typed candles and tickers with ccxt's own parsers.

Decimals never pass through float: the body is decoded with ``parse_float=Decimal`` and the
parser instance has ``number = str``, so ccxt hands back the exchange's decimal strings.
What ccxt's unified OHLCV drops (quote volume, trade count, whether the candle is closed) is
read from the exchange's row by the positions below.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from marketflow.exchanges import parser_for
from marketflow.timeframes import timeframe_ms, utc_ms


@dataclass(frozen=True)
class KlineLayout:
    """Where an exchange's raw kline row keeps the fields ccxt's unified OHLCV leaves out."""

    quote_volume: int | None = None
    trades: int | None = None
    close_time: int | None = None  # Binance: the in-progress candle closes in the future
    confirm: int | None = None  # OKX: "0" while the candle is still open
    newest_first: bool = False  # the documented row order, to spot rows out of order
    # Spot rows start [open time, open, high, low, close, base volume], the positions ccxt's own
    # parse_ohlcv reads for spot markets: read them directly (see _positional_candle).
    spot_positional: bool = False


KLINE_LAYOUTS: dict[str, KlineLayout] = {
    "binance": KlineLayout(quote_volume=7, trades=8, close_time=6, spot_positional=True),
    "okx": KlineLayout(quote_volume=7, confirm=8, newest_first=True, spot_positional=True),
}


class PayloadError(ValueError):
    """A whole payload is unusable (not JSON, an error envelope, not a list of rows)."""


@dataclass
class Candle:
    open_time_ms: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    quote_volume: Decimal | None
    trades: int | None
    row_index: int
    row: Any  # the row as decoded; serialized only when it is rejected (raw_row)

    @property
    def raw_row(self) -> str:
        return json.dumps(self.row, default=str)


@dataclass
class RowReject:
    row_index: int
    raw_row: str
    reason: str
    open_time_ms: int | None = None


@dataclass
class ParsedCandles:
    candles: list[Candle] = field(default_factory=list)
    rejects: list[RowReject] = field(default_factory=list)
    still_open: int = 0  # in-progress candles, left for a later run
    out_of_order: list[int] = field(default_factory=list)  # open times of rows breaking the documented order


def decode_body(body: str) -> Any:
    if not body or not body.strip():
        raise PayloadError("empty response body")
    try:
        return json.loads(body, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"response body is not valid JSON ({exc.msg} at char {exc.pos}; "
                           f"{len(body)} bytes, starts {body[:40]!r})") from None


def kline_rows(ccxt_id: str, body: Any) -> list[Any]:
    """The candle rows inside an exchange's response envelope."""
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        code = body.get("code")
        if code not in (None, 0, "0"):
            raise PayloadError(f"{ccxt_id} returned error code {code}: {body.get('msg') or body.get('message')}")
        for key in ("data", "result"):
            if isinstance(body.get(key), list):
                return body[key]
    raise PayloadError(f"expected a list of kline rows from {ccxt_id}, got {type(body).__name__}")


def parse_candles(doc: dict[str, Any]) -> ParsedCandles:
    """Parse one raw ``ohlcv`` payload document. Raises PayloadError when the whole payload is bad."""
    ccxt_id = doc["ccxt_id"]
    rows = kline_rows(ccxt_id, decode_body(doc["body"]))
    parser = parser_for(ccxt_id)
    layout = KLINE_LAYOUTS.get(ccxt_id, KlineLayout())
    step = timeframe_ms(doc["timeframe"])
    received_ms = utc_ms(doc["fetched_at"])
    out = ParsedCandles()
    previous: int | None = None
    market = doc.get("market")
    positional = layout.spot_positional and (market or {}).get("type") == "spot"
    for index, row in enumerate(rows):
        try:
            candle = _positional_candle(row, index, layout) if positional else None
            if candle is None:
                ts, o, h, low, c, v = parser.parse_ohlcv(row, market)
                candle = _candle(row, index, layout, _int(ts, "open time"), _dec(o, "open"), _dec(h, "high"),
                                 _dec(low, "low"), _dec(c, "close"), _dec(v, "volume"))
        except (TypeError, ValueError, IndexError, KeyError, InvalidOperation) as exc:
            out.rejects.append(RowReject(index, json.dumps(row, default=str), f"unparseable row: {exc}"))
            continue
        # A row is out of order when it steps backwards against the documented order
        # (equal open times are duplicates, counted by the loader).
        if previous is not None and (candle.open_time_ms > previous if layout.newest_first
                                     else candle.open_time_ms < previous):
            out.out_of_order.append(candle.open_time_ms)
        previous = candle.open_time_ms
        if _still_open(row, layout, candle.open_time_ms, step, received_ms):
            out.still_open += 1
            continue
        out.candles.append(candle)
    return out


def _candle(row: Any, index: int, layout: KlineLayout, open_time_ms: int, o: Decimal, h: Decimal, low: Decimal,
            c: Decimal, v: Decimal) -> Candle:
    return Candle(
        open_time_ms=open_time_ms, open=o, high=h, low=low, close=c, volume=v,
        quote_volume=_dec(row[layout.quote_volume], "quote volume") if layout.quote_volume is not None
        and len(row) > layout.quote_volume else None,
        trades=_int(row[layout.trades], "trades") if layout.trades is not None and len(row) > layout.trades
        else None,
        row_index=index, row=row,
    )


def _positional_candle(row: Any, index: int, layout: KlineLayout) -> Candle | None:
    """The candle of a well-formed spot row, read by position: the same values ccxt's parse_ohlcv
    would give (its per-field helpers cost more than the rest of the load). None for any other
    shape or value, which then takes ccxt's parser and, if bad, its reject reason."""
    if type(row) is not list or len(row) < 6 or type(row[0]) is not int:
        return None
    fields = row[1:6]
    if not all(type(x) is str for x in fields):
        return None
    try:
        o, h, low, c, v = map(Decimal, fields)
    except InvalidOperation:
        return None
    return _candle(row, index, layout, row[0], o, h, low, c, v)


def _still_open(row: Any, layout: KlineLayout, open_ms: int, step: int, received_ms: int) -> bool:
    """The exchange's current, unfinished candle. One that opens in the future is not "open" but
    invalid, and is left to validation to reject."""
    if open_ms > received_ms:
        return False
    if layout.confirm is not None and len(row) > layout.confirm:
        return str(row[layout.confirm]) == "0"
    if layout.close_time is not None and len(row) > layout.close_time:
        return int(row[layout.close_time]) >= received_ms
    # Exchanges that do not say: a candle is closed once its interval has passed.
    return open_ms + step > received_ms


def _dec(value: Any, name: str) -> Decimal:
    if value is None or isinstance(value, bool | float):
        raise ValueError(f"{name} is {value!r}, expected a decimal string")
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{name} {value!r} is not a number") from None


def _int(value: Any, name: str) -> int:
    if type(value) is int:  # the common case, and bool (an int subclass) must not pass
        return value
    if value is None or isinstance(value, bool):
        raise ValueError(f"{name} is {value!r}, expected an integer")
    number = Decimal(str(value))
    if number != number.to_integral_value():
        raise ValueError(f"{name} {value!r} is not a whole number")
    return int(number)


@dataclass
class Ticker:
    ts_ms: int
    last: Decimal | None
    bid: Decimal | None
    ask: Decimal | None
    bid_volume: Decimal | None
    ask_volume: Decimal | None
    base_volume: Decimal | None
    quote_volume: Decimal | None


def parse_ticker(doc: dict[str, Any]) -> Ticker:
    """Parse one raw ``ticker`` payload; raises PayloadError when it is unusable or for another market."""
    ccxt_id, market = doc["ccxt_id"], doc["market"]
    body = decode_body(doc["body"])
    if isinstance(body, dict) and "data" in body:
        rows = kline_rows(ccxt_id, body)
        if len(rows) != 1:
            raise PayloadError(f"expected one ticker in the response, got {len(rows)}")
        body = rows[0]
    if not isinstance(body, dict):
        raise PayloadError(f"expected a ticker object, got {type(body).__name__}")
    parser = parser_for(ccxt_id)
    native_id = body.get("symbol") or body.get("instId")
    if native_id is not None and str(native_id) != market["id"]:
        raise PayloadError(f"ticker is for {native_id}, expected {market['id']} ({doc['symbol']})")
    ticker = parser.parse_ticker(body, market)
    fetched_ms = utc_ms(doc["fetched_at"])

    def opt(key: str) -> Decimal | None:
        value = ticker.get(key)
        return None if value is None else _dec(value, key)

    return Ticker(
        ts_ms=int(ticker.get("timestamp") or fetched_ms), last=opt("last"), bid=opt("bid"), ask=opt("ask"),
        bid_volume=opt("bidVolume"), ask_volume=opt("askVolume"), base_volume=opt("baseVolume"),
        quote_volume=opt("quoteVolume"),
    )
