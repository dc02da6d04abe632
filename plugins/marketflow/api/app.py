"""The market-data API: one FastAPI app, mounted into Airflow's API server as a plugin (Airflow's own
login protects it) or run on its own with uvicorn (bearer tokens of ``ops.api_tokens``).

It reads the marts only, as a member of ``marketflow_api`` (the analyst role plus a token check), with a
statement timeout on every session and a cap on the rows of a response. Prices and volumes leave as
JSON strings (the exact decimals of the marts, never floats); times as ISO 8601 in UTC.

Standalone:  MARKETFLOW_API_DATABASE='host=... user=api ...' uvicorn --factory marketflow.api.app:standalone_app
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import csv
import html
import io
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from psycopg_pool import AsyncConnectionPool

from marketflow.api.auth import AuthError, authenticate
from marketflow.api.pages import FINGERPRINT_SQL, GZIP_MIN_BYTES, Page, PageCache
from marketflow.api.settings import ApiSettings
from marketflow.logs import configure_json, get_logger

log = get_logger(__name__)

# The Markets page (ui/, built by `make ui` into this gitignored directory), served under /ui/.
UI_DIR = Path(__file__).resolve().parent / "ui_dist"


class Timeframe(StrEnum):
    m1 = "1m"
    m5 = "5m"
    m15 = "15m"
    h1 = "1h"
    d1 = "1d"
    w1 = "1w"


STEP = {"1m": timedelta(minutes=1), "5m": timedelta(minutes=5), "15m": timedelta(minutes=15),
        "1h": timedelta(hours=1), "1d": timedelta(days=1), "1w": timedelta(weeks=1)}


class Format(StrEnum):
    json = "json"
    csv = "csv"


class ApiError(Exception):
    """A request the API refuses: the status, the parameter at fault, what is wrong and how to fix it."""

    def __init__(self, status: int, parameter: str | None, message: str, fix: str) -> None:
        super().__init__(message)
        self.status, self.parameter, self.message, self.fix = status, parameter, message, fix

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"status": self.status, "parameter": self.parameter,
                                       "message": self.message, "fix": self.fix}}, status_code=self.status)


# -- values out ------------------------------------------------------------------------------


def out(value: Any) -> Any:
    if isinstance(value, Decimal):
        # Exact, digit for digit what the mart holds, and never in exponent form (str() gives 1E-8 for a
        # price of 0.00000001): the same text as Postgres' numeric::text, which the JSON pages use.
        return format(value, "f")
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return value


def records(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    return [{c: out(v) for c, v in zip(columns, row, strict=True)} for row in rows]


def csv_response(columns: Sequence[str], rows: Sequence[Sequence[Any]], headers: dict[str, str]) -> Response:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if v is None else out(v) for v in row])
    return Response(buffer.getvalue(), media_type="text/csv; charset=utf-8", headers=headers)


def encode_cursor(open_time: datetime) -> str:
    return base64.urlsafe_b64encode(out(open_time).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> datetime:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise ApiError(400, "cursor", f"cursor {cursor!r} is not one this API gave out",
                       "pass the next_cursor of the previous page unchanged, or leave cursor out") from exc


def utc(value: datetime, parameter: str) -> datetime:
    if value.tzinfo is None:
        raise ApiError(400, parameter, f"{parameter}={value.isoformat()} has no time zone",
                       f"give {parameter} in UTC, e.g. 2024-01-01T00:00:00Z")
    return value.astimezone(UTC)


# -- the database ----------------------------------------------------------------------------


class Warehouse:
    """A pool of sessions as the API's role, each with the statement timeout. Opened at the first request:
    Airflow's API server does not run a mounted plugin app's lifespan."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self._pool: AsyncConnectionPool | None = None
        self._opening = asyncio.Lock()

    async def pool(self) -> AsyncConnectionPool:
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    pool = AsyncConnectionPool(
                        self.settings.conninfo(), min_size=self.settings.pool_min, max_size=self.settings.pool_max,
                        open=False, kwargs={"autocommit": True, "application_name": "marketflow-api",
                                            "options": f"-c statement_timeout={self.settings.statement_timeout_ms} "
                                                       "-c timezone=UTC"})
                    await pool.open(wait=False)
                    self._pool = pool
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def fetch(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> tuple[list[str], list[tuple]]:
        async with (await self.pool()).connection() as conn, conn.cursor() as cur:
            await cur.execute(sql, params)
            columns = [d.name for d in cur.description or []]
            return columns, await cur.fetchall()


def warehouse(request: Request) -> Warehouse:
    return request.app.state.warehouse


WarehouseDep = Annotated[Warehouse, Depends(warehouse)]


async def known_market(db: Warehouse, exchange: str, symbol: str) -> None:
    _, rows = await db.fetch("SELECT 1 FROM marts.markets WHERE exchange = %s AND symbol = %s", (exchange, symbol))
    if not rows:
        raise ApiError(404, "symbol", f"no market {symbol} on {exchange} in the marts",
                       "see GET /markets for the markets collected (symbols are ccxt's, e.g. BTC/USDT)")


def time_range(start: datetime | None, end: datetime | None, default_span: timedelta) -> tuple[datetime, datetime]:
    end_at = utc(end, "end") if end else datetime.now(UTC)
    start_at = utc(start, "start") if start else end_at - default_span
    if start_at >= end_at:
        raise ApiError(400, "start", f"start {out(start_at)} is not before end {out(end_at)}",
                       "give a start earlier than end")
    return start_at, end_at


# -- routes ----------------------------------------------------------------------------------

router = APIRouter()

ExchangeQ = Annotated[str, Query(min_length=1, max_length=64, description="ccxt exchange id, e.g. binance")]
SymbolQ = Annotated[str, Query(min_length=1, max_length=64, description="ccxt symbol, e.g. BTC/USDT")]
StartQ = Annotated[datetime | None, Query(description="UTC, inclusive (open_time >= start)")]
EndQ = Annotated[datetime | None, Query(description="UTC, exclusive (open_time < end); default now")]

OHLCV_COLUMNS = ("open_time", "open", "high", "low", "close", "volume", "quote_volume", "trades", "close_time",
                 "candle_count", "is_complete", "is_closed")
# (the select list, the mart table and its rows of the market %s, %s) of each series. The 1m candles are
# read from marts.candles_1m, their storage (marts.ohlcv_1m and indicators_1m are views of it joining the
# names back; a view has no xmin for the page fingerprint), by its key (market_id, open_time): the
# market's id from marts.candles_1m_markets, close_time derived as the view derives it.
MARKET_BY_NAME = "{table} WHERE exchange = %s AND symbol = %s"
MARKET_1M = ("marts.candles_1m WHERE market_id = "
             "(SELECT market_id FROM marts.candles_1m_markets WHERE exchange = %s AND symbol = %s)")
CLOSE_TIME_1M = "open_time + interval '1 minute'"
OHLCV_1M = (f"open_time, open, high, low, close, volume, quote_volume, trades, {CLOSE_TIME_1M} AS close_time, "
            f"1 AS candle_count, true AS is_complete, {CLOSE_TIME_1M} <= now() AS is_closed", MARKET_1M)
OHLCV_ROLLUP = ("open_time, open, high, low, close, volume, quote_volume, trades, close_time, candle_count, "
                "is_complete, is_closed", MARKET_BY_NAME.format(table="marts.ohlcv_{tf}"))
INDICATOR_COLUMNS = ("open_time", "close", "sma_20", "sma_50", "sma_200", "ema_12", "ema_26", "ema_50", "rsi_14",
                     "macd_line", "macd_signal", "macd_histogram", "is_closed", "inputs_complete")
# The indicators live on the candle tables' rows (marts.indicators_1m ... indicators_1w are views of them,
# docs/storage.md): read from the table, whose xmin the page fingerprint needs; the views' derived columns
# computed as they do (a rollup's is_closed is its own column; the 1m ones below).
INDICATORS = (", ".join({"macd_histogram": "macd_line - macd_signal AS macd_histogram"}.get(c, c)
                        for c in INDICATOR_COLUMNS), MARKET_BY_NAME.format(table="marts.ohlcv_{tf}"))
INDICATORS_1M = (", ".join({"macd_histogram": "macd_line - macd_signal AS macd_histogram",
                             "is_closed": "true AS is_closed"}.get(c, c) for c in INDICATOR_COLUMNS), MARKET_1M)
# How a column becomes JSON inside Postgres (series pages), as out() and JSONResponse write it: the exact
# NUMERIC columns as their text, timestamps in ISO 8601 UTC with Z (six digits of fraction when there is
# one), the rest (counts, flags, the indicators' double precision: shortest round-trip digits) as JSON values.
EXACT = frozenset({"open", "high", "low", "close", "volume", "quote_volume"})
TIMESTAMPS = frozenset({"open_time", "close_time"})


def json_fragment_sql(column: str) -> str:
    """SQL for the JSON text of ``column``'s value. Rows are concatenated from these rather than built with
    json_build_object and to_char: a day of 1m candles took 14.7 ms of Postgres' CPU that way, 6.5 ms
    this way (to_json writes a timestamp in ISO 8601 whatever the session's DateStyle)."""
    if column in EXACT:
        return f"""coalesce('"' || {column}::text || '"', 'null')"""
    if column in TIMESTAMPS:
        return (f"""coalesce(rpad(rtrim(to_json({column} AT TIME ZONE 'UTC')::text, '"'), """
                f"""CASE WHEN date_trunc('second', {column}) = {column} THEN 20 ELSE 27 END, '0') || 'Z"', 'null')""")
    return f"coalesce(to_json({column})::text, 'null')"


def json_object_sql(columns: Sequence[str]) -> str:
    """SQL for one row as a JSON object's text (the column names are this module's constants)."""
    return "'{' || " + " || ', ' || ".join(f"""'"{c}": ' || {json_fragment_sql(c)}""" for c in columns) + " || '}'"


async def series(request: Request, db: Warehouse, source: tuple[str, str], columns: Sequence[str], exchange: str,
                 symbol: str, timeframe: Timeframe, start: datetime | None, end: datetime | None, limit: int | None,
                 cursor: str | None, fmt: Format, kind: str) -> Response:
    cap = db.settings.row_cap
    if limit is not None and limit > cap:
        raise ApiError(400, "limit", f"limit={limit} is above this API's row cap of {cap}",
                       f"ask for at most {cap} rows and follow next_cursor for the rest")
    limit = limit or min(1000, cap)
    start_at, end_at = time_range(start, end, STEP[timeframe] * limit)
    after = decode_cursor(cursor) if cursor else None
    select_list, table = source  # table: the relation and its condition on the market (two parameters)
    # One row more than the page: its presence says there is a next page.
    where = (f"FROM {table} AND open_time >= %s AND open_time < %s"
             f"{' AND open_time > %s' if after else ''} ORDER BY open_time LIMIT %s")
    params: list[Any] = [exchange, symbol, start_at, end_at, *([after] if after else []), limit + 1]
    if fmt is Format.csv:
        await known_market(db, exchange, symbol)
        names, rows = await db.fetch(f"SELECT {select_list} {where}", params)
        next_cursor = encode_cursor(rows[limit - 1][0]) if len(rows) > limit else None
        headers = {"X-Next-Cursor": next_cursor} if next_cursor else {}
        return csv_response(names, rows[:limit], headers)
    cache: PageCache = request.app.state.page_cache
    # kind too: /ohlcv and /indicators read the same table (the indicators are on the candle rows)
    key = (kind, table, exchange, symbol, start_at, end_at, after, limit)
    if cache.enabled:
        # The market check and the page's fingerprint in one round trip; a kept page with the same
        # fingerprint is what building it again would give (pages.py).
        _, ((known, *fingerprint),) = await db.fetch(
            f"SELECT EXISTS (SELECT 1 FROM marts.markets WHERE exchange = %s AND symbol = %s), {FINGERPRINT_SQL} "
            f"FROM (SELECT xmin AS row_version {where}) AS page", [exchange, symbol, *params])
        if not known:
            await known_market(db, exchange, symbol)  # raises the 404
        page = cache.get(key, (int(fingerprint[0]), int(fingerprint[1])))
        if page is not None:
            return page_response(request, cache, page)
    else:
        await known_market(db, exchange, symbol)
    # JSON pages are built by Postgres: turning 1,440 rows x 12 values into Decimal and datetime objects and
    # back into text cost ~20 ms of the API process's CPU per day of 1m candles, which capped it at a few
    # dozen such requests a second (bench figure 12); the rows' text is concatenated (json_object_sql).
    _, ((fetched, last_time, body, version_sum, closed),) = await db.fetch(
        f"SELECT count(*), max(open_time) FILTER (WHERE n = %s), "
        f"coalesce('[' || string_agg({json_object_sql(columns)}, ', ' ORDER BY open_time) FILTER (WHERE n <= %s) "
        f"|| ']', '[]'), "
        f"coalesce(sum(hashtextextended(row_version::text, 0)), 0), "
        f"coalesce(bool_and(is_closed) FILTER (WHERE n <= %s), true) "
        f"FROM (SELECT page.*, row_number() OVER (ORDER BY open_time) AS n "
        f"FROM (SELECT {select_list}, xmin AS row_version {where}) AS page) AS numbered",
        [limit, limit, limit, *params])
    count = min(fetched, limit)
    next_cursor = encode_cursor(last_time) if fetched > limit else None
    head = json.dumps({"exchange": exchange, "symbol": symbol, "timeframe": timeframe.value, "start": out(start_at),
                       "end": out(end_at), "count": count, "next_cursor": next_cursor})
    page = Page((int(fetched), int(version_sum)), f'{head[:-1]}, "{kind}": {body}}}'.encode())
    state = "not kept"
    if cache.enabled and closed:  # an open candle's is_closed turns true later: such a page is never kept
        cache.put(key, page)
        state = "stored"
    # A page asked once goes out as it is (Airflow's GZipMiddleware compresses it there): compressing it
    # here too would cost ~4 ms of this process's CPU for a day of 1m candles that may never be asked again.
    return Response(page.body, media_type="application/json",
                    headers={"X-Page-Cache": state} if cache.enabled else None)


def page_response(request: Request, cache: PageCache, page: Page) -> Response:
    """A kept page asked again (``X-Page-Cache: hit``), gzip-compressed once for every client that accepts
    it (browsers and httpx do; Airflow's GZipMiddleware passes an encoded body through)."""
    headers = {"Vary": "Accept-Encoding", "X-Page-Cache": "hit"}
    if len(page.body) >= GZIP_MIN_BYTES and "gzip" in request.headers.get("accept-encoding", ""):
        return Response(cache.gzipped(page), media_type="application/json",
                        headers=headers | {"Content-Encoding": "gzip"})
    return Response(page.body, media_type="application/json", headers=headers)


@router.get("/ohlcv", summary="Candles of one market, any timeframe, a time range, cursor-paged; JSON or CSV")
async def ohlcv(request: Request, db: WarehouseDep, exchange: ExchangeQ, symbol: SymbolQ,
                timeframe: Timeframe = Timeframe.m1,
                start: StartQ = None, end: EndQ = None,
                limit: Annotated[int | None, Query(ge=1, description="rows per page (default 1000)")] = None,
                cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
                format: Format = Format.json) -> Response:
    source = OHLCV_1M if timeframe is Timeframe.m1 else (OHLCV_ROLLUP[0], OHLCV_ROLLUP[1].format(tf=timeframe.value))
    return await series(request, db, source, OHLCV_COLUMNS, exchange, symbol, timeframe, start, end, limit, cursor,
                        format, "candles")


@router.get("/indicators", summary="SMA/EMA/RSI/MACD of one market, any timeframe, cursor-paged; JSON or CSV")
async def indicators(request: Request, db: WarehouseDep, exchange: ExchangeQ, symbol: SymbolQ,
                     timeframe: Timeframe = Timeframe.m1,
                     start: StartQ = None, end: EndQ = None,
                     limit: Annotated[int | None, Query(ge=1)] = None, cursor: str | None = None,
                     format: Format = Format.json) -> Response:
    source = INDICATORS_1M if timeframe is Timeframe.m1 else (INDICATORS[0], INDICATORS[1].format(tf=timeframe.value))
    return await series(request, db, source, INDICATOR_COLUMNS, exchange, symbol, timeframe, start, end, limit, cursor,
                        format, "indicators")


@router.get("/latest", summary="The latest price of every market (or of one exchange / symbol), with its staleness")
async def latest(db: WarehouseDep, exchange: str | None = None, symbol: str | None = None) -> JSONResponse:
    columns, rows = await db.fetch(
        "SELECT exchange, symbol, price, price_source, as_of, staleness_seconds, candle_open_time, candle_close, "
        "ticker_ts, ticker_last, ticker_bid, ticker_ask FROM marts.latest_price "
        "WHERE (%(exchange)s::text IS NULL OR exchange = %(exchange)s) AND (%(symbol)s::text IS NULL OR symbol = "
        "%(symbol)s) ORDER BY exchange, symbol", {"exchange": exchange, "symbol": symbol})
    if exchange and symbol and not rows:
        await known_market(db, exchange, symbol)
    return JSONResponse({"count": len(rows), "prices": records(columns, rows)})


@router.get("/markets", summary="Markets collected, their status and their quality over the last 24 hours")
async def markets(db: WarehouseDep, exchange: str | None = None) -> JSONResponse:
    columns, rows = await db.fetch(
        "SELECT m.exchange, m.symbol, m.base, m.quote, m.status, m.status_reason, m.is_live, m.is_active, "
        "m.first_candle_at, "
        "m.last_candle_at, m.candle_count, q.quality_score_24h, q.missing_24h "
        "FROM marts.markets AS m LEFT JOIN LATERAL ("
        "  SELECT round(avg(s.quality_score), 2) AS quality_score_24h, sum(s.missing) AS missing_24h "
        "  FROM marts.data_quality_summary AS s WHERE s.exchange = m.exchange AND s.symbol = m.symbol "
        "  AND s.grain = 'hour' AND s.period_start >= now() - interval '24 hours') AS q ON true "
        "WHERE (%(exchange)s::text IS NULL OR m.exchange = %(exchange)s) ORDER BY m.exchange, m.symbol",
        {"exchange": exchange})
    return JSONResponse({"count": len(rows), "markets": records(columns, rows)})


@router.get("/quality/summary", summary="Hourly or daily quality of one market (or all) over a time range")
async def quality_summary(db: WarehouseDep, exchange: str | None = None, symbol: str | None = None,
                          grain: Annotated[str, Query(pattern="^(hour|day)$")] = "hour",
                          start: StartQ = None, end: EndQ = None) -> JSONResponse:
    start_at, end_at = time_range(start, end, timedelta(days=1))
    if exchange and symbol:
        await known_market(db, exchange, symbol)
    columns, rows = await db.fetch(
        "SELECT exchange, symbol, grain, period_start, period_end, expected, present, missing, duplicates, "
        "corrections, out_of_order, price_spikes, volume_anomalies, cross_exchange_divergence_bps, quality_score "
        "FROM marts.data_quality_summary WHERE grain = %(grain)s AND period_start >= %(start)s "
        "AND period_start < %(end)s AND (%(exchange)s::text IS NULL OR exchange = %(exchange)s) "
        "AND (%(symbol)s::text IS NULL OR symbol = %(symbol)s) ORDER BY exchange, symbol, period_start LIMIT %(cap)s",
        {"grain": grain, "start": start_at, "end": end_at, "exchange": exchange, "symbol": symbol,
         "cap": db.settings.row_cap})
    return JSONResponse({"count": len(rows), "truncated": len(rows) == db.settings.row_cap,
                         "periods": records(columns, rows)})


@router.get("/quality/gaps", summary="Missing candles and their repair status")
async def quality_gaps(db: WarehouseDep, exchange: str | None = None, symbol: str | None = None,
                       status: str | None = None, include_repaired: bool = False,
                       limit: Annotated[int, Query(ge=1)] = 200) -> JSONResponse:
    limit = min(limit, db.settings.row_cap)
    columns, rows = await db.fetch(
        "SELECT exchange, symbol, gap_start, gap_end, missing_candles, gap_kind, status, task_status, attempts, "
        "last_error, updated_at FROM marts.data_quality_gaps WHERE (%(repaired)s OR is_missing) "
        "AND (%(exchange)s::text IS NULL OR exchange = %(exchange)s) AND (%(symbol)s::text IS NULL OR symbol = "
        "%(symbol)s) AND (%(status)s::text IS NULL OR status = %(status)s) ORDER BY gap_start DESC LIMIT %(limit)s",
        {"repaired": include_repaired, "exchange": exchange, "symbol": symbol, "status": status, "limit": limit})
    return JSONResponse({"count": len(rows), "gaps": records(columns, rows)})


@router.get("/ops/rate-limit", summary="Rate-limit use per exchange and minute against its budget")
async def rate_limit(db: WarehouseDep, exchange: str | None = None,
                     minutes: Annotated[int, Query(ge=1, le=1440)] = 60) -> JSONResponse:
    columns, rows = await db.fetch(
        "SELECT exchange, minute, tokens_used, budget_per_minute, budget_used_pct, acquisitions, denied, "
        "wait_seconds, http_429, http_418 FROM marts.rate_limit_usage WHERE minute >= now() - %(minutes)s * "
        "interval '1 minute' AND (%(exchange)s::text IS NULL OR exchange = %(exchange)s) ORDER BY exchange, minute",
        {"minutes": minutes, "exchange": exchange})
    return JSONResponse({"count": len(rows), "minutes": records(columns, rows)})


@router.get("/ops/errors", summary="Exchange API errors by class, and the latest ones")
async def errors(db: WarehouseDep, exchange: str | None = None,
                 hours: Annotated[int, Query(ge=1, le=24 * 30)] = 24,
                 limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> JSONResponse:
    where = ("occurred_at >= now() - %(hours)s * interval '1 hour' "
             "AND (%(exchange)s::text IS NULL OR exchange = %(exchange)s)")
    params = {"hours": hours, "exchange": exchange, "limit": limit}
    by_class_cols, by_class = await db.fetch(
        f"SELECT exchange, error_class, count(*) AS errors, max(occurred_at) AS last_at FROM marts.api_errors "
        f"WHERE {where} GROUP BY 1, 2 ORDER BY 3 DESC", params)
    latest_cols, latest_rows = await db.fetch(
        f"SELECT occurred_at, exchange, symbol, error_class, http_status, endpoint, message, will_retry, dag_id, "
        f"run_id FROM marts.api_errors WHERE {where} ORDER BY occurred_at DESC LIMIT %(limit)s", params)
    return JSONResponse({"hours": hours, "by_class": records(by_class_cols, by_class),
                         "latest": records(latest_cols, latest_rows)})


@router.get("/ops/runs", summary="Recent pipeline runs: markets succeeded and failed, candles loaded")
async def runs(db: WarehouseDep, dag_id: str | None = None,
               limit: Annotated[int, Query(ge=1, le=500)] = 50) -> JSONResponse:
    columns, rows = await db.fetch(
        "SELECT dag_id, run_id, started_at, finished_at, markets, succeeded, failed, suspended, candles, "
        "failed_markets FROM marts.pipeline_runs WHERE (%(dag_id)s::text IS NULL OR dag_id = %(dag_id)s) "
        "ORDER BY finished_at DESC LIMIT %(limit)s", {"dag_id": dag_id, "limit": limit})
    return JSONResponse({"count": len(rows), "runs": records(columns, rows)})


@router.get("/health", summary="Readiness: warehouse, MongoDB, and the freshness of every live market (configured, "
            "enabled, no history end, not suspended)")
async def health(request: Request, db: WarehouseDep) -> JSONResponse:
    checks: dict[str, Any] = {}
    reasons: list[str] = []
    try:
        await db.fetch("SELECT 1")
        checks["warehouse"] = "ok"
    except Exception as exc:
        checks["warehouse"] = "unreachable"
        reasons.append(f"warehouse: {str(exc).strip()}")
    mongo_uri = db.settings.mongo_uri
    if mongo_uri:
        checks["mongodb"] = await _mongo_ping(mongo_uri)
        if checks["mongodb"] != "ok":
            reasons.append(f"mongodb: {checks['mongodb']}")
    if checks["warehouse"] == "ok":
        limit = db.settings.max_staleness_seconds
        try:
            _, stale = await db.fetch(
                "SELECT m.exchange, m.symbol, round(p.staleness_seconds) FROM marts.markets AS m "
                "LEFT JOIN marts.latest_price AS p USING (exchange, symbol) "
                "WHERE m.is_live AND m.status <> 'suspended' "
                "AND (p.staleness_seconds IS NULL OR p.staleness_seconds > %s) ORDER BY 1, 2", (limit,))
            checks["stale_markets"] = [f"{e} {s} ({a if a is not None else 'no price'} s)" for e, s, a in stale]
            if stale:
                reasons.append(f"{len(stale)} live market(s) without a price newer than {limit} s")
        except Exception as exc:
            checks["stale_markets"] = None
            reasons.append(f"freshness: {str(exc).strip()}")
    body = {"status": "ok" if not reasons else "unavailable", "reasons": reasons, "checks": checks}
    return JSONResponse(body, status_code=200 if not reasons else 503)


async def _mongo_ping(uri: str) -> str:
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient = AsyncMongoClient(uri, serverSelectionTimeoutMS=2000, connectTimeoutMS=2000)
    try:
        await client.admin.command("ping")
        return "ok"
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"
    finally:
        await client.close()


# -- the app ---------------------------------------------------------------------------------


def create_app(settings: ApiSettings, *, metrics_database: Callable[[], Any] | None = None) -> FastAPI:
    """The app. ``settings.auth``: ``token`` (standalone) or ``airflow`` (inside Airflow's API server).
    ``metrics_database`` opens a connection that can read ops and staging for /metrics (else /metrics
    is not served)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await app.state.warehouse.close()

    # Every route, the OpenAPI document and its docs page included, needs credentials.
    app = FastAPI(title="marketflow market-data API", version="1", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None, dependencies=[Depends(authenticate)])
    app.state.settings = settings
    app.state.warehouse = Warehouse(settings)
    app.state.token_cache = {}  # token hash -> (name, trusted until): auth.authenticate
    app.state.page_cache = PageCache(settings.page_cache_mb * 2**20)  # closed /ohlcv, /indicators pages

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(AuthError)
    async def auth_error(request: Request, exc: AuthError) -> Response:
        if _is_page(request):  # a person at a browser: say it in a page, not JSON
            return HTMLResponse(_REFUSED_PAGE.format(message=html.escape(exc.message[:1].upper() + exc.message[1:]),
                                                     fix=html.escape(exc.fix[:1].upper() + exc.fix[1:])),
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return JSONResponse({"error": {"status": 401, "parameter": "Authorization", "message": exc.message,
                                       "fix": exc.fix}}, status_code=401, headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        parameter = str(first["loc"][-1]) if first.get("loc") else None
        allowed = _allowed(first)
        return ApiError(400, parameter, f"{parameter}={first.get('input')!r}: {first['msg']}",
                        f"give {parameter} as {allowed}" if allowed else f"see /docs for {parameter}").response()

    app.include_router(router)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> Response:
        return get_swagger_ui_html(openapi_url=f"{request.scope.get('root_path', '')}/openapi.json",
                                   title="marketflow API")

    @app.get("/ui", include_in_schema=False)
    async def ui_root() -> RedirectResponse:
        return RedirectResponse("ui/", status_code=307)  # relative: works under any mount prefix

    @app.get("/ui/{path:path}", include_in_schema=False)
    async def ui(path: str) -> Response:
        return ui_file(path)

    if metrics_database is not None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from marketflow.metrics import pipeline_registry

        registry = pipeline_registry(metrics_database)

        @app.get("/metrics", include_in_schema=False)
        async def metrics() -> Response:
            from starlette.concurrency import run_in_threadpool

            return Response(await run_in_threadpool(generate_latest, registry), media_type=CONTENT_TYPE_LATEST)

    return app


def ui_file(path: str, root: Path = UI_DIR) -> FileResponse:
    """A file of the built Markets page; index.html for the page itself. Behind the app's authentication
    like every route (the page shows market data and the pipeline's operations)."""
    if not (root / "index.html").is_file():
        raise ApiError(503, None, f"the Markets page is not built ({root / 'index.html'} is missing)",
                       "run `make ui` (npm ci and vite build of ui/; `make install` runs it)")
    target = (root / (path or "index.html")).resolve()
    if not target.is_relative_to(root.resolve()) or not target.is_file():
        raise ApiError(404, "path", f"no file {path!r} in the Markets page", "open ui/ (the page itself)")
    # Vite names assets by content hash: cache them for good; the page itself is re-checked every time.
    immutable = target.parent.name == "assets"
    return FileResponse(target, headers={"Cache-Control": "public, max-age=31536000, immutable" if immutable
                                         else "no-cache"})


def _is_page(request: Request) -> bool:
    return "/ui/" in request.url.path + "/" and "text/html" in request.headers.get("accept", "")


_REFUSED_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Not logged in</title></head>
<body style="font: 14px system-ui, sans-serif; margin: 24px"><h1>Not logged in</h1><p>{message}.</p><p>{fix}.</p>
<p><a href="/" target="_top">Log in to Airflow</a>, then open <em>Markets</em> in its navigation.</p></body></html>"""


def _allowed(error: dict[str, Any]) -> str | None:
    ctx = error.get("ctx") or {}
    if "expected" in ctx:
        return f"one of {ctx['expected']}"
    if error.get("type", "").startswith("datetime"):
        return "an ISO 8601 time in UTC, e.g. 2024-01-01T00:00:00Z"
    if "ge" in ctx or "le" in ctx:
        bounds = [f"{op} {ctx[key]}" for key, op in (("ge", ">="), ("le", "<=")) if key in ctx]
        return "a number " + " and ".join(bounds)
    if "pattern" in ctx:
        return f"a value matching {ctx['pattern']}"
    return None


class AccessLog:
    """One structured event per request (ASGI middleware): method, path, query, status, duration, the
    caller's token name and the client address. Replaces uvicorn's access line, which has no duration
    and no caller."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.log = get_logger("marketflow.api.access")

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            client = scope.get("client")
            self.log.info("%s %s %d", scope["method"], scope["path"], status, method=scope["method"],
                          path=scope["path"], query=scope.get("query_string", b"").decode("latin-1"), status=status,
                          duration_ms=round((time.perf_counter() - started) * 1000, 2),
                          caller=(scope.get("state") or {}).get("caller"),
                          client=f"{client[0]}:{client[1]}" if client else None)


def standalone_app() -> FastAPI:
    """``uvicorn --factory marketflow.api.app:standalone_app``: settings from MARKETFLOW_API_*, token auth,
    /metrics through MARKETFLOW_API_METRICS_DATABASE when set. Logs JSON lines on stdout (uvicorn's too),
    one access event per request (``AccessLog``)."""
    import os

    import psycopg2

    configure_json(level=os.environ.get("MARKETFLOW_API_LOG_LEVEL", "INFO").upper())
    settings = ApiSettings.from_env(auth="token")
    metrics_dsn = os.environ.get("MARKETFLOW_API_METRICS_DATABASE")
    app = create_app(settings, metrics_database=(lambda: psycopg2.connect(metrics_dsn)) if metrics_dsn else None)
    app.add_middleware(AccessLog)
    return app
