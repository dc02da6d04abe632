"""Figure 8: bytes per 1m candle across every Postgres relation (tables, TOAST, indexes).

A known number of 1m candles of several Binance and OKX markets is written straight into
staging.ohlcv of a fresh warehouse database, then the whole dbt project is built as the pipeline
builds it (`dbt build`, data tests included), every table is vacuumed (as autovacuum would), and
the size of every relation of every schema is divided by the number of candles.

The values are the recorded real candles of include/sample_data, tiled over time (each market
starts at its own offset in the recording), so every NUMERIC has the digits an exchange really
sends: Binance prices with 2 decimals, volumes with 4, quote volumes with 6 (of 8 sent, trailing
zeros are not stored); OKX prices with 1, volumes with 8, quote volumes with up to 9, and no trade
count. Lineage as the loader writes it: raw_payload_id a 32-hex-digit id per 1000-candle page
(raw_store.payload_id), run_id an Airflow run id (`scheduled__2026-01-01T05:00:00+00:00`).

Then (8b) the alternatives of docs/storage.md, each built in a scratch schema from the same rows
and sized the same way, as ratios to today's total (bench.storage_alternatives).
"""

from __future__ import annotations

import csv
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2.extras import execute_values

from bench.context import REPO, BenchContext, say
from bench.report import Figure

SAMPLE_DIR = REPO / "include" / "sample_data"
PAGE = 1000  # candles per raw payload (a Binance klines page), hence per raw_payload_id
# Today's total (before issue 16's storage work), measured by this figure at commit b391fc1 on the
# same data; issue 16's target is <= 60 % of it. Per size, since fixed-size tables weigh more in QUICK.
BASELINE_BYTES_PER_CANDLE = {"quick": 947.3, "full": 934.9}
TARGET_RATIO = 0.60


def sizes(quick: bool) -> tuple[int, int]:
    """(markets, minutes per market): QUICK 20 x 10,000 = 200k candles; full 40 x 75,000 = 3M."""
    return (20, 10_000) if quick else (40, 75_000)


def run(ctx: BenchContext, keep: bool = False) -> list[Figure]:
    """``keep``: leave the database and dbt's files (for working on the alternatives)."""
    from bench.history import build_history
    from bench.storage_alternatives import measure_alternatives

    markets_n, minutes = sizes(ctx.quick)
    history = build_history(ctx, "bench_storage", markets_n, minutes)
    conn = psycopg2.connect(history.dsn)
    conn.autocommit = True
    try:
        vacuum_all(conn)
        rels = relation_sizes(conn)
        figure = _figure(ctx, rels, history.candles, markets_n, minutes, history.generate_seconds,
                         history.dbt_seconds)
        if any(r["relation"] == "marts.indicators_1m" for r in rels):
            figure.detail["alternatives"] = measure_alternatives(conn, rels, history.candles)
        else:  # 8b rebuilds variants of the layout before issue 16 (indicators_1m a table of its own)
            figure.detail["alternatives"] = ("not run: 8b measures alternatives to the layout before issue 16's "
                                             "storage work (indicators_1m a table); docs/storage.md has its results")
    finally:
        conn.close()
        if not keep:
            ctx.pg.drop_database("bench_storage")
            shutil.rmtree(history.work, ignore_errors=True)
    return [figure]


# --------------------------------------------------------------------------------------------
# dataset


def sample_rows() -> list[tuple]:
    """The recorded candles: (exchange, k, open, high, low, close, volume, quote_volume, trades) as
    the exchange's strings, k = 0.. in time order per exchange."""
    rows: list[tuple] = []
    binance = sorted((SAMPLE_DIR / "binance").rglob("*.csv"))
    kline = [r for f in binance for r in csv.reader(f.open())]
    kline.sort(key=lambda r: int(r[0]))
    rows += [("binance", k, r[1], r[2], r[3], r[4], r[5], r[7], r[8]) for k, r in enumerate(kline)]
    okx = sorted((SAMPLE_DIR / "okx").rglob("*.csv"))
    candles = [r for f in okx for r in csv.DictReader(f.open())]
    candles.sort(key=lambda r: int(r["open_time"]))
    rows += [("okx", k, r["open"], r["high"], r["low"], r["close"], r["vol"], r["vol_quote"], None)
             for k, r in enumerate(candles)]
    return rows


def generate(conn, markets: list[tuple[str, str]], start: datetime, minutes: int,
             late_starts: dict[tuple[str, str], int] | None = None,
             market_major: bool = False) -> tuple[int, float]:
    """``minutes`` 1m candles from ``start`` for each market into staging.candle; returns (rows, seconds).
    ``late_starts``: markets whose history starts that many minutes after ``start`` (same end).

    Written in time order, all markets interleaved, as live loading writes them; the BRIN on
    ingested_at is built after the load (as figure 4's generator does). ``market_major``: each
    week's rows market after market instead (time order between weeks), for a history whose
    set-up cost matters more than its physical order (figure 9): the primary key is then written
    in runs of a market's week instead of one entry per market per minute all over the index,
    and a full build reads each market's history in a few runs of pages instead of one page per
    candle (a 30M load-ordered history spent ~15 min generating and ~31 min in one model's
    first build, mostly disk reads)."""
    started = time.monotonic()
    first = int(start.timestamp()) // 60
    late_starts = late_starts or {}
    with conn.cursor() as cur:
        cur.execute("create schema if not exists bench")
        cur.execute("""create table bench.sample (exchange text, k int, open numeric, high numeric, low numeric,
                       close numeric, volume numeric, quote_volume numeric, trades bigint,
                       primary key (exchange, k))""")
        execute_values(cur, "insert into bench.sample values %s", sample_rows())
        cur.execute("create table bench.markets (exchange text, symbol text, shift int, first_minute bigint)")
        # Each market reads the recording from its own offset: markets differ, digits stay real.
        execute_values(cur, "insert into bench.markets values %s",
                       [(e, s, 97 * i, first + late_starts.get((e, s), 0)) for i, (e, s) in enumerate(markets)])
        cur.execute("analyze bench.sample; analyze bench.markets")
        cur.execute("select exchange, count(*) from bench.sample group by 1")
        period = dict(cur.fetchall())
        # staging.candle (storage stage 2): the series and runs get their int keys first, as the loader
        # adds them; the payload id is the 16 bytes of its 32 hexadecimal digits (staging.payload_id_bytes)
        cur.execute("insert into staging.market (exchange, symbol, timeframe) "
                    "select exchange, symbol, '1m' from bench.markets order by exchange, symbol")
        earliest = first + min(late_starts.get(m, 0) for m in markets)
        cur.execute("""insert into ops.run (run_id)
                       select 'scheduled__' || to_char(to_timestamp(h * 3600.0) at time zone 'UTC',
                                                       'YYYY-MM-DD"T"HH24:MI:SS') || '+00:00'
                       from generate_series(%s::bigint, %s::bigint) as h order by h""",
                    (earliest // 60, (first + minutes) // 60))
        cur.execute("analyze staging.market; analyze ops.run")
        cur.execute("select indexname, indexdef from pg_indexes where schemaname = 'staging' "
                    "and tablename = 'candle' and indexname <> 'candle_pk'")
        indexes = cur.fetchall()
        for name, _ in indexes:
            cur.execute(f"drop index staging.{name}")
        chunk = 7 * 1440
        for lo in range(earliest, first + minutes, chunk):
            hi = min(lo + chunk, first + minutes) - 1
            cur.execute("""
                insert into staging.candle (open_time, ingested_at, trades, market_id, run_key, open, high, low,
                                            close, volume, quote_volume, raw_payload_id)
                select to_timestamp(a * 60.0), to_timestamp(a * 60.0) + interval '65 seconds', s.trades,
                       k.market_id, r.run_key, s.open, s.high, s.low, s.close, s.volume, s.quote_volume,
                       decode(md5(m.exchange || m.symbol || (a / %(page)s)::text), 'hex')
                from bench.markets as m
                join staging.market as k on k.exchange = m.exchange and k.symbol = m.symbol and k.timeframe = '1m'
                -- each market from its own first minute: a market that starts later costs nothing before
                cross join lateral generate_series(greatest(%(lo)s::bigint, m.first_minute), %(hi)s::bigint) as a
                join bench.sample as s
                  on s.exchange = m.exchange
                 and s.k = ((a + m.shift) %% (case m.exchange when 'okx' then %(okx)s else %(binance)s end))::int
                join ops.run as r
                  on r.run_id = 'scheduled__' || to_char(to_timestamp((a / 60) * 3600.0) at time zone 'UTC',
                                                         'YYYY-MM-DD"T"HH24:MI:SS') || '+00:00'
                where m.first_minute <= %(hi)s
                order by """ + ("k.market_id, a" if market_major else "a, m.exchange, m.symbol"),
                        {"page": PAGE, "lo": lo, "hi": hi, "okx": period["okx"], "binance": period["binance"]})
        for _, indexdef in indexes:
            # a partitioned table's index reads "ON ONLY staging.candle": as such it would be created on
            # the parent alone (invalid, no partition indexes); ON creates it on every partition too
            cur.execute(indexdef.replace(" ON ONLY ", " ON ", 1))
        cur.execute("drop schema bench cascade")
        # As autovacuum would after the load: statistics (the dbt models' plans depend on them).
        cur.execute("vacuum (analyze) staging.candle")
        cur.execute("select count(*) from staging.candle")
        rows = cur.fetchone()[0]
    seconds = time.monotonic() - started
    say(f"generated {rows:,} candles of {len(markets)} markets in {seconds:.0f}s")
    return rows, seconds


def write_markets_config(path: Path, markets: list[tuple[str, str]], start: datetime, end: datetime,
                         starts: dict[tuple[str, str], datetime] | None = None) -> Path:
    """Closed histories [start, end) per market (``starts``: a later start for some), so the
    data-quality models expect exactly them."""
    starts = starts or {}
    lines = ["# Written by the benchmark (bench/storage.py); candles generated in SQL.",
             "defaults:", "  timeframes: [1m]", "exchanges:"]
    for exchange in sorted({e for e, _ in markets}):
        lines += [f"  {exchange}:", "    api_base_url: ${MARKETFLOW_EXCHANGE_URL}", "    markets:"]
        for e, symbol in markets:
            if e == exchange:
                lines += [f"      - symbol: {symbol}",
                          f'        history_start: "{starts.get((e, symbol), start):%Y-%m-%dT%H:%M:%SZ}"',
                          f'        history_end: "{end:%Y-%m-%dT%H:%M:%SZ}"']
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------------------------
# sizes


def vacuum_all(conn) -> None:
    """VACUUM (ANALYZE) every user table: the visibility and free-space maps exist, dead tuples of
    the build's merges are reclaimable, as after autovacuum; the steady state is what is measured."""
    with conn.cursor() as cur:
        cur.execute("""select format('%I.%I', n.nspname, c.relname) from pg_class c
                       join pg_namespace n on n.oid = c.relnamespace
                       where c.relkind in ('r', 'm') and n.nspname not in ('pg_catalog', 'information_schema')
                         and n.nspname not like 'pg_toast%'""")
        for (table,) in cur.fetchall():
            cur.execute(f"vacuum (analyze) {table}")


def relation_sizes(conn, schemas: list[str] | None = None) -> list[dict[str, Any]]:
    """Every table (or matview) of the given schemas (default: all user schemas): heap (main fork),
    free-space + visibility maps, TOAST (with its index), each index; ``total`` equals
    pg_total_relation_size. A partitioned table (the 1m layers' month partitions) is one relation: the
    sum over its partitions, each index the sum of its partitions' indexes. Largest first."""
    # One statement, so the parts and the total are read at the same moment (autovacuum may add
    # free-space map pages in between); an index counts all its forks (a BRIN has a free-space map).
    with conn.cursor() as cur:
        cur.execute("""
            select rn.nspname, rc.relname, pg_relation_size(c.oid, 'main'),
                   pg_relation_size(c.oid, 'fsm') + pg_relation_size(c.oid, 'vm'),
                   coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0),
                   pg_total_relation_size(c.oid),
                   coalesce((select json_agg(json_build_array(ri.relname, pg_total_relation_size(i.indexrelid),
                                                              pg_get_indexdef(ri.oid)))
                             from pg_index i
                             join pg_class ri on ri.oid = coalesce(pg_partition_root(i.indexrelid), i.indexrelid)
                             where i.indrelid = c.oid), '[]')
            from pg_class c
            join pg_class rc on rc.oid = coalesce(pg_partition_root(c.oid), c.oid)
            join pg_namespace rn on rn.oid = rc.relnamespace
            where c.relkind in ('r', 'm')
              and rn.nspname not in ('pg_catalog', 'information_schema') and rn.nspname not like 'pg_toast%%'
              and (%s::text[] is null or rn.nspname = any(%s::text[]))""", (schemas, schemas))
        leaves = cur.fetchall()
        by_root: dict[tuple[str, str], dict[str, Any]] = {}
        for schema, name, heap, maps, toast, total, index_list in leaves:
            parts = heap + maps + toast + sum(b for _, b, _ in index_list)
            assert parts == total, f"{schema}.{name}: parts {parts} != pg_total_relation_size {total}"
            r = by_root.setdefault((schema, name), {"relation": f"{schema}.{name}", "heap": 0, "fsm_vm": 0,
                                                    "toast": 0, "total": 0, "indexes": {}})
            r["heap"] += heap
            r["fsm_vm"] += maps
            r["toast"] += toast
            r["total"] += total
            for index, size, definition in index_list:
                entry = r["indexes"].setdefault(index, {"name": index, "bytes": 0,
                                                        "def": definition.split(" USING ", 1)[-1]})
                entry["bytes"] += size
        out = []
        for (schema, name), r in by_root.items():
            cur.execute(f'select count(*) from "{schema}"."{name}"')
            r["rows"] = cur.fetchone()[0]
            r["indexes"] = sorted(r["indexes"].values(), key=lambda i: -i["bytes"])
            out.append(r)
    out.sort(key=lambda r: -r["total"])
    return out


def _figure(ctx: BenchContext, rels: list[dict[str, Any]], candles: int, markets: int, minutes: int,
            gen_s: float, build_s: float) -> Figure:
    total = sum(r["total"] for r in rels)
    per = total / candles
    staging = next(r for r in rels if r["relation"] in ("staging.candle", "staging.ohlcv"))
    breakdown = []
    for r in rels:
        if r["total"] == 0:
            continue
        breakdown.append({
            "relation": r["relation"], "rows": r["rows"], "rows_per_candle": round(r["rows"] / candles, 4),
            "bytes_per_candle": round(r["total"] / candles, 2),
            "heap": round(r["heap"] / candles, 2), "fsm_vm": round(r["fsm_vm"] / candles, 2),
            "toast": round(r["toast"] / candles, 2),
            "bytes_per_row": round(r["heap"] / r["rows"], 1) if r["rows"] else None,
            "indexes": {i["name"]: round(i["bytes"] / candles, 2) for i in r["indexes"]},
            "index_defs": {i["name"]: i["def"] for i in r["indexes"]},
        })
    schemas: dict[str, float] = {}
    for r in rels:
        schema = r["relation"].split(".")[0]
        schemas[schema] = schemas.get(schema, 0) + r["total"] / candles
    heap = sum(r["heap"] for r in rels) / candles
    index = sum(sum(i["bytes"] for i in r["indexes"]) for r in rels) / candles
    baseline = BASELINE_BYTES_PER_CANDLE["quick" if ctx.quick else "full"]
    say(f"{per:,.0f} bytes per candle over {len(breakdown)} relations ({total / 2**20:,.0f} MiB for {candles:,})")
    for b in breakdown[:12]:
        say(f"  {b['relation']:45s} {b['bytes_per_candle']:8.1f} B/candle  heap {b['heap']:.1f}  "
            f"indexes {sum(b['indexes'].values()):.1f}")
    return Figure(
        figure=f"8 bytes per 1m candle, all Postgres relations (tables, TOAST, indexes), {candles / 1e6:.1f}M candles",
        value=round(per, 1), unit="bytes/candle",
        reference_value=float(baseline) if baseline else round(staging["total"] / candles, 1),
        ratio=round(per / baseline, 3) if baseline else round(per / (staging["total"] / candles), 2),
        reference=(f"today's total before issue 16 ({baseline} bytes/candle, same data)" if baseline else
                   f"{staging['relation']} alone (the one copy the loader writes): {staging['total'] / candles:.1f} "
                   "bytes/candle"),
        target=f"<= {TARGET_RATIO:.0%} of today's (issue 16)" + ("" if baseline else "; today's is this run"),
        met=bool(baseline) and per <= TARGET_RATIO * baseline,
        detail={"candles": candles, "markets": markets, "minutes_per_market": minutes,
                "total_mib": round(total / 2**20, 1), "heap_bytes_per_candle": round(heap, 1),
                "index_bytes_per_candle": round(index, 1), "by_schema": {k: round(v, 1) for k, v in schemas.items()},
                "relations": breakdown, "generate_seconds": round(gen_s, 1), "dbt_build_seconds": round(build_s, 1),
                "how": "sum of pg_total_relation_size over every table of every user schema after `dbt build` "
                       "and VACUUM (ANALYZE), divided by the candles in staging; values tiled from the "
                       "recorded Binance/OKX candles of include/sample_data"},
    )
