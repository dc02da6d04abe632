"""Figure 1: the staging load path against this machine's limit, a plain COPY.

Same rows (1m candles of 10 markets, Decimal values as the parser yields them), same serializer,
same batch size per transaction:

* reference: COPY into a table with the staging columns and no index or constraint;
* new candles: ``staging_load.write_ohlcv`` into staging.candle (key, CHECKs, BRIN) — the path
  every backfill chunk takes;
* re-load of identical candles: the same call when every row exists (upsert, nothing changes);
* 10,000 rows into the filled table: new ones, identical ones, and corrected ones (each a
  revision), one transaction each; the slowest is the figure.

Runs alternate (reference, ours, reference, ...) and the medians are compared, so machine noise
hits both sides alike.
"""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg2

from bench.context import BenchContext, say
from bench.report import Figure
from marketflow.staging_load import _OHLCV_COLUMNS, _ohlcv_copy_buffer, write_ohlcv

MARKETS = 10
BATCH = 10_000  # rows per transaction: one week of 1m candles of one market
REPEATS = 3
START = datetime(2024, 1, 1, tzinfo=UTC)


def candle_rows(symbol: str, count: int, offset_minutes: int = 0, bump: int = 0) -> list[tuple]:
    """Valid 1m candles with Binance-like 8-decimal values; ``bump`` shifts prices (a correction)."""
    rows = []
    for i in range(offset_minutes, offset_minutes + count):
        base = 40_000 + (i * 7919) % 5000 + bump
        o, c = Decimal(f"{base}.{i % 97:02d}000000"), Decimal(f"{base + (i % 13) - 6}.50000000")
        rows.append(("binance", symbol, "1m", START + timedelta(minutes=i), o, max(o, c) + Decimal("3.25000000"),
                     min(o, c) - Decimal("2.75000000"), c, Decimal(f"{(i % 500) + 1}.12345000"),
                     Decimal(f"{((i % 500) + 1) * base}.56780000"), 100 + i % 900, f"payload-{i // 1000:08d}",
                     "bench_load_path"))
    return rows


def _batches(rows_per_market: int) -> list[list[tuple]]:
    out = []
    for m in range(MARKETS):
        rows = candle_rows(f"M{m:02d}/USDT", rows_per_market)
        out.extend(rows[i:i + BATCH] for i in range(0, len(rows), BATCH))
    return out


def _reset(conn) -> None:
    with conn.cursor() as cur:
        cur.execute("TRUNCATE staging.candle, staging.ohlcv_anomalies")
        cur.execute("DROP TABLE IF EXISTS public.copy_reference")
        cur.execute("CREATE TABLE public.copy_reference AS SELECT * FROM staging.ohlcv WITH NO DATA")
    conn.commit()
    conn.autocommit = True  # VACUUM cannot run in a transaction
    with conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE staging.candle")
    conn.autocommit = False


def _copy_reference(conn, batches: list[list[tuple]]) -> float:
    started = time.perf_counter()
    cols = ", ".join(_OHLCV_COLUMNS)
    for batch in batches:
        with conn.cursor() as cur:
            cur.copy_expert(f"COPY public.copy_reference ({cols}) FROM STDIN", _ohlcv_copy_buffer(batch))
        conn.commit()
    return time.perf_counter() - started


def _write(conn, batches: list[list[tuple]]) -> tuple[float, int, int]:
    started = time.perf_counter()
    inserted = updated = 0
    for batch in batches:
        with conn.cursor() as cur:
            i, u, _ = write_ohlcv(cur, batch)
        conn.commit()
        inserted, updated = inserted + i, updated + u
    return time.perf_counter() - started, inserted, updated


def run(ctx: BenchContext) -> list[Figure]:
    dsn = ctx.new_database("bench_load")
    conn = psycopg2.connect(dsn)
    total = ctx.sizes.load_rows
    batches = _batches(total // MARKETS)
    rows = sum(len(b) for b in batches)
    say(f"figure 1: {rows:,} rows, {MARKETS} markets, {BATCH:,} rows per transaction, {REPEATS} alternating repeats")
    ref_s, new_s, reload_s = [], [], []
    for rep in range(REPEATS):
        _reset(conn)
        ref_s.append(_copy_reference(conn, batches))
        seconds, inserted, _ = _write(conn, batches)
        if inserted != rows:
            raise RuntimeError(f"new-candle load inserted {inserted} of {rows} rows")
        new_s.append(seconds)
        seconds, inserted, updated = _write(conn, batches)
        if inserted or updated:
            raise RuntimeError(f"re-load of identical rows changed {inserted + updated} rows")
        reload_s.append(seconds)
        say(f"  repeat {rep + 1}/{REPEATS}: COPY {rows / ref_s[-1]:,.0f} rows/s, new {rows / new_s[-1]:,.0f} rows/s, "
            f"re-load {rows / reload_s[-1]:,.0f} rows/s")
    ref_rate, new_rate, reload_rate = (rows / statistics.median(s) for s in (ref_s, new_s, reload_s))

    # 10,000 rows into the filled table (it holds `rows` candles now): new, identical, corrected.
    small: dict[str, float] = {}
    extra = candle_rows("M00/USDT", BATCH, offset_minutes=total // MARKETS)
    for label, batch in (("new", extra), ("identical", extra),
                         ("corrected", candle_rows("M00/USDT", BATCH, offset_minutes=total // MARKETS, bump=1))):
        seconds, inserted, updated = _write(conn, [batch])
        small[label] = round(seconds, 4)
        say(f"  10,000 {label} rows: {seconds * 1000:.0f} ms ({inserted} inserted, {updated} updated)")
    with conn.cursor() as cur:
        cur.execute("SELECT pg_size_pretty(pg_total_relation_size('staging.candle'))")
        size = cur.fetchone()[0]
    conn.close()
    worst = max(small, key=small.get)
    common = {"rows": rows, "markets": MARKETS, "rows_per_transaction": BATCH, "repeats": REPEATS,
              "copy_reference_seconds": ref_s, "staging_ohlcv_size": size,
              "serializer": "the same COPY text writer on both sides (marketflow.staging_load._ohlcv_copy_buffer)"}
    return [
        Figure(figure="1a load path: new candles into staging.ohlcv vs plain COPY", value=round(new_rate),
               unit="rows/s", reference=f"COPY of the same rows into an unindexed table: {ref_rate:,.0f} rows/s",
               reference_value=round(ref_rate), ratio=new_rate / ref_rate, target=">= 50 % of plain COPY",
               met=new_rate / ref_rate >= 0.5,
               detail={**common, "new_seconds": new_s, "reload_identical_rows_per_s": round(reload_rate),
                       "reload_ratio_vs_copy": round(reload_rate / ref_rate, 3), "reload_seconds": reload_s}),
        Figure(figure="1b 10,000 1m rows upserted into the filled table", value=small[worst], unit="s",
               reference=f"slowest of new / identical / corrected rows ({worst}); table holds {rows:,} rows",
               target="< 1 s", met=small[worst] < 1.0, ratio=small[worst] / 1.0, reference_value=1.0,
               detail={"seconds_by_case": small}),
    ]
