"""What the extract and load tasks do, free of Airflow so tests can call it with real databases.

extract: exchange -> MongoDB raw (one document per response) -> returns the payload ids.
load:    payload ids -> parse, validate -> Postgres staging in one transaction.
ingest:  extract then load in one task (the DAGs' unit of work); the load takes the payloads the
         extract just inserted from memory instead of reading them back.
Each records one raw_ingestion_log document per attempt, success or failure.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from marketflow.alerts import record_api_error, record_market_outcome
from marketflow.config import MarketConfig, MarketflowConfig
from marketflow.errors import classify
from marketflow.exchanges import (
    build_exchange,
    fetch_ohlcv_pages,
    fetch_ticker_response,
    load_markets,
    market_info,
)
from marketflow.ops import BackfillTask, count_present, finish_task
from marketflow.raw_store import PayloadContext, RawStore
from marketflow.staging_load import load_candle_payloads, load_ticker_payloads
from marketflow.timeframes import Window, ceil_ms, floor_ms, iso, timeframe_ms, to_ms

log = logging.getLogger(__name__)


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


def parse_time(value: Any, name: str) -> datetime:
    if isinstance(value, datetime):
        ts = value
    else:
        try:
            ts = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{name}={value!r} is not an ISO-8601 time; pass e.g. 2024-01-01T00:00:00Z") from None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def plan_window(timeframe: str, interval_start: datetime | None, interval_end: datetime | None,
                conf: dict[str, Any] | None, overlap_minutes: int, now: datetime | None = None) -> Window:
    """The window a run extracts.

    ``dag_run.conf`` start/end win (reprocess any window from the UI); else the run's data
    interval widened by the overlap (late corrections of the last minutes are re-read); a run
    without a logical date takes the last closed interval before now.
    """
    conf = conf or {}
    step = timeframe_ms(timeframe)
    if conf.get("start") or conf.get("end"):
        if not (conf.get("start") and conf.get("end")):
            raise ValueError("dag_run.conf needs both 'start' and 'end' (ISO-8601, UTC) to override the window")
        start = floor_ms(to_ms(parse_time(conf["start"], "start")), timeframe)
        end = ceil_ms(to_ms(parse_time(conf["end"], "end")), timeframe)  # weeks open on Monday, not epoch-aligned
        if end <= start:
            raise ValueError(f"dag_run.conf end {conf['end']} is not after start {conf['start']}")
        return Window(start, end)
    overlap = overlap_minutes * 60_000
    if interval_start is not None and interval_end is not None and interval_end > interval_start:
        return Window(floor_ms(to_ms(interval_start) - overlap, timeframe), floor_ms(to_ms(interval_end), timeframe))
    end = floor_ms(to_ms(now or datetime.now(UTC)), timeframe)
    if interval_end is not None:  # a zero-length interval (trigger timetable): up to its point in time
        end = floor_ms(to_ms(interval_end), timeframe)
    return Window(floor_ms(end - step - overlap, timeframe), end)


def market_window(market: MarketConfig, timeframe: str, window: Window, now_ms: int) -> Window:
    """Clip a run's window to the market's configured history and to closed candles."""
    end_bound = floor_ms(now_ms, timeframe)
    if market.history_end is not None:
        end_bound = min(end_bound, to_ms(market.history_end))
    return window.clip(floor_ms(to_ms(market.history_start), timeframe), end_bound)


def selected(market: MarketConfig, conf: dict[str, Any] | None) -> bool:
    """``dag_run.conf`` may narrow a run to some exchanges and/or symbols."""
    conf = conf or {}
    exchanges, symbols = conf.get("exchanges") or [], conf.get("symbols") or []
    return (not exchanges or market.exchange in exchanges) and (not symbols or market.symbol in symbols)


def extract_market(config: MarketflowConfig, market: MarketConfig, timeframe: str, run_window: Window,
                   raw: RawStore, attempt: Attempt, with_ticker: bool = False, ops_conn=None,
                   written: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Fetch the market's closed candles for the window into raw; returns ids for the load task.

    With ``ops_conn`` (an autocommit Postgres connection) every call draws on the exchange's shared
    rate-limit bucket, each failed call is written to ops.api_errors, and the market's consecutive
    failures are counted (alerting at ``alert_after_failures``). ``written`` collects the documents
    inserted, for a load in the same task (``ingest_market``)."""
    exchange_cfg = config.exchange(market.exchange)
    now_ms = int(time.time() * 1000)
    window = market_window(market, timeframe, run_window, now_ms)
    result: dict[str, Any] = {
        "exchange": market.exchange, "symbol": market.symbol, "timeframe": timeframe,
        "window_start_ms": window.start_ms, "window_end_ms": window.end_ms,
        "payload_ids": [], "ticker_payload_ids": [], "pages": 0, "candles_fetched": 0,
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
                 market.history_end.isoformat() if market.history_end else "now")
        raw.log_attempt(attempt.attempt_id, {"status": "skipped", "finished_at": datetime.now(UTC),
                                             "duration_s": time.monotonic() - started})
        return result

    exchange = build_exchange(exchange_cfg, ops_conn)
    if ops_conn is not None:
        exchange.error_sink = lambda fields: record_api_error(ops_conn, {
            **fields, "exchange": market.exchange, "symbol": market.symbol, "dag_id": attempt.dag_id,
            "run_id": attempt.run_id, "task_id": attempt.task_id, "try_number": attempt.try_number})
    ctx = PayloadContext(market.exchange, exchange_cfg.ccxt_id, market.symbol, timeframe, "ohlcv", window,
                         attempt.run_id, attempt.try_number, {})
    try:
        load_markets(exchange, ops_conn)
        ctx = PayloadContext(**{**ctx.__dict__, "market": market_info(exchange, market.symbol)})
        expected = window.candles(timeframe)
        if not window.empty:
            for page in fetch_ohlcv_pages(exchange, market.symbol, timeframe, window):
                result["payload_ids"] += raw.save_responses(ctx, page.responses, page.request, keep=written)
                result["pages"] += 1
                result["candles_fetched"] += sum(1 for t in page.open_times if window.start_ms <= t < window.end_ms)
                elapsed = max(time.monotonic() - started, 1e-6)
                log.info("%s %s %s: page %d, %d/%d candles (%.0f candles/s)", market.exchange, market.symbol,
                         timeframe, result["pages"], result["candles_fetched"], expected,
                         result["candles_fetched"] / elapsed)
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
                  error_class.advice)
        if ops_conn is not None:
            record_market_outcome(ops_conn, market.exchange, market.symbol, error_class.value, message,
                                  config.alert_after_failures, attempt.dag_id, attempt.run_id)
        raise
    finally:
        if exchange.shared_limiter is not None:
            exchange.shared_limiter.flush()
    if ops_conn is not None:
        record_market_outcome(ops_conn, market.exchange, market.symbol, None, None, config.alert_after_failures)
    duration = time.monotonic() - started
    raw.log_attempt(attempt.attempt_id, {
        "status": "success", "finished_at": datetime.now(UTC), "duration_s": duration, "pages": result["pages"],
        "candles_fetched": result["candles_fetched"], "payload_ids": result["payload_ids"],
        "ticker_payload_ids": result["ticker_payload_ids"],
    })
    log.info("%s %s %s: fetched %d candles in %d pages for %s in %.1fs", market.exchange, market.symbol, timeframe,
             result["candles_fetched"], result["pages"], window, duration)
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
        log.warning("ticker payload not loaded: %s", problem)
    raw.log_attempt(attempt.attempt_id, {"status": "success", "finished_at": datetime.now(UTC),
                                         "duration_s": time.monotonic() - started, **result.as_dict(),
                                         "tickers": tickers, "ticker_problems": ticker_problems})
    log.info("%s %s %s %s: %s", extracted["exchange"], extracted["symbol"], extracted["timeframe"], window,
             result.summary())
    return {**result.as_dict(), "tickers": tickers}


def ingest_market(config: MarketflowConfig, market: MarketConfig, timeframe: str, run_window: Window,
                  raw: RawStore, conn, attempt: Attempt, with_ticker: bool = False, ops_conn=None
                  ) -> dict[str, Any]:
    """Extract then load one market's window in one task; returns the load's counts, the pages
    fetched and the seconds each step took (``extract_s``, ``load_s``).

    Every payload is in MongoDB before the load starts, so nothing is lost if the load fails: the
    task's retry fetches again (idempotent) or ``from_raw`` rebuilds staging from what is stored.
    The load reuses the documents the extract inserted instead of reading them back."""
    written: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    extracted = extract_market(config, market, timeframe, run_window, raw, attempt, with_ticker=with_ticker,
                               ops_conn=ops_conn, written=written)
    extracted_at = time.monotonic()
    loaded = load_market(conn, raw, extracted, attempt, written=written)
    return {**loaded, "pages": extracted["pages"], "extract_s": round(extracted_at - started, 3),
            "load_s": round(time.monotonic() - extracted_at, 3)}


def repair_gap(config: MarketflowConfig, task: BackfillTask, raw: RawStore, conn, attempt: Attempt) -> str:
    """Re-fetch one gap window and record the outcome on its ops.backfill_tasks row."""
    try:
        market = config.market(task.exchange, task.symbol)
        ingest_market(config, market, task.timeframe, task.window, raw, conn, attempt)
    except Exception as exc:
        state = finish_task(conn, task, 0, error=f"{type(exc).__name__}: {exc}"[:2000])
        log.error("gap %s %s %s %s: attempt %d/%d failed (%s); task now %s", task.exchange, task.symbol,
                  task.timeframe, task.window, task.attempts, task.max_attempts, exc, state)
        raise
    present = count_present(conn, task.exchange, task.symbol, task.timeframe, task.window)
    state = finish_task(conn, task, present)
    log.info("gap %s %s %s %s: %d of %d candles present after attempt %d/%d; task now %s", task.exchange,
             task.symbol, task.timeframe, task.window, present, task.window.candles(task.timeframe), task.attempts,
             task.max_attempts, state)
    return state


def plan_chunks(config: MarketflowConfig, exchange: str, params: dict[str, Any], now_ms: int | None = None
                ) -> list[dict[str, Any]]:
    """Split a backfill request into per-market windows of ``chunk_hours`` (each clipped to the
    market's history and to closed candles), oldest first."""
    timeframe = params.get("timeframe") or "1m"
    if not params.get("start") or not params.get("end"):
        raise ValueError("a backfill needs 'start' and 'end' (ISO-8601, UTC), e.g. 2024-01-01T00:00:00Z")
    window = plan_window(timeframe, None, None, {"start": params["start"], "end": params["end"]}, 0)
    chunk_ms = int(params.get("chunk_hours") or 24) * 3_600_000
    if chunk_ms <= 0:
        raise ValueError("chunk_hours must be a positive number of hours")
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    chunks = []
    for market in config.exchange(exchange).markets:
        if timeframe not in market.timeframes or not selected(market, params):
            continue
        clipped = market_window(market, timeframe, window, now_ms)
        start = clipped.start_ms
        while start < clipped.end_ms:
            end = min(start + chunk_ms, clipped.end_ms)
            chunks.append({"exchange": exchange, "symbol": market.symbol, "timeframe": timeframe,
                           "window_start_ms": start, "window_end_ms": end})
            start = end
    for i, chunk in enumerate(chunks, 1):
        chunk["chunk"], chunk["chunks"] = i, len(chunks)
    return chunks


def reprocess_from_raw(conn, raw: RawStore, chunk: dict[str, Any], attempt: Attempt) -> dict[str, Any]:
    """Rebuild staging for a window from what MongoDB already holds; the exchange is not called."""
    window = Window(chunk["window_start_ms"], chunk["window_end_ms"])
    ids = raw.find_payload_ids(chunk["exchange"], chunk["symbol"], chunk["timeframe"], window)
    log.info("%s %s %s %s: reprocessing %d stored payloads without calling the exchange", chunk["exchange"],
             chunk["symbol"], chunk["timeframe"], window, len(ids))
    return load_market(conn, raw, {**chunk, "payload_ids": ids, "ticker_payload_ids": []}, attempt)


def window_coverage(conn, exchange: str, symbol: str, timeframe: str, window: Window) -> dict[str, int]:
    """Expected vs present candles in a window (what a backfill summary reports as left missing)."""
    present = count_present(conn, exchange, symbol, timeframe, window)
    expected = window.candles(timeframe)
    return {"expected": expected, "present": present, "missing": max(expected - present, 0)}
