"""Figure 9: monthly partitions of the 1m layers (include/sql/120_month_partitions.sql) against the
same history in plain tables, side by side in one run.

One history (``markets x minutes`` 1m candles from bench.history.START, ~3.5 months at full size,
3M candles) is generated into a partitioned warehouse and ohlcv_1m / indicators_1m are built by dbt;
a copy of that database (CREATE DATABASE ... TEMPLATE) gets the three tables converted back to plain
tables (ops.convert_month_partitioning). On both, alternately, ``ROUNDS`` times:

* the load path: the next hour of every market COPYed in (marketflow.staging_load.write_ohlcv, the
  minute and hourly path), then the same hour again with changed closes (its upsert path);
* dbt's incremental run of ohlcv_1m and indicators_1m over that hour;
* a market-day query on ohlcv_1m (EXPLAIN ANALYZE: partitions read, buffers, time).

Reported as ratios partitioned / plain of the medians; target: no worse than plain (<= 1.10 given
the noise of a shared machine) and the market-day plan reading one partition.
"""

from __future__ import annotations

import statistics
import time
from datetime import timedelta

import psycopg2

from bench.context import BenchContext, say
from bench.history import START, markets_for
from bench.report import Figure

ROUNDS = 3


def _explain(dsn: str, exchange: str, symbol: str, day: str) -> tuple[list[str], int, float]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            times, plan = [], []
            for _ in range(7):
                cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT * FROM marts.ohlcv_1m "
                            "WHERE exchange = %s AND symbol = %s AND open_time >= %s::timestamptz "
                            "AND open_time < %s::timestamptz + interval '1 day'", (exchange, symbol, day, day))
                plan = cur.fetchone()[0][0]
                times.append(plan["Execution Time"])
        scanned: list[str] = []

        def walk(node: dict) -> None:
            if "Relation Name" in node:
                scanned.append(node["Relation Name"])
            for child in node.get("Plans", []):
                walk(child)
        walk(plan["Plan"])
        buffers = plan["Plan"].get("Shared Hit Blocks", 0) + plan["Plan"].get("Shared Read Blocks", 0)
        return scanned, buffers, statistics.median(times)
    finally:
        conn.close()


def _load_hour(dsn: str, markets: list[tuple[str, str]], hour_start, bump: str) -> float:
    """COPY (or upsert, when the rows exist) one hour of every market; returns seconds."""
    from marketflow.staging_load import write_ohlcv

    conn = psycopg2.connect(dsn)
    try:
        started = time.monotonic()
        with conn.cursor() as cur:
            for exchange, symbol in markets:
                rows = [(exchange, symbol, "1m", hour_start + timedelta(minutes=m), "100", "101", "99",
                         bump, "2.5", None, None, "bench-part", "bench-part-run") for m in range(60)]
                write_ohlcv(cur, rows)
        conn.commit()
        return time.monotonic() - started
    finally:
        conn.close()


def run(ctx: BenchContext) -> list[Figure]:
    markets_count = 20
    minutes = 45_000 if ctx.quick else 150_000
    markets = markets_for(markets_count)
    partitioned = ctx.new_database("bench_partitioned")
    from bench.storage import generate, write_markets_config
    from marketflow.config import load_config
    from marketflow.ops import sync_market_config

    work = ctx.root / "bench_partitioned"
    work.mkdir(parents=True, exist_ok=True)
    end = START + timedelta(minutes=minutes)
    config_file = write_markets_config(work / "markets.yml", markets, START, end + timedelta(days=2))
    envs = {"partitioned": ctx.service_env(partitioned, "http://127.0.0.1:9", config_file, "bench_partitioned")}
    envs["partitioned"].update(DBT_TARGET_PATH=str(work / "target_partitioned"),
                               DBT_LOG_PATH=str(work / "logs_partitioned"))
    conn = psycopg2.connect(partitioned)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:  # the months exist before the candles arrive (maintenance keeps them ahead)
            cur.execute("SELECT ops.ensure_month_partitions('staging.candle', %s, %s)",
                        (START, end + timedelta(days=31)))
        candles, gen_s = generate(conn, markets, START, minutes)
        conn.autocommit = False
        sync_market_config(conn, load_config(config_file, envs["partitioned"]))
        conn.commit()
    finally:
        conn.close()
    say(f"{candles:,} candles generated in {gen_s:.0f}s")
    build_s = ctx.dbt(envs["partitioned"], "run", "-s", "+indicators_1m")
    say(f"dbt full build of ohlcv_1m + indicators_1m, partitioned: {build_s:.0f}s")

    ctx.pg.drop_database("bench_plain")
    ctx.pg.psql_admin('CREATE DATABASE "bench_plain" TEMPLATE "bench_partitioned"')
    plain = ctx.pg.dsn("bench_plain")
    conn = psycopg2.connect(plain)
    try:
        started = time.monotonic()
        with conn.cursor() as cur:
            for table in ("marts.candles_1m", "staging.candle"):  # ohlcv_1m, indicators_1m: views of candles_1m
                cur.execute("SELECT ops.convert_month_partitioning(%s, 'open_time', false)", (table,))
        conn.commit()
        conn.autocommit = True
        with conn.cursor() as cur:
            for table in ("staging.candle", "marts.candles_1m"):
                cur.execute(f"VACUUM ANALYZE {table}")
        say(f"plain copy converted in {time.monotonic() - started:.0f}s")
    finally:
        conn.close()
    envs["plain"] = ctx.service_env(plain, "http://127.0.0.1:9", config_file, "bench_plain")
    envs["plain"].update(DBT_TARGET_PATH=str(work / "target_plain"), DBT_LOG_PATH=str(work / "logs_plain"))
    dsns = {"partitioned": partitioned, "plain": plain}

    load_s: dict[str, list[float]] = {"partitioned": [], "plain": []}
    upsert_s: dict[str, list[float]] = {"partitioned": [], "plain": []}
    dbt_s: dict[str, list[float]] = {"partitioned": [], "plain": []}
    for r in range(ROUNDS):
        hour = end + timedelta(hours=r)
        for name in (("partitioned", "plain") if r % 2 == 0 else ("plain", "partitioned")):
            load_s[name].append(_load_hour(dsns[name], markets, hour, "100.5"))
            upsert_s[name].append(_load_hour(dsns[name], markets, hour, "100.25"))
            dbt_s[name].append(ctx.dbt(envs[name], "run", "-s", "candles_1m", "ohlcv_1m", "indicators_1m"))
            say(f"round {r + 1} {name}: load {load_s[name][-1]:.2f}s, upsert {upsert_s[name][-1]:.2f}s, "
                f"dbt incremental {dbt_s[name][-1]:.1f}s")
    exchange, symbol = markets[3]
    day = (START + timedelta(days=40)).date().isoformat()
    plans = {name: _explain(dsn, exchange, symbol, day) for name, dsn in dsns.items()}
    for name, (scanned, buffers, ms) in plans.items():
        say(f"market-day query {name}: {ms:.2f} ms, {buffers} buffers, relations {sorted(set(scanned))}")

    def ratio(values: dict[str, list[float]]) -> tuple[float, float, float]:
        p, q = statistics.median(values["partitioned"]), statistics.median(values["plain"])
        return p, q, p / q

    figures = []
    for label, values in (("10a load: an hour of 20 markets COPYed into staging", load_s),
                          ("10b load: the same hour upserted (changed closes)", upsert_s),
                          ("10c dbt incremental ohlcv_1m + indicators_1m over that hour", dbt_s)):
        p, q, rt = ratio(values)
        figures.append(Figure(figure=label + f" ({candles:,} candles of history), partitioned vs plain",
                              value=round(p, 3), unit="s", reference=f"plain tables, same run: {q:.3f} s",
                              target="<= 1.10 x plain", met=rt <= 1.10, ratio=round(rt, 3),
                              reference_value=round(q, 3), detail={"partitioned": values["partitioned"],
                                                                   "plain": values["plain"]}))
    (p_scan, p_buf, p_ms), (q_scan, q_buf, q_ms) = plans["partitioned"], plans["plain"]
    one = [s for s in p_scan if s.startswith("candles_1m")]  # ohlcv_1m's storage
    figures.append(Figure(figure="10d market-day query on ohlcv_1m, partitioned vs plain", value=round(p_ms, 3),
                          unit="ms", reference=f"plain: {q_ms:.3f} ms, {q_buf} buffers; partitioned {p_buf} buffers",
                          target="prunes to one partition", met=len(set(one)) == 1 and "candles_1m" not in one,
                          ratio=round(p_ms / q_ms, 3), reference_value=round(q_ms, 3),
                          detail={"partitioned relations": p_scan, "plain relations": q_scan}))
    for name in ("bench_plain", "bench_partitioned"):
        ctx.pg.drop_database(name)
    return figures

