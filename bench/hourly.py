"""Figure 9: the hourly run of 1,000 markets on a small and a large history (issue 16, item 3).

Per history size (1M and 30M candles), a fresh database with the history built
straight in Postgres (bench/history.py: 1,000 markets, half Binance, half OKX; QUICK 200 markets
with 200k and 600k candles, the same depths per market, within minutes) and the marts built
by a full `dbt build`. Then, RUNS times, one hourly run's work: the next 60 minutes of every
market (60,000 candles, ingested now, as the hourly reconcile and the minute runs load them) and a
ticker per market-minute into staging, every market's configured history_end one hour later (the
expected range grows by the hour, as a live market's does with the build time), and the timed
`dbt build` of the whole project with its data tests (what the hourly DAG's dbt group runs; unit
tests excluded: they do not read the warehouse). Per model: its run plus its tests (dbt's
run_results.json).

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
from pathlib import Path

import psycopg2

from bench.context import BenchContext, say
from bench.history import START, build_history
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
        cur.execute("""
            insert into staging.ohlcv (exchange, symbol, timeframe, open_time, open, high, low, close, volume,
                                       quote_volume, trades, raw_payload_id, run_id, ingested_at)
            select c.exchange, c.symbol, '1m', c.open_time + interval '60 minutes', c.open, c.high, c.low, c.close,
                   c.volume, c.quote_volume, c.trades, md5(c.raw_payload_id || 'h'), 'bench_hourly', now()
            from unnest(%s::text[], %s::text[]) as m (exchange, symbol)
            cross join lateral (
                select * from staging.ohlcv as c
                where c.exchange = m.exchange and c.symbol = m.symbol and c.timeframe = '1m'
                  and c.open_time >= to_timestamp(%s * 60.0) and c.open_time < to_timestamp(%s * 60.0)
            ) as c""", ([e for e, _ in markets], [s for _, s in markets], first - 60, first))
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


def per_model(target: Path) -> dict[str, float]:
    """Seconds per model: its run plus its data tests (attributed to the model they test)."""
    results = json.loads((target / "run_results.json").read_text())["results"]
    manifest = json.loads((target / "manifest.json").read_text())
    out: dict[str, float] = defaultdict(float)
    for r in results:
        uid = r["unique_id"]
        if uid.startswith("model."):
            out[uid.split(".")[-1]] += r["execution_time"]
            continue
        parents = [p for p in manifest["nodes"].get(uid, {}).get("depends_on", {}).get("nodes", [])
                   if p.startswith("model.")]
        out[parents[-1].split(".")[-1] if parents else "(other)"] += r["execution_time"]
    return dict(out)


def measure(ctx: BenchContext, markets: int, candles: int, runs: int) -> dict:
    """Build a history of ``candles``, then ``runs`` hourly runs; the database is dropped after."""
    name = f"bench_hourly_{candles // 1000}k"
    minutes = candles // markets
    history = build_history(ctx, name, markets, minutes)
    target = Path(history.env["DBT_TARGET_PATH"])
    walls: list[float] = []
    loads: list[float] = []
    models: dict[str, list[float]] = defaultdict(list)
    first = int(START.timestamp()) // 60 + minutes
    try:
        conn = psycopg2.connect(history.dsn)
        conn.autocommit = True
        try:
            for i in range(runs):
                started = time.monotonic()
                written = append_hour(conn, history.markets, first + 60 * i)
                loads.append(time.monotonic() - started)
                wall = ctx.dbt(history.env, "build", "--exclude-resource-type", "unit_test")
                walls.append(wall)
                for model, seconds in per_model(target).items():
                    models[model].append(seconds)
                say(f"{name}: hour {i + 1}/{runs}: {written:,} candles loaded in {loads[-1]:.1f}s, "
                    f"dbt build {wall:.1f}s")
        finally:
            conn.close()
    finally:
        ctx.pg.drop_database(name)
        shutil.rmtree(history.work, ignore_errors=True)
    return {"candles": history.candles, "generate_s": round(history.generate_seconds, 1),
            "full_build_s": round(history.dbt_seconds, 1), "build_walls_s": [round(w, 1) for w in walls],
            "load_s": [round(x, 2) for x in loads],
            "per_model_s": {m: round(statistics.median(v), 2) for m, v in models.items()}}


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]  # nearest rank


def run(ctx: BenchContext) -> list[Figure]:
    free = shutil.disk_usage(ctx.root).free
    markets, small_n, large_n, why = sizes(ctx.quick, free)
    say(f"hourly run of {markets:,} markets at {small_n:,} and {large_n:,} candles ({why}; "
        f"{free / 2**30:.0f} GiB free)")
    runs = 2 if ctx.quick else 3
    small = measure(ctx, markets, small_n, runs)
    large = measure(ctx, markets, large_n, runs)
    s_med, l_med = statistics.median(small["build_walls_s"]), statistics.median(large["build_walls_s"])
    ratio = l_med / s_med
    by_model = {m: {"small_s": small["per_model_s"].get(m), "large_s": v,
                    "ratio": round(v / small["per_model_s"][m], 2) if small["per_model_s"].get(m) else None}
                for m, v in sorted(large["per_model_s"].items(), key=lambda kv: -kv[1])}
    detail = {"markets": markets, "sizes": why, "runs": runs, "small": small, "large": large, "per_model": by_model}
    worst = p95(large["build_walls_s"])
    return [
        Figure(figure=f"9a hourly run, {markets:,} markets, {large['candles'] / 1e6:.1f}M candles of history: "
                      "dbt build with tests (p95)",
               value=worst, unit="s", reference=f"target {TARGET_P95_S:.0f} s; {60 * markets:,} candles loaded in "
                                                f"{statistics.median(large['load_s']):.1f} s (median)",
               target=f"<= {TARGET_P95_S:.0f} s", met=worst <= TARGET_P95_S, reference_value=TARGET_P95_S,
               ratio=worst / TARGET_P95_S, detail=detail),
        Figure(figure=f"9b hourly run: {large['candles'] / 1e6:.1f}M vs {small['candles'] / 1e6:.1f}M candles "
                      "of history (median dbt build)",
               value=l_med, unit="s", reference=f"{s_med:.1f} s at {small['candles'] / 1e6:.1f}M candles",
               target=f"ratio <= {TARGET_RATIO}", met=ratio <= TARGET_RATIO, ratio=ratio, reference_value=s_med,
               detail={"per_model": by_model}),
    ]
