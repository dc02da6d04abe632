"""Turn stored raw payloads into typed candles and tickers with ccxt's own parsers.

Decimals never pass through float: the body is decoded with ``parse_float=Decimal`` and the
parser instance has ``number = str``, so ccxt hands back the exchange's decimal strings. A JSON
number (Bitfinex sends them) reaches ccxt as its exact text: ccxt's ``safe_string`` reads str,
int and float but returns None for a Decimal.

Candles, for any ccxt exchange: ccxt's ``handle_errors`` tells an error envelope from data,
``KLINE_LAYOUTS`` says where the rows sit in the exchange's answer (the one fact ccxt keeps
inside its ``fetch_ohlcv``), ccxt's ``parse_ohlcv`` reads each row, and the same table names
what the unified OHLCV drops: quote volume, trade count, the in-progress flag and the
documented row order. Binance and OKX spot rows are also read by position, an optimisation
that must give what ccxt's parser gives (tests/unit/test_parsing.py).

Tickers, for any ccxt exchange: the stored answer is replayed through ccxt's own
``fetch_ticker`` (its HTTP call answered from the stored body, nothing sent), so ccxt finds the
ticker in its envelope and parses it; a batch answer (one ``fetch_tickers`` call for many markets,
``parse_batch_tickers``) is replayed through ``fetch_tickers`` with every market it was asked for.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import ccxt

from marketflow.exchanges import client_class, parser_for
from marketflow.timeframes import timeframe_ms, utc_ms

# A path element naming the market's exchange id (Kraken keys its rows by the pair it was asked for).
MARKET_ID = "{market id}"


@dataclass(frozen=True)
class KlineLayout:
    """One exchange's candle answer: what ccxt's unified OHLCV does not say.

    Positions index a row that is a list, keys a row that is an object (Gate's futures rows
    are objects, its spot rows lists, so one layout can name both)."""

    rows: tuple[str, ...] = ()  # where the row list sits in the answer; () = the answer is the list
    quote_volume: tuple[int | str, ...] = ()  # the first of these the row has; () = not sent
    trades: int | str | None = None
    close_time: int | None = None  # Binance: the in-progress candle closes in the future
    open_flag: int | str | None = None  # a field saying the candle is still forming ...
    open_values: frozenset[str] = frozenset()  # ... when its text (lower case) is one of these
    newest_first: bool | None = None  # the documented row order; None: not documented, not checked
    # Spot rows start [open time, open, high, low, close, base volume], the positions ccxt's own
    # parse_ohlcv reads for spot markets: read them directly (see _positional_candle).
    spot_positional: bool = False
    # The exchange documents its prices as decimal strings: a bare JSON number in a row is refused.
    # Otherwise (and for exchanges not listed) ccxt reads JSON numbers, given as their exact text.
    strings_only: bool = False


# What each exchange sends, from ccxt's fetch_ohlcv/parse_ohlcv (ccxt 4.5.90, the response it quotes)
# and the exchange's API documentation. An exchange not listed still loads when its answer is a bare
# list of rows (order unchecked, no quote volume, no trade count); any other envelope is refused with
# the key to add here.
KLINE_LAYOUTS: dict[str, KlineLayout] = {
    # [open time, o, h, l, c, base vol, close time, quote vol, trades, ...], oldest first
    "binance": KlineLayout(quote_volume=(7,), trades=8, close_time=6, newest_first=False, spot_positional=True,
                           strings_only=True),
    # {"code":"0","data":[[ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm]]}, newest first
    "okx": KlineLayout(rows=("data",), quote_volume=(7,), open_flag=8, open_values=frozenset({"0"}),
                       newest_first=True, spot_positional=True, strings_only=True),
    # {"retCode":0,"result":{"list":[[start, o, h, l, c, volume, turnover]]}}, newest first
    "bybit": KlineLayout(rows=("result", "list"), quote_volume=(6,), newest_first=True, strings_only=True),
    # {"code":"200000","data":[[start s, o, c, h, l, volume, turnover]]}, newest first (ccxt reorders)
    "kucoin": KlineLayout(rows=("data",), quote_volume=(6,), newest_first=True, strings_only=True),
    # {"code":"00000","data":[[ts, o, h, l, c, base vol, usdt vol, quote vol]]} (contracts: 7 fields, quote at 6)
    "bitget": KlineLayout(rows=("data",), quote_volume=(7, 6), strings_only=True),
    # {"error":[],"result":{<pair>:[[time s, o, h, l, c, vwap, volume, count]],"last":..}}, oldest first;
    # no quote volume (vwap x volume is not what the exchange traded)
    "kraken": KlineLayout(rows=("result", MARKET_ID), trades=7, newest_first=False, strings_only=True),
    # {"candles":[{"start","low","high","open","close","volume"}]}: base volume only
    "coinbase": KlineLayout(rows=("candles",), strings_only=True),
    # spot [[t s, quote vol, c, h, l, o, base vol, window closed]], futures [{"t","v","c","h","l","o","sum"}];
    # oldest first
    "gate": KlineLayout(quote_volume=(1, "sum"), open_flag=7, open_values=frozenset({"false"}), newest_first=False,
                        strings_only=True),
}


@dataclass(frozen=True)
class KlineFields:
    """What marketflow gets from an exchange's candles beyond OHLCV, and why not (``kline_fields``)."""

    exchange: str
    known: bool  # the exchange has an entry in KLINE_LAYOUTS
    quote_volume: bool
    trades: bool
    in_progress: str  # how a still-forming candle is told apart
    row_order: str

    def missing(self) -> list[str]:
        """One sentence per field this exchange's candles leave NULL, with the reason."""
        why = (f"{self.exchange} does not send it" if self.known else
               f"marketflow has no field map for {self.exchange} (add it to parsing.KLINE_LAYOUTS)")
        return [f"no {name}: {why}" for name, present in (("quote volume", self.quote_volume),
                                                          ("trade count", self.trades)) if not present]


def kline_fields(ccxt_id: str) -> KlineFields:
    """Which optional candle fields ``ccxt_id`` sends, how in-progress candles and row order are told."""
    layout = KLINE_LAYOUTS.get(ccxt_id)
    if layout is None:
        return KlineFields(ccxt_id, False, False, False, "by time (open time + timeframe after the response)",
                           "not documented here, not checked")
    if layout.close_time is not None:
        in_progress = "by its close time"
    elif layout.open_flag is not None:
        in_progress = f"by its flag at {layout.open_flag!r}"
    else:
        in_progress = "by time (open time + timeframe after the response)"
    order = {True: "newest first", False: "oldest first", None: "not documented, not checked"}[layout.newest_first]
    return KlineFields(ccxt_id, True, bool(layout.quote_volume), layout.trades is not None, in_progress, order)


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


def check_error_envelope(ccxt_id: str, body: Any, text: str | None = None) -> None:
    """Raise PayloadError when the exchange's own error handling in ccxt reads ``body`` as an error
    (Binance {"code":-1121}, OKX code != "0", Bybit retCode != 0, KuCoin code != "200000", Kraken
    a non-empty "error" list, Gate a "label", ...), with ccxt's words for it."""
    if text is None:
        text = json.dumps(body, default=str)
    try:
        parser_for(ccxt_id).handle_errors(200, "OK", "", "GET", {}, text, body, {}, None)
    except ccxt.BaseError as exc:
        raise PayloadError(f"{ccxt_id} answered with an error ({type(exc).__name__}): {str(exc)[:500]}") from None
    except Exception:  # a shape ccxt's error check does not expect is not an error envelope
        pass


def kline_rows(ccxt_id: str, body: Any, market_id: str | None = None, text: str | None = None) -> list[Any]:
    """The candle rows inside an exchange's answer; PayloadError for an error envelope or an unknown shape."""
    layout = KLINE_LAYOUTS.get(ccxt_id)
    if not isinstance(body, list):  # a bare list is rows; error envelopes are objects
        check_error_envelope(ccxt_id, body, text)
    if layout is None:
        if isinstance(body, list):
            return body
        raise PayloadError(
            f"expected a list of kline rows from {ccxt_id}, got {_shape(body)}: marketflow knows no candle envelope "
            f"for {ccxt_id}. Fix: add {ccxt_id!r} to parsing.KLINE_LAYOUTS with the path of its row list (ccxt's "
            f"{ccxt_id}.py fetch_ohlcv shows it) and the positions of its quote volume and trade count")
    node, where = body, "the answer"
    for key in layout.rows:
        if not isinstance(node, dict):
            break
        if key == MARKET_ID:
            lists = [k for k, v in node.items() if isinstance(v, list)]
            # ccxt reads the key it asked for; a raw answer replayed without its market has one list
            key = market_id if market_id is not None else (lists[0] if len(lists) == 1 else "<market id>")
        node, where = node.get(key), f"{where}[{key!r}]"
    if isinstance(node, list):
        return node
    raise PayloadError(f"expected a list of kline rows at {where} from {ccxt_id}, got {_shape(node)}. If "
                       f"{ccxt_id} changed its answer, fix parsing.KLINE_LAYOUTS[{ccxt_id!r}].rows")


def _shape(value: Any) -> str:
    if isinstance(value, dict):
        return f"an object with keys {sorted(value)[:8]}"
    return type(value).__name__


def parse_candles(doc: dict[str, Any]) -> ParsedCandles:
    """Parse one raw ``ohlcv`` payload document. Raises PayloadError when the whole payload is bad."""
    ccxt_id = doc["ccxt_id"]
    market = doc.get("market") or {}
    layout = KLINE_LAYOUTS.get(ccxt_id, KlineLayout())
    positional = layout.spot_positional and market.get("type") == "spot"
    body = decode_body(doc["body"])
    # Fast path: Binance's bare list, OKX's {"code":"0","data":[...]}; anything else takes the generic path.
    rows = (body if type(body) is list else body["data"] if type(body) is dict and body.get("code") == "0"
            and type(body.get("data")) is list and layout.rows == ("data",) else None) if positional else None
    if rows is None:
        rows = kline_rows(ccxt_id, body, market.get("id"), doc["body"])
    parser = parser_for(ccxt_id)
    if market and not positional:  # what ccxt's parsers branch on (inverse, contract) from what raw stored
        market = ccxt_market(parser, market)
    step = timeframe_ms(doc["timeframe"])
    received_ms = utc_ms(doc["fetched_at"])
    # Inverse contracts count volume in contracts and turnover in the base coin: no quote volume to take.
    quote_keys = () if market.get("inverse") else layout.quote_volume
    out = ParsedCandles()
    previous: int | None = None
    for index, row in enumerate(rows):
        try:
            candle = _positional_candle(row, index, layout, quote_keys) if positional else None
            if candle is None:
                ts, o, h, low, c, v = parser.parse_ohlcv(row if layout.strings_only else _ccxt_view(row), market)
                candle = _candle(row, index, layout, quote_keys, _int(ts, "open time"), _dec(o, "open"),
                                 _dec(h, "high"), _dec(low, "low"), _dec(c, "close"), _dec(v, "volume"))
        except (TypeError, ValueError, IndexError, KeyError, InvalidOperation) as exc:
            out.rejects.append(RowReject(index, json.dumps(row, default=str), f"unparseable row: {exc}"))
            continue
        # A row is out of order when it steps backwards against the documented order (equal open
        # times are duplicates, counted by the loader); an undocumented order is not judged.
        if previous is not None and layout.newest_first is not None and (
                candle.open_time_ms > previous if layout.newest_first else candle.open_time_ms < previous):
            out.out_of_order.append(candle.open_time_ms)
        previous = candle.open_time_ms
        if _still_open(row, layout, candle.open_time_ms, step, received_ms):
            out.still_open += 1
            continue
        out.candles.append(candle)
    return out


_MISSING = object()


def _ccxt_view(value: Any) -> Any:
    """``value`` with each Decimal (a JSON number with a fraction) as its exact text, which ccxt's
    parsers read; they take a Decimal for a missing field."""
    if type(value) is list:
        return [_ccxt_view(v) for v in value]
    if type(value) is dict:
        return {k: _ccxt_view(v) for k, v in value.items()}
    return str(value) if type(value) is Decimal else value


def _field(row: Any, key: int | str | None) -> Any:
    """The row's value at position or key ``key``; _MISSING when it has none."""
    if key is None:
        return _MISSING
    if type(key) is int:
        return row[key] if type(row) is list and len(row) > key else _MISSING
    return row[key] if type(row) is dict and key in row else _MISSING


def _candle(row: Any, index: int, layout: KlineLayout, quote_keys: tuple[int | str, ...], open_time_ms: int,
            o: Decimal, h: Decimal, low: Decimal, c: Decimal, v: Decimal) -> Candle:
    quote = trades = None
    if type(row) is list:  # inlined _field: this runs for every candle
        n = len(row)
        for key in quote_keys:  # the first the row has
            if type(key) is int and n > key:
                quote = _dec(row[key], "quote volume")
                break
        if type(layout.trades) is int and n > layout.trades:
            trades = _int(row[layout.trades], "trades")
    else:
        for key in quote_keys:
            if (value := _field(row, key)) is not _MISSING:
                quote = _dec(value, "quote volume")
                break
        if (value := _field(row, layout.trades)) is not _MISSING:
            trades = _int(value, "trades")
    return Candle(open_time_ms=open_time_ms, open=o, high=h, low=low, close=c, volume=v, quote_volume=quote,
                  trades=trades, row_index=index, row=row)


def _positional_candle(row: Any, index: int, layout: KlineLayout, quote_keys: tuple[int | str, ...]
                       ) -> Candle | None:
    """The candle of a well-formed spot row, read by position: the same values ccxt's parse_ohlcv
    would give (its per-field helpers cost more than the rest of the load). None for any other
    shape or value, which then takes ccxt's parser and, if bad, its reject reason."""
    if type(row) is not list or len(row) < 6:
        return None
    ts = row[0]
    if type(ts) is not int:  # OKX sends its open time as a string of digits
        if type(ts) is not str or not (0 < len(ts) <= 15 and ts.isascii() and ts.isdigit()) or ts[0] == "0":
            return None
        ts = int(ts)
    fields = row[1:6]
    if not all(type(x) is str for x in fields):
        return None
    try:
        o, h, low, c, v = map(Decimal, fields)
    except InvalidOperation:
        return None
    return _candle(row, index, layout, quote_keys, ts, o, h, low, c, v)


def _still_open(row: Any, layout: KlineLayout, open_ms: int, step: int, received_ms: int) -> bool:
    """The exchange's current, unfinished candle. One that opens in the future is not "open" but
    invalid, and is left to validation to reject."""
    if open_ms > received_ms:
        return False
    if layout.open_flag is not None and (flag := _field(row, layout.open_flag)) is not _MISSING:
        return str(flag).lower() in layout.open_values
    close_time = layout.close_time
    if close_time is not None and type(row) is list and len(row) > close_time:
        return int(row[close_time]) >= received_ms
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


class _Replay:
    """In front of a ccxt exchange class: its HTTP call is answered with a stored body (nothing is
    sent), so ccxt's own fetch method finds the data in the envelope, runs the exchange's error
    handling and parses it. One instance per thread and exchange (it holds the call's state)."""

    _answer: tuple[str, Any] = ("", None)
    _urls: list[str]
    _named_ids: list[Any]

    def fetch(self, url, method="GET", headers=None, body=None):  # type: ignore[no-untyped-def]
        self._urls.append(url)
        text, decoded = self._answer
        self.handle_errors(200, "OK", url, method, {}, text, decoded, headers, body)  # type: ignore[attr-defined]
        return decoded

    def safe_market(self, marketId=None, market=None, delimiter=None, marketType=None):  # type: ignore[no-untyped-def]
        # every parser resolves the market id it finds in the answer here (safe_symbol does too)
        if marketId is not None:
            self._named_ids.append(marketId)
        return super().safe_market(marketId, market, delimiter, marketType)  # type: ignore[misc]

    def use_market(self, market: dict[str, Any]) -> dict[str, Any]:
        """Make ``market`` (as stored with a raw payload) this instance's only market: no network."""
        return self.use_markets([market])[0]

    def use_markets(self, markets: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Make ``markets`` (as stored with a raw payload) this instance's only markets: no network."""
        structures = [ccxt_market(self, m) for m in markets]  # type: ignore[arg-type]
        key = json.dumps(structures, sort_keys=True, default=str)
        if getattr(self, "_market_key", None) != key:
            self.set_markets(structures)  # type: ignore[attr-defined]
            self._market_key = key
        return structures

    def replay(self, method: str, args: tuple[Any, ...], text: str, decoded: Any) -> tuple[Any, list[str]]:
        """``method(*args)`` answered with the stored body; its result and the URLs ccxt built."""
        self._answer, self._urls, self._named_ids = (text, decoded), [], []
        try:
            return getattr(self, method)(*args), self._urls
        finally:
            self._answer = ("", None)


_replayers = threading.local()


def replayer(ccxt_id: str) -> Any:
    """This thread's replaying instance of ``ccxt_id`` (numbers as strings, no rate limiter: no call is made)."""
    cache = _replayers.__dict__.setdefault("by_id", {})
    instance = cache.get(ccxt_id)
    if instance is None:
        cls = type(f"Replay{ccxt_id}", (_Replay, client_class(ccxt_id)), {"__module__": __name__})
        instance = cache[ccxt_id] = cls({"enableRateLimit": False})
    return instance


def ccxt_market(exchange: ccxt.Exchange, market: dict[str, Any]) -> dict[str, Any]:
    """A full ccxt market structure from the subset stored with raw payloads (exchanges.market_info):
    the kind flags ccxt's methods branch on are derived from ``type`` where they were not stored."""
    structure = exchange.safe_market_structure(dict(market))
    kind = structure.get("type")
    for flag in ("spot", "swap", "future", "option"):
        if structure.get(flag) is None:
            structure[flag] = kind == flag
    if structure.get("contract") is None:
        structure["contract"] = kind in ("swap", "future", "option", "delivery")
    if structure.get("margin") is None:
        structure["margin"] = False
    # A contract's settle currency follows the ':' of its unified symbol (BTC/USDT:USDT, BTC/USD:BTC-250328):
    # settled in the quote it is linear, in the base inverse.
    symbol = str(structure.get("symbol") or "")
    if structure["contract"] and ":" in symbol:
        settle = structure.get("settle") or symbol.split(":", 1)[1].split("-", 1)[0]
        structure["settle"] = settle
        if structure.get("linear") is None:
            structure["linear"] = settle == structure.get("quote")
        if structure.get("inverse") is None:
            structure["inverse"] = settle == structure.get("base")
    return structure


def _other_market(exchange: Any, market: dict[str, Any]) -> str | None:
    """A market id other than ``market``'s that ccxt's parser found in the answer just replayed."""
    ours = str(market["id"]).lower()
    return next((str(i) for i in exchange._named_ids
                 if str(i).lower() != ours and i not in (exchange.markets_by_id or {})), None)


def parse_ticker(doc: dict[str, Any]) -> Ticker:
    """Parse one raw ``ticker`` payload through ccxt's fetch_ticker (fetch_tickers when the stored
    request says so); raises PayloadError when it is unusable or for another market."""
    ccxt_id, stored_market = doc["ccxt_id"], doc["market"]
    body = decode_body(doc["body"])
    exchange = replayer(ccxt_id)
    market = exchange.use_market(stored_market)
    symbol = market["symbol"]
    many = (doc.get("request") or {}).get("method") == "fetchTickers"
    try:
        if many:
            tickers, _ = exchange.replay("fetch_tickers", ([symbol],), doc["body"], _ccxt_view(body))
            ticker = (tickers or {}).get(symbol)
            if ticker is None:
                raise PayloadError(f"the tickers answer holds no ticker for {market['id']} ({doc['symbol']}), "
                                   f"only {sorted(tickers or {})[:5]}")
        else:
            ticker, _ = exchange.replay("fetch_ticker", (symbol,), doc["body"], _ccxt_view(body))
            other = _other_market(exchange, market)
            if other is not None:
                raise PayloadError(f"ticker is for {other}, expected {market['id']} ({doc['symbol']})")
    except PayloadError:
        raise
    except ccxt.BaseError as exc:
        raise PayloadError(f"{ccxt_id} ticker answer unusable ({type(exc).__name__}): {str(exc)[:500]}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise PayloadError(f"{ccxt_id} ticker answer has a shape ccxt's fetch_ticker cannot read "
                           f"({type(exc).__name__}: {exc}); body starts {doc['body'][:80]!r}") from None
    return _ticker(ticker, utc_ms(doc["fetched_at"]), f"{ccxt_id} ticker answer", f"{market['id']} ({doc['symbol']})",
                   doc["body"])


def _ticker(ticker: dict[str, Any], fetched_ms: int, what: str, market: str, body: str) -> Ticker:
    """ccxt's unified ticker as a Ticker; no timestamp in the answer: dated when it was received."""

    def opt(key: str) -> Decimal | None:
        value = ticker.get(key)
        return None if value is None or value == "" else _dec(value, key)

    parsed = Ticker(
        ts_ms=int(ticker.get("timestamp") or fetched_ms), last=opt("last"), bid=opt("bid"), ask=opt("ask"),
        bid_volume=opt("bidVolume"), ask_volume=opt("askVolume"), base_volume=opt("baseVolume"),
        quote_volume=opt("quoteVolume"),
    )
    if parsed.last is None and parsed.bid is None and parsed.ask is None:
        raise PayloadError(f"{what} has no last, bid or ask price for {market}; body starts {body[:80]!r}")
    return parsed


def parse_batch_tickers(doc: dict[str, Any]) -> dict[str, Ticker | PayloadError]:
    """Each market's ticker in one stored batch answer (``markets``: every market the one
    ``fetch_tickers`` call asked for), replayed through ccxt's fetch_tickers with those markets.
    A market the answer does not hold, or holds without a price, maps to its PayloadError; an answer
    nobody can read raises PayloadError."""
    ccxt_id = doc["ccxt_id"]
    body = decode_body(doc["body"])
    exchange = replayer(ccxt_id)
    markets = exchange.use_markets(doc["markets"])
    symbols = [m["symbol"] for m in markets]
    try:
        tickers, _ = exchange.replay("fetch_tickers", (symbols,), doc["body"], body)
    except ccxt.BaseError as exc:
        raise PayloadError(f"{ccxt_id} tickers answer unusable ({type(exc).__name__}): {str(exc)[:500]}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise PayloadError(f"{ccxt_id} tickers answer has a shape ccxt's fetch_tickers cannot read "
                           f"({type(exc).__name__}: {exc}); body starts {doc['body'][:80]!r}") from None
    fetched_ms = utc_ms(doc["fetched_at"])
    out: dict[str, Ticker | PayloadError] = {}
    for market in markets:
        name = f"{market['id']} ({market['symbol']})"
        ticker = (tickers or {}).get(market["symbol"])
        if ticker is None:
            out[market["symbol"]] = PayloadError(f"the {ccxt_id} tickers answer holds no ticker for {name}")
            continue
        try:
            out[market["symbol"]] = _ticker(ticker, fetched_ms, f"the {ccxt_id} tickers answer", name, doc["body"])
        except ValueError as exc:  # PayloadError, or a price that is not a number
            out[market["symbol"]] = exc if isinstance(exc, PayloadError) else PayloadError(f"{name}: {exc}")
    return out
