"""Figure 2 (and 7a): a backfill end to end — exchange emulator → ccxt → MongoDB raw → Postgres
staging → dbt marts — on synthetic Binance candles, 30 days x 10 markets (QUICK: 3 days).

The work is the backfill DAG's own: ``plan_chunks`` splits the request into per-market chunks of
``chunk_hours``, and each chunk runs the ingest task's body, ``ingest_market``: ``extract_market``
(drawing on the shared Postgres token bucket) then ``load_market`` from the documents just written
(it reports each step's seconds), in as many worker processes as the exchange's Airflow pool has
slots. Then one ``dbt build`` of the whole project (what the hourly DAG's dbt group runs, model by
model), on the parsed project.
Airflow's own scheduling is not in these figures (figure 6 measures the running scheduler).

(a) the emulator enforces Binance's limit (6000 request weight per minute, klines weight 2 and
    1000 per call): candles/s against the rate-limit ideal, the sustained rate the limit allows
    = 6000 / 2 calls per minute x 1000 candles = 50,000 candles/s. (The exchange's limit counts per
    calendar minute, so a run shorter than a minute can beat its sustained rate.)
(b) limits off: candles/s and where the time goes (HTTP + ccxt, raw write, raw read, load, dbt).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import datetime
from typing import Any

import psycopg2
import pymongo

from bench import workload
from bench.context import BenchContext, say
from bench.report import Figure
from marketflow.config import load_config
from marketflow.ops import sync_market_config
from marketflow.pipeline import Attempt, ingest_market, plan_chunks, window_coverage
from marketflow.raw_store import RawStore
from marketflow.timeframes import Window

# 50 hours = 3,000 minutes = three full 1000-candle pages (the DAG's default of 24 h needs two
# calls, one of them 440 candles, for 1,440: 28 % more calls than the candles require).
CHUNK_HOURS = 50
# Workers = the exchange's Airflow pool slots, set in the bench's markets file.
POOL_SLOTS = 4
# 2a's target: end to end at this share of the rate limit's sustained candles/s.
TARGET_SHARE_OF_LIMIT = 0.9


class TimedRawStore(RawStore):
    """RawStore that adds up the seconds spent writing and reading raw payloads."""

    def __init__(self, db, clock: dict[str, float]) -> None:
        super().__init__(db)
        self.clock = clock

    def _add(self, key: str, seconds: float) -> None:
        self.clock[key] = self.clock.get(key, 0.0) + seconds

    def save_responses(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return super().save_responses(*args, **kwargs)
        finally:
            self._add("raw_write", time.perf_counter() - started)

    def get_payloads(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return super().get_payloads(*args, **kwargs)
        finally:
            self._add("raw_read", time.perf_counter() - started)


# One worker process's state, as an Airflow task process has it: set up by _start_worker in the
# forked process (database clients must not cross a fork).
_worker: dict[str, Any] = {}


def _start_worker(dsn: str, mongo_uri: str, database: str, config_file: str, env: dict[str, str], label: str
                  ) -> None:
    conn, ops = psycopg2.connect(dsn), psycopg2.connect(dsn)
    ops.autocommit = True
    clock: dict[str, float] = {}
    _worker.update(conn=conn, ops=ops, clock=clock, label=label, config=load_config(config_file, env=env),
                   raw=TimedRawStore(pymongo.MongoClient(mongo_uri)[database], clock))


def _ingest_chunk(chunk: dict[str, Any]) -> dict[str, Any]:
    """The market_backfill DAG's ingest task for one chunk; returns its counts and this chunk's timings."""
    w = _worker
    clock: dict[str, float] = w["clock"]
    clock.clear()
    config = w["config"]
    attempt = Attempt("market_backfill", f"bench_{w['label']}", "ingest", chunk["chunk"], 1)
    market = config.market("binance", chunk["symbol"])
    window = Window(chunk["window_start_ms"], chunk["window_end_ms"])
    result = ingest_market(config, market, "1m", window, w["raw"], w["conn"], attempt, ops_conn=w["ops"])
    coverage = window_coverage(w["conn"], "binance", chunk["symbol"], "1m", window)
    timings = {**clock, "extract": result["extract_s"], "load": result["load_s"], "pages": result["pages"]}
    return {**result, **coverage, "timings": timings}


def _iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def backfill_once(ctx: BenchContext, days: int, markets: list[str], weight_limit: int, label: str
                  ) -> dict[str, Any]:
    """Run one backfill end to end into a fresh database; returns timings and where they went."""
    database = f"bench_backfill_{label}"
    dsn = ctx.new_database(database)
    start, end = workload.window(days)
    config_file = workload.write_markets_config(ctx.root / f"markets.backfill_{label}.yml", markets, start, end,
                                                pool_slots=POOL_SLOTS)
    emulator_args = workload.emulator_args(markets, weight_limit)
    mongo = pymongo.MongoClient(ctx.mongo_uri)
    mongo.drop_database(database)
    with ctx.emulator(*emulator_args, name=f"emulator-{label}") as url:
        env = ctx.service_env(dsn, url, config_file, database)
        config = load_config(str(config_file), env=env)
        exchange = config.exchange("binance")
        with psycopg2.connect(dsn) as setup:
            sync_market_config(setup, config)
        setup.close()
        raw_probe = RawStore(mongo[database])
        raw_probe.ensure_indexes(config.raw_retention_days)
        chunks = plan_chunks(config, "binance", {"start": _iso(start), "end": _iso(end), "chunk_hours": CHUNK_HOURS})
        expected = sum(Window(c["window_start_ms"], c["window_end_ms"]).candles("1m") for c in chunks)
        workers = exchange.pool_slots
        say(f"figure 2{label}: {len(markets)} markets x {days} days = {expected:,} candles in {len(chunks)} chunks, "
            f"{workers} workers (the exchange pool's slots), weight limit {weight_limit or 'off'}")
        clock: dict[str, float] = {}
        done = {"chunks": 0, "candles": 0}
        # Worker processes, not threads: Airflow runs every task instance in its own process, and
        # threads of one process would share one interpreter lock.
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                   initializer=_start_worker,
                                   initargs=(dsn, ctx.mongo_uri, database, str(config_file), env, label))
        # Deployed, the project is parsed once (`make dbt-parse`; cosmos hands each dbt run the
        # partial-parse file), so the timed build does not parse from scratch either.
        target = str(ctx.root / f"dbt-target-{label}")
        ctx.dbt(env, "parse", "--target-path", target)
        started = time.perf_counter()
        cpu_start = ctx.cpu_seconds()
        results = []
        with ctx.memory_sampler() as memory:
            with pool:
                futures = [pool.submit(_ingest_chunk, c) for c in chunks]
                last_report = 0.0
                for future in as_completed(futures):
                    res = future.result()
                    results.append(res)
                    for key, seconds in res.pop("timings").items():
                        clock[key] = clock.get(key, 0.0) + seconds
                    done["chunks"] += 1
                    done["candles"] += res["inserted"] + res["updated"] + res["unchanged"]
                    elapsed = time.perf_counter() - started
                    if elapsed - last_report > 5 or done["chunks"] == len(chunks):
                        last_report = elapsed
                        say(f"  {done['chunks']}/{len(chunks)} chunks, {done['candles']:,}/{expected:,} candles, "
                            f"{done['candles'] / elapsed:,.0f} candles/s")
            staged_at = time.perf_counter()
            cpu_staged = ctx.cpu_seconds()
            # dbt's unit tests check SQL logic, not data: CI runs them (make test), pipeline runs need not.
            dbt_seconds = ctx.dbt(env, "build", "--exclude-resource-type", "unit_test", "--target-path", target)
        finished = time.perf_counter()
        cpu_end = ctx.cpu_seconds()
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM marts.ohlcv_1m")
            in_marts = cur.fetchone()[0]
            cur.execute("SELECT count(*) FILTER (WHERE http_status = 429), count(*) FILTER (WHERE http_status = 418) "
                        "FROM ops.api_errors")
            http_429, http_418 = cur.fetchone()
    mongo.close()
    missing = sum(r["missing"] for r in results)
    if in_marts != expected or missing:
        raise RuntimeError(f"backfill {label}: {in_marts:,} candles in marts.ohlcv_1m, expected {expected:,} "
                           f"({missing} missing in staging)")
    wall = finished - started
    return {
        "label": label, "dsn": dsn, "markets": markets, "start": start, "end": end, "days": days,
        "emulator_args": emulator_args, "weight_limit": weight_limit, "candles": expected, "chunks": len(chunks),
        "pages": int(clock.get("pages", 0)), "workers": workers, "seconds": wall,
        "staging_seconds": staged_at - started, "dbt_seconds": dbt_seconds, "http_429": http_429,
        "http_418": http_418, "worker_seconds": {k: round(v, 2) for k, v in clock.items() if k != "pages"},
        "memory_peak_mib": round(memory.peak_total, 1),
        "memory_by_part_mib": {k: round(v, 1) for k, v in memory.peak_by_part.items()},
        "memory_samples": memory.samples, "emulator_data_dir": None,
        "load_seconds_p50": statistics.median(r["seconds"] for r in results) if results else 0,
        "cpu_seconds": {"to_staging": _cpu_delta(cpu_start, cpu_staged), "dbt_build": _cpu_delta(cpu_staged, cpu_end)},
    }


def _cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    # The bench driver's tree is the pipeline workers while staging, and the dbt process during the build.
    names = {"bench driver (pipeline workers)": "workers_or_dbt"}
    return {names.get(k, k): round(after[k] - before.get(k, 0.0), 1) for k in after}


def _cpu_budget(run: dict[str, Any], target_seconds: float | None = None) -> dict[str, Any]:
    """CPU seconds per process tree and phase; what a candle costs; the cores a target would take.

    The emulator stands in for the exchange (remote in production), so it is left out of the
    per-candle cost; it still shares this machine's cores during the run.
    """
    cpu = run["cpu_seconds"]
    pipeline = sum(v for phase in cpu.values() for k, v in phase.items() if not k.startswith("emulator"))
    out: dict[str, Any] = {
        "by_phase": cpu, "pipeline_cpu_seconds": round(pipeline, 1),
        "pipeline_cpu_us_per_candle": round(pipeline / run["candles"] * 1e6, 1),
        "machine_cores": os.cpu_count(),
        "cores_busy_on_average": round(sum(sum(phase.values()) for phase in cpu.values()) / run["seconds"], 2),
    }
    if target_seconds:
        out["target_seconds"] = round(target_seconds, 2)
        out["cores_needed_for_target"] = round(pipeline / target_seconds, 1)
    return out


def _where_time_goes(run: dict[str, Any]) -> dict[str, float]:
    """Worker-seconds per stage (summed over the workers), and dbt's wall seconds."""
    w = run["worker_seconds"]
    return {
        "http_and_ccxt": round(w.get("extract", 0) - w.get("raw_write", 0), 2),
        "raw_write_mongodb": round(w.get("raw_write", 0), 2),
        "raw_read_mongodb": round(w.get("raw_read", 0), 2),
        "parse_validate_load_postgres": round(w.get("load", 0) - w.get("raw_read", 0), 2),
        "dbt_build_wall": round(run["dbt_seconds"], 2),
    }


def run(ctx: BenchContext) -> list[Figure]:
    # The pipeline logs every page; the bench prints its own progress (done/total, candles/s).
    for name in ("marketflow.pipeline", "marketflow.staging_load", "marketflow.exchanges"):
        logging.getLogger(name).setLevel(logging.WARNING)
    markets = workload.symbols(ctx.sizes.backfill_markets)
    days = ctx.sizes.backfill_days
    # The first client build imports Airflow's secrets masker (credentials are masked in task
    # logs): seconds that an Airflow worker has already paid. Pay it before the clocks start.
    started = time.perf_counter()
    from marketflow.secrets import _mask_in_airflow_logs

    _mask_in_airflow_logs(())
    ctx.shared["airflow_import_seconds"] = round(time.perf_counter() - started, 2)
    limited = backfill_once(ctx, days, markets, workload.BINANCE_WEIGHT_LIMIT, "a")
    ctx.shared["backfill"] = limited
    unlimited = backfill_once(ctx, days, markets, 0, "b")
    ideal_rate = workload.BINANCE_WEIGHT_LIMIT / workload.KLINES_WEIGHT / 60 * workload.KLINES_PER_CALL
    rate_a = limited["candles"] / limited["seconds"]
    rate_a_staging = limited["candles"] / limited["staging_seconds"]
    rate_b = unlimited["candles"] / unlimited["seconds"]
    common = {"markets": len(markets), "days": days, "chunk_hours": CHUNK_HOURS}
    figures = [
        Figure(figure="2a backfill end to end, Binance limit enforced, vs the rate-limit ideal",
               value=round(rate_a), unit="candles/s",
               reference=f"rate-limit ideal {ideal_rate:,.0f} candles/s (6000 weight/min, 1000 klines per weight-2 "
                         f"call)", reference_value=round(ideal_rate), ratio=rate_a / ideal_rate,
               target=f">= {TARGET_SHARE_OF_LIMIT * 100:.0f} % of the rate-limit ideal",
               met=rate_a / ideal_rate >= TARGET_SHARE_OF_LIMIT,
               detail={**common, "seconds": round(limited["seconds"], 1), "candles": limited["candles"],
                       "to_staging_candles_per_s": round(rate_a_staging),
                       "to_staging_ratio_vs_ideal": round(rate_a_staging / ideal_rate, 3),
                       "airflow_import_seconds_excluded": ctx.shared.get("airflow_import_seconds"),
                       "pages": limited["pages"], "http_429": limited["http_429"], "http_418": limited["http_418"],
                       "where_time_goes": _where_time_goes(limited),
                       "cpu": _cpu_budget(limited, limited["candles"] / (TARGET_SHARE_OF_LIMIT * ideal_rate))}),
        Figure(figure="2b backfill end to end, limits off", value=round(rate_b), unit="candles/s",
               reference=f"same run with Binance's limit on: {rate_a:,.0f} candles/s", reference_value=round(rate_a),
               ratio=rate_b / rate_a, target="reported (where the time goes)", met=True,
               detail={**common, "seconds": round(unlimited["seconds"], 1), "candles": unlimited["candles"],
                       "to_staging_seconds": round(unlimited["staging_seconds"], 1),
                       "to_staging_candles_per_s": round(unlimited["candles"] / unlimited["staging_seconds"]),
                       "where_time_goes": _where_time_goes(unlimited), "workers": unlimited["workers"],
                       "cpu": _cpu_budget(unlimited)}),
    ]
    peak = max(limited["memory_peak_mib"], unlimited["memory_peak_mib"])
    by_part = limited["memory_by_part_mib"] if limited["memory_peak_mib"] >= unlimited["memory_peak_mib"] \
        else unlimited["memory_by_part_mib"]
    figures.append(Figure(
        figure="7a peak memory of the whole local stack during 2", value=peak, unit="MiB (PSS)",
        reference="machine RAM 24 GiB; Postgres + MongoDB + emulator + the pipeline workers (PSS)",
        reference_value=24 * 1024, ratio=peak / (24 * 1024), target="< 2 GiB", met=peak < 2048,
        detail={"by_part_at_peak": by_part, "samples": limited["memory_samples"] + unlimited["memory_samples"]}))
    return figures
