"""Load raw payloads into Postgres staging in one transaction.

Two paths, same result:

* new candles (nothing stored yet in the batch's time range for the market, the common case in
  a backfill): COPY straight into staging.candle. If another loader commits the same candles
  meanwhile, the unique key stops the COPY and the batch falls back to the upsert below.
* otherwise: COPY into a temporary table and upsert with ``ON CONFLICT DO UPDATE ... WHERE
  values differ``: re-loading the same data touches no row, a corrected candle updates its row
  (and its lineage) and is recorded as a revision.

Invalid rows, and whole payloads that cannot be parsed, go to staging.ohlcv_rejects with the
reason. Either all of it commits or none.

Candles are written to staging.candle, the narrow table behind the view staging.ohlcv (storage
stage 2, docs/storage.md): the market and run as int keys (marketflow.staging_keys, cached per
connection), the payload id as bytes. The rows prepared here keep the wide form (exchange, symbol,
timeframe, ..., raw_payload_id, run_id); they are keyed when written.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from psycopg2.extras import execute_values

from marketflow.logs import get_logger
from marketflow.parsing import Candle, PayloadError, parse_batch_tickers, parse_candles, parse_ticker
from marketflow.staging_keys import market_ids, payload_id_bytes, payload_id_text, run_keys
from marketflow.timeframes import Window, from_ms, utc_ms
from marketflow.validation import candle_problem

log = get_logger(__name__)

_OHLCV_COLUMNS = ("exchange", "symbol", "timeframe", "open_time", "open", "high", "low", "close", "volume",
                  "quote_volume", "trades", "raw_payload_id", "run_id")
# staging.candle's columns as the loader COPYs them (ingested_at: the default, or clock_timestamp() on upsert)
_CANDLE_COLUMNS = ("market_id", "open_time", "open", "high", "low", "close", "volume", "quote_volume", "trades",
                   "raw_payload_id", "run_key")
_REJECT_COLUMNS = ("raw_payload_id", "row_index", "exchange", "symbol", "timeframe", "open_time", "raw_row",
                   "reason", "run_id")
_ANOMALY_COLUMNS = ("raw_payload_id", "kind", "open_time", "exchange", "symbol", "timeframe", "detail", "run_id")
_VALUE_COLUMNS = ("open", "high", "low", "close", "volume", "quote_volume", "trades")
# A whole-payload reject keeps the body as received, capped so a multi-megabyte error page stays storable.
MAX_REJECT_BODY = 1_000_000


@dataclass
class LoadResult:
    payloads: int = 0
    payloads_rejected: int = 0
    payloads_skipped: int = 0  # stored error responses (HTTP != 200, or retried calls' answers): evidence
    candles_parsed: int = 0
    still_open: int = 0
    outside_window: int = 0
    duplicates_in_batch: int = 0
    out_of_order: int = 0
    revised: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    valid: int = 0  # candles that passed validation (stored, unchanged, or outside the window)
    first_reject: str | None = None  # the first reject's reason, for the error of an unusable answer
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def unusable(self) -> str | None:
        """Why this answer is a data error of its market, or None. An empty answer is not one (a
        market without trades in the window), nor are candles still forming; but a payload rejected
        whole, or rows that all failed validation, are: loading 0 rows from them is a failure."""
        if self.payloads_rejected:
            return (f"{self.payloads_rejected} of {self.payloads} payload(s) rejected whole, e.g. "
                    f"{self.first_reject}; the bodies are in staging.ohlcv_rejects and MongoDB raw")
        if self.rejected and not self.valid:
            return (f"all {self.rejected} row(s) failed validation, e.g. {self.first_reject}; "
                    f"see staging.ohlcv_rejects")
        return None

    def summary(self) -> str:
        return (f"{self.inserted} inserted, {self.updated} updated, {self.unchanged} unchanged, "
                f"{self.rejected} rejected rows, {self.payloads_rejected} rejected payloads, "
                f"{self.still_open} still-open candles skipped, {self.outside_window} outside the window "
                f"(from {self.payloads} payloads in {self.seconds:.2f}s)")


def _copy_value(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, datetime):
        return value.isoformat()
    # Postgres text cannot hold NUL; a payload full of binary garbage is still kept as a reject.
    text = str(value).replace("\x00", "\\u0000")
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _copy_buffer(rows: Iterable[Sequence[Any]]) -> io.StringIO:
    buf = io.StringIO()
    for row in rows:
        buf.write("\t".join(_copy_value(v) for v in row))
        buf.write("\n")
    buf.seek(0)
    return buf


def _ohlcv_copy_buffer(rows: Sequence[Sequence[Any]]) -> io.StringIO:
    """COPY text for candle rows, ~5x faster than the generic path: the values are validated
    numbers, timestamps and names, so a row needs escaping only if it visibly does (then it
    takes the generic path)."""
    # Kept instead of psycopg 3's Copy.write_row (issue 14; 10,000 of bench.load_path's candle rows COPY'd
    # into an unindexed table, median of 7, three runs on the shared 2-core dev machine): this buffer
    # through psycopg2 204 / 245 / 521 ms, write_row 219 / 264 / 605 ms (7-16 % slower; binary COPY with
    # set_types slower still). write_row would also need the loader's connections to be psycopg 3.
    buf = io.StringIO()
    for row in rows:
        ex, sym, tf, ts, o, h, lo, c, v, qv, tr, payload, run = row
        line = "\t".join((ex, sym, tf, ts.isoformat(), str(o), str(h), str(lo), str(c), str(v),
                          "\\N" if qv is None else str(qv), "\\N" if tr is None else str(tr), payload, run))
        if (line.count("\t") != 12 or line.count("\\") != (qv is None) + (tr is None) or "\n" in line
                or "\r" in line or "\x00" in line):
            line = "\t".join(_copy_value(value) for value in row)
        buf.write(line)
        buf.write("\n")
    buf.seek(0)
    return buf


def _check_payload_market(doc: dict[str, Any], exchange: str, symbol: str, timeframe: str) -> None:
    """The payload must be the answer to a request for this market and timeframe."""
    if (doc["exchange"], doc["symbol"], doc["timeframe"]) != (exchange, symbol, timeframe):
        raise PayloadError(f"payload is for {doc['exchange']} {doc['symbol']} {doc['timeframe']}, "
                           f"expected {exchange} {symbol} {timeframe}")
    market_id = (doc.get("market") or {}).get("id")
    named = _request_tokens(doc)
    # Whatever the exchange calls it (symbol, instId, pair, currency_pair, a path segment as Coinbase's
    # product id), ccxt puts the market's id into the request it builds.
    if market_id and named and market_id.lower() not in named:
        params = doc.get("request_params") or {}
        raise PayloadError(f"request {doc.get('endpoint')} {params} does not name market {market_id} ({symbol}): "
                           "the answer is for another market")


def _request_tokens(doc: dict[str, Any]) -> set[str]:
    """The request's path segments and parameter values (each also split at ':' and ','), lower case."""
    url = doc.get("url") or ""
    parts = urlsplit(url)
    values = [unquote(seg) for seg in (parts.path or doc.get("endpoint") or "").split("/") if seg]
    values += [v for _, v in parse_qsl(parts.query, keep_blank_values=True)] if parts.query else \
        [str(v) for v in (doc.get("request_params") or {}).values()]
    tokens = {v.lower() for v in values}
    return tokens | {piece for v in tokens for piece in re.split(r"[:,]", v) if piece}


@dataclass
class PreparedCandles:
    """One market's payloads parsed and validated, ready to write: what ``load_candle_payloads`` writes in
    one transaction, or ``load_candle_batch`` together with other markets'."""

    result: LoadResult
    rows: list[tuple[Any, ...]]
    rejects: list[tuple[Any, ...]]
    anomalies: list[tuple[Any, ...]]
    started: float


def load_candle_payloads(conn, docs: list[dict[str, Any]], exchange: str, symbol: str, timeframe: str,
                         run_id: str, window: Window | None = None) -> LoadResult:
    """Parse, validate and upsert the candles of ``docs`` (oldest fetch first; later values win)."""
    prepared = prepare_candles(docs, exchange, symbol, timeframe, run_id, window)
    try:
        with conn.cursor() as cur:
            inserted, updated, revisions = write_ohlcv(cur, prepared.rows)
            insert_rejects(cur, prepared.rejects)
            insert_anomalies(cur, [*prepared.anomalies, *revisions])
        conn.commit()
    except Exception:
        if not conn.closed:  # on a dead connection rollback() would replace the real error
            conn.rollback()
        raise
    return _finish(prepared, inserted, updated, len(revisions))


def load_candle_batch(conn, batch: list[PreparedCandles]) -> list[LoadResult]:
    """Write many markets' prepared candles in ONE transaction: one COPY into the temp table, one
    revision check and one upsert over all of them (the minute path: ~1,000 markets a minute, where
    a transaction per market cost more round trips and commits than rows). All or nothing: the
    caller falls back to ``load_candle_payloads`` per market when it fails, so one market's problem
    never stops the others'. Returns each market's result, in ``batch`` order."""
    rows = [r for p in batch for r in p.rows]
    try:
        with conn.cursor() as cur:
            keyed, revisions = _stage_and_compare(cur, rows) if rows else (None, [])
            counts = _upsert_staged(cur, keyed) if keyed else {}
            insert_rejects(cur, [r for p in batch for r in p.rejects])
            insert_anomalies(cur, [a for p in batch for a in p.anomalies] + revisions)
        conn.commit()
    except Exception:
        if not conn.closed:
            conn.rollback()
        raise
    revised: dict[tuple[str, str], int] = {}
    for a in revisions:
        revised[(a[3], a[4])] = revised.get((a[3], a[4]), 0) + 1
    out = []
    for p in batch:
        key = (p.rows[0][0], p.rows[0][1]) if p.rows else None
        inserted, updated = counts.get(key, (0, 0)) if key else (0, 0)
        out.append(_finish(p, inserted, updated, revised.get(key, 0) if key else 0))
    return out


def _finish(prepared: PreparedCandles, inserted: int, updated: int, revisions: int) -> LoadResult:
    result, rejects = prepared.result, prepared.rejects
    result.inserted, result.updated = inserted, updated
    result.unchanged = len(prepared.rows) - inserted - updated
    result.rejected = len(rejects)
    result.first_reject = rejects[0][7][:300] if rejects else None
    result.revised = sum(1 for a in prepared.anomalies if a[1] == "revised") + revisions
    result.seconds = time.monotonic() - prepared.started
    return result


def prepare_candles(docs: list[dict[str, Any]], exchange: str, symbol: str, timeframe: str, run_id: str,
                    window: Window | None = None) -> PreparedCandles:
    """Parse and validate the candles of ``docs`` (oldest fetch first; later values win); nothing written."""
    started = time.monotonic()
    result = LoadResult(payloads=len(docs))
    rejects: list[tuple[Any, ...]] = []
    anomalies: dict[tuple[str, str, int], tuple[Any, ...]] = {}
    latest: dict[int, tuple[Candle, str]] = {}

    def anomaly(payload: str, kind: str, ts: int, detail: str) -> None:
        anomalies[(payload, kind, ts)] = (payload, kind, from_ms(ts), exchange, symbol, timeframe, detail, run_id)

    for doc in docs:
        # Error responses, and answers to a call that failed and was retried: evidence, not data.
        if doc.get("http_status") != 200 or doc.get("superseded"):
            result.payloads_skipped += 1
            continue
        received_ms = utc_ms(doc["fetched_at"])
        try:
            _check_payload_market(doc, exchange, symbol, timeframe)
            parsed = parse_candles(doc)
        except PayloadError as exc:
            result.payloads_rejected += 1
            rejects.append((doc["_id"], -1, exchange, symbol, timeframe, None, doc["body"][:MAX_REJECT_BODY],
                            f"payload rejected: {exc}", run_id))
            continue
        result.still_open += parsed.still_open
        for ts in parsed.out_of_order:
            anomaly(doc["_id"], "out_of_order", ts, "row breaks the exchange's documented order")
        result.out_of_order += len(parsed.out_of_order)
        for bad in parsed.rejects:
            rejects.append((doc["_id"], bad.row_index, exchange, symbol, timeframe,
                            from_ms(bad.open_time_ms) if bad.open_time_ms is not None else None, bad.raw_row,
                            bad.reason, run_id))
        for candle in parsed.candles:
            result.candles_parsed += 1
            problem = candle_problem(candle, timeframe, received_ms)
            if problem:
                rejects.append((doc["_id"], candle.row_index, exchange, symbol, timeframe,
                                from_ms(candle.open_time_ms), candle.raw_row, problem, run_id))
                continue
            result.valid += 1
            if window is not None and not window.start_ms <= candle.open_time_ms < window.end_ms:
                result.outside_window += 1
                continue
            if candle.open_time_ms in latest:
                result.duplicates_in_batch += 1
                seen, seen_payload = latest[candle.open_time_ms]
                same = _values(seen) == _values(candle)
                if seen_payload == doc["_id"]:
                    anomaly(doc["_id"], "duplicate_identical" if same else "duplicate_conflict",
                            candle.open_time_ms, f"rows {seen.row_index} and {candle.row_index}")
                elif not same:
                    anomaly(doc["_id"], "revised", candle.open_time_ms,
                            f"payload {seen_payload} said {_values(seen)}, this one {_values(candle)}")
            latest[candle.open_time_ms] = (candle, doc["_id"])

    rows = [
        (exchange, symbol, timeframe, from_ms(c.open_time_ms), c.open, c.high, c.low, c.close, c.volume,
         c.quote_volume, c.trades, payload, run_id)
        for _, (c, payload) in sorted(latest.items())
    ]
    return PreparedCandles(result, rows, rejects, list(anomalies.values()), started)


def _values(c: Candle) -> tuple[Any, ...]:
    return (c.open, c.high, c.low, c.close, c.volume, c.quote_volume, c.trades)


_NULL = "\\N"  # COPY text's NULL
_HEX = "\\\\x"  # a bytea in hex, its backslash doubled for COPY text


class _Keyed:
    """Rows of ``prepare_candles`` with staging.candle's keys: the COPY text, and the way back from keys to names."""

    def __init__(self, cur, rows: list[tuple[Any, ...]]) -> None:
        markets = market_ids(cur, {(r[0], r[1], r[2]) for r in rows})
        runs = run_keys(cur, {r[12] for r in rows})
        self.series = {key: series for series, key in markets.items()}
        self.run_ids = {key: run for run, key in runs.items()}
        self.markets, self.runs = markets, runs

    def copy_buffer(self, rows: Sequence[Sequence[Any]]) -> io.StringIO:
        """COPY text of staging.candle rows (``_CANDLE_COLUMNS``). Every value is an int, a timestamp, a
        validated number or hexadecimal, so nothing needs escaping (the bytea's backslash is doubled)."""
        markets, runs = self.markets, self.runs
        payloads: dict[str, str] = {}
        buf = io.StringIO()
        for ex, sym, tf, ts, o, h, lo, c, v, qv, tr, payload, run in rows:
            hex_id = payloads.get(payload)
            if hex_id is None:
                hex_id = payloads[payload] = payload_id_bytes(payload).hex()
            buf.write(f"{markets[(ex, sym, tf)]}\t{ts.isoformat()}\t{o}\t{h}\t{lo}\t{c}\t{v}\t"
                      f"{_NULL if qv is None else qv}\t{_NULL if tr is None else tr}\t{_HEX}{hex_id}\t{runs[run]}\n")
        buf.seek(0)
        return buf


def write_ohlcv(cur, rows: list[tuple[Any, ...]]) -> tuple[int, int, list[tuple[Any, ...]]]:
    """Write one market's candle rows: COPY when they are all new, else upsert recording revisions.

    Returns (inserted, updated, revision anomalies). The caller owns the transaction (the market's and
    run's keys, when new, are added in a transaction of their own first if none is open).
    """
    copied = copy_new_ohlcv(cur, rows)
    if copied is not None:
        return copied, 0, []
    if not rows:
        return 0, 0, []
    keyed, revisions = _stage_and_compare(cur, rows)
    counts = _upsert_staged(cur, keyed).values()
    return sum(i for i, _ in counts), sum(u for _, u in counts), revisions


def _stage_rows(cur, rows: list[tuple[Any, ...]]) -> _Keyed:
    """COPY rows into the session's temp table (emptied at commit)."""
    keyed = _Keyed(cur, rows)
    cur.execute("CREATE TEMP TABLE IF NOT EXISTS tmp_candle (LIKE staging.candle INCLUDING DEFAULTS) "
                "ON COMMIT DELETE ROWS")
    cur.execute("TRUNCATE tmp_candle")
    cur.copy_expert(f"COPY tmp_candle ({', '.join(_CANDLE_COLUMNS)}) FROM STDIN", keyed.copy_buffer(rows))
    return keyed


def copy_new_ohlcv(cur, rows: list[tuple[Any, ...]]) -> int | None:
    """COPY rows of one market straight into staging.candle when none of their time range is stored yet.

    Returns the rows inserted, or None when the upsert path must run instead: rows exist in the
    range, or a concurrent loader committed some of these candles first (unique violation; the
    savepoint undoes this COPY, the transaction goes on). The caller owns the transaction.
    """
    from psycopg2 import errors

    if not rows:
        return None
    exchange, symbol, timeframe = rows[0][0], rows[0][1], rows[0][2]
    keyed = _Keyed(cur, rows)
    first, last = min(r[3] for r in rows), max(r[3] for r in rows)
    cur.execute("SELECT EXISTS (SELECT 1 FROM staging.candle WHERE market_id = %s AND open_time BETWEEN %s AND %s)",
                (keyed.markets[(exchange, symbol, timeframe)], first, last))
    if cur.fetchone()[0]:
        return None
    cur.execute("SAVEPOINT copy_new_ohlcv")
    try:
        cur.copy_expert(f"COPY staging.candle ({', '.join(_CANDLE_COLUMNS)}) FROM STDIN", keyed.copy_buffer(rows))
    except errors.UniqueViolation:
        cur.execute("ROLLBACK TO SAVEPOINT copy_new_ohlcv")
        log.info("%s %s %s: candles appeared while loading (a concurrent load); upserting instead",
                 exchange, symbol, timeframe, exchange=exchange, symbol=symbol, timeframe=timeframe)
        return None
    cur.execute("RELEASE SAVEPOINT copy_new_ohlcv")
    return len(rows)


def record_revisions(cur, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Stage ``rows`` and return an anomaly for each one whose values differ from what staging holds."""
    return _stage_and_compare(cur, rows)[1] if rows else []


def _stage_and_compare(cur, rows: list[tuple[Any, ...]]) -> tuple[_Keyed, list[tuple[Any, ...]]]:
    keyed = _stage_rows(cur, rows)
    old = ", ".join(f"t.{c}" for c in _VALUE_COLUMNS)
    new = ", ".join(f"s.{c}" for c in _VALUE_COLUMNS)
    cur.execute(
        f"""
        SELECT s.raw_payload_id, s.open_time, s.market_id, t.raw_payload_id, ({old})::text, ({new})::text, s.run_key
        FROM tmp_candle s
        JOIN staging.candle t USING (market_id, open_time)
        WHERE ({old}) IS DISTINCT FROM ({new})
        """
    )
    return keyed, [(payload_id_text(bytes(payload)), "revised", open_time, *keyed.series[market],
                    f"payload {payload_id_text(bytes(was_payload))} said {was}, this one {now}", keyed.run_ids[run])
                   for payload, open_time, market, was_payload, was, now, run in cur.fetchall()]


def upsert_ohlcv(cur, rows: list[tuple[Any, ...]], staged: bool = False) -> tuple[int, int]:
    """COPY rows into a temp table (unless ``staged``), then upsert; returns (inserted, updated).
    The caller owns the transaction."""
    if not rows:
        return 0, 0
    keyed = _Keyed(cur, rows) if staged else _stage_rows(cur, rows)
    counts = _upsert_staged(cur, keyed).values()
    return sum(i for i, _ in counts), sum(u for _, u in counts)


def _upsert_staged(cur, keyed: _Keyed) -> dict[tuple[str, str], tuple[int, int]]:
    """Upsert tmp_candle into staging.candle; (inserted, updated) per (exchange, symbol)."""
    cols = ", ".join(_CANDLE_COLUMNS)
    cur.execute(
        f"""
        WITH upserted AS (
            INSERT INTO staging.candle AS t ({cols}, ingested_at)
            -- in key order: two overlapping runs' batches lock the same rows in the same order (no deadlock)
            SELECT {cols}, clock_timestamp() FROM tmp_candle ORDER BY market_id, open_time
            ON CONFLICT (market_id, open_time) DO UPDATE SET
                open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
                volume = EXCLUDED.volume, quote_volume = EXCLUDED.quote_volume, trades = EXCLUDED.trades,
                raw_payload_id = EXCLUDED.raw_payload_id, run_key = EXCLUDED.run_key,
                ingested_at = EXCLUDED.ingested_at
            WHERE (t.open, t.high, t.low, t.close, t.volume, t.quote_volume, t.trades)
                IS DISTINCT FROM (EXCLUDED.open, EXCLUDED.high, EXCLUDED.low, EXCLUDED.close, EXCLUDED.volume,
                                  EXCLUDED.quote_volume, EXCLUDED.trades)
            RETURNING t.market_id, t.open_time
        ),
        -- what was stored before this statement (its snapshot): a returned row with a stored key was
        -- updated. (Not xmax = 0: a partitioned table cannot return system columns.)
        existed AS (
            SELECT s.market_id, s.open_time
            FROM tmp_candle AS s
            JOIN staging.candle AS o USING (market_id, open_time)
        )
        SELECT u.market_id, count(*) FILTER (WHERE e.open_time IS NULL),
               count(*) FILTER (WHERE e.open_time IS NOT NULL)
        FROM upserted AS u
        LEFT JOIN existed AS e USING (market_id, open_time)
        GROUP BY 1
        """
    )
    counts: dict[tuple[str, str], tuple[int, int]] = {}
    for market, ins, upd in cur.fetchall():
        ex, sym, _ = keyed.series[market]
        was_ins, was_upd = counts.get((ex, sym), (0, 0))
        counts[(ex, sym)] = (was_ins + int(ins), was_upd + int(upd))
    return counts


def insert_rejects(cur, rejects: list[tuple[Any, ...]]) -> int:
    """Record rejects once per (payload, row); re-loading the same payload adds nothing."""
    return _insert_once(cur, "ohlcv_rejects", _REJECT_COLUMNS, rejects, "raw_payload_id, row_index")


def insert_anomalies(cur, anomalies: list[tuple[Any, ...]]) -> None:
    """Record anomalies once per (payload, kind, open time)."""
    _insert_once(cur, "ohlcv_anomalies", _ANOMALY_COLUMNS, anomalies, "raw_payload_id, kind, open_time")


def _insert_once(cur, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]], key: str) -> int:
    """COPY ``rows`` into a session temp table, then insert into ``staging.<table>`` the ones whose
    ``key`` is not there yet (COPY itself cannot skip conflicts). Returns the rows inserted."""
    if not rows:
        return 0
    cols = ", ".join(columns)
    cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS tmp_{table} (LIKE staging.{table} INCLUDING DEFAULTS) "
                "ON COMMIT DELETE ROWS")
    cur.copy_expert(f"COPY tmp_{table} ({cols}) FROM STDIN", _copy_buffer(rows))
    cur.execute(f"INSERT INTO staging.{table} ({cols}) SELECT {cols} FROM tmp_{table} ON CONFLICT ({key}) DO NOTHING")
    return cur.rowcount


def load_ticker_payloads(conn, docs: list[dict[str, Any]], run_id: str) -> tuple[int, list[str]]:
    """Upsert ticker snapshots; returns (rows written, problems). Bad payloads are reported, not loaded.

    A batch answer (``markets`` stored) gives one row per market it was asked for, each with the
    batch document as its lineage; a market missing from it is a problem, the others still load."""
    rows, problems = [], []
    for doc in docs:
        if doc.get("http_status") != 200 or doc.get("superseded"):
            continue
        try:
            parsed = parse_batch_tickers(doc) if doc.get("markets") else {doc["symbol"]: parse_ticker(doc)}
        except ValueError as exc:  # PayloadError included
            problems.append(f"{doc['_id']}: {exc}")
            continue
        for symbol, t in parsed.items():
            if isinstance(t, PayloadError):
                problems.append(f"{doc['_id']}: {t}")
                continue
            rows.append((doc["exchange"], symbol, from_ms(t.ts_ms), t.last, t.bid, t.ask, t.bid_volume,
                         t.ask_volume, t.base_volume, t.quote_volume, doc["_id"], run_id))
    if not rows:
        return 0, problems
    with conn.cursor() as cur:
        # one statement for a batch answer's ~1,000 rows (executemany is a round trip per row)
        execute_values(
            cur,
            """
            INSERT INTO staging.ticker (exchange, symbol, ts, last, bid, ask, bid_volume, ask_volume, base_volume,
                                        quote_volume, raw_payload_id, run_id)
            VALUES %s
            ON CONFLICT (exchange, symbol, ts) DO NOTHING
            """,
            rows, page_size=1000,
        )
    conn.commit()
    return len(rows), problems

