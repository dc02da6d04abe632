"""What each exchange's candle endpoint is like, from ccxt itself, and what ccxt does not know.

``exchange_facts(ccxt_id)`` reads ccxt 4.5's own description of the exchange:

* ``has`` / ``timeframes`` / ``rateLimit`` from ``describe()``;
* the page size from ``features['spot']['fetchOHLCV']['limit']``;
* how a page is bounded, the endpoint and its rate-limit cost from a dry run of ccxt's own
  ``fetch_ohlcv`` (the request it builds for a window is captured before anything is sent):
  whether ccxt turns ``params['until']`` into the exchange's end parameter (``until``), bounds every
  page by since + limit itself (``bounded``), or sends ``since`` alone so the exchange answers
  forward from it (``forward``); the cost is what ccxt's throttle would take for a full page.

ccxt does not describe how far back an exchange serves candles, nor the order of its rows:
``HISTORY_CANDLES`` below holds the documented depths, the row order is the parser's
(``parsing.kline_fields``), and the markets file can override any of them per exchange
(``exchanges.<name>.facts``, see config.FactsOverrides). A window older than the history depth is
``beyond_exchange_history``: never fetched as "empty", never counted as a failed repair.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from marketflow import PROJECT_ROOT
from marketflow.timeframes import SUPPORTED_TIMEFRAMES, Window, ceil_ms, floor_ms, timeframe_ms

Paging = Literal["until", "bounded", "forward"]
RowOrder = Literal["oldest_first", "newest_first"]

# How many of the newest candles of each timeframe an exchange serves at all, where that is capped
# (ccxt does not say). Documented figures:
# * kraken: GET /0/public/OHLC "returns up to 720 of the most recent entries (older data cannot be
#   retrieved, regardless of the value of since)" (docs.kraken.com, Get OHLC Data): ccxt's page
#   limit (720) is the whole history;
# * gate: GET /spot/candlesticks refuses a `from` more than 10,000 points back with HTTP 400
#   INVALID_PARAM_VALUE "Candlestick too long ago. Maximum 10000 points ago are allowed".
HISTORY_CANDLES: dict[str, int] = {"kraken": 720, "gate": 10_000}

# Candles near the history edge left out of a fetch: the edge moves one candle per timeframe while a
# repair runs, and a page starting exactly on it would be refused a moment later (Gate's HTTP 400).
EDGE_MARGIN_CANDLES = 5

# The committed snapshot DAG parsing reads instead of importing ccxt (~0.5-2 s per parse): per ccxt
# exchange id, whether it has fetchOHLCV / fetchTickers and its timeframes. Regenerated with
# ``python -m marketflow.exchange_facts --capabilities``; tests/unit/test_exchange_facts.py fails when
# it is stale, and a different installed ccxt version makes the loader ask ccxt itself.
CAPABILITIES_PATH = PROJECT_ROOT / "include" / "config" / "ccxt_capabilities.json"


@dataclass(frozen=True)
class ExchangeFacts:
    """One exchange's candle endpoint as marketflow pages it. ``sources`` names where each fact came
    from: ``ccxt describe()``, ``ccxt features``, ``ccxt fetch_ohlcv`` (the dry run), ``marketflow``
    (HISTORY_CANDLES, the parser's layouts) or ``markets file``."""

    ccxt_id: str
    has_fetch_ohlcv: bool
    has_fetch_tickers: bool
    timeframes: frozenset[str]
    page_limit: int  # candles per fetchOHLCV call
    history_candles: int | None  # newest candles served per timeframe; None: back to the listing
    paging: Paging
    row_order: RowOrder | None  # None: not documented
    rate_limit_ms: float  # ccxt's rateLimit: milliseconds per cost unit
    ohlcv_endpoint: str | None  # the path of the page request
    ohlcv_cost: float | None  # cost units ccxt's throttle takes for one full page
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def history_floor_ms(self, timeframe: str, now_ms: int, margin: int = EDGE_MARGIN_CANDLES) -> int | None:
        """The oldest open time worth asking for at ``now_ms`` (None: no cap): the newest
        ``history_candles`` candles, less ``margin`` at the old edge (it moves while a task runs)."""
        return history_floor_ms(self.history_candles, timeframe, now_ms, margin)

    def beyond_history(self, window: Window, timeframe: str, now_ms: int) -> Window | None:
        """The part of ``window`` older than the exchange serves (None: all of it can be fetched)."""
        floor = self.history_floor_ms(timeframe, now_ms)
        if floor is None or window.empty or window.start_ms >= floor:
            return None
        return Window(window.start_ms, min(window.end_ms, ceil_ms(floor, timeframe)))

    @property
    def ohlcv_per_minute(self) -> float | None:
        """Full pages a minute ccxt's own rate limit allows (60 s / (cost x rateLimit))."""
        if not self.ohlcv_cost or not self.rate_limit_ms:
            return None
        return 60_000 / (self.ohlcv_cost * self.rate_limit_ms)

    def describe(self) -> str:
        """The facts in one line, for check-config and logs."""
        depth = f"the newest {self.history_candles:,} candles" if self.history_candles else "back to the listing"
        order = self.row_order.replace("_", " ") if self.row_order else "row order not documented"
        cost = f"{self.ohlcv_cost:g} x {self.rate_limit_ms:g} ms a page" if self.ohlcv_cost else "cost unknown"
        return (f"{self.page_limit} candles a page ({self.paging} paging), history {depth}, {order}, "
                f"{cost} ({self.ohlcv_endpoint or 'endpoint unknown'})")


def history_floor_ms(history_candles: int | None, timeframe: str, now_ms: int, margin: int = EDGE_MARGIN_CANDLES
                     ) -> int | None:
    """The oldest open time an exchange serving its newest ``history_candles`` candles (the one forming
    at ``now_ms`` included) is asked for, ``margin`` candles inside its edge; None without a cap."""
    if history_candles is None:
        return None
    return floor_ms(now_ms, timeframe) - (history_candles - 1 - margin) * timeframe_ms(timeframe)


def history_candles(ccxt_id: str, overrides: Mapping[str, Any] | None = None) -> int | None:
    """The history depth alone (the markets file's override, else HISTORY_CANDLES), without importing ccxt."""
    configured = (overrides or {}).get("history_candles")
    if configured is not None:
        return configured or None  # 0: no cap
    return HISTORY_CANDLES.get(ccxt_id)


def history_floors(exchanges: Sequence[Any], now_ms: int) -> list[tuple[str, str, int]]:
    """(exchange name, timeframe, oldest open time fetched) for every enabled exchange of the markets file
    (config.ExchangeConfig) with a capped history and each timeframe its markets extract."""
    floors = []
    for ex in exchanges:
        depth = history_candles(ex.ccxt_id, ex.facts)
        if ex.enabled and depth is not None:
            for tf in sorted({tf for m in ex.markets for tf in m.timeframes}):
                floors.append((ex.name, tf, history_floor_ms(depth, tf, now_ms)))
    return floors


class _DryRun(Exception):
    """Raised in place of sending the request ccxt built."""


_PROBE_SYMBOL = "BTC/USDT"
_PROBE_MARKET = {"id": "PROBE", "symbol": _PROBE_SYMBOL, "base": "BTC", "quote": "USDT", "baseId": "BTC",
                 "quoteId": "USDT", "type": "spot", "spot": True, "margin": False, "swap": False, "future": False,
                 "option": False, "contract": False, "linear": None, "inverse": None, "active": True,
                 "precision": {}, "limits": {}, "info": {}}
_PROBE_SINCE = 1_700_000_040_000  # 2023-11-14T22:14:00Z, on the 1m grid


@dataclass(frozen=True)
class _Request:
    path: str
    values: frozenset[str]  # every query (or JSON body) value, as text
    cost: float | None


def _dry_run(ccxt_id: str, since: int, limit: int, params: dict[str, Any]) -> _Request | None:
    """The request ccxt's fetch_ohlcv builds for a 1m page, captured before it is sent (no network)."""
    import ccxt

    seen: dict[str, Any] = {}

    class Probe(getattr(ccxt, ccxt_id)):  # type: ignore[misc]
        def throttle(self, cost=None):  # type: ignore[no-untyped-def]
            seen["cost"] = cost

        def fetch(self, url, method="GET", headers=None, body=None):  # type: ignore[no-untyped-def]
            raise _DryRun(url, body)

    exchange = Probe({"enableRateLimit": True})
    exchange.set_markets([dict(_PROBE_MARKET)])
    try:
        exchange.fetch_ohlcv(_PROBE_SYMBOL, "1m", since=since, limit=limit, params=dict(params))
    except _DryRun as sent:
        url, body = sent.args
    except Exception:  # an exchange whose fetch_ohlcv needs more than a spot market: facts stay unknown
        return None
    else:
        return None
    parts = urlsplit(url)
    # ccxt passes params it does not know through under their own name: `until=` itself bounds nothing
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if body:
        with contextlib.suppress(ValueError, AttributeError):  # a body that is no JSON object holds no bound
            pairs += [(k, str(v)) for k, v in json.loads(body).items()]
    values = {v for k, v in pairs if k not in ("until", "till")}
    cost = seen.get("cost")
    return _Request(parts.path.replace(_PROBE_MARKET["id"], "{id}"), frozenset(values),
                    float(cost) if cost is not None else None)


def _paging(ccxt_id: str, page_limit: int) -> tuple[Paging, _Request | None]:
    """How ccxt bounds a page: by ``until`` mapped onto the exchange's end parameter, by since + limit
    itself, or not at all (the exchange answers forward from since)."""
    step = 60_000
    plain = _dry_run(ccxt_id, _PROBE_SINCE, page_limit, {})
    # an `until` inside the page, off the second grid, so its value cannot be mistaken for another
    until = _PROBE_SINCE + (page_limit // 2) * step + 7_000
    bounded_by_until = _dry_run(ccxt_id, _PROBE_SINCE, page_limit, {"until": until})
    if bounded_by_until is not None and {str(until), str(until // 1000)} & bounded_by_until.values:
        return "until", plain
    if plain is not None:
        ends = {_PROBE_SINCE + n * step for n in (page_limit, page_limit - 1)}
        if {str(e) for e in ends} & plain.values or {str(e // 1000) for e in ends} & plain.values:
            return "bounded", plain
    return "forward", plain


def _row_order(ccxt_id: str) -> RowOrder | None:
    """The documented row order, from the parser's table (parsing.kline_fields)."""
    fields = kline_field_capabilities(ccxt_id)
    order = getattr(fields, "row_order", None) if fields is not None else None
    return {"newest first": "newest_first", "oldest first": "oldest_first"}.get(order or "")  # type: ignore[return-value]


def kline_field_capabilities(ccxt_id: str) -> Any | None:
    """The parser's account of what an exchange's candles carry beyond OHLCV (HP's
    ``parsing.kline_fields``: quote volume, trade count, row order, ``missing()`` sentences); None
    where the parser does not offer it."""
    from marketflow import parsing

    kline_fields = getattr(parsing, "kline_fields", None)
    return kline_fields(ccxt_id) if kline_fields is not None else None


@functools.cache
def ccxt_facts(ccxt_id: str) -> ExchangeFacts:
    """The facts of ``ccxt_id`` as ccxt and marketflow's own table know them (no markets file)."""
    import ccxt

    exchange = getattr(ccxt, ccxt_id)()
    has, sources = exchange.has or {}, {}
    spot = (exchange.features or {}).get("spot") or {}
    limit = (spot.get("fetchOHLCV") or {}).get("limit")
    sources["page_limit"] = "ccxt features" if limit else "marketflow default (ccxt features has no limit)"
    page_limit = int(limit) if limit else 500
    paging, request = _paging(ccxt_id, page_limit) if has.get("fetchOHLCV") else ("forward", None)
    sources.update(paging="ccxt fetch_ohlcv", ohlcv_endpoint="ccxt fetch_ohlcv", ohlcv_cost="ccxt fetch_ohlcv",
                   has_fetch_ohlcv="ccxt describe()", has_fetch_tickers="ccxt describe()",
                   timeframes="ccxt describe()", rate_limit_ms="ccxt describe()",
                   history_candles="marketflow HISTORY_CANDLES", row_order="marketflow parsing.kline_fields")
    return ExchangeFacts(
        ccxt_id=ccxt_id, has_fetch_ohlcv=bool(has.get("fetchOHLCV")), has_fetch_tickers=bool(has.get("fetchTickers")),
        timeframes=frozenset(exchange.timeframes or {}), page_limit=page_limit,
        history_candles=HISTORY_CANDLES.get(ccxt_id), paging=paging, row_order=_row_order(ccxt_id),
        rate_limit_ms=float(exchange.rateLimit), ohlcv_endpoint=request.path if request else None,
        ohlcv_cost=request.cost if request else None, sources=sources)


def exchange_facts(ccxt_id: str, overrides: Mapping[str, Any] | None = None) -> ExchangeFacts:
    """ccxt's facts of ``ccxt_id`` with the markets file's ``facts:`` overrides applied
    (``history_candles: 0`` there means no cap)."""
    facts = ccxt_facts(ccxt_id)
    if not overrides:
        return facts
    changes = {k: v for k, v in overrides.items() if v is not None}
    if "history_candles" in changes and changes["history_candles"] == 0:
        changes["history_candles"] = None
    sources = {**facts.sources, **{k: "markets file" for k in changes}}
    return replace(facts, **changes, sources=sources)


# --- what the markets file asks of an exchange --------------------------------------------------------


@dataclass(frozen=True)
class Capabilities:
    """What config checks need of a ccxt exchange class: available without importing ccxt (the snapshot)."""

    fetch_ohlcv: bool
    fetch_tickers: bool
    timeframes: frozenset[str]


def _installed_ccxt_version() -> str | None:
    try:
        return importlib.metadata.version("ccxt")
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def _snapshot() -> dict[str, Any] | None:
    try:
        data = json.loads(CAPABILITIES_PATH.read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("ccxt_version") == _installed_ccxt_version() else None


def capabilities(ccxt_id: str) -> Capabilities:
    """has['fetchOHLCV'], has['fetchTickers'] and the timeframes of ``ccxt_id``: from the committed
    snapshot when it was made with the installed ccxt (no import, for DAG parsing), else from ccxt."""
    snapshot = _snapshot()
    entry = snapshot["exchanges"].get(ccxt_id) if snapshot else None
    if entry is None:
        entry = _live_capabilities(ccxt_id)
    return Capabilities(bool(entry["fetchOHLCV"]), bool(entry["fetchTickers"]), frozenset(entry["timeframes"]))


@functools.cache
def _live_capabilities(ccxt_id: str) -> dict[str, Any]:
    import ccxt

    exchange = getattr(ccxt, ccxt_id)()
    has = exchange.has or {}
    return {"fetchOHLCV": bool(has.get("fetchOHLCV")), "fetchTickers": bool(has.get("fetchTickers")),
            "timeframes": sorted(exchange.timeframes or {})}


def capabilities_snapshot() -> dict[str, Any]:
    """The snapshot for every ccxt exchange (the committed include/config/ccxt_capabilities.json)."""
    import ccxt

    return {"ccxt_version": ccxt.__version__,
            "exchanges": {eid: _live_capabilities(eid) for eid in sorted(ccxt.exchanges)}}


@dataclass(frozen=True)
class CapabilityIssue:
    """A refusal (``fatal``) or a warning about one exchange of the markets file."""

    key: str
    problem: str
    fix: str
    fatal: bool

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}. Fix: {self.fix}" if self.fatal else f"{self.key}: {self.problem}"


def capability_issues(exchanges: Sequence[Any], fields: bool = False) -> list[CapabilityIssue]:
    """What the markets file's exchanges (config.ExchangeConfig) cannot do.

    Refused: an exchange whose ccxt class has no fetchOHLCV, a market timeframe it does not offer.
    Warned: candles without quote volume or trade count (``fields``: asks the parser, which imports
    ccxt), a capped history (the oldest candle it serves), no batch tickers (has['fetchTickers'])."""
    issues: list[CapabilityIssue] = []
    for ex in exchanges:
        if not ex.enabled:  # never called: nothing to refuse or warn about
            continue
        caps = capabilities(ex.ccxt_id)
        key = f"exchanges.{ex.name}"
        if not caps.fetch_ohlcv:
            issues.append(CapabilityIssue(key, f"{ex.ccxt_id} cannot fetch candles (ccxt's has['fetchOHLCV'] is "
                                               "false)", "remove the exchange or set enabled: false", True))
            continue
        usable = ", ".join(t for t in SUPPORTED_TIMEFRAMES if t in caps.timeframes)
        for i, m in enumerate(ex.markets):
            issues += [CapabilityIssue(f"{key}.markets[{i}].timeframes",
                                       f"timeframe {tf!r} is not offered by {ex.ccxt_id}", f"use one of {usable}", True)
                       for tf in m.timeframes if tf not in caps.timeframes]
        history = history_candles(ex.ccxt_id, ex.facts)
        if history:
            issues.append(CapabilityIssue(key, f"{ex.ccxt_id} serves only its newest {history:,} candles of each "
                                               "timeframe: older windows are reported beyond_exchange_history, not "
                                               "fetched", "", False))
        if not caps.fetch_tickers:
            issues.append(CapabilityIssue(key, f"{ex.ccxt_id} has no batch tickers (ccxt's has['fetchTickers'] is "
                                               "false): one ticker request per market", "", False))
        if fields:
            capabilities_of_fields = kline_field_capabilities(ex.ccxt_id)
            missing = capabilities_of_fields.missing() if capabilities_of_fields is not None else []
            issues += [CapabilityIssue(key, f"{sentence}; the column stays NULL", "", False) for sentence in missing]
    return issues


def _main(argv: Sequence[str]) -> int:
    if list(argv) == ["--capabilities"]:
        print(json.dumps(capabilities_snapshot(), indent=1, sort_keys=True))
        return 0
    if len(argv) == 1 and not argv[0].startswith("-"):
        facts = exchange_facts(argv[0])
        print(f"{facts.ccxt_id}: {facts.describe()}")
        return 0
    print("usage: python -m marketflow.exchange_facts --capabilities > include/config/ccxt_capabilities.json\n"
          "       python -m marketflow.exchange_facts <ccxt id>", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
