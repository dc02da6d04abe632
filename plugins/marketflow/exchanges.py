"""ccxt clients and the raw HTTP exchanges they make.

ccxt builds every request (endpoint, parameters, signing, its own rate limiter); marketflow
keeps what came back over the wire. A recorder hooked into ccxt's response path captures each
response body exactly as received, so the raw layer stores the exchange's words, not ccxt's
normalised arrays.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import ccxt
import tenacity

from marketflow.config import ExchangeConfig
from marketflow.errors import ErrorClass, backoff, classify
from marketflow.exchange_facts import EDGE_MARGIN_CANDLES, ExchangeFacts, exchange_facts
from marketflow.logs import get_logger, window_field
from marketflow.secrets import exchange_credentials, redact
from marketflow.timeframes import Window, ceil_ms, iso, timeframe_ms

if TYPE_CHECKING:
    from marketflow.rate_limit import SharedRateLimiter

log = get_logger(__name__)

_URL_HOST = re.compile(r"^https?://[^/]+")


@dataclass
class HttpExchange:
    """One HTTP response as ccxt received it."""

    method: str
    url: str
    status: int
    headers: dict[str, str]
    body: str
    received_at_ms: int
    # Whether ccxt decoded the body as JSON (None: ccxt did not try), so it is not decoded twice.
    json_ok: bool | None = None
    # The call this response answered failed and was retried (a 5xx, a body that is not JSON): raw keeps
    # it as evidence of the conversation, the loader never reads it as data.
    superseded: bool = False

    @property
    def endpoint(self) -> str:
        return urlsplit(self.url).path

    @property
    def params(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.url).query, keep_blank_values=True))


@dataclass
class ResponseRecorder:
    """Every response a client saw since the last ``take``, as received."""

    responses: list[HttpExchange] = field(default_factory=list)

    def take(self) -> list[HttpExchange]:
        taken, self.responses = self.responses, []
        return taken


class PipelineClient:
    """What marketflow adds to a ccxt exchange class, through the methods ccxt itself calls on every
    request (overridden in a subclass, see ``client_class``; ``tests/unit/test_ccxt_upgrade.py`` pins
    their signatures and call order, so a ccxt release that changes them fails there):

    * ``on_rest_response``: each response is recorded (redacted) before ccxt parses it;
    * ``parse_json``: whether ccxt could decode the body, so it is not decoded twice;
    * ``throttle``: a request first takes its cost from the bucket shared by every worker
      (``shared_limiter``, rate_limit.py), then ccxt's own throttle spaces this process's calls.
    """

    # Numbers stay the exchange's decimal strings all the way to Postgres NUMERIC.
    number = str
    # Called with each failed call's details (ops.api_errors); set by the pipeline.
    error_sink: Callable[[dict[str, Any]], None] | None = None
    shared_limiter: SharedRateLimiter | None = None
    # Page size, paging, history depth (exchange_facts.py), with the markets file's overrides; set by
    # build_exchange.
    marketflow_facts: ExchangeFacts | None = None

    def __init__(self, config: dict[str, Any], secrets: tuple[str, ...] = ()) -> None:
        self.recorder = ResponseRecorder()
        self._secrets = secrets
        super().__init__(config)  # type: ignore[call-arg]

    def redact(self, text: str) -> str:
        """``text`` without this client's credentials or signature parameters."""
        return redact(text, self._secrets)

    def on_rest_response(self, code, reason, url, method, response_headers, response_body, request_headers,
                         request_body):  # type: ignore[no-untyped-def]
        # Credentials and signatures never reach raw: redacted the moment a response is seen.
        self.recorder.responses.append(HttpExchange(method, self.redact(url), int(code), dict(response_headers or {}),
                                                    self.redact(response_body or ""), int(time.time() * 1000)))
        return super().on_rest_response(code, reason, url, method, response_headers,  # type: ignore[misc]
                                        response_body, request_headers, request_body)

    def parse_json(self, http_response):  # type: ignore[no-untyped-def]
        decoded = super().parse_json(http_response)  # type: ignore[misc]  # None: not a JSON object or array
        if self.recorder.responses:
            self.recorder.responses[-1].json_ok = decoded is not None
        return decoded

    def throttle(self, cost=None):  # type: ignore[no-untyped-def]
        if self.shared_limiter is not None:
            self.shared_limiter.acquire(cost if cost is not None else 1)
        return super().throttle(cost)  # type: ignore[misc]


@functools.cache
def client_class(ccxt_id: str) -> type:
    """ccxt's class for ``ccxt_id`` with ``PipelineClient`` in front of it (one class per exchange)."""
    base = getattr(ccxt, ccxt_id)
    return type(f"Pipeline{base.__name__}", (PipelineClient, base), {"__module__": __name__})


def ccxt_exchange_ids() -> frozenset[str]:
    """The exchange ids this ccxt release supports (importing ccxt takes ~1-2 s)."""
    return frozenset(ccxt.exchanges)


def rewrite_hosts(urls: Any, base_url: str) -> Any:
    """Point every ccxt API url at ``base_url`` (a mirror, a proxy, the emulator), keeping its path."""
    if isinstance(urls, dict):
        return {k: rewrite_hosts(v, base_url) for k, v in urls.items()}
    if isinstance(urls, str):
        return _URL_HOST.sub(base_url.rstrip("/"), urls)
    return urls


@functools.cache
def _default_api_urls(ccxt_id: str) -> dict[str, Any]:
    # Building a ccxt client is costly (tens of ms); its default URLs never change.
    return getattr(ccxt, ccxt_id)().urls


def build_exchange(cfg: ExchangeConfig, limiter_conn=None, live: bool = True, deadline: float | None = None
                   ) -> PipelineClient:
    """A ccxt client for ``cfg``: rate limiting on, every response recorded, decimals kept as strings.

    With ``limiter_conn`` (an autocommit Postgres connection) every request also draws on the
    exchange's bucket shared by all workers (rate_limit.py): as the minute path (``live``) or as
    history work, which leaves the exchange's ``live_rate_reserve`` to it. ``deadline``
    (time.monotonic()) bounds how long a request waits there for its tokens."""
    credentials = exchange_credentials(cfg.name, cfg.credentials_conn_id)
    params: dict[str, Any] = {"enableRateLimit": True, "timeout": cfg.timeout_ms, "options": dict(cfg.options),
                              **credentials}
    if cfg.api_base_url:
        urls = copy.deepcopy(_default_api_urls(cfg.ccxt_id))
        params["urls"] = {**urls, "api": rewrite_hosts(urls["api"], cfg.api_base_url)}
    exchange = client_class(cfg.ccxt_id)(params, secrets=tuple(credentials.values()))
    exchange.marketflow_facts = exchange_facts(cfg.ccxt_id, cfg.facts)
    if limiter_conn is not None:
        from marketflow.rate_limit import SharedRateLimiter

        per_minute = cfg.rate_limit_per_minute or 60_000 / exchange.rateLimit
        share, burst_seconds = cfg.bucket_shape(per_minute)
        limiter = SharedRateLimiter(limiter_conn, cfg.name, per_minute=per_minute, share=share, live=live,
                                    reserve=cfg.live_rate_reserve, deadline=deadline, burst_seconds=burst_seconds,
                                    live_burst_seconds=cfg.live_burst_seconds)
        limiter.ensure_bucket()
        exchange.shared_limiter = limiter
    return exchange


# Market lists per exchange and API address, reused for an hour: a backfill builds a client per
# chunk, and a market list costs much more than a page of candles (Binance's exchangeInfo weighs
# 20, a 1000-candle klines page 2; 300 chunks would spend a whole minute's limit on it). Kept in
# this process, and (given a connection) in ops.market_lists for every other task process.
MARKETS_TTL_S = 3600.0
_markets_cache: dict[str, tuple[float, dict[str, Any], dict[str, Any]]] = {}


def load_markets(exchange: ccxt.Exchange, conn=None) -> None:
    """``exchange.load_markets()``, answered from this process's cache or, with ``conn`` (an
    autocommit Postgres connection), from the list another task stored within the TTL.

    When the stored list is missing or old, one task fetches it while the others wait on an
    advisory lock and then read what it stored, instead of all asking the exchange at once."""
    key = f"{exchange.id} {json.dumps(exchange.urls.get('api'), sort_keys=True, default=str)}"
    cached = _markets_cache.get(key)
    if cached is not None and time.monotonic() - cached[0] < MARKETS_TTL_S:
        exchange.set_markets(cached[1], cached[2])
        return

    def fetch() -> None:
        call_with_retries(exchange, exchange.load_markets, "market list")
        _markets_cache[key] = (time.monotonic(), exchange.markets, exchange.currencies)

    if conn is None:
        fetch()
        return
    lock = f"market list {key}"
    with conn.cursor() as cur:
        if not _use_stored_markets(cur, exchange, key):
            # A transaction-level lock, released by the COMMIT that stores the list: a session lock and
            # its unlock could run on two different server connections behind a transaction pooler
            # (PgBouncer), leaving the lock held by an idle server connection.
            if conn.autocommit:
                cur.execute("BEGIN")
            try:
                cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (lock,))
                if not _use_stored_markets(cur, exchange, key):
                    fetch()
                    cur.execute(
                        "INSERT INTO ops.market_lists (exchange, api, loaded_at, markets, currencies)"
                        " VALUES (%s, %s, now(), %s, %s) ON CONFLICT (exchange, api) DO UPDATE SET"
                        " loaded_at = excluded.loaded_at, markets = excluded.markets, currencies = excluded.currencies",
                        (exchange.id, key, json.dumps(exchange.markets, default=str),
                         json.dumps(exchange.currencies, default=str)))
            except BaseException:
                if conn.autocommit:
                    cur.execute("ROLLBACK")  # releases the lock; a caller's own transaction is the caller's
                raise
            if conn.autocommit:
                cur.execute("COMMIT")
    if not conn.autocommit:
        conn.commit()


def _use_stored_markets(cur, exchange: ccxt.Exchange, key: str) -> bool:
    """Set the markets stored for ``key`` if loaded within the TTL; False when there are none."""
    cur.execute("SELECT markets::text, currencies::text, extract(epoch FROM now() - loaded_at) FROM ops.market_lists"
                " WHERE exchange = %s AND api = %s AND loaded_at > now() - %s * interval '1 second'",
                (exchange.id, key, MARKETS_TTL_S))
    row = cur.fetchone()
    if row is None:
        return False
    markets, currencies = json.loads(row[0]), json.loads(row[1]) if row[1] else None
    exchange.set_markets(markets, currencies)
    # the TTL runs from when the list was fetched, not from when this process read it
    _markets_cache[key] = (time.monotonic() - float(row[2]), exchange.markets, exchange.currencies)
    log.info("%s: market list from ops.market_lists (%d markets, loaded %.0f s ago)", exchange.id, len(markets),
             float(row[2]), exchange=exchange.id, markets=len(markets))
    return True


# In-task retries before the task fails to Airflow (which retries again with its own backoff).
MAX_CALL_ATTEMPTS = 4
# A pause longer than this (e.g. a long ban) is left to Airflow's retry instead of a sleeping worker.
MAX_IN_TASK_PAUSE_S = 300.0


# Headers that say when a rate limit frees up, as an epoch time in milliseconds, where an exchange sends
# no Retry-After (Bybit's retCode 10006 answers).
RESET_AT_MS_HEADERS = ("x-bapi-limit-reset-timestamp",)


def retry_after_seconds(response: HttpExchange | None, default: float, now: float | None = None) -> float:
    """How long a rate-limit answer asks us to wait: its Retry-After (seconds), else the time until its
    reset timestamp (Bybit), else ``default``."""
    if response is None:
        return default
    headers = {key.lower(): value for key, value in response.headers.items()}
    try:
        if "retry-after" in headers:
            return max(float(headers["retry-after"]), 0.0)
        for key in RESET_AT_MS_HEADERS:
            if key in headers:
                # The reset is on the exchange's clock: measured from the time the answer itself states
                # (Bybit's body "time"), a skew between its clock and ours neither makes us hammer it with
                # retries (reset in our past) nor wait a skew's worth too long; ours when it states none.
                clock = exchange_time_s(response)
                if clock is None:
                    clock = time.time() if now is None else now
                # a hair past the reset: the exchange's window must have moved on when we ask again
                seconds = float(headers[key]) / 1000 - clock + 0.05
                return min(max(seconds, 0.05), default)
    except ValueError:
        pass
    return default


def exchange_time_s(response: HttpExchange) -> float | None:
    """The exchange's own time when it answered (epoch seconds), from a JSON body's ``time`` in ms
    (Bybit's v5 answers), or None."""
    try:
        body = json.loads(response.body)
    except ValueError:
        return None
    value = body.get("time") if isinstance(body, dict) else None
    return float(value) / 1000 if isinstance(value, int | float) and not isinstance(value, bool) else None


class MalformedResponse(ccxt.ExchangeNotAvailable):
    """HTTP 200 with a body that is not JSON (an error page from a proxy, a cut-off body). ccxt hands
    such text to its parsers without raising; treated as a transient outage and retried."""


def _is_json(response: HttpExchange) -> bool:
    if response.json_ok is not None:  # ccxt has already tried to decode it
        return response.json_ok
    try:
        json.loads(response.body)
    except ValueError:
        return False
    return True


def _require_json(responses: list[HttpExchange]) -> None:
    for response in responses:
        if response.status == 200 and not _is_json(response):
            raise MalformedResponse(f"{response.endpoint} answered HTTP 200 with a body that is not JSON "
                                    f"({len(response.body)} bytes, starts {response.body[:60]!r})")


@dataclass
class _Failure:
    """One failed attempt of a call: its class and the answers it got."""

    exc: BaseException
    error_class: ErrorClass
    responses: list[HttpExchange]

    @property
    def last(self) -> HttpExchange | None:
        return self.responses[-1] if self.responses else None

    @property
    def status(self) -> int | None:
        return self.last.status if self.last else None

    @property
    def pause(self) -> float:
        """What the exchange asked for after a 429/418 (Retry-After; a ban lasts longer by default)."""
        return retry_after_seconds(self.last, 60.0 if self.status == 418 else 10.0)


def call_with_retries(exchange: PipelineClient, call, what: str) -> tuple[Any, list[HttpExchange]]:
    """Run one ccxt call; retry transient failures (tenacity). Returns its result and every response
    seen, failed attempts included, so raw keeps the whole conversation.

    429/418: the exchange's Retry-After pauses the shared bucket (every worker), then retry.
    network, timeout, 5xx: exponential backoff with full jitter (errors.backoff). Anything else, the
    last of MAX_CALL_ATTEMPTS, or a pause over MAX_IN_TASK_PAUSE_S: raise, with ``responses`` attached.
    """
    seen: list[HttpExchange] = []
    failures: list[_Failure] = []

    def attempt() -> Any:
        exchange.recorder.take()
        try:
            result = call()
            _require_json(exchange.recorder.responses)
        except Exception as exc:
            responses = exchange.recorder.take()
            seen.extend(responses)
            failure = _Failure(exc, classify(exc, responses[-1].status if responses else None), responses)
            failures.append(failure)
            if failure.error_class is ErrorClass.RATE_LIMIT and exchange.shared_limiter is not None:
                # every worker waits out the exchange's pause, whether or not this call is retried
                exchange.shared_limiter.pause(failure.pause, f"HTTP {failure.status} on {what}", failure.status)
            raise
        seen.extend(exchange.recorder.take())
        return result

    def rate_limit_pause(state: tenacity.RetryCallState) -> float:
        failure = failures[-1]
        return failure.pause if failure.error_class is ErrorClass.RATE_LIMIT else 0.0

    def wait(state: tenacity.RetryCallState) -> float:
        if failures[-1].error_class is ErrorClass.RATE_LIMIT:
            # with a shared limiter the next acquire waits out the pause; else this process sleeps it
            return 0.0 if exchange.shared_limiter is not None else rate_limit_pause(state)
        return exponential(state)

    def before_retry(state: tenacity.RetryCallState) -> None:
        failure = failures[-1]
        for response in failure.responses:
            response.superseded = True
        _report(exchange, failure, state.attempt_number, will_retry=True)
        log.warning("%s %s: %s (%s: %s), attempt %d/%d, retrying after %.1fs", exchange.id, what,
                    failure.error_class.value, type(failure.exc).__name__,
                    exchange.redact(str(failure.exc))[:300], state.attempt_number, MAX_CALL_ATTEMPTS,
                    rate_limit_pause(state) or state.upcoming_sleep, exchange=exchange.id, call=what,
                    error_class=failure.error_class.value, error=type(failure.exc).__name__,
                    attempt=state.attempt_number)

    exponential = backoff()
    retrying = tenacity.Retrying(
        # only what attempt() classified: a BaseException (Airflow's execution_timeout) ends the call at once
        retry=tenacity.retry_if_exception(lambda exc: bool(failures) and failures[-1].exc is exc
                                          and failures[-1].error_class.transient),
        # a long pause (a ban) is left to Airflow's retry instead of a sleeping worker
        stop=tenacity.stop_after_attempt(MAX_CALL_ATTEMPTS)
        | (lambda state: rate_limit_pause(state) > MAX_IN_TASK_PAUSE_S),
        wait=wait, before_sleep=before_retry, reraise=True)
    try:
        result = retrying(attempt)
    except Exception as exc:
        if failures and failures[-1].exc is exc:
            _report(exchange, failures[-1], len(failures), will_retry=False)
        exc.responses = seen  # type: ignore[attr-defined]
        raise
    return result, seen


def _report(exchange: PipelineClient, failure: _Failure, attempt: int, will_retry: bool) -> None:
    if exchange.error_sink is not None:
        last = failure.last
        exchange.error_sink({"endpoint": last.endpoint if last else None, "http_status": failure.status,
                             "error_class": failure.error_class.value, "exception": type(failure.exc).__name__,
                             "message": exchange.redact(str(failure.exc))[:2000], "attempt": attempt,
                             "will_retry": will_retry})


def parser_for(ccxt_id: str) -> ccxt.Exchange:
    """An offline ccxt instance used only for its response parsers."""
    exchange = _PARSERS.get(ccxt_id)
    if exchange is None:
        exchange = client_class(ccxt_id)({})
        _PARSERS[ccxt_id] = exchange
    return exchange


_PARSERS: dict[str, ccxt.Exchange] = {}


def facts_of(exchange: ccxt.Exchange) -> ExchangeFacts:
    """The candle facts ``build_exchange`` attached (with the markets file's overrides), else ccxt's."""
    facts = getattr(exchange, "marketflow_facts", None)
    return facts if facts is not None else exchange_facts(exchange.id)


def ohlcv_page_limit(exchange: ccxt.Exchange) -> int:
    """The exchange's per-call candle maximum (ccxt's ``features``, or the markets file's override)."""
    return facts_of(exchange).page_limit


@dataclass
class OhlcvPage:
    """One page of candles: the HTTP exchange(s) behind it and the open times ccxt parsed from it.

    ``beyond_history``: a part of the window older than the exchange serves (its history depth), not
    fetched, or refused by the exchange as too old (then ``responses`` holds the refusal, kept in raw)."""

    responses: list[HttpExchange]
    request: dict[str, Any] | None
    open_times: list[int]
    beyond_history: Window | None = None


def _refused_as_too_old(exc: Exception, facts: ExchangeFacts, timeframe: str, cursor: int, now_ms: int
                        ) -> int | None:
    """Where paging resumes when the exchange refused a page (HTTP 400, a bad request) whose start the
    facts put at or beyond its history edge (Gate: "Candlestick too long ago"); None: a real error."""
    responses = getattr(exc, "responses", None) or []
    status = responses[-1].status if responses else None
    if status != 400 and classify(exc, status) is not ErrorClass.BAD_REQUEST:
        return None
    # twice the margin the pager keeps from the edge: the edge moved on while the task ran
    floor = facts.history_floor_ms(timeframe, now_ms, margin=2 * EDGE_MARGIN_CANDLES)
    return floor if floor is not None and cursor < floor else None


def fetch_ohlcv_pages(exchange: ccxt.Exchange, symbol: str, timeframe: str, window: Window,
                      now_ms: int | None = None) -> Iterator[OhlcvPage]:
    """Page through ``window`` oldest first, as the exchange's facts say (exchange_facts.py).

    Each page asks for the candles that open in [cursor, page end), page end = cursor + the page
    size: for ``until`` exchanges the page end goes to ccxt as ``params['until']`` (Binance endTime,
    OKX after, Bybit end, ...), ``bounded`` ones ccxt bounds itself (KuCoin, Gate), so an exchange that
    answers the newest rows of a range (Bybit, KuCoin, OKX) answers exactly the page. The cursor then
    moves past the newest candle of the window received; after an empty bounded page, to the page end
    (the exchange has nothing in between); after an empty ``forward`` page (since only, Kraken), the
    exchange has nothing at or after the cursor and paging stops; candles all after the window move it
    to the first of them. The part of the window older than the exchange's history depth is not fetched
    but yielded as ``beyond_history``, as is a page the exchange refuses as too old (HTTP 400 at the
    edge). A page of candles all older than the cursor (the exchange ignored ``since``) is a ``data``
    error (ccxt.BadResponse): re-asking would loop, stepping over would skip the window silently.
    """
    facts = facts_of(exchange)
    step = timeframe_ms(timeframe)
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    cursor = window.start_ms
    beyond = facts.beyond_history(window, timeframe, now)
    if beyond is not None:
        log.info("%s %s %s: %s is older than the newest %d candles %s serves; not fetched (beyond_exchange_history)",
                 exchange.id, symbol, timeframe, beyond, facts.history_candles, facts.ccxt_id, exchange=exchange.id,
                 symbol=symbol, timeframe=timeframe, window=window_field(beyond))
        yield OhlcvPage([], None, [], beyond_history=beyond)
        cursor = beyond.end_ms
    # Never limit=0, which exchanges refuse: nothing left in the window, no request (weeks open on Monday).
    while (left := Window(cursor, max(cursor, window.end_ms)).candles(timeframe)) > 0:
        limit = min(facts.page_limit, left)
        page_end = ceil_ms(cursor, timeframe) + limit * step
        params = {"until": page_end - 1} if facts.paging == "until" else {}
        request = {"symbol": symbol, "timeframe": timeframe, "since": cursor, "limit": limit, **params}
        try:
            rows, responses = call_with_retries(
                exchange, lambda c=cursor, n=limit, p=params: exchange.fetch_ohlcv(symbol, timeframe, since=c, limit=n,
                                                                                   params=dict(p)),
                f"{symbol} {timeframe} candles from {iso(cursor)}")
        except Exception as exc:
            resume = _refused_as_too_old(exc, facts, timeframe, cursor, int(time.time() * 1000))
            if resume is None:
                exc.request = request  # type: ignore[attr-defined]
                raise
            refused = Window(cursor, min(window.end_ms, resume))
            log.info("%s %s %s: the exchange refused %s as too old (%s); beyond its history of %d candles",
                     exchange.id, symbol, timeframe, refused, exc, facts.history_candles, exchange=exchange.id,
                     symbol=symbol, timeframe=timeframe, window=window_field(refused))
            yield OhlcvPage(getattr(exc, "responses", None) or [], request, [], beyond_history=refused)
            cursor = refused.end_ms
            continue
        open_times = sorted(int(r[0]) for r in rows)
        if not open_times or open_times[-1] < cursor:
            # Nothing at or after the cursor: a hole, unless the exchange answered candles that were all
            # older than asked (ccxt drops rows before `since`, so count the rows of the answer itself).
            from marketflow.parsing import PayloadError, decode_body, kline_rows  # parsing imports this module

            try:
                answered = len(open_times) or len(kline_rows(exchange.id, decode_body(responses[-1].body)))
            except (PayloadError, IndexError):
                answered = 0
            if answered:
                stale = ccxt.BadResponse(
                    f"{exchange.id} {symbol} {timeframe}: asked for {limit} candles from {iso(cursor)} (window "
                    f"{window}) and got {answered}, none at or after {iso(cursor)}, so the page cursor did not "
                    "advance. The exchange (or a proxy at api_base_url) ignored `since`; check api_base_url and "
                    "the ccxt version")
                stale.request, stale.responses = request, responses  # type: ignore[attr-defined]  # kept in raw
                raise stale
        yield OhlcvPage(responses, request, open_times)
        in_window = [t for t in open_times if cursor <= t < window.end_ms]
        later = [t for t in open_times if t >= cursor]
        if in_window:
            cursor = in_window[-1] + step
        elif facts.paging != "forward":
            cursor = page_end  # a bounded page came back empty: the exchange has nothing in it
        elif later:
            cursor = ceil_ms(later[0], timeframe)  # its next candle opens after the window
        else:
            log.debug("%s %s %s: nothing at or after %s; the rest of %s is empty at the source", exchange.id,
                      symbol, timeframe, iso(cursor), window)
            break
    log.debug("paged %s %s %s up to %s", exchange.id, symbol, timeframe, iso(cursor))


def fetch_ticker_response(exchange: ccxt.Exchange, symbol: str) -> tuple[dict[str, Any], list[HttpExchange]]:
    return call_with_retries(exchange, lambda: exchange.fetch_ticker(symbol), f"{symbol} ticker")


def market_info(exchange: ccxt.Exchange, symbol: str) -> dict[str, Any]:
    """The unified market ccxt loaded, JSON-safe, stored with raw payloads so parsing needs no network."""
    market = exchange.market(symbol)
    keep = ("id", "symbol", "base", "quote", "baseId", "quoteId", "type", "spot", "active", "precision", "limits")
    return json.loads(json.dumps({k: market.get(k) for k in keep}, default=str))
