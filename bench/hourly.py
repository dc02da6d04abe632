"""Figure 9: the hourly run of 1,000 markets on a small and a large history (issue 16, item 3).

Per history size (1M and 30M candles), a fresh database with the history built
straight in Postgres (bench/history.py: 1,000 markets, half Binance, half OKX; QUICK 200 markets
with 200k and 600k candles, the same depths per market, within minutes; each week's rows written
market after market, see bench.storage.generate) and the marts built by `dbt run` (set-up, not
timed as a figure). Then, RUNS times (MARKETFLOW_BENCH_HOURLY_RUNS; the two sizes alternate, so
they see the same load), one hourly run's work: the next 60 minutes of every
market (60,000 candles, ingested now, as the hourly reconcile and the minute runs load them) and a
ticker per market-minute into staging, every market's configured history_end one hour later (the
expected range grows by the hour, as a live market's does with the build time), and the timed
`dbt build` of the whole project with its data tests (what the hourly DAG's dbt group runs; unit
tests excluded: they do not read the warehouse). Per model: its run plus its tests (dbt's
run_results.json); CPU seconds of Postgres and dbt per build.

9a: p95 (nearest rank) of the large history's hourly build, target <= 5 min. 9b: the median
hourly build at the large history over the median at the small one, target <= 1.3 (cost follows
new data, not history); the detail has each model's ratio.

The large history needs about 36 GB of disk at 30M candles; with less than 40 GiB free the figure
uses 10M candles and says so. Each database is dropped after it is measured.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2

from bench.context import BenchContext, say
from bench.history import START, History, build_history
from bench.report import Figure

MARKETS = 1_000
QUICK_MARKETS = 200  # QUICK: the same history depths per market (1,000 and 3,000 minutes) on fewer markets
TARGET_P95_S = 300.0
TARGET_RATIO = 1.3
MIN_FREE_FOR_30M = 40 * 2**30  # the other engineers' histories share the disk


def sizes(quick: bool, free_bytes: int) -> tuple[int, int, int, str]:
    """(markets, small and large candles, why the large one is what it is). MARKETFLOW_BENCH_HOURLY_LARGE
    (candles) sets the large history, e.g. 10000000 when 30M would take too long on a busy machine."""
    override = os.environ.get("MARKETFLOW_BENCH_HOURLY_LARGE")
    if override:
        return MARKETS, 1_000_000, int(override), "MARKETFLOW_BENCH_HOURLY_LARGE"
    if quick:
        return QUICK_MARKETS, 200_000, 600_000, "QUICK"
    if free_bytes >= MIN_FREE_FOR_30M:
        return MARKETS, 1_000_000, 30_000_000, "full"
    return MARKETS, 1_000_000, 10_000_000, (f"only {free_bytes / 2**30:.0f} GiB free "
                                            f"(< {MIN_FREE_FOR_30M / 2**30:.0f}): 10M instead of 30M")


def append_hour(conn, markets: list[tuple[str, str]], first: int) -> int:
    """The 60 minutes from minute ``first`` (epoch minutes) of every market, ingested now: each
    market's last hour again, 60 minutes later (real recorded digits), and a ticker per minute;
    the markets' history_end one hour later. Returns the candles written."""
    with conn.cursor() as cur:
        # Straight into staging.candle as the loader writes it (not through the staging.ohlcv view, whose
        # INSTEAD OF trigger would insert row by row): the same market_id, the run's run_key, the payload
        # id as bytes (md5 of the old one's text + 'h', as before), market after market in time order.
        cur.execute("""
            insert into staging.candle (open_time, ingested_at, trades, market_id, run_key, open, high, low, close,
                                        volume, quote_volume, raw_payload_id)
            select c.open_time + interval '60 minutes', now(), c.trades, k.market_id, r.run_key, c.open, c.high,
                   c.low, c.close, c.volume, c.quote_volume,
                   decode(md5(staging.payload_id_text(c.raw_payload_id) || 'h'), 'hex')
            from unnest(%s::text[], %s::text[]) with ordinality as m (exchange, symbol, n)
            join staging.market as k on k.exchange = m.exchange and k.symbol = m.symbol and k.timeframe = '1m'
            cross join (select ops.run_key('bench_hourly') as run_key) as r
            cross join lateral (
                select * from staging.candle as c
                where c.market_id = k.market_id
                  and c.open_time >= to_timestamp(%s * 60.0) and c.open_time < to_timestamp(%s * 60.0)
            ) as c
            order by m.n, c.open_time""", ([e for e, _ in markets], [s for _, s in markets], first - 60, first))
        written = cur.rowcount
        cur.execute("""
            insert into staging.ticker (exchange, symbol, ts, last, bid, ask, raw_payload_id, run_id)
            select c.exchange, c.symbol, c.open_time + interval '30 seconds', c.close, c.close * 0.9999,
                   c.close * 1.0001, c.raw_payload_id, c.run_id
            from unnest(%s::text[], %s::text[]) as m (exchange, symbol)
            cross join lateral (
                select * from staging.ohlcv as c
                where c.exchange = m.exchange and c.symbol = m.symbol and c.timeframe = '1m'
                  and c.open_time >= to_timestamp(%s * 60.0) and c.open_time < to_timestamp(%s * 60.0)
            ) as c""", ([e for e, _ in markets], [s for _, s in markets], first, first + 60))
        cur.execute("update ops.market_config set history_end = history_end + interval '60 minutes'"
                    " where timeframe = '1m'")
    return written


def per_model(target: Path) -> dict[str, dict[str, float]]:
    """Seconds per model: its run, and its data tests (attributed to the model they test)."""
    results = json.loads((target / "run_results.json").read_text())["results"]
    manifest = json.loads((target / "manifest.json").read_text())
    out: dict[str, dict[str, float]] = defaultdict(lambda: {"run": 0.0, "tests": 0.0})
    for r in results:
        uid = r["unique_id"]
        if uid.startswith("model."):
            out[uid.split(".")[-1]]["run"] += r["execution_time"]
            continue
        parents = [p for p in manifest["nodes"].get(uid, {}).get("depends_on", {}).get("nodes", [])
                   if p.startswith("model.")]
        out[parents[-1].split(".")[-1] if parents else "(other)"]["tests"] += r["execution_time"]
    return {m: dict(v) for m, v in out.items()}


@dataclass
class Size:
    """One history and what its hourly runs measured."""

    name: str
    history: History
    first: int  # epoch minute of the next hour to append
    walls: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)
    io: list[dict[str, dict[str, int]]] = field(default_factory=list)
    models: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: defaultdict(lambda: {"run": [], "tests": []}))


def set_up(ctx: BenchContext, markets: int, candles: int) -> Size:
    """A history of ``candles`` with its marts built (set-up, not timed as a figure): generated
    market-major within each week and the marts built by `dbt run` (the data tests belong to the
    hourly builds measured after; at set-up they would only re-check the generator)."""
    name = f"bench_hourly_{candles // 1000}k"
    minutes = candles // markets
    history = build_history(ctx, name, markets, minutes, ("run",), market_major=True)
    return Size(name, history, int(START.timestamp()) // 60 + minutes)


def hourly_run(ctx: BenchContext, size: Size, i: int) -> None:
    """One hourly run's work on ``size``: the next hour of every market loaded, then the timed
    `dbt build` with its data tests; CPU seconds by process (Postgres, dbt) for that build."""
    conn = psycopg2.connect(size.history.dsn)
    conn.autocommit = True
    try:
        io_start = _io(conn)
        started = time.monotonic()
        written = append_hour(conn, size.history.markets, size.first + 60 * i)
        size.loads.append(time.monotonic() - started)
        io_loaded = _io(conn)
        cpu_before = ctx.cpu_seconds()
        wall = ctx.dbt(size.history.env, "build", "--exclude-resource-type", "unit_test")
        cpu_after = ctx.cpu_seconds()
        io_built = _io(conn)
    finally:
        conn.close()
    size.walls.append(wall)
    size.io.append({"load": {k: io_loaded[k] - io_start[k] for k in io_start},
                    "dbt_build": {k: io_built[k] - io_loaded[k] for k in io_start}})
    size.cpu.append({_CPU_NAMES.get(k, k): round(v - cpu_before.get(k, 0.0), 1) for k, v in cpu_after.items()})
    for model, parts in per_model(Path(size.history.env["DBT_TARGET_PATH"])).items():
        for part, seconds in parts.items():
            size.models[model][part].append(seconds)
    say(f"{size.name}: hour {i + 1}: {written:,} candles loaded in {size.loads[-1]:.1f}s, dbt build {wall:.1f}s, "
        f"CPU-s {size.cpu[-1]}")


def _io(conn) -> dict[str, int]:
    """The bench server's WAL position in bytes (exact), and its counts of full-page images and 8 kB
    blocks written by checkpoints, the background writer and backends (statistics, flushed by each
    backend within a second or so: approximate per phase): differences per phase size the IOPS."""
    with conn.cursor() as cur:
        cur.execute("""select pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint, w.wal_fpi,
                              b.buffers_checkpoint + b.buffers_clean + b.buffers_backend
                       from pg_stat_wal as w, pg_stat_bgwriter as b""")
        wal, fpi, blocks = cur.fetchone()
    return {"wal_bytes": int(wal), "wal_full_page_images": int(fpi), "blocks_written": int(blocks)}


_CPU_NAMES = {"bench driver (pipeline workers)": "dbt (and the bench driver)"}


def summary(size: Size) -> dict:
    h = size.history
    cpu_keys = sorted({k for c in size.cpu for k in c})
    med_cpu = {k: round(statistics.median(c.get(k, 0.0) for c in size.cpu), 1) for k in cpu_keys}
    return {"candles": h.candles, "generate_s": round(h.generate_seconds, 1),
            "set_up_dbt_run_s": round(h.dbt_seconds, 1),
            "build_walls_s": [round(w, 1) for w in size.walls], "load_s": [round(x, 2) for x in size.loads],
            "cpu_seconds_by_process": size.cpu, "cpu_seconds_median": med_cpu, "io": size.io,
            "per_model_s": {m: {p: round(statistics.median(v), 2) for p, v in parts.items() if v}
                            for m, parts in size.models.items()}}


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]  # nearest rank


def run(ctx: BenchContext) -> list[Figure]:
    free = shutil.disk_usage(ctx.root).free
    markets, small_n, large_n, why = sizes(ctx.quick, free)
    say(f"hourly run of {markets:,} markets at {small_n:,} and {large_n:,} candles ({why}; "
        f"{free / 2**30:.0f} GiB free)")
    runs = int(os.environ.get("MARKETFLOW_BENCH_HOURLY_RUNS") or (2 if ctx.quick else 3))
    built: list[Size] = []
    try:
        # both histories first, then their hourly runs alternating (which goes first swaps each
        # round), so the two sizes see the same load on a shared machine
        small = set_up(ctx, markets, small_n)
        built.append(small)
        large = set_up(ctx, markets, large_n)
        built.append(large)
        for i in range(runs):
            for size in ((small, large) if i % 2 == 0 else (large, small)):
                hourly_run(ctx, size, i)
                # what is measured so far survives a run stopped before the report
                (ctx.root / "hourly_progress.json").write_text(
                    json.dumps({s.name: summary(s) for s in built}, indent=1))
    finally:
        for size in built:
            ctx.pg.drop_database(size.name)
            shutil.rmtree(size.history.work, ignore_errors=True)
    s_sum, l_sum = summary(small), summary(large)
    s_med, l_med = statistics.median(small.walls), statistics.median(large.walls)
    ratio = l_med / s_med
    by_model = {}
    for m, parts in sorted(l_sum["per_model_s"].items(), key=lambda kv: -sum(kv[1].values())):
        a, b = sum(s_sum["per_model_s"].get(m, {}).values()), sum(parts.values())
        by_model[m] = {"small_s": round(a, 2), "large_s": round(b, 2), "ratio": round(b / a, 2) if a else None,
                       "large_run_s": parts.get("run"), "large_tests_s": parts.get("tests")}
    cpu_per_market_hour = {k: round(v / markets, 4) for k, v in l_sum["cpu_seconds_median"].items()}
    detail = {"markets": markets, "sizes": why, "runs": runs, "small": s_sum, "large": l_sum, "per_model": by_model,
              "cpu_seconds_per_market_hour_large": cpu_per_market_hour,
              "set_up": "history generated market-major within each week, marts built by `dbt run`; "
                        "hourly runs alternate between the two sizes"}
    worst = p95(large.walls)
    return [
        Figure(figure=f"9a hourly run, {markets:,} markets, {large.history.candles / 1e6:.1f}M candles of history: "
                      "dbt build with tests (p95)",
               value=worst, unit="s", reference=f"target {TARGET_P95_S:.0f} s; {60 * markets:,} candles loaded in "
                                                f"{statistics.median(large.loads):.1f} s (median)",
               target=f"<= {TARGET_P95_S:.0f} s", met=worst <= TARGET_P95_S, reference_value=TARGET_P95_S,
               ratio=worst / TARGET_P95_S, detail=detail),
        Figure(figure=f"9b hourly run: {large.history.candles / 1e6:.1f}M vs {small.history.candles / 1e6:.1f}M "
                      "candles of history (median dbt build)",
               value=l_med, unit="s", reference=f"{s_med:.1f} s at {small.history.candles / 1e6:.1f}M candles",
               target=f"ratio <= {TARGET_RATIO}", met=ratio <= TARGET_RATIO, ratio=ratio, reference_value=s_med,
               detail={"per_model": by_model}),
    ]
