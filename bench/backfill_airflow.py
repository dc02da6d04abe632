"""Figure 11: market_backfill under real Airflow (scheduler + LocalExecutor), sized for 1,000 markets.

One local stack as `make demo` runs it, on the bench's own services: the exchange emulator with
Binance's limit on (6000 request weight per minute), `airflow standalone`, and a markets file of
``markets`` synthetic Binance markets: the first LIVE_MARKETS live (the minute DAG fetches them every
minute, unpaused the whole time), the others bounded to a past history (nothing for the minute DAG).

(a) a day of every market (full: 1,000) and (b) a long history of LIVE_MARKETS markets (full: a year
    of 20 = 10.5M candles) are triggered through the DAG (`airflow dags trigger`, conf as a user
    gives it). From Airflow's metadata DB: the run's wall time (queued -> end) against its work if its
    tasks ran back to back on the backfill pool's slots (prepare_storage, plan and summary counted
    whole; plan beside prepare_storage when the DAG runs them side by side). Airflow's overhead = what
    is left: the scheduler's loops, queueing, task process start-up (counted from inside each ingest
    task: its duration minus the seconds its backfill work took; its phases from its XCom).
    Target: < 10 % of the run. MARKETFLOW_BENCH_HISTORY_DAYS="10,30" runs (b) twice (10 days, then
    the 30 before); MARKETFLOW_BENCH_SKIP_DAY=1 leaves (a) out; MARKETFLOW_BENCH_DAY_MARKETS=300 makes
    (a) (and the markets file) smaller, MARKETFLOW_BENCH_BASELINE_MINUTES=2 the reference of (c) shorter.
(c) the minute feed while a backfill runs: for each minute close, the wall time at which every live
    market's closed minute is in staging (staging.candle), minus the close; p95 during the backfills against p95
    of the closes with none running (before the first and after the last; same stack, same minute
    DAG), as a ratio. Fewer than MIN_CLOSES_DURING closes during the backfills: not measured, flagged.

QUICK: (a) a day of 150 markets (2 ingest tasks, as the full day), (b) one history of the live markets
whose days are set in the run from (a)'s pace so that (a) and (b) together last ~4 minutes: a quiet
machine backfills a day of 100 markets in ~15 s, so fixed QUICK sizes ended before any minute close.

Checked after each run: every requested minute of every market is in staging exactly once (count per
market = the minutes of its window), and sampled days equal the emulator's klines read over HTTP
(the independent oracle, no pipeline code).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import threading
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg2

from bench import freshness, workload
from bench.context import REPO, BenchContext, say, stack
from bench.report import Figure
from marketflow.planning import BACKFILL_TASK_CANDLES

DAG_ID = "market_backfill"
MINUTE_DAG = "market_candles_1m"
LIVE_MARKETS = 20
TARGET_OVERHEAD = 0.10
# Freshness during a backfill may be this much worse than without and still count as unaffected
# (one minute's p95 on a 2-core machine moves by a few seconds from noise alone).
FRESHNESS_RATIO_TARGET = 1.5
WAREHOUSE_DB = "backfill_airflow"
METADATA_DB = "backfill_airflow_meta"
# The bounded markets' history, and the windows requested (closed, so every run sees the same candles).
HISTORY_START = datetime(2023, 1, 1, tzinfo=UTC)
HISTORY_END = datetime(2025, 1, 1, tzinfo=UTC)
DAY = datetime(2024, 6, 1, tzinfo=UTC)
# 50 hours = three full pages of 1000 candles (24 h needs 1000 + 440).
CHUNK_HOURS = 50
SAMPLE_DAYS_PER_MARKET = 2
POLL_S = 1.0
# 11c needs at least this many minute closes while a backfill runs, else it is flagged as not measured.
MIN_CLOSES_DURING = 3
# QUICK: 11b's length is set in the run from 11a's pace, so that the two backfills together last about
# this long (MIN_CLOSES_DURING + 1 minutes: 11c gets its closes on a fast or a slow machine alike),
# within these bounds (days of the live markets).
QUICK_BACKFILL_SPAN_S = 60.0 * (MIN_CLOSES_DURING + 1)
QUICK_HISTORY_DAYS = (3, 180)
LOAD_EVERY_S = 30.0


@dataclass
class Sizes:
    markets: int  # (a): a day of each
    history_days: list[int]  # (b): days of each live market, one run each, laid end to end back from DAY
    # (empty in QUICK: one run, its days set after (a) from its pace, see _quick_history_days)
    baseline_minutes: int  # (c): minute closes measured before any backfill
    day_run: bool = True  # (a) runs (MARKETFLOW_BENCH_SKIP_DAY=1 leaves it out to fit a time slot)

    @classmethod
    def for_mode(cls, quick: bool, free_gb: float) -> Sizes:
        day_run = os.environ.get("MARKETFLOW_BENCH_SKIP_DAY") in (None, "", "0")
        given = os.environ.get("MARKETFLOW_BENCH_HISTORY_DAYS")
        if quick:
            # 150 markets: 216,000 candles, split on the pool's 2 slots as the full run's day is.
            return cls(markets=150, history_days=[int(d) for d in given.split(",")] if given else [],
                       baseline_minutes=1, day_run=day_run)
        # A year of 20 markets: ~10.5M candles, ~2.5 GB of raw responses and ~3 GB of staging with
        # its index; below 30 GB free (other benches share the disk) a month is measured instead.
        # MARKETFLOW_BENCH_HISTORY_DAYS: shorter histories when the run must fit a time slot, e.g. "10,30"
        # (two runs in the same stack: 10 days, then the 30 days before them).
        days = [int(d) for d in given.split(",")] if given else [365 if free_gb > 30 else 30]
        # A shortened full run (a time slot on a shared machine): fewer markets in (a), e.g. 300, the same
        # 2 ingest tasks at the same pace, so its minute closes still measure (c) during a backfill; and
        # fewer reference closes before and after.
        markets = int(os.environ.get("MARKETFLOW_BENCH_DAY_MARKETS") or 1000)
        baseline = int(os.environ.get("MARKETFLOW_BENCH_BASELINE_MINUTES") or 3)
        return cls(markets=max(markets, LIVE_MARKETS), history_days=days, baseline_minutes=baseline, day_run=day_run)


def run(ctx: BenchContext) -> list[Figure]:
    free_gb = shutil.disk_usage(ctx.root).free / 2**30
    sizes = Sizes.for_mode(ctx.quick, free_gb)
    symbols = workload.symbols(sizes.markets)
    live = symbols[:LIVE_MARKETS]
    say(f"figure 11: {len(symbols)} markets ({len(live)} live), {free_gb:.0f} GB free; "
        f"{'a day of all, ' if sizes.day_run else ''}{sizes.history_days} days of the live ones")
    work = ctx.root / "backfill-airflow"
    home, run_dir = work / "airflow", work / "run"
    freshness._stop_leftover(run_dir)
    shutil.rmtree(work, ignore_errors=True)
    home.mkdir(parents=True)
    config_file = _markets_file(work / "markets.yml", symbols, live)
    dsn = ctx.new_database(WAREHOUSE_DB)
    with contextlib.suppress(Exception):
        ctx.pg.drop_database(METADATA_DB)
    ctx.pg.create_database(METADATA_DB)
    meta_dsn = ctx.pg.dsn(METADATA_DB)
    load_before = os.getloadavg()
    no_recordings = work / "no-recordings"
    no_recordings.mkdir()
    args = workload.emulator_args(symbols, workload.BINANCE_WEIGHT_LIMIT)
    with ctx.emulator(*args, name="backfill-airflow-emulator", data_dir=no_recordings) as url:
        env = ctx.service_env(dsn, url, config_file, WAREHOUSE_DB)
        port = stack.free_port()
        env |= stack.airflow_env(home, ctx.pg, port, METADATA_DB)
        # Airflow's processes import this checkout's marketflow (the venv's editable install may be another's).
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "plugins"), str(REPO), os.environ.get("PYTHONPATH"))
                                            if p)
        # The task supervisor's calls to the API server time out after 5 s by default; on this shared
        # machine (load 15-20 on 2 cores) that failed task starts before they ran ("executor_state=failed").
        env["AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT"] = "30"
        env["MARKETFLOW_SCHEDULE_START"] = time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime())
        (home / "passwords.json").write_text(json.dumps({"admin": "admin"}))
        airflow = stack.ManagedProcess("airflow", run_dir, [str(stack.VENV_BIN / "airflow"), "standalone"], port,
                                       env=env, ready_timeout=300)
        poller = FreshnessPoller(dsn, live)
        try:
            started = time.monotonic()
            airflow.start()
            ctx.services["airflow standalone"] = airflow.pid()
            say(f"airflow is up after {time.monotonic() - started:.0f}s")
            _wait_for_dags(meta_dsn, run_dir / "airflow.log")
            freshness._airflow_cli(env, "pools", "import", str(freshness._pools_file(env, work)))
            _unpause(meta_dsn, MINUTE_DAG, DAG_ID)
            poller.start()
            # Baseline: minute closes after the minute DAG's first (warm-up) run, before any backfill.
            _wait_for_first_minute_run(meta_dsn)
            service_at_start = _service(url)
            first_close = math.ceil(time.time() / 60) * 60
            baseline_closes = [first_close + 60 * i for i in range(sizes.baseline_minutes)]
            say(f"minute DAG running; measuring {len(baseline_closes)} minute close(s) before any backfill")
            _sleep_until(baseline_closes[-1] + 20)
            service = [_service(url)]  # the emulator's own seconds per request: before, during, after the backfills
            day = _backfill(ctx, env, meta_dsn, dsn, url, "a day of every market",
                            {"start": _iso(DAY), "end": _iso(DAY + timedelta(days=1)), "chunk_hours": CHUNK_HOURS},
                            symbols, DAY, DAY + timedelta(days=1)) if sizes.day_run else None
            histories, end = [], DAY
            # each run on new candles: the window before the previous one
            for days in sizes.history_days or [_quick_history_days(day, len(live))]:
                start = end - timedelta(days=days)
                conf = {"start": _iso(start), "end": _iso(end), "chunk_hours": CHUNK_HOURS, "symbols": live}
                candles = days * 1440 * len(live)
                if ctx.quick and candles > 2 * BACKFILL_TASK_CANDLES:
                    # QUICK's sized history on exactly the pool's 2 slots (by default a third task of the
                    # rest would run alone after them, off the pace the size was set from)
                    conf["task_candles"] = math.ceil(candles / 2)
                histories.append(_backfill(ctx, env, meta_dsn, dsn, url, f"{days} days of {len(live)} markets",
                                           conf, live, start, end))
                end = start
            service.append(_service(url))
            # the same number of closes after the last backfill: the reference spans the run's load drift
            after = math.ceil(time.time() / 60) * 60 + 60
            baseline_closes += [after + 60 * i for i in range(sizes.baseline_minutes)]
            say(f"backfills done; measuring {sizes.baseline_minutes} minute close(s) with none running")
            _sleep_until(baseline_closes[-1] + 20)
            service.append(_service(url))
            minute_runs = _minute_runs(meta_dsn)
        finally:
            poller.stop()
            ctx.services.pop("airflow standalone", None)
            airflow.stop()
    load_after = os.getloadavg()
    return _figures(ctx, day, histories, poller, baseline_closes, load_before, load_after, minute_runs,
                    _service_phases(service_at_start, *service))


# ---------------------------------------------------------------- stack

def _quick_history_days(day: dict[str, Any] | None, markets: int) -> int:
    """QUICK's 11b length: enough days of ``markets`` markets that, at the pace 11a's ingest tasks
    had in this run (same stack, same load), 11a and 11b together last QUICK_BACKFILL_SPAN_S, so
    11c sees a few minute closes during them. Without 11a: the bounds' lower end."""
    low, high = QUICK_HISTORY_DAYS
    if not day or not day.get("ingest_task_s"):
        return low
    candles_per_s = day["candles"] / max(max(day["ingest_task_s"]), 1.0)
    seconds = max(QUICK_BACKFILL_SPAN_S - day["wall_s"], 90.0)
    days = max(low, min(high, math.ceil(seconds * candles_per_s / (markets * 1440))))
    say(f"figure 11 QUICK: 11a moved {candles_per_s:,.0f} candles/s in its ingest tasks; 11b: {days} days "
        f"(bounds {low}-{high}) to span ~{seconds:.0f} s more of backfill")
    return days


def _markets_file(path: Path, symbols: list[str], live: list[str]) -> Path:
    """Live markets (history from HISTORY_START to now) first, then the bounded ones."""
    lines = ["# Written by bench/backfill_airflow.py: synthetic markets on the exchange emulator.",
             "defaults:", "  timeframes: [1m]", "  overlap_minutes: 2",
             f'  history_start: "{_iso(HISTORY_START)}"',
             "  schedule_start: ${MARKETFLOW_SCHEDULE_START:2026-11-01T00:00:00Z}",
             "exchanges:", "  binance:", "    api_base_url: ${MARKETFLOW_EXCHANGE_URL}",
             "    options:", "      fetchMarkets: {types: [spot]}", "    markets:"]
    for symbol in symbols:
        lines.append(f"      - symbol: {symbol}" if symbol in live else
                     f'      - {{symbol: {symbol}, history_end: "{_iso(HISTORY_END)}"}}')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _wait_for_dags(meta_dsn: str, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.closing(psycopg2.connect(meta_dsn)) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM dag WHERE dag_id IN (%s, %s)", (DAG_ID, MINUTE_DAG))
            if cur.fetchone()[0] == 2:
                return
        time.sleep(1)
    raise TimeoutError(f"Airflow did not parse {DAG_ID} and {MINUTE_DAG} within {timeout:.0f}s; see {log}")


def _unpause(meta_dsn: str, *dag_ids: str) -> None:
    with contextlib.closing(psycopg2.connect(meta_dsn)) as conn, conn.cursor() as cur:
        cur.execute("UPDATE dag SET is_paused = false WHERE dag_id = ANY(%s)", (list(dag_ids),))
        conn.commit()


def _wait_for_first_minute_run(meta_dsn: str, timeout: float = 600) -> None:
    """Until the minute DAG's first (warm-up) run ended; past ``timeout`` the baseline is measured
    anyway (its misses then show in 11c's reference)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.closing(psycopg2.connect(meta_dsn)) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM dag_run WHERE dag_id = %s AND state IN ('success', 'failed')",
                        (MINUTE_DAG,))
            if cur.fetchone()[0]:
                return
        time.sleep(2)
    say(f"no {MINUTE_DAG} run finished within {timeout:.0f}s of unpausing it; measuring the baseline anyway")


def _sleep_until(epoch: float) -> None:
    time.sleep(max(0.0, epoch - time.time()))


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- a backfill run

def _backfill(ctx: BenchContext, env: dict[str, str], meta_dsn: str, dsn: str, url: str, what: str,
              conf: dict[str, Any], symbols: list[str], start: datetime, end: datetime) -> dict[str, Any]:
    run_id = f"bench_{int(time.time())}"
    candles = len(symbols) * int((end - start).total_seconds() // 60)
    say(f"figure 11: triggering {DAG_ID} for {what}: {candles:,} candles, conf {json.dumps(conf)[:200]}")
    cpu_before = ctx.cpu_seconds()
    freshness._airflow_cli(env, "dags", "trigger", DAG_ID, "--run-id", run_id, "--conf", json.dumps(conf))
    state = _wait_for_run(meta_dsn, run_id, candles, dsn)
    cpu_after = ctx.cpu_seconds()
    timing = _run_timing(meta_dsn, run_id)
    timing.update(what=what, candles=candles, markets=len(symbols), state=state, conf=conf,
                  cpu_seconds={k: round(v - cpu_before.get(k, 0.0), 1) for k, v in cpu_after.items()})
    if state != "success":
        raise RuntimeError(f"{DAG_ID} run {run_id} ({what}) ended {state}; see the task logs under "
                           f"{env['AIRFLOW_HOME']}/logs")
    timing["check"] = _check(dsn, url, symbols, start, end)
    # Each finished run's timing at once, so a run stopped before the report (a time slot ended) keeps it.
    with (ctx.root / "backfill-airflow" / "runs.jsonl").open("a") as out:
        out.write(json.dumps(timing) + "\n")
    say(f"figure 11: {what}: {timing['wall_s']:.0f}s, {timing['tasks']} ingest tasks, Airflow overhead "
        f"{100 * timing['overhead_share']:.1f} % (gaps {100 * timing['gap_share']:.1f} %), "
        f"{candles / timing['wall_s']:,.0f} candles/s; staging checked: {timing['check']}")
    return timing


def _wait_for_run(meta_dsn: str, run_id: str, candles: int, dsn: str) -> str:
    """Wait for the run to end, printing its progress as a user would see it (candles in staging)."""
    last = 0.0
    while True:
        with contextlib.closing(psycopg2.connect(meta_dsn)) as conn, conn.cursor() as cur:
            cur.execute("SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", (DAG_ID, run_id))
            row = cur.fetchone()
            cur.execute("SELECT count(*) FILTER (WHERE state = 'success'), count(*) FROM task_instance "
                        "WHERE dag_id = %s AND run_id = %s AND task_id LIKE '%%.ingest'", (DAG_ID, run_id))
            done, tasks = cur.fetchone()
        state = row[0] if row else None
        if state in ("success", "failed"):
            return state
        if time.monotonic() - last > 30:
            last = time.monotonic()
            say(f"  {run_id}: {state}, {done}/{tasks} ingest tasks done")
        time.sleep(2)


def _run_timing(meta_dsn: str, run_id: str) -> dict[str, Any]:
    """Where the run's wall time went, from Airflow's metadata DB and the ingest tasks' own clocks."""
    with contextlib.closing(psycopg2.connect(meta_dsn)) as conn, conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM queued_at), extract(epoch FROM start_date), "
                    "extract(epoch FROM end_date) FROM dag_run WHERE dag_id = %s AND run_id = %s", (DAG_ID, run_id))
        queued, started, ended = (float(v) for v in cur.fetchone())
        cur.execute("SELECT task_id, map_index, extract(epoch FROM queued_dttm), extract(epoch FROM start_date), "
                    "extract(epoch FROM end_date), pool_slots, try_number FROM task_instance "
                    "WHERE dag_id = %s AND run_id = %s ORDER BY start_date", (DAG_ID, run_id))
        tis = [(t, m, float(q or 0), float(s), float(e), slots, tries)
               for t, m, q, s, e, slots, tries in cur.fetchall()]
        cur.execute("SELECT map_index, value FROM xcom WHERE dag_id = %s AND run_id = %s AND task_id LIKE '%%.ingest' "
                    "AND key = 'return_value'", (DAG_ID, run_id))
        work, phases = {}, {}
        for map_index, value in cur.fetchall():
            totals = json.loads(value) if isinstance(value, str | bytes) else value
            work[map_index] = sum(float(t.get("seconds") or 0) for t in totals or [])
            phases[map_index] = next((t["task_phases"] for t in totals or [] if t.get("task_phases")), {})
    wall = ended - queued
    by_kind: dict[str, list[tuple]] = {}
    for ti in tis:
        by_kind.setdefault(ti[0].rsplit(".", 1)[-1], []).append(ti)
    ingest = by_kind.get("ingest", [])
    slots = 2  # exchange_binance_backfill (backfill_pool_slots, the default)
    durations = [e - s for _, _, _, s, e, _, _ in ingest]
    in_task_work = [work.get(m, 0.0) for _, m, *_ in ingest]

    def stage(kind: str) -> float:
        return max((e - s for _, _, _, s, e, _, _ in by_kind.get(kind, [])), default=0.0)

    def span(kind: str) -> tuple[float, float]:
        rows = by_kind.get(kind, [])
        return (min(r[3] for r in rows), max(r[4] for r in rows)) if rows else (0.0, 0.0)

    # The run if its tasks followed each other with no gap, the ingest tasks on the pool's slots. The plan
    # runs beside prepare_storage when the DAG lets it (it started before prepare_storage ended): then the
    # longer of the two is on the critical path, else both.
    (_, p_end), (l_start, _) = span("prepare_storage"), span("plan")
    side_by_side = bool(by_kind.get("plan")) and bool(by_kind.get("prepare_storage")) and l_start < p_end
    head = max(stage("prepare_storage"), stage("plan")) if side_by_side else stage("prepare_storage") + stage("plan")
    fixed = head + stage("summary")
    ideal_tasks = fixed + max(sum(durations) / slots, max(durations, default=0.0))
    ideal_work = fixed + max(sum(in_task_work) / slots, max(in_task_work, default=0.0))
    return {
        "run_id": run_id, "queued_epoch": queued, "ended_epoch": ended, "wall_s": round(wall, 1),
        "queued_to_start_s": round(started - queued, 1),
        "tasks": len(ingest), "slots": slots, "retried_tasks": sum(1 for ti in ingest if (ti[6] or 1) > 1),
        "ingest_task_s": [round(d, 1) for d in durations],
        "ingest_work_s": [round(w, 1) for w in in_task_work],
        "ingest_startup_s": [round(d - w, 1) for d, w in zip(durations, in_task_work, strict=True)],
        # each ingest task's time beside its markets' work, from the task's own clock (its XCom):
        # Airflow before the callable (fork, DAG parse), imports + connections, after the unit (XCom, exit)
        "ingest_phases": [_phases(phases.get(m) or {}, e - s, work.get(m, 0.0)) for _, m, _, s, e, _, _ in ingest],
        "plan_beside_prepare_storage": side_by_side,
        "stage_s": {k: round(stage(k), 1) for k in ("prepare_storage", "plan", "summary")},
        "ideal_tasks_s": round(ideal_tasks, 1), "ideal_work_s": round(ideal_work, 1),
        # between tasks: scheduler loops, queueing, the executor starting the task process
        "gap_share": round((wall - ideal_tasks) / wall, 4),
        # and inside the ingest tasks before/after their work: DAG parse, imports, connections
        "overhead_share": round((wall - ideal_work) / wall, 4),
        "timeline": [{"task": t, "map_index": m, "queued": round(q - queued, 1) if q else None,
                      "start": round(s - queued, 1), "end": round(e - queued, 1)} for t, m, q, s, e, _, _ in tis],
    }


def _phases(p: dict[str, Any], duration: float, work: float) -> dict[str, Any]:
    if not p:
        return {}
    before, setup, unit = (float(p.get(k) or 0.0) for k in ("before_callable_s", "setup_s", "unit_s"))
    return {"before_callable_s": round(before, 1), "setup_s": round(setup, 1),
            "in_unit_not_markets_s": round(unit - work, 1), "after_unit_s": round(duration - before - setup - unit, 1),
            "niceness": p.get("niceness"), "yielded_to_live_s": p.get("live_yield_s"),
            # CPU seconds of the task process itself (load-independent): before the callable (fork, DAG parse),
            # setup (imports, connections); and whether its parent had ccxt imported already
            "before_callable_cpu_s": p.get("before_callable_cpu_s"), "setup_cpu_s": p.get("setup_cpu_s"),
            "ccxt_preloaded": p.get("ccxt_preloaded")}


def _check(dsn: str, url: str, symbols: list[str], start: datetime, end: datetime) -> dict[str, Any]:
    """Every minute of the window once per market (counts), and sampled days equal to the emulator's klines."""
    minutes = int((end - start).total_seconds() // 60)
    with contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        # staging.candle itself, by market_id (the staging.ohlcv view would join every row to its series)
        cur.execute("SELECT k.symbol, count(*), count(DISTINCT c.open_time) FROM staging.market AS k "
                    "JOIN staging.candle AS c USING (market_id) WHERE k.exchange = 'binance' AND k.timeframe = '1m' "
                    "AND k.symbol = ANY(%s) AND c.open_time >= %s AND c.open_time < %s "
                    "GROUP BY k.symbol", (symbols, start, end))
        counts = {s: (n, d) for s, n, d in cur.fetchall()}
        wrong = {s: counts.get(s) for s in symbols if counts.get(s) != (minutes, minutes)}
        if wrong:
            raise AssertionError(f"{len(wrong)} market(s) without exactly {minutes} candles in staging: "
                                 f"{dict(list(wrong.items())[:5])}")
        rng = random.Random(7)
        days = int((end - start).total_seconds() // 86400)
        sampled = 0
        for symbol in rng.sample(symbols, min(len(symbols), 5)):
            for _ in range(min(SAMPLE_DAYS_PER_MARKET, days)):
                day = start + timedelta(days=rng.randrange(days))
                truth = _emulator_klines(url, symbol, day, day + timedelta(days=1))
                cur.execute("SELECT (extract(epoch FROM c.open_time) * 1000)::bigint, c.open, c.high, c.low, c.close, "
                            "c.volume FROM staging.market AS k JOIN staging.candle AS c USING (market_id) "
                            "WHERE k.exchange = 'binance' AND k.symbol = %s AND k.timeframe = '1m' "
                            "AND c.open_time >= %s AND c.open_time < %s", (symbol, day, day + timedelta(days=1)))
                staged = {int(ms): tuple(v) for ms, *v in cur.fetchall()}
                if staged != truth:
                    diff = sorted(set(staged.items()) ^ set(truth.items()))[:3]
                    raise AssertionError(f"{symbol} {day:%Y-%m-%d}: staging differs from the emulator: {diff}")
                sampled += len(truth)
    return {"markets": len(symbols), "minutes_each": minutes, "sampled_candles_equal_emulator": sampled}


def _emulator_klines(url: str, symbol: str, start: datetime, end: datetime) -> dict[int, tuple]:
    """The emulator's 1m klines over HTTP (Binance's wire, no ccxt): {open ms: (o, h, l, c, v)}."""
    out: dict[int, tuple] = {}
    since, stop = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    while since < stop:
        q = f"symbol={symbol.replace('/', '')}&interval=1m&startTime={since}&endTime={stop - 1}&limit=1000"
        for attempt in range(10):
            try:
                with urllib.request.urlopen(f"{url}/api/v3/klines?{q}", timeout=30) as resp:
                    rows = json.loads(resp.read())
                break
            except urllib.error.HTTPError as exc:  # the weight limit is on: wait as Binance asks
                if exc.code not in (418, 429) or attempt == 9:
                    raise
                time.sleep(float(exc.headers.get("Retry-After") or 5))
        if not rows:
            break
        for r in rows:
            out[int(r[0])] = tuple(Decimal(v) for v in r[1:6])
        since = int(rows[-1][0]) + 60_000
    return {k: v for k, v in out.items() if k < stop}


# ---------------------------------------------------------------- the minute feed

class FreshnessPoller:
    """For each minute close B: the first wall time at which every live market's candle opening at
    B - 60 s is in staging.candle (polled every POLL_S seconds through its primary key)."""

    def __init__(self, dsn: str, symbols: list[str]) -> None:
        self.dsn, self.symbols = dsn, symbols
        self.firsts: dict[int, float] = {}
        # (epoch, 1-minute load average) every LOAD_EVERY_S: the machine's load while the figure ran
        self.loads: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                while not self._stop.is_set():
                    # Per market one backward probe of staging.candle's primary key (market_id, open_time):
                    # through the staging.ohlcv view the join to the series would read every candle of the
                    # market for its max(). NULL until every live market has a candle.
                    cur.execute("""
                        SELECT CASE WHEN count(m.latest) = cardinality(%s::text[]) THEN min(m.latest) END
                        FROM unnest(%s::text[]) AS s(symbol)
                        LEFT JOIN staging.market AS k ON k.exchange = 'binance' AND k.symbol = s.symbol
                                                     AND k.timeframe = '1m'
                        LEFT JOIN LATERAL (SELECT extract(epoch FROM max(c.open_time)) AS latest
                                           FROM staging.candle AS c WHERE c.market_id = k.market_id) AS m ON true""",
                                (self.symbols, self.symbols))
                    oldest = cur.fetchone()[0]
                    now = time.time()
                    if not self.loads or now - self.loads[-1][0] >= LOAD_EVERY_S:
                        self.loads.append((now, os.getloadavg()[0]))
                    if oldest is not None:
                        close = int(oldest) + 60  # every market has the minute that closed here
                        for b in range(close - 600, close + 1, 60):
                            self.firsts.setdefault(b, now)
                    self._stop.wait(POLL_S)
        finally:
            conn.close()

    def latencies(self, closes: list[int]) -> list[float]:
        return [round(self.firsts[b] - b, 1) if b in self.firsts else freshness.GIVE_UP_S for b in closes]


def _service(url: str) -> dict[str, dict[str, float]]:
    """The emulator's own time per kind of request so far (/__admin/stats service_s; none: an older emulator)."""
    with urllib.request.urlopen(f"{url}/__admin/stats", timeout=30) as resp:
        return json.loads(resp.read()).get("service_s") or {}


def _service_phases(start: dict, backfills_start: dict, backfills_end: dict, end: dict) -> dict[str, Any]:
    """Mean ms the emulator took per request kind with no backfill running (before + after) and during the
    backfills: whether the exchange (here one Python process) slowed the minute feed's calls."""
    def diff(a: dict, b: dict) -> dict[str, list[float]]:
        return {k: [v["requests"] - a.get(k, {}).get("requests", 0), v["seconds"] - a.get(k, {}).get("seconds", 0.0)]
                for k, v in b.items()}

    phases = {"without_backfill": {}, "during": diff(backfills_start, backfills_end)}
    for part in (diff(start, backfills_start), diff(backfills_end, end)):
        for k, (n, sec) in part.items():
            acc = phases["without_backfill"].setdefault(k, [0, 0.0])
            acc[0] += n
            acc[1] += sec
    return {phase: {k: {"requests": int(n), "mean_ms": round(1000 * sec / n, 2)} for k, (n, sec) in kinds.items() if n}
            for phase, kinds in phases.items()}


def _minute_runs(meta_dsn: str) -> dict[int, dict[str, float]]:
    """Per minute close (the run's data interval end): its ingest task's start and end after the close,
    and the phases of its XCom (fetch, raw write, parse, staging load): where a slower minute feed lost time."""
    out: dict[int, dict[str, float]] = {}
    with contextlib.closing(psycopg2.connect(meta_dsn)) as conn, conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM r.data_interval_end), extract(epoch FROM t.start_date), "
                    "extract(epoch FROM t.end_date), x.value::text FROM dag_run r "
                    "JOIN task_instance t ON t.dag_id = r.dag_id AND t.run_id = r.run_id "
                    "AND t.task_id LIKE '%%.ingest' "
                    "LEFT JOIN xcom x ON x.dag_id = t.dag_id AND x.run_id = t.run_id AND x.task_id = t.task_id "
                    "AND x.map_index = t.map_index AND x.key = 'return_value' "
                    "WHERE r.dag_id = %s AND r.run_type = 'scheduled' AND t.start_date IS NOT NULL", (MINUTE_DAG,))
        for close, start, end, value in cur.fetchall():
            row = {"task_start_s": round(float(start) - float(close), 1)}
            if end is not None:
                row["task_end_s"] = round(float(end) - float(close), 1)
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                row |= {k: v for k, v in (json.loads(value).get("phases") or {}).items() if isinstance(v, int | float)}
            out[int(float(close))] = row
    return out


def _mean_phases(runs: dict[int, dict[str, float]], closes: list[int]) -> dict[str, float]:
    rows = [runs[c] for c in closes if c in runs]
    keys = sorted({k for r in rows for k in r})
    return {k: round(sum(r.get(k) or 0 for r in rows) / len(rows), 2) for k in keys} | {"runs": len(rows)}


# ---------------------------------------------------------------- figures

def _load_summary(loads: list[tuple[float, float]], t0: float, t1: float) -> dict[str, float]:
    """The 1-minute load average sampled between t0 and t1: min, median, max and the number of samples."""
    xs = sorted(x for t, x in loads if t0 <= t <= t1)
    if not xs:
        return {"samples": 0}
    return {"samples": len(xs), "min": round(xs[0], 2), "median": round(xs[len(xs) // 2], 2), "max": round(xs[-1], 2)}


def _figures(ctx: BenchContext, day: dict[str, Any] | None, histories: list[dict[str, Any]],
             poller: FreshnessPoller, baseline_closes: list[int], load_before: tuple, load_after: tuple,
             minute_runs: dict[int, dict[str, float]], emulator_service: dict[str, Any] | None = None
             ) -> list[Figure]:
    load = {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in load_after],
            "cpus": os.cpu_count(), "during_figure_1min": _load_summary(poller.loads, 0, math.inf)}
    figures = []
    runs = ([("11a", day)] if day else []) + [("11b", r) for r in histories]
    for label, r in runs:
        figures.append(Figure(
            figure=f"{label} backfill under Airflow: {r['what']}, Airflow overhead share of the run",
            value=round(100 * r["overhead_share"], 1), unit="% of the run",
            reference=f"run {r['wall_s']:.0f} s (queued -> end) vs {r['ideal_work_s']:.0f} s of work back to back "
                      f"on {r['slots']} slots; {r['tasks']} ingest tasks",
            reference_value=r["wall_s"], ratio=r["ideal_work_s"] / r["wall_s"],
            # QUICK's runs are a few minutes: ~30 s of fixed start-up (4 task hops, one ccxt import per
            # task) cannot be under 10 % of them, so QUICK reports the figure without judging it.
            target="reported (QUICK: too small for the 10 % target)" if ctx.quick else
            f"< {TARGET_OVERHEAD * 100:.0f} %", met=ctx.quick or r["overhead_share"] < TARGET_OVERHEAD,
            detail={**{k: v for k, v in r.items() if k != "timeline"},
                    "candles_per_s": round(r["candles"] / r["wall_s"]), "timeline": r["timeline"][:40],
                    "load_during_run_1min": _load_summary(poller.loads, r["queued_epoch"], r["ended_epoch"]),
                    "load_average": load}))
    # The minute feed: closes with no backfill running (before the first and after the last) vs closes
    # while one ran.
    def closes(r: dict[str, Any]) -> list[int]:
        return list(range(math.ceil(r["queued_epoch"] / 60) * 60, int(r["ended_epoch"]), 60))

    base = poller.latencies(baseline_closes)
    during = {f"{label} {r['what']}": poller.latencies(closes(r)) for label, r in runs}
    busy = [x for v in during.values() for x in v]
    p95_base = freshness._pct(base, 95) if base else 0.0
    p95_busy = freshness._pct(busy, 95) if busy else 0.0
    ratio = p95_busy / max(p95_base, 0.1) if busy else None
    # Fewer closes than MIN_CLOSES_DURING during the backfills (they ended within a minute or two): 11c
    # has not measured the feed beside a backfill, and says so instead of passing on one or no sample.
    enough = len(busy) >= MIN_CLOSES_DURING
    figures.append(Figure(
        figure=f"11c minute feed during the backfills ({', '.join(label for label, _ in runs)}): p95 minute close "
               f"-> staging, every live market, over {len(busy)} close(s) during them",
        value=p95_busy, unit="s",
        reference=f"p95 {p95_base:.1f} s over {len(base)} close(s) with no backfill running (before and after)"
                  + ("" if enough else f"; NOT MEASURED: {len(busy)} close(s) during the backfills, "
                                       f"fewer than the {MIN_CLOSES_DURING} needed"),
        reference_value=p95_base, ratio=ratio,
        target=f"<= {FRESHNESS_RATIO_TARGET}x without a backfill, and <= 30 s, over >= {MIN_CLOSES_DURING} closes",
        met=enough and ratio is not None and ratio <= FRESHNESS_RATIO_TARGET and p95_busy <= 30,
        detail={"closes_during": len(busy), "min_closes_during": MIN_CLOSES_DURING, "closes_without": len(base),
                "without_backfill_s": base, "during_s": during, "live_markets": LIVE_MARKETS,
                # the minute runs' ingest tasks, averaged: seconds after the close, and their own phases
                "minute_task_without_backfill": _mean_phases(minute_runs, baseline_closes),
                "minute_task_during": _mean_phases(minute_runs, [c for _, r in runs for c in closes(r)]),
                # the emulator's own mean ms per request ("short": the minute feed's few-candle calls,
                # "page": the backfill's 1000-candle pages), with no backfill running and during them
                "emulator_service": emulator_service or {},
                "load_average": load}))
    return figures
