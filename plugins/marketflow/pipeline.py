"""What the extract and load tasks do, free of Airflow so tests can call it with real databases.

extract: exchange -> MongoDB raw (one document per response) -> returns the payload ids.
load:    payload ids -> parse, validate -> Postgres staging in one transaction.
ingest:  extract then load in one task (the DAGs' unit of work); the load takes the payloads the
         extract just inserted from memory instead of reading them back.
Each records one raw_ingestion_log document per attempt, success or failure.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from marketflow import market_health
from marketflow.alerts import record_api_error
from marketflow.config import MarketConfig, MarketflowConfig
from marketflow.errors import ErrorClass, MarketsFailed, UnusableDataError, classify
from marketflow.exchange_facts import exchange_facts
from marketflow.exchanges import (
    build_exchange,
    call_with_retries,
    fetch_ohlcv_pages,
    fetch_ticker_response,
    load_markets,
    market_info,
)
from marketflow.logs import get_logger, window_field
from marketflow.ops import BackfillTask, claim_tasks, count_present, finish_task
from marketflow.planning import (  # noqa: F401 (re-exported: planning moved there, free of ccxt)
    BACKFILL_MIN_SPLIT_CANDLES,
    BACKFILL_TASK_CANDLES,
    market_chunks,
    market_window,
    parse_time,
    plan_backfill,
    plan_chunks,
    plan_window,
    selected,
)
from marketflow.raw_store import PayloadContext, RawStore
from marketflow.staging_load import load_candle_batch, load_candle_payloads, load_ticker_payloads, prepare_candles
from marketflow.timeframes import Window, iso

log = get_logger(__name__)


@dataclass(frozen=True)
class Attempt:
    """Identity of one task attempt, for lineage and the ingestion log."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1
    try_number: int = 1

    @property
    def attempt_id(self) -> str:
        return f"{self.dag_id}/{self.run_id}/{self.task_id}/{self.map_index}/{self.try_number}"


def fetch_start_at(window: Window, conf: dict[str, Any] | None, config: MarketflowConfig,
                   now: float | None = None) -> float | None:
    """When a live minute run started ahead of its close (``LeadingCronDataIntervalTimetable``) may
    fetch: the wall time (time.time()) of the window's close plus ``close_settle_seconds``; None when
    that has passed (catch-up, backfill, a rerun of a past window: no wait) or the window comes from
    ``dag_run.conf``. A close further ahead than the lead allows is not waited for (said in the log):
    the run then fetches what is closed, as without the lead."""
    if (conf or {}).get("start") or (conf or {}).get("end"):
        return None
    now = time.time() if now is None else now
    start_at = window.end_ms / 1000 + config.close_settle_seconds
    if start_at <= now:
        return None
    if start_at - now > config.minute_run_lead_seconds + config.close_settle_seconds + LEAD_SLACK_SECONDS:
        log.warning("the window ends %.0f s from now, more than minute_run_lead_seconds (%d s) allows: not "
                    "waiting for it; only closed candles are fetched", start_at - now, config.minute_run_lead_seconds)
        return None
    return start_at


def wait_until(start_at: float | None) -> float:
    """Sleep until the wall time ``start_at`` (from fetch_start_at); the seconds slept."""
    if start_at is None:
        return 0.0
    pause = max(0.0, start_at - time.time())
    if pause:
        time.sleep(pause)
    return pause


def extract_market(config: MarketflowConfig, market: MarketConfig, timeframe: str, run_window: Window,
                   raw: RawStore, attempt: Attempt, with_ticker: bool = False, ops_conn=None,
                   written: dict[str, dict[str, Any]] | None = None, live: bool = True,
                   deadline: float | None = None, client: Any = None) -> dict[str, Any]:
    """Fetch the market's closed candles for the window into raw; returns ids for the load task.

    With ``ops_conn`` (an autocommit Postgres connection) every call draws on the exchange's shared
    rate-limit bucket (as the minute path when ``live``, else as history work that leaves the live
    reserve alone; waiting there at most until ``deadline``, a time.monotonic()), and each failed
    call is written to ops.api_errors. ``written`` collects the documents inserted, for a load in
    the same task (``ingest_market``). ``client``: a ccxt client from ``build_exchange`` (its market list
    loaded) to reuse instead of building one for this market."""
    exchange_cfg = config.exchange(market.exchange)
    now_ms = int(time.time() * 1000)
    window = market_window(market, timeframe, run_window, now_ms)
    result: dict[str, Any] = {
        "exchange": market.exchange, "symbol": market.symbol, "timeframe": timeframe,
        "window_start_ms": window.start_ms, "window_end_ms": window.end_ms,
        "payload_ids": [], "ticker_payload_ids": [], "pages": 0, "candles_fetched": 0,
        # parts of the window older than the exchange serves: [[start_ms, end_ms]], and their candles
        "beyond_history": [], "beyond_history_candles": 0,
    }
    started = time.monotonic()
    log_fields = {"stage": "extract", "exchange": market.exchange, "symbol": market.symbol, "timeframe": timeframe,
                  "dag_id": attempt.dag_id, "run_id": attempt.run_id, "task_id": attempt.task_id,
                  "map_index": attempt.map_index, "try_number": attempt.try_number,
                  "window_start": iso(window.start_ms), "window_end": iso(window.end_ms),
                  "started_at": datetime.now(UTC), "status": "running"}
    raw.log_attempt(attempt.attempt_id, log_fields)
    if window.empty and not with_ticker:
        log.info("%s %s %s: run window %s is outside the market's history (%s to %s); nothing to fetch",
                 market.exchange, market.symbol, timeframe, run_window, market.history_start.isoformat(),
                 market.history_end.isoformat() if market.history_end else "now", exchange=market.exchange,
                 symbol=market.symbol, timeframe=timeframe, window=window_field(run_window))
        raw.log_attempt(attempt.attempt_id, {"status": "skipped", "finished_at": datetime.now(UTC),
                                             "duration_s": time.monotonic() - started})
        return result

    exchange = client if client is not None else build_exchange(exchange_cfg, ops_conn, live=live, deadline=deadline)
    if ops_conn is not None:
        exchange.error_sink = lambda fields: record_api_error(ops_conn, {
            **fields, "exchange": market.exchange, "symbol": market.symbol, "dag_id": attempt.dag_id,
            "run_id": attempt.run_id, "task_id": attempt.task_id, "try_number": attempt.try_number})
    ctx = PayloadContext(market.exchange, exchange_cfg.ccxt_id, market.symbol, timeframe, "ohlcv", window,
                         attempt.run_id, attempt.try_number, {})
    try:
        if client is None or not exchange.markets:
            load_markets(exchange, ops_conn)
        ctx = PayloadContext(**{**ctx.__dict__, "market": market_info(exchange, market.symbol)})
        expected = window.candles(timeframe)
        if not window.empty:
            for page in fetch_ohlcv_pages(exchange, market.symbol, timeframe, window):
                if page.beyond_history is not None:
                    # not fetched, or refused as too old: the refusal is kept in raw as evidence, not data
                    result["payload_ids"] += raw.save_responses(
                        ctx, page.responses, page.request, keep=written,
                        error=f"beyond the exchange's history: {page.beyond_history}" if page.responses else None)
                    result["beyond_history"].append([page.beyond_history.start_ms, page.beyond_history.end_ms])
                    result["beyond_history_candles"] += page.beyond_history.candles(timeframe)
                    continue
                result["payload_ids"] += raw.save_responses(ctx, page.responses, page.request, keep=written)
                result["pages"] += 1
                result["candles_fetched"] += sum(1 for t in page.open_times if window.start_ms <= t < window.end_ms)
                elapsed = max(time.monotonic() - started, 1e-6)
                log.info("%s %s %s: page %d, %d/%d candles (%.0f candles/s)", market.exchange, market.symbol,
                         timeframe, result["pages"], result["candles_fetched"], expected,
                         result["candles_fetched"] / elapsed, exchange=market.exchange, symbol=market.symbol,
                         timeframe=timeframe, pages=result["pages"], candles=result["candles_fetched"])
        if with_ticker:
            _, responses = fetch_ticker_response(exchange, market.symbol)
            ticker_ctx = PayloadContext(**{**ctx.__dict__, "kind": "ticker", "timeframe": None, "window": None})
            result["ticker_payload_ids"] = raw.save_responses(ticker_ctx, responses, keep=written)
    except Exception as exc:
        responses = getattr(exc, "responses", [])
        error_class = classify(exc, responses[-1].status if responses else None)
        message = exchange.redact(str(exc))
        stored = raw.save_responses(ctx, responses, getattr(exc, "request", None),
                                    error=f"{type(exc).__name__}: {message}")
        raw.log_attempt(attempt.attempt_id, {
            "status": "failed", "finished_at": datetime.now(UTC), "duration_s": time.monotonic() - started,
            "error_class": error_class.value, "exception": type(exc).__name__, "error_message": message[:2000],
            "http_status": responses[-1].status if responses else None, "pages": result["pages"],
            "payload_ids": result["payload_ids"] + stored,
        })
        log.error("%s %s %s: extract failed after %d pages with an error of class %s (%s: %s); %s", market.exchange,
                  market.symbol, timeframe, result["pages"], error_class.value, type(exc).__name__, message,
                  error_class.advice, exchange=market.exchange, symbol=market.symbol, timeframe=timeframe,
                  pages=result["pages"], error_class=error_class.value, error=type(exc).__name__)
        raise
    finally:
        if client is None and exchange.shared_limiter is not None:  # a reused client's owner flushes it
            exchange.shared_limiter.flush()
    duration = time.monotonic() - started
    raw.log_attempt(attempt.attempt_id, {
        "status": "success", "finished_at": datetime.now(UTC), "duration_s": duration, "pages": result["pages"],
        "candles_fetched": result["candles_fetched"], "payload_ids": result["payload_ids"],
        "ticker_payload_ids": result["ticker_payload_ids"],
    })
    log.info("%s %s %s: fetched %d candles in %d pages for %s in %.1fs%s", market.exchange, market.symbol, timeframe,
             result["candles_fetched"], result["pages"], window, duration,
             f"; {result['beyond_history_candles']} candles beyond the exchange's history, not fetched"
             if result["beyond_history_candles"] else "", exchange=market.exchange, symbol=market.symbol,
             timeframe=timeframe, window=window_field(window), candles=result["candles_fetched"],
             pages=result["pages"], seconds=round(duration, 3), beyond_history_candles=result["beyond_history_candles"])
    return result


def load_market(conn, raw: RawStore, extracted: dict[str, Any], attempt: Attempt,
                written: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Load the payloads an extract stored into staging; safe to run any number of times.

    ``written``: documents the extract of this same task inserted (not read back from MongoDB)."""
    window = Window(extracted["window_start_ms"], extracted["window_end_ms"])
    started = time.monotonic()
    base = {"stage": "load", "exchange": extracted["exchange"], "symbol": extracted["symbol"],
            "timeframe": extracted["timeframe"], "dag_id": attempt.dag_id, "run_id": attempt.run_id,
            "task_id": attempt.task_id, "map_index": attempt.map_index, "try_number": attempt.try_number,
            "window_start": iso(window.start_ms), "window_end": iso(window.end_ms),
            "started_at": datetime.now(UTC), "status": "running"}
    raw.log_attempt(attempt.attempt_id, base)
    try:
        docs = raw.get_payloads(extracted["payload_ids"], known=written)
        result = load_candle_payloads(conn, docs, extracted["exchange"], extracted["symbol"],
                                      extracted["timeframe"], attempt.run_id, window)
        tickers, ticker_problems = load_ticker_payloads(
            conn, raw.get_payloads(extracted.get("ticker_payload_ids") or [], known=written), attempt.run_id)
    except Exception as exc:
        raw.log_attempt(attempt.attempt_id, {"status": "failed", "finished_at": datetime.now(UTC),
                                             "duration_s": time.monotonic() - started,
                                             "error_class": classify(exc).value, "exception": type(exc).__name__,
                                             "error_message": str(exc)[:2000]})
        raise
    for problem in ticker_problems:
        log.warning("ticker payload not loaded: %s", problem, exchange=extracted["exchange"],
                    symbol=extracted["symbol"])
    unusable = result.unusable()
    raw.log_attempt(attempt.attempt_id, {
        "status": "failed" if unusable else "success", "finished_at": datetime.now(UTC),
        "duration_s": time.monotonic() - started, **result.as_dict(), "tickers": tickers,
        "ticker_problems": ticker_problems,
        **({"error_class": ErrorClass.DATA.value, "error_message": unusable} if unusable else {})})
    log.info("%s %s %s %s: %s", extracted["exchange"], extracted["symbol"], extracted["timeframe"], window,
             result.summary(), exchange=extracted["exchange"], symbol=extracted["symbol"],
             timeframe=extracted["timeframe"], window=window_field(window), inserted=result.inserted,
             updated=result.updated, unchanged=result.unchanged, rejected=result.rejected,
             payloads_rejected=result.payloads_rejected)
    if unusable:
        # The rejects are committed (nothing is lost); the market's run must not end green with 0 rows.
        log.error("%s %s %s %s: the exchange's answer could not be used: %s", extracted["exchange"],
                  extracted["symbol"], extracted["timeframe"], window, unusable, exchange=extracted["exchange"],
                  symbol=extracted["symbol"], timeframe=extracted["timeframe"], window=window_field(window),
                  error_class="data")
        raise UnusableDataError(f"{extracted['exchange']} {extracted['symbol']}: {unusable}")
    return {**result.as_dict(), "tickers": tickers}


def ingest_market(config: MarketflowConfig, market: MarketConfig, timeframe: str, run_window: Window,
                  raw: RawStore, conn, attempt: Attempt, with_ticker: bool = False, ops_conn=None,
                  live: bool = True, deadline: float | None = None, client: Any = None) -> dict[str, Any]:
    """Extract then load one market's window in one task; returns the load's counts, the pages
    fetched and the seconds each step took (``extract_s``, ``load_s``).

    Every payload is in MongoDB before the load starts, so nothing is lost if the load fails: the
    task's retry fetches again (idempotent) or ``from_raw`` rebuilds staging from what is stored.
    The load reuses the documents the extract inserted instead of reading them back."""
    written: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    extracted = extract_market(config, market, timeframe, run_window, raw, attempt, with_ticker=with_ticker,
                               ops_conn=ops_conn, written=written, live=live, deadline=deadline, client=client)
    extracted_at = time.monotonic()
    loaded = load_market(conn, raw, extracted, attempt, written=written)
    return {**loaded, "pages": extracted["pages"], "extract_s": round(extracted_at - started, 3),
            "load_s": round(time.monotonic() - extracted_at, 3),
            "beyond_history_candles": extracted["beyond_history_candles"]}


@dataclass
class MarketOutcome:
    """What one market of a multi-market task came to (ops.market_task_outcomes.outcome)."""

    market: MarketConfig
    outcome: str  # success | failed_transient | failed_permanent | not_started
    error_class: ErrorClass | None = None
    error: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.outcome != "success"


class ConnectionPerThread:
    """One load connection and one autocommit ops connection (rate-limit bucket, error rows, market
    health) per worker thread, opened on first use, replaced when a database error closed them."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self.connect = connect
        self.local = threading.local()
        self.opened: list[Any] = []
        self.lock = threading.Lock()

    def get(self) -> tuple[Any, Any]:
        conns = getattr(self.local, "conns", None)
        if conns is None or any(c.closed for c in conns):
            ops_conn, load_conn = self.connect(), self.connect()
            ops_conn.autocommit = True
            conns = self.local.conns = (ops_conn, load_conn)
            with self.lock:
                self.opened.extend(conns)
        return conns

    def close(self) -> None:
        for conn in self.opened:
            if not conn.closed:
                conn.close()


def ingest_markets(config: MarketflowConfig, markets: list[MarketConfig], timeframe: str, run_window: Window,
                   raw: RawStore, connect: Callable[[], Any], attempt: Attempt, *, live: bool, threads: int,
                   deadline: float | None = None) -> list[MarketOutcome]:
    """Extract and load every market of one exchange, ``threads`` at a time, each on its own: a market
    that fails is recorded (ops.market_health: failing, one alert, suspended after repeated permanent
    failures) and never stops the others.

    ``live``: the minute path (spends the exchange's whole rate budget) or history work (the hourly
    reconcile, leaving the live reserve alone). ``deadline`` (time.monotonic()): a market not started
    by then is ``not_started`` (a timeout, retried) instead of running into the task's execution_timeout.
    """
    pool = ConnectionPerThread(connect)

    def one(market: MarketConfig) -> MarketOutcome:
        started = time.monotonic()
        if deadline is not None and started > deadline:
            return MarketOutcome(market, "not_started", ErrorClass.TIMEOUT,
                                 "the task's time budget ran out before this market's turn")
        # Its own attempt identity per market: raw_ingestion_log keeps one document per market attempt.
        market_attempt = replace(attempt, task_id=f"{attempt.task_id}[{market.symbol}]")
        ops_conn = None
        try:
            ops_conn, load_conn = pool.get()
            result = ingest_market(config, market, timeframe, run_window, raw, load_conn, market_attempt,
                                   ops_conn=ops_conn, live=live, deadline=deadline)
        except Exception as exc:
            responses = getattr(exc, "responses", None) or []
            error_class = classify(exc, responses[-1].status if responses else None)
            message = f"{type(exc).__name__}: {exc}"[:2000]
            log.error("%s %s: %s failure (%s); %s", market.exchange, market.symbol, error_class.value, message,
                      error_class.advice, exchange=market.exchange, symbol=market.symbol,
                      error_class=error_class.value, error=type(exc).__name__)
            _record_health(ops_conn, lambda c: market_health.record_failure(
                c, config, market, error_class, message, attempt.dag_id, attempt.run_id))
            return MarketOutcome(market, "failed_transient" if error_class.transient else "failed_permanent",
                                 error_class, message, seconds=time.monotonic() - started)
        _record_health(ops_conn, lambda c: market_health.record_success(c, market.exchange, market.symbol))
        return MarketOutcome(market, "success", result=result, seconds=time.monotonic() - started)

    try:
        with ThreadPoolExecutor(max(1, min(threads, len(markets))), thread_name_prefix="ingest") as executor:
            return list(executor.map(one, markets))
    finally:
        pool.close()


# A run may start up to this much earlier than minute_run_lead_seconds before its close (the scheduler
# creates it as soon as run_after passes) and still wait for the close.
LEAD_SLACK_SECONDS = 15.0
# The minute path's loader writes what the fetchers have ready at least this often (seconds), and at most
# this many markets in one transaction: the first markets land within seconds of being fetched instead
# of waiting for the exchange's last one, and a batch stays one short transaction.
LIVE_FLUSH_SECONDS = 1.0
# Fetcher threads of the minute path at least: a call waits ~20-100 ms on the network, so a few threads
# keep the exchange's rate limit (Binance ~45 klines calls/s at our share), not the latency, the bound;
# more only add contention for the interpreter lock.
LIVE_FETCH_THREADS = 8
LIVE_BATCH_MARKETS = 250


@dataclass
class _Fetched:
    market: MarketConfig
    attempt: Attempt
    started: float
    extracted: dict[str, Any] | None = None
    written: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw: Any = None
    error: BaseException | None = None


def ingest_markets_batched(config: MarketflowConfig, markets: list[MarketConfig], timeframe: str,
                           run_window: Window, raw: RawStore, connect: Callable[[], Any], attempt: Attempt, *,
                           threads: int, live: bool = True, deadline: float | None = None,
                           phases: dict[str, float] | None = None, start_at: float | None = None
                           ) -> list[MarketOutcome]:
    """What ``ingest_markets`` does, in batches: the minute path for hundreds of markets.

    Measured at 700 Binance + 300 OKX markets (bench figure 6c), a market's own work is a few candles,
    and the per-market path spent its time around them: a ccxt client built and its market list set
    for every market (tens of ms of CPU each), ~8 MongoDB and ~10 Postgres round trips and 3 commits
    per market. Here:

    * ``threads`` fetcher threads each keep ONE ccxt client (market list loaded once) and one ops
      connection (the shared rate-limit bucket) for all the markets they fetch;
    * each market's responses and ingestion-log fields wait in memory; this thread (the loader) takes
      whatever is fetched every ``LIVE_FLUSH_SECONDS`` (at most ``LIVE_BATCH_MARKETS``) and writes it
      with one raw ``bulk_write`` (plus one for the log), then one staging transaction for all of
      them (``load_candle_batch``: one COPY, one revision check, one upsert) and one market-health
      statement. Every payload is in MongoDB before its load starts, as on the per-market path.

    Failure isolation is kept: a market whose fetch fails is recorded alone (its responses kept in raw
    as evidence, its health counted) and a batch whose transaction fails is loaded again market by
    market, so one market's bad answer never fails the others. ``phases`` gets the seconds spent per
    phase (fetch: summed over the fetcher threads; the others: the loader's wall time) and the batches.

    ``start_at`` (a wall time, from ``fetch_start_at``): the run started before its minute closed. Every
    fetcher thread first connects, builds its client and loads the market list, then all wait until
    ``start_at`` and fetch: that start-up is off the path from the close to staging.
    """
    import queue

    from marketflow.raw_store import BufferedRawStore

    exchange_cfg = config.exchange(markets[0].exchange) if markets else None
    pool = ConnectionPerThread(connect)
    local = threading.local()
    clients: list[Any] = []
    done: queue.Queue[_Fetched] = queue.Queue()
    outcomes: dict[str, MarketOutcome] = {}
    spent = phases if phases is not None else {}
    timer_lock = threading.Lock()

    def add(key: str, seconds: float) -> None:
        with timer_lock:
            spent[key] = round(spent.get(key, 0.0) + seconds, 3)

    def thread_client() -> tuple[Any, Any]:
        """This fetcher thread's ops connection and ccxt client (its market list loaded), made once."""
        ops_conn, _ = pool.get()
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = build_exchange(exchange_cfg, ops_conn, live=live, deadline=deadline)
            load_markets(client, ops_conn)
            with timer_lock:
                clients.append(client)
        return ops_conn, client

    def warm_up() -> None:
        """Before the close: this thread's start-up, then the wait (each warm-up holds its thread until
        ``start_at``, so every fetcher thread runs exactly one). No barrier: a thread whose start-up ends
        after ``start_at`` (a busy machine) fetches at once, as the others do."""
        started = time.monotonic()
        try:
            thread_client()
        except Exception as exc:  # the fetches meet it again, market by market, and record it there
            log.warning("%s: a fetcher's start-up before the close failed (%s: %s); its markets retry it",
                        attempt.task_id, type(exc).__name__, exc)
        add("warm_up_s_summed_over_threads", time.monotonic() - started)
        wait_until(start_at)

    def fetch(market: MarketConfig) -> None:
        started = time.monotonic()
        market_attempt = replace(attempt, task_id=f"{attempt.task_id}[{market.symbol}]")
        item = _Fetched(market, market_attempt, started, raw=BufferedRawStore(raw.db))
        if deadline is not None and started > deadline:
            item.error = TimeoutError("the task's time budget ran out before this market's turn")
            done.put(item)
            return
        try:
            ops_conn, client = thread_client()
            item.extracted = extract_market(config, market, timeframe, run_window, item.raw, market_attempt,
                                            ops_conn=ops_conn, written=item.written, live=live, deadline=deadline,
                                            client=client)
        except Exception as exc:
            item.error = exc
        add("fetch_s_summed_over_threads", time.monotonic() - started)
        done.put(item)

    def settle(items: list[_Fetched]) -> None:
        """Write a batch: raw, then staging, then each market's outcome."""
        ops_conn, load_conn = pool.get()
        t0 = time.monotonic()
        buffer = BufferedRawStore(raw.db)
        for item in items:
            buffer.take(item.raw)
        buffer.flush()  # failed fetches' evidence too
        t1 = time.monotonic()
        add("raw_write_s", t1 - t0)
        ok = [i for i in items if i.error is None]
        for item in items:
            if item.error is not None:
                _fail(ops_conn, item, item.error)
        prepared = []
        for item in ok:
            try:
                docs = raw.get_payloads(item.extracted["payload_ids"], known=item.written)
                prepared.append((item, prepare_candles(docs, item.market.exchange, item.market.symbol, timeframe,
                                                       attempt.run_id, _window_of(item.extracted))))
            except Exception as exc:
                _fail(ops_conn, item, exc)
        t2 = time.monotonic()
        add("parse_validate_s", t2 - t1)
        try:
            results = load_candle_batch(load_conn, [p for _, p in prepared]) if prepared else []
        except Exception as exc:
            log.warning("%s: batch load of %d markets failed (%s: %s); loading them one by one", attempt.task_id,
                        len(prepared), type(exc).__name__, exc, markets=len(prepared), error=type(exc).__name__)
            results = []
            for item, _ in prepared:
                try:
                    results.append(load_market(load_conn, raw, item.extracted, item.attempt, written=item.written))
                except Exception as one_exc:
                    results.append(one_exc)
        t3 = time.monotonic()
        add("staging_load_s", t3 - t2)
        loaded: list[_Fetched] = []
        logs = BufferedRawStore(raw.db)
        for (item, _), result in zip(prepared, results, strict=True):
            if isinstance(result, BaseException):
                _fail(ops_conn, item, result)
                continue
            as_dict = result if isinstance(result, dict) else {**result.as_dict(), "tickers": 0}
            unusable = None if isinstance(result, dict) else result.unusable()
            if unusable:
                log.error("%s %s %s: the exchange's answer could not be used: %s", item.market.exchange,
                          item.market.symbol, timeframe, unusable, exchange=item.market.exchange,
                          symbol=item.market.symbol, timeframe=timeframe, error_class="data")
                _fail(ops_conn, item, UnusableDataError(f"{item.market.exchange} {item.market.symbol}: {unusable}"))
                continue
            if not isinstance(result, dict):  # the per-market fallback logged its own load
                logs.log_attempt(item.attempt.attempt_id, {"stage": "load", "status": "success",
                                                           "finished_at": datetime.now(UTC), **as_dict})
            outcomes[item.market.symbol] = MarketOutcome(
                item.market, "success", result={**as_dict, "pages": item.extracted["pages"]},
                seconds=time.monotonic() - item.started)
            loaded.append(item)
        logs.flush()
        _record_health(ops_conn, lambda c: market_health.record_successes(
            c, [(i.market.exchange, i.market.symbol) for i in loaded]))
        add("log_and_health_s", time.monotonic() - t3)
        add("batches", 1)
        spent["largest_batch"] = max(spent.get("largest_batch", 0), len(items))
        log.info("%s: batch of %d market(s) written: %d loaded, %d failed; %d candles inserted", attempt.task_id,
                 len(items), len(loaded), len(items) - len(loaded),
                 sum(int(outcomes[i.market.symbol].result.get("inserted") or 0) for i in loaded), markets=len(items),
                 loaded=len(loaded), failed=len(items) - len(loaded))

    def _fail(ops_conn, item: _Fetched, exc: BaseException) -> None:
        responses = getattr(exc, "responses", None) or []
        error_class = classify(exc, responses[-1].status if responses else None)
        if isinstance(exc, TimeoutError) and item.extracted is None and not responses:
            outcomes[item.market.symbol] = MarketOutcome(item.market, "not_started", ErrorClass.TIMEOUT, str(exc))
            return
        message = f"{type(exc).__name__}: {exc}"[:2000]
        log.error("%s %s: %s failure (%s); %s", item.market.exchange, item.market.symbol, error_class.value, message,
                  error_class.advice, exchange=item.market.exchange, symbol=item.market.symbol,
                  error_class=error_class.value, error=type(exc).__name__)
        _record_health(ops_conn, lambda c: market_health.record_failure(
            c, config, item.market, error_class, message, attempt.dag_id, attempt.run_id))
        outcomes[item.market.symbol] = MarketOutcome(
            item.market, "failed_transient" if error_class.transient else "failed_permanent", error_class, message,
            seconds=time.monotonic() - item.started)

    try:
        workers = max(1, min(threads, len(markets)))
        with ThreadPoolExecutor(workers, thread_name_prefix="fetch") as executor:
            if start_at is not None and markets:
                # the fetches queue behind the warm-ups (FIFO), so none starts before start_at
                spent["waited_for_close_s"] = round(max(0.0, start_at - time.time()), 3)
                warm_ups = [executor.submit(warm_up) for _ in range(workers)]
            else:
                warm_ups = []
            futures = [*warm_ups, *(executor.submit(fetch, m) for m in markets)]
            pending = len(markets)
            while pending:
                batch = [done.get()]
                flush_at = time.monotonic() + LIVE_FLUSH_SECONDS
                while len(batch) < min(pending, LIVE_BATCH_MARKETS):
                    try:
                        batch.append(done.get(timeout=max(0.0, flush_at - time.monotonic())))
                    except queue.Empty:
                        break
                pending -= len(batch)
                settle(batch)
            for future in futures:
                future.result()
    finally:
        for client in clients:
            if client.shared_limiter is not None:
                with contextlib.suppress(Exception):
                    client.shared_limiter.flush()
        pool.close()
    return [outcomes[m.symbol] for m in markets]


def _window_of(extracted: dict[str, Any]) -> Window:
    return Window(extracted["window_start_ms"], extracted["window_end_ms"])


def run_exchange_markets(config: MarketflowConfig, exchange: str, timeframe: str, run_window: Window,
                         conf: dict[str, Any], raw: RawStore, connect: Callable[[], Any], attempt: Attempt, *,
                         live: bool, deadline: float | None = None,
                         prepare: Callable[[Any, MarketflowConfig], None] | None = None,
                         start_at: float | None = None) -> dict[str, Any]:
    """The body of a multi-market task (the minute DAG's ingest, the hourly reconcile): every selected
    market of ``exchange`` that is not suspended, each on its own (``ingest_markets``), and what each
    came to in ops.market_task_outcomes.

    Retries are per market: a later try of the same task (same dag, run and task id) re-runs only the
    markets an earlier try left failing transiently or never started. Raises MarketsFailed naming
    every failed market (this try's, and earlier tries' permanent failures): transient when any
    failure is, so Airflow retries; permanent otherwise, so it does not. ``prepare`` (the minute path)
    prepares storage first when the DDL changed. ``start_at`` (the live path, from ``fetch_start_at``):
    everything before the first fetch is done, then the fetches wait for that wall time."""
    from marketflow.schema import ddl_is_current

    wanted = [m for m in config.exchange(exchange).markets if timeframe in m.timeframes and selected(m, conf)]
    conn = connect()
    try:
        if prepare is not None and not ddl_is_current(conn):
            log.info("DDL not applied yet or changed: preparing storage first")
            prepare(conn, config)
        runnable, suspended = market_health.partition_suspended(conn, config, wanted)
        earlier = market_health.earlier_outcomes(conn, attempt.dag_id, attempt.run_id, attempt.task_id)
    finally:
        conn.close()
    if suspended:
        log.warning("%s: skipping %d suspended market(s): %s (python -m marketflow.cli markets status)", exchange,
                    len(suspended), ", ".join(m.symbol for m in suspended), exchange=exchange,
                    suspended=[m.symbol for m in suspended])
    todo, settled = markets_to_run(runnable, earlier)
    if settled:
        log.info("%s: try %d re-runs %d market(s); %d settled by earlier tries", exchange, attempt.try_number,
                 len(todo), len(settled), exchange=exchange, markets=len(todo), settled=len(settled))

    # Tickers only make sense at the live edge, not for a historical window: one call for all markets, in
    # its own thread beside the candles (its latency hidden behind theirs), never failing the task.
    ticker_markets = [m for m in todo if live and not conf.get("start") and m.history_end is None]
    with ThreadPoolExecutor(1, thread_name_prefix="tickers") as ticker_thread:
        pending = ticker_thread.submit(ingest_tickers, config, exchange, ticker_markets, raw, connect, attempt,
                                       deadline=deadline, start_at=start_at)
        # The minute path batches its writes across markets (ingest_markets_batched says why); the hourly
        # reconcile fetches an hour per market, where the per-market path's overhead does not matter.
        phases: dict[str, float] = {}
        task_started = time.monotonic()
        if live:
            outcomes = ingest_markets_batched(config, todo, timeframe, run_window, raw, connect, attempt,
                                              threads=max(config.exchange(exchange).pool_slots, LIVE_FETCH_THREADS),
                                              deadline=deadline, phases=phases, start_at=start_at)
        else:
            outcomes = ingest_markets(config, todo, timeframe, run_window, raw, connect, attempt, live=False,
                                      threads=config.exchange(exchange).pool_slots, deadline=deadline)
        # from the close (start_at) when the run started ahead of it
        phases["candles_s"] = round(time.monotonic() - task_started - phases.get("waited_for_close_s", 0.0), 3)
        try:
            tickers = pending.result()
        except Exception as exc:  # raw or the warehouse unreachable: the candles' outcomes are still recorded
            log.error("%s: tickers not loaded: %s: %s", exchange, type(exc).__name__, exc, exchange=exchange,
                      error=type(exc).__name__)
            tickers = {"tickers": 0, "requests": 0, "error": f"{type(exc).__name__}: {exc}"}
    rows = [(o.market.exchange, o.market.symbol, o.outcome, o.error_class.value if o.error_class else None,
             o.error, int(o.result.get("inserted") or 0) if o.result else None, round(o.seconds, 3))
            for o in outcomes]
    rows += [(m.exchange, m.symbol, "suspended", None, None, None, None) for m in suspended]
    conn = connect()
    try:
        market_health.record_task_outcomes(conn, attempt.dag_id, attempt.run_id, attempt.task_id,
                                           attempt.try_number, rows)
    finally:
        conn.close()
    failures = task_failures(outcomes, earlier, runnable)
    succeeded = [o for o in outcomes if not o.failed]
    inserted = sum(int(o.result.get("inserted") or 0) for o in succeeded)
    log.info("%s: %d market(s) ingested, %d failed%s, %d suspended and skipped; %d candles inserted", exchange,
             len(succeeded), len(failures), f" ({', '.join(failures)})" if failures else "", len(suspended), inserted,
             exchange=exchange, timeframe=timeframe, window=window_field(run_window), markets=len(succeeded),
             failed=len(failures), failed_markets=failures, suspended=len(suspended), inserted=inserted)
    if failures:
        raise MarketsFailed(f"{exchange} {attempt.task_id}", failures)
    return {"exchange": exchange, "markets": len(succeeded), "suspended": len(suspended), "inserted": inserted,
            "tickers": tickers["tickers"], "ticker_requests": tickers["requests"],
            # where the task's time went (seconds; bench figure 6c reads it from the XCom)
            "phases": {**phases, "tickers_s": tickers.get("seconds")}}


def ingest_tickers(config: MarketflowConfig, exchange_name: str, markets: list[MarketConfig], raw: RawStore,
                   connect: Callable[[], Any], attempt: Attempt, *, deadline: float | None = None,
                   start_at: float | None = None) -> dict[str, Any]:
    """One ticker snapshot per market into staging.ticker, for all ``markets`` of one exchange in ONE
    ``fetch_tickers`` call (its answer stored once in raw, every market's row pointing at it), or one
    ``fetch_ticker`` per market where the exchange's ccxt has no fetchTickers.

    Never raises for an exchange or data error: a ticker is a snapshot that the next minute's run
    takes again, so its failure is logged, kept in raw and in ops.api_errors, and the candles of
    the task stand. Returns {"tickers": rows written, "requests": ticker calls
    that got an answer or failed, "error": the failure or None}. ``start_at``: connected and its market
    list loaded, the calls wait for that wall time (the minute's close)."""
    out: dict[str, Any] = {"tickers": 0, "requests": 0, "error": None}
    if not markets:
        return out
    if deadline is not None and time.monotonic() > deadline:
        log.warning("%s: no tickers this run: the task's time budget ran out after the candles", exchange_name,
                    exchange=exchange_name)
        return {**out, "error": "time budget ran out"}
    exchange_cfg = config.exchange(exchange_name)
    ticker_attempt = replace(attempt, task_id=f"{attempt.task_id}[tickers]")
    started = time.monotonic()
    raw.log_attempt(ticker_attempt.attempt_id, {
        "stage": "tickers", "exchange": exchange_name, "symbols": [m.symbol for m in markets],
        "dag_id": attempt.dag_id, "run_id": attempt.run_id, "task_id": ticker_attempt.task_id,
        "map_index": attempt.map_index, "try_number": attempt.try_number, "started_at": datetime.now(UTC),
        "status": "running"})
    written: dict[str, dict[str, Any]] = {}
    ids: list[str] = []
    errors: list[str] = []
    exchange = None
    conns: list[Any] = []
    try:
        ops_conn, load_conn = connect(), connect()
        conns += [ops_conn, load_conn]
        ops_conn.autocommit = True
        exchange = build_exchange(exchange_cfg, ops_conn, live=True, deadline=deadline)
        exchange.error_sink = lambda fields: record_api_error(ops_conn, {
            **fields, "exchange": exchange_name, "symbol": fields.get("symbol"), "dag_id": attempt.dag_id,
            "run_id": attempt.run_id, "task_id": ticker_attempt.task_id, "try_number": attempt.try_number})
        load_markets(exchange, ops_conn)
        wait_until(start_at)
        started = time.monotonic()
        # A market the exchange no longer lists (delisted, renamed) would make the whole batch fail: left
        # out, and said so; its candle extract reports it as a bad symbol.
        unknown = [m.symbol for m in markets if m.symbol not in exchange.markets]
        if unknown:
            errors.append(f"not in {exchange_cfg.ccxt_id}'s market list, no ticker asked for: {', '.join(unknown)}")
        known = [m for m in markets if m.symbol not in unknown]
        ctx = PayloadContext(exchange_name, exchange_cfg.ccxt_id, "", None, "ticker", None, attempt.run_id,
                             attempt.try_number, {})
        if known and exchange.has.get("fetchTickers"):
            batch = replace(ctx, markets=tuple(market_info(exchange, m.symbol) for m in known))
            symbols = [m.symbol for m in known]
            ids += _fetch_tickers(exchange, batch, lambda: exchange.fetch_tickers(symbols),
                                  f"tickers of {len(symbols)} markets", raw, written, errors)
            out["requests"] = 1
        elif known:
            for market in known:  # no batch endpoint: one call per market, each failing on its own
                if deadline is not None and time.monotonic() > deadline:
                    errors.append(f"time budget ran out before the ticker of {market.symbol}")
                    break
                one = replace(ctx, symbol=market.symbol, market=market_info(exchange, market.symbol))
                ids += _fetch_tickers(exchange, one, lambda s=market.symbol: exchange.fetch_ticker(s),
                                      f"{market.symbol} ticker", raw, written, errors)
                out["requests"] += 1
        out["tickers"], problems = load_ticker_payloads(load_conn, raw.get_payloads(ids, known=written),
                                                        attempt.run_id)
        errors += problems
    except Exception as exc:  # the market list, a database: still no reason to fail the candles' task
        message = exchange.redact(str(exc)) if exchange is not None else str(exc)
        errors.append(f"{type(exc).__name__}: {message}")
    finally:
        if exchange is not None and exchange.shared_limiter is not None:
            exchange.shared_limiter.flush()
        for conn in conns:
            conn.close()
    out["error"] = "; ".join(errors)[:2000] or None
    out["seconds"] = round(time.monotonic() - started, 3)
    raw.log_attempt(ticker_attempt.attempt_id, {
        "status": "failed" if errors and not out["tickers"] else "success", "finished_at": datetime.now(UTC),
        "duration_s": time.monotonic() - started, "ticker_payload_ids": ids, "tickers": out["tickers"],
        "requests": out["requests"], "ticker_problems": errors})
    if errors:
        log.warning("%s: %d of %d ticker(s) loaded; not loaded: %s. The candles are not affected; the next run "
                    "takes new snapshots", exchange_name, out["tickers"], len(markets), out["error"],
                    exchange=exchange_name, tickers=out["tickers"], markets=len(markets))
    else:
        log.info("%s: %d ticker(s) loaded from %d request(s) in %.2fs", exchange_name, out["tickers"],
                 out["requests"], time.monotonic() - started, exchange=exchange_name, tickers=out["tickers"],
                 requests=out["requests"])
    return out


def _fetch_tickers(exchange: Any, ctx: PayloadContext, call: Callable[[], Any], what: str, raw: RawStore,
                   written: dict[str, dict[str, Any]], errors: list[str]) -> list[str]:
    """One ticker call, its answers kept in raw (a failed one too, as evidence); the ids of the
    answers to load, none when it failed (then ``errors`` says why)."""
    try:
        _, responses = call_with_retries(exchange, call, what)
    except Exception as exc:
        responses = getattr(exc, "responses", [])
        error_class = classify(exc, responses[-1].status if responses else None)
        message = exchange.redact(str(exc))
        raw.save_responses(ctx, responses, error=f"{type(exc).__name__}: {message}")
        status = f"HTTP {responses[-1].status}, " if responses else ""
        errors.append(f"{what}: {error_class.value} ({status}{type(exc).__name__}: {message[:300]}); "
                      f"{error_class.advice}")
        return []
    return raw.save_responses(ctx, responses, keep=written)


def markets_to_run(runnable: list[MarketConfig], earlier: dict[tuple[str, str], tuple[str, Any, Any]]
                   ) -> tuple[list[MarketConfig], set[str]]:
    """(markets to run in this try, symbols settled by earlier tries: succeeded or failed for good)."""
    settled = {sym for (_, sym), (outcome, _, _) in earlier.items() if outcome in ("success", "failed_permanent")}
    settled &= {m.symbol for m in runnable}
    return [m for m in runnable if m.symbol not in settled], settled


def task_failures(outcomes: list[MarketOutcome], earlier: dict[tuple[str, str], tuple[str, Any, Any]],
                  runnable: list[MarketConfig]) -> dict[str, tuple[ErrorClass, str]]:
    """Every market the task has to report as failed: this try's failures, and the permanent failures
    of earlier tries (not re-run, yet still failed)."""
    failures = {o.market.symbol: (o.error_class or ErrorClass.DATA, o.error or "") for o in outcomes if o.failed}
    symbols = {m.symbol for m in runnable}
    for (_, sym), (outcome, cls, err) in earlier.items():
        if outcome == "failed_permanent" and sym in symbols and sym not in failures:
            failures[sym] = (ErrorClass(cls) if cls else ErrorClass.DATA, err or "")
    return failures


def _record_health(conn, record: Callable[[Any], Any]) -> None:
    """Market health is bookkeeping: when the database itself is what failed, the market's outcome
    still stands (and is reported by the task), so a failure to record it is logged, not raised."""
    if conn is None or conn.closed:
        return
    try:
        record(conn)
    except Exception as exc:
        log.warning("could not record market health: %s: %s", type(exc).__name__, exc, error=type(exc).__name__)


def repair_gap(config: MarketflowConfig, task: BackfillTask, raw: RawStore, conn, attempt: Attempt,
               ops_conn=None, deadline: float | None = None) -> str:
    """Re-fetch one queued gap window (history work: it leaves the live rate reserve alone) and record
    the outcome on its ops.backfill_tasks row; returns the row's new state in words.

    A window wholly older than the exchange serves (its history depth, exchange_facts.py) is recorded
    beyond_exchange_history without calling the exchange; one that turns out so while fetching (the
    exchange refused it as too old) likewise, once nothing of it landed."""
    try:
        market = config.market(task.exchange, task.symbol)
        exchange_cfg = config.exchange(task.exchange)
        facts = exchange_facts(exchange_cfg.ccxt_id, exchange_cfg.facts)
        if facts.beyond_history(task.window, task.timeframe, int(time.time() * 1000)) == task.window:
            state = finish_task(conn, task, 0, beyond_history=True)
            log.info("gap %s %s %s %s: older than the newest %d candles %s serves; not fetched, task now %s",
                     task.exchange, task.symbol, task.timeframe, task.window, facts.history_candles,
                     exchange_cfg.ccxt_id, state, exchange=task.exchange, symbol=task.symbol, timeframe=task.timeframe,
                     window=window_field(task.window), state=state)
            return state
        result = ingest_market(config, market, task.timeframe, task.window, raw, conn, attempt, ops_conn=ops_conn,
                               live=False, deadline=deadline)
    except Exception as exc:
        if not conn.closed:
            conn.rollback()
        state = finish_task(conn, task, 0, error=f"{type(exc).__name__}: {exc}"[:2000])
        log.error("gap %s %s %s %s: attempt %d/%d failed (%s); task now %s", task.exchange, task.symbol,
                  task.timeframe, task.window, task.attempts, task.max_attempts, exc, state, exchange=task.exchange,
                  symbol=task.symbol, timeframe=task.timeframe, window=window_field(task.window),
                  attempt=task.attempts, error_class=classify(exc).value, error=type(exc).__name__, state=state)
        raise
    present = count_present(conn, task.exchange, task.symbol, task.timeframe, task.window)
    beyond = result.get("beyond_history_candles", 0) >= task.window.candles(task.timeframe)
    state = finish_task(conn, task, present, beyond_history=beyond)
    log.info("gap %s %s %s %s: %d of %d candles present after attempt %d/%d; task now %s", task.exchange,
             task.symbol, task.timeframe, task.window, present, task.window.candles(task.timeframe), task.attempts,
             task.max_attempts, state, exchange=task.exchange, symbol=task.symbol, timeframe=task.timeframe,
             window=window_field(task.window), candles=present, expected=task.window.candles(task.timeframe),
             attempt=task.attempts, state=state)
    return state


def run_gap_repairs(config: MarketflowConfig, exchange: str, raw: RawStore, connect: Callable[[], Any],
                    attempt: Attempt, *, threads: int, budget_seconds: float) -> dict[str, int]:
    """Claim and re-fetch the queued gap chunks of one exchange, ``threads`` at a time, until none is
    left or ``budget_seconds`` have passed (no new chunk is claimed after that; what is left stays
    queued for the next hourly run). A chunk that fails is recorded on its row and the loop goes on.
    Returns counts by outcome."""
    started = time.monotonic()
    stop_claiming = started + budget_seconds
    pool = ConnectionPerThread(connect)
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def worker() -> None:
        while time.monotonic() < stop_claiming:
            ops_conn, conn = pool.get()
            claimed = claim_tasks(conn, exchange, 1, attempt.run_id)
            if not claimed:
                return
            task = claimed[0]
            try:
                # a chunk started before the budget ends may finish after it, bounded by the task timeout
                state = repair_gap(config, task, raw, conn, attempt, ops_conn=ops_conn)
            except Exception as exc:
                state = f"error ({classify(exc).value})"
            with lock:
                counts[state] = counts.get(state, 0) + 1
                done = sum(counts.values())
            log.info("%s: %d gap chunk(s) re-fetched in %.0f s of a %.0f s budget (%s)", exchange, done,
                     time.monotonic() - started, budget_seconds,
                     ", ".join(f"{n} {k}" for k, n in sorted(counts.items())), exchange=exchange, chunks=done,
                     seconds=round(time.monotonic() - started, 3), outcomes=dict(counts))

    try:
        with ThreadPoolExecutor(max(1, threads), thread_name_prefix=f"repair-{exchange}") as executor:
            for future in [executor.submit(worker) for _ in range(max(1, threads))]:
                future.result()
    finally:
        pool.close()
    return counts


def backfill_unit(config: MarketflowConfig, unit: dict[str, Any], raw: RawStore, conn, attempt: Attempt, *,
                  from_raw: bool = False, ops_conn=None, skip_complete: bool = False) -> list[dict[str, Any]]:
    """Work through every chunk of every market of a backfill unit, oldest first: fetch (or, with
    ``from_raw``, rebuild from MongoDB) and load each chunk, logging progress per market. Returns
    per-market totals. ``skip_complete`` (a retried task) skips chunks whose candles are all present.

    A market that fails permanently (delisted, bad symbol) is recorded and skipped so the unit's other
    markets still load; a transient failure stops the unit and is raised (Airflow retries the task,
    which skips the chunks already complete). Permanent failures are raised together at the end."""
    exchange, timeframe = unit["exchange"], unit["timeframe"]
    totals: list[dict[str, Any]] = []
    failures: dict[str, tuple[ErrorClass, str]] = {}
    # One ccxt client for every chunk of the task: building one and setting a 1,000-market list on it
    # took ~5 s per chunk under load (bench figure 11), more than fetching and loading a day of candles.
    client = None
    for m_index, spec in enumerate(unit["markets"], 1):
        chunks = market_chunks(unit, spec)
        expected = Window(spec["window_start_ms"], spec["window_end_ms"]).candles(timeframe)
        total = {"exchange": exchange, "symbol": spec["symbol"], "chunks": len(chunks), "chunks_skipped": 0,
                 "inserted": 0, "updated": 0, "unchanged": 0, "rejected": 0, "present": 0, "expected": expected,
                 # candles older than the exchange serves (its history depth): not fetched, not "missing at source"
                 "beyond_exchange_history": 0}
        started = time.monotonic()
        try:
            market = config.market(exchange, spec["symbol"])
            for c_index, window in enumerate(chunks, 1):
                if skip_complete and count_present(conn, exchange, market.symbol, timeframe, window) == \
                        window.candles(timeframe):
                    total["chunks_skipped"] += 1
                    continue
                chunk_attempt = replace(attempt, task_id=f"{attempt.task_id}[{market.symbol}]")
                if from_raw:
                    result = reprocess_from_raw(conn, raw, {"exchange": exchange, "symbol": market.symbol,
                                                            "timeframe": timeframe, "window_start_ms": window.start_ms,
                                                            "window_end_ms": window.end_ms}, chunk_attempt)
                else:
                    if client is None:
                        built = build_exchange(config.exchange(exchange), ops_conn, live=False)
                        load_markets(built, ops_conn)
                        client = built  # only once its markets are loaded
                    result = ingest_market(config, market, timeframe, window, raw, conn, chunk_attempt,
                                           ops_conn=ops_conn, live=False, client=client)
                for key in ("inserted", "updated", "unchanged", "rejected"):
                    total[key] += int(result.get(key) or 0)
                total["beyond_exchange_history"] += int(result.get("beyond_history_candles") or 0)
                # a task may hold a slice of the market's requested window: progress is of the whole window
                first = spec.get("market_start_ms", spec["window_start_ms"])
                last = spec.get("market_end_ms", spec["window_end_ms"])
                log.info("%s %s (market %d/%d of this task): chunk %d/%d up to %s done, %.0f%% of the market's "
                         "window %s..%s; %d inserted so far (%.0f candles/s)", exchange, market.symbol, m_index,
                         len(unit["markets"]), c_index, len(chunks), iso(window.end_ms),
                         100 * (window.end_ms - first) / max(last - first, 1), iso(first), iso(last),
                         total["inserted"], total["inserted"] / max(time.monotonic() - started, 1e-6),
                         exchange=exchange, symbol=market.symbol, chunk=c_index, chunks=len(chunks),
                         inserted=total["inserted"])
        except Exception as exc:
            responses = getattr(exc, "responses", None) or []
            error_class = classify(exc, responses[-1].status if responses else None)
            if error_class.transient:
                raise
            failures[spec["symbol"]] = (error_class, f"{type(exc).__name__}: {exc}")
            log.error("%s %s: backfill stopped for this market: %s: %s (%s); the task's other markets go on",
                      exchange, spec["symbol"], error_class.value, exc, error_class.advice, exchange=exchange,
                      symbol=spec["symbol"], error_class=error_class.value, error=type(exc).__name__)
        total["present"] = count_present(conn, exchange, spec["symbol"], timeframe,
                                         Window(spec["window_start_ms"], spec["window_end_ms"]))
        total["missing"] = max(total["expected"] - total["present"], 0)
        total["seconds"] = round(time.monotonic() - started, 3)  # the work, without the task's start-up
        if total["beyond_exchange_history"]:
            log.warning("%s %s: %d candles of the window are older than %s serves (its history depth); not fetched, "
                        "reported beyond_exchange_history", exchange, spec["symbol"], total["beyond_exchange_history"],
                        config.exchange(exchange).ccxt_id, exchange=exchange, symbol=spec["symbol"],
                        beyond_history_candles=total["beyond_exchange_history"])
        totals.append(total)
    limiter = getattr(client, "shared_limiter", None)
    if totals and limiter is not None:  # seconds its calls waited for the minute feed's bursts (rate_limit.py)
        totals[0]["live_yield_seconds"] = round(limiter.live_yield_seconds, 3)
    if failures:
        raise MarketsFailed(f"backfill unit {unit['unit']}/{unit['units']} of {exchange}", failures)
    return totals


def reprocess_from_raw(conn, raw: RawStore, chunk: dict[str, Any], attempt: Attempt) -> dict[str, Any]:
    """Rebuild staging for a window from what MongoDB already holds; the exchange is not called."""
    window = Window(chunk["window_start_ms"], chunk["window_end_ms"])
    ids = raw.find_payload_ids(chunk["exchange"], chunk["symbol"], chunk["timeframe"], window)
    log.info("%s %s %s %s: reprocessing %d stored payloads without calling the exchange", chunk["exchange"],
             chunk["symbol"], chunk["timeframe"], window, len(ids), exchange=chunk["exchange"], symbol=chunk["symbol"],
             timeframe=chunk["timeframe"], window=window_field(window), payloads=len(ids))
    return load_market(conn, raw, {**chunk, "payload_ids": ids, "ticker_payload_ids": []}, attempt)


def window_coverage(conn, exchange: str, symbol: str, timeframe: str, window: Window) -> dict[str, int]:
    """Expected vs present candles in a window (what a backfill summary reports as left missing)."""
    present = count_present(conn, exchange, symbol, timeframe, window)
    expected = window.candles(timeframe)
    return {"expected": expected, "present": present, "missing": max(expected - present, 0)}
