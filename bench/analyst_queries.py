"""Figure 5 extended (issue 16, item 6): analyst queries at a 30M-candle history, 1,000 markets.

Two histories are built in the same run by bench.history (straight in Postgres, then the marts by
dbt): the large one (full: 30M candles; QUICK: ~350k) and a small reference (full: 1M; QUICK:
~80k), each with the same 1,000 markets (QUICK: 100), half Binance, half OKX; a few Binance
markets hold a long history (full: a year) and the others weeks (the large history) or hours (the
small one). The same queries run on both, as a member of the analyst role over TCP:

5d  latest prices of every market:        select * from marts.latest_price             p95 <= 20 ms
5e  a year of 1d of one market:           marts.ohlcv_1d, (exchange, symbol, time)     p95 <= 50 ms
5f  a day of 1m of one market:            marts.ohlcv_1m, 1,440 rows                   p95 <= 20 ms
5g  a market's quality summary, a month:  marts.data_quality_summary, day rows         p95 <= 50 ms

Value: p95 client wall (execute() until libpq holds the whole result) at the large history;
reference: the same at the small one; ratio large / small (a query that costs what it returns
stays near 1). Each query's EXPLAIN (ANALYZE, BUFFERS) at both sizes is written in full to
bench/results/figure5x_plans_<quick|full>.txt. 5d's latest_price reads one row per market
(int_latest_candle_1m, staging.ticker_latest); its detail "oracle" says that it equals the newest
candle and ticker of every market found by brute force over staging (the run fails otherwise).
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psycopg2

from bench.big_tables import _analyst_dsn, _pct, _plan_summary, _render_sql
from bench.context import REPO, BenchContext, say
from bench.history import START, History, build_history
from bench.report import Figure

QUERY_WARMUP = 5
QUERY_RUNS = 60
EXPLAIN_RUNS = 5
TARGETS_MS = {"latest": 20.0, "daily_year": 50.0, "minute_day": 20.0, "quality_month": 50.0}
MIN_FREE_FOR_FULL = 40 * 10**9  # build 30M only with >= 40 GB free, else 10M
# The queries read ohlcv_1m, ohlcv_1d (and the rollups before it), int_markets, the data-quality chain:
# the indicator marts of the rollups are not built (the 1m indicators are on ohlcv_1m's rows, so
# ohlcv_1m and its aggregates, int_indicator_functions, are).
DBT_ARGS = ("run", "--exclude", "path:models/marts/indicators")


@dataclass(frozen=True)
class Size:
    label: str
    markets: int
    minutes: int  # per ordinary market
    long_markets: int
    long_minutes: int

    @property
    def candles(self) -> int:
        return self.long_markets * self.long_minutes + (self.markets - self.long_markets) * self.minutes


def sizes(quick: bool, free_bytes: int, large_millions: int | None = None) -> tuple[Size, Size]:
    """(small reference, large). Full: 1M and 30M candles of 1,000 markets, 10 of them (1 at 1M) with a
    year of 1m; 10M instead of 30M when the disk has under 40 GB free (shared with other builds), or
    ``large_millions`` (MARKETFLOW_BENCH_5X_MILLIONS: 10 or 30) when given."""
    if quick:
        return Size("small", 100, 300, 1, 35 * 1440), Size("large", 100, 3_000, 1, 35 * 1440)
    year = 365 * 1440
    small = Size("small 1M", 1000, 476, 1, year)  # 525,600 + 999 x 476 = 1.0M
    if large_millions == 30 or (large_millions is None and free_bytes >= MIN_FREE_FOR_FULL):
        return small, Size("large 30M", 1000, 25_000, 10, year)  # 5.26M + 990 x 25,000 = 30.0M
    return small, Size("large 10M", 1000, 4_800, 10, year)  # 5.26M + 990 x 4,800 = 10.0M


def run(ctx: BenchContext) -> list[Figure]:
    free = shutil.disk_usage(ctx.root).free
    millions = os.environ.get("MARKETFLOW_BENCH_5X_MILLIONS")
    small, large = sizes(ctx.quick, free, int(millions) if millions else None)
    say(f"disk: {free / 1e9:.0f} GB free; histories {small.candles:,} and {large.candles:,} candles")
    results: dict[str, dict[str, dict]] = {}
    plans: list[str] = []
    built: dict[str, dict] = {}
    plan_file = REPO / "bench" / "results" / f"figure5x_plans_{'quick' if ctx.quick else 'full'}.txt"
    for size in (small, large):
        name = "bench_queries_small" if size is small else "bench_queries_large"
        history = build_history(ctx, name, size.markets, size.minutes, DBT_ARGS, long_markets=size.long_markets,
                                long_minutes=size.long_minutes, ticker_minutes=60)
        try:
            built[size.label] = {"candles": history.candles, "generate_s": round(history.generate_seconds, 1),
                                 "dbt_run_s": round(history.dbt_seconds, 1),
                                 "vacuum_s": round(_vacuum_marts(history.dsn), 1)}
            results[size.label] = _measure(history, size, plans)
            plan_file.write_text("\n".join(plans) + "\n")  # after each size: a failed large run keeps the small's
        finally:
            if size is large and ctx.shared.get("api_load_takes_history"):
                # figure 12 (bench.api_load) runs next on the same history, then drops it
                ctx.shared["history_for_api_load"] = (history, large, name)
            else:
                ctx.pg.drop_database(name)
                shutil.rmtree(history.work, ignore_errors=True)
    say(f"plans: {plan_file}")
    return _figures(results, small, large, built, plan_file)


def _vacuum_marts(dsn: str) -> float:
    """VACUUM (ANALYZE) of every mart and staging table, the steady state autovacuum reaches after the
    build (figure 5 does the same): the timings must not meet its first pass."""
    started = time.perf_counter()
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("select format('%I.%I', schemaname, relname) from pg_stat_user_tables"
                        " where schemaname in ('marts', 'staging', 'dbt_intermediate')")
            for (table,) in cur.fetchall():
                cur.execute(f"vacuum (analyze) {table}")
    finally:
        conn.close()
    return time.perf_counter() - started


def _queries(history: History, size: Size) -> dict[str, tuple[str, str, tuple]]:
    exchange, symbol = history.markets[0]  # a long-history Binance market
    end = START + timedelta(minutes=max(size.minutes, size.long_minutes))
    day0 = end.replace(hour=0, minute=0, second=0, microsecond=0)
    return {
        "latest": (f"latest prices of all {size.markets:,} markets (marts.latest_price)",
                   "select * from marts.latest_price", ()),
        "daily_year": (f"a year of 1d of {exchange} {symbol} (marts.ohlcv_1d)",
                       "select * from marts.ohlcv_1d where exchange = %s and symbol = %s "
                       "and open_time >= %s and open_time < %s order by open_time",
                       (exchange, symbol, day0 - timedelta(days=365), day0)),
        "minute_day": (f"a day of 1m of {exchange} {symbol} (marts.ohlcv_1m)",
                       "select * from marts.ohlcv_1m where exchange = %s and symbol = %s "
                       "and open_time >= %s and open_time < %s order by open_time",
                       (exchange, symbol, end - timedelta(days=1), end)),
        "quality_month": (f"quality summary of {exchange} {symbol} for a month, day rows (marts.data_quality_summary)",
                          "select * from marts.data_quality_summary where exchange = %s and symbol = %s "
                          "and timeframe = '1m' and grain = 'day' and period_start >= %s and period_start < %s "
                          "order by period_start",
                          (exchange, symbol, day0 - timedelta(days=30), day0)),
    }


def _measure(history: History, size: Size, plans: list[str]) -> dict[str, dict]:
    admin = psycopg2.connect(history.dsn)
    admin.autocommit = True
    try:
        analyst = _analyst_dsn(admin, history.dsn)
        with admin.cursor() as cur:
            cur.execute("select count(*) from marts.ohlcv_1m")
            mart_rows = cur.fetchone()[0]
    finally:
        admin.close()
    conn = psycopg2.connect(analyst)  # SELECT on marts only, as analysts query
    conn.autocommit = True
    out: dict[str, dict] = {}
    try:
        for key, (title, sql, params) in _queries(history, size).items():
            out[key] = _time(conn, sql, params)
            out[key].update(title=title, ohlcv_1m_rows=mart_rows)
            with conn.cursor() as cur:
                cur.execute("explain (analyze, buffers) " + sql, params)
                text = "\n".join(r[0] for r in cur.fetchall())
            plans += [f"=== {size.label} ({history.candles:,} candles, ohlcv_1m {mart_rows:,} rows): {title}",
                      _render_sql(sql, params), text, ""]
            say(f"{size.label} {key}: p50 {out[key]['p50_ms']} ms, p95 {out[key]['p95_ms']} ms, "
                f"server {out[key]['server_execution_ms_median']} ms, {out[key]['rows_returned']} rows")
        out["latest"]["oracle"] = _latest_oracle(history.dsn)
    finally:
        conn.close()
    return out


def _latest_oracle(dsn: str) -> dict:
    """latest_price against brute force: each market's max(open_time) over staging.ohlcv and max(ts)
    over staging.ticker (full scans), so the figure is only counted for a view that is right."""
    started = time.perf_counter()
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("""
                with candles as (select exchange, symbol, max(open_time) as open_time from staging.ohlcv
                                 where timeframe = '1m' and open_time <= now() - interval '1 minute' group by 1, 2),
                     tickers as (select exchange, symbol, max(ts) as ts from staging.ticker group by 1, 2),
                     oracle as (select * from candles full join tickers using (exchange, symbol))
                select count(*) filter (where p.exchange is null or o.exchange is null
                                        or p.candle_open_time is distinct from o.open_time
                                        or p.ticker_ts is distinct from o.ts),
                       count(*)
                from marts.latest_price as p full join oracle as o using (exchange, symbol)""")
            wrong, markets = cur.fetchone()
    finally:
        conn.close()
    seconds = round(time.perf_counter() - started, 1)
    say(f"latest_price vs brute force over staging: {markets} markets, {wrong} differ ({seconds}s)")
    if wrong:
        raise RuntimeError(f"marts.latest_price differs from the brute-force latest candle / ticker of staging in "
                           f"{wrong} of {markets} markets: rebuild int_latest_candle_1m (dbt run --full-refresh -s "
                           "int_latest_candle_1m) and check staging.ticker_latest's triggers")
    return {"markets": markets, "differ": wrong, "seconds": seconds}


def _time(conn, sql: str, params: tuple) -> dict:
    walls: list[float] = []
    rows = 0
    with conn.cursor() as cur:
        for n in range(QUERY_WARMUP + QUERY_RUNS):
            # execute() returns once libpq holds the whole result (sent, executed, received, parsed)
            started = time.perf_counter()
            cur.execute(sql, params)
            wall = (time.perf_counter() - started) * 1000
            rows = len(cur.fetchall())
            if n >= QUERY_WARMUP:
                walls.append(wall)
        server, planning, plan = [], [], None
        for _ in range(EXPLAIN_RUNS):
            cur.execute("explain (analyze, buffers, format json) " + sql, params)
            doc = cur.fetchone()[0][0]
            server.append(doc["Execution Time"])
            planning.append(doc["Planning Time"])
            plan = doc["Plan"]
    return {"p50_ms": round(_pct(walls, 0.5), 2), "p95_ms": round(_pct(walls, 0.95), 2),
            "max_ms": round(max(walls), 2), "rows_returned": rows, "sql": _render_sql(sql, params),
            "server_execution_ms_median": round(statistics.median(server), 3),
            "server_planning_ms_median": round(statistics.median(planning), 3), "plan": _plan_summary(plan)}


def _figures(results: dict[str, dict[str, dict]], small: Size, large: Size, built: dict[str, dict],
             plan_file: Path) -> list[Figure]:
    figures = []
    for letter, key in zip("defg", TARGETS_MS, strict=True):
        big, ref = results[large.label][key], results[small.label][key]
        target = TARGETS_MS[key]
        figures.append(Figure(
            figure=f"5{letter} {big['title']} at {large.candles:,} candles",
            value=big["p95_ms"], unit="ms (p95 client wall, result received)",
            reference=f"the same at {small.candles:,} candles (p95)", reference_value=ref["p95_ms"],
            ratio=round(big["p95_ms"] / ref["p95_ms"], 3) if ref["p95_ms"] else None,
            target=f"p95 <= {target:.0f} ms", met=big["p95_ms"] <= target,
            detail={"large": big, "small": ref, "histories": built, "plans_file": str(plan_file.relative_to(REPO)),
                    "runs": QUERY_RUNS, "warmup_runs": QUERY_WARMUP,
                    "how": "psycopg2 over TCP (same host) as a member of the analyst role; wall = execute() until "
                           "libpq holds the whole result; both histories built and measured in the same run"}))
    return figures
