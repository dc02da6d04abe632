"""Postgres CPU-seconds of a full rebuild (`dbt run --full-refresh`), per model, for two dbt projects on
the same staging history, alternating in one session (issue 16, item 5: the rebuild per 10M candles).

    python -m bench.rebuild_cpu setup --rows 1000000 --markets 100
    python -m bench.rebuild_cpu measure --a dbt --b /work/wt_old/dbt --rounds 3 --out bench/results/x.json
    python -m bench.rebuild_cpu measure --a dbt --b /work/wt_old/dbt --threads 4 --no-warm-up  # 4b's wall, 10M
    python -m bench.rebuild_cpu stop

`setup` generates one history straight into staging (bench/hourly_dbt.py's setup, figure 4's generator)
in database `rebuild_a` and copies it as `rebuild_b` (CREATE DATABASE ... TEMPLATE: the same rows, pages
and statistics). `measure` runs `dbt run --full-refresh --threads 1` of project A on rebuild_a and of
project B on rebuild_b, alternating (B first in odd rounds), after one unmeasured warm-up each (so every
measured run replaces tables of its own project, and the page cache holds both staging copies). While
dbt runs, the CPU time of the bench server's process tree (the postmaster's cumulative fields hold the
backends that exited) is sampled every 0.25 s; each model's CPU-seconds are the samples' difference over
its execute window in run_results.json (its SQL and its hooks). dbt's own CPU is not counted: the
rebuild's cost is the database's. Output: per round and project the total and per-model CPU-seconds and
wall; medians per project and model, printed as a table (A/B) and written to --out (JSON).

Its own PostgreSQL under MARKETFLOW_BENCH_DIR (default .local/hourly_bench, shared with hourly_dbt).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from bisect import bisect_left
from datetime import datetime
from pathlib import Path

import psycopg2

from bench import hourly_dbt
from bench.context import REPO, _cpu_seconds, _trees, say

DB_A, DB_B = "rebuild_a", "rebuild_b"


def setup(rows: int, markets: int) -> None:
    hourly_dbt.setup(DB_A, rows, markets)
    pg = hourly_dbt._server()
    pg.drop_database(DB_B)
    conn = psycopg2.connect(pg.dsn("postgres"))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f"create database {DB_B} template {DB_A}")
    finally:
        conn.close()
    (hourly_dbt.ROOT / DB_B).mkdir(parents=True, exist_ok=True)
    (hourly_dbt.ROOT / DB_B / "markets.yml").write_text((hourly_dbt.ROOT / DB_A / "markets.yml").read_text())


class CpuSampler:
    """(monotonic time, CPU-seconds of the postmaster's tree) every ``interval`` seconds."""

    def __init__(self, postmaster: int, interval: float = 0.25) -> None:
        self.postmaster, self.interval = postmaster, interval
        self.times: list[float] = []
        self.cpu: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        pids = _trees({"pg": self.postmaster})["pg"]
        self.times.append(time.time())
        self.cpu.append(sum(_cpu_seconds(p) for p in pids))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> CpuSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def at(self, t: float) -> float:
        """CPU-seconds at wall time ``t`` (epoch), linear between samples."""
        i = bisect_left(self.times, t)
        if i <= 0:
            return self.cpu[0]
        if i >= len(self.times):
            return self.cpu[-1]
        t0, t1 = self.times[i - 1], self.times[i]
        c0, c1 = self.cpu[i - 1], self.cpu[i]
        return c0 + (c1 - c0) * ((t - t0) / (t1 - t0) if t1 > t0 else 1.0)


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def full_refresh(db: str, project: Path, threads: int = 1) -> dict:
    """One `dbt run --full-refresh` of ``project`` on ``db`` with ``threads`` (1: per-model CPU is exact; 4:
    bench 4b's wall, models overlapping): wall, Postgres CPU-s, per model."""
    pg = hourly_dbt._server()
    env = hourly_dbt._env(pg, db, project.resolve())
    postmaster = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
    started = time.monotonic()
    with CpuSampler(postmaster) as cpu:
        hourly_dbt._dbt(env, "run", "--full-refresh", threads=threads)
    wall = time.monotonic() - started
    results = json.loads((Path(env["DBT_TARGET_PATH"]) / "run_results.json").read_text())["results"]
    models = {}
    for r in results:
        execute = next((t for t in r["timing"] if t["name"] == "execute"), None)
        if execute is None or not execute.get("started_at"):
            continue
        a, b = _epoch(execute["started_at"]), _epoch(execute["completed_at"])
        models[r["unique_id"].split(".")[-1]] = {"cpu_s": round(cpu.at(b) - cpu.at(a), 2), "wall_s": round(b - a, 2)}
    return {"wall_s": round(wall, 1), "postgres_cpu_s": round(cpu.cpu[-1] - cpu.cpu[0], 1), "models": models}


def measure(a: Path, b: Path, rounds: int, out: Path | None, threads: int = 1, warm_up: bool = True) -> dict:
    with psycopg2.connect(hourly_dbt._server().dsn(DB_A)) as conn, conn.cursor() as cur:
        cur.execute("select count(*) from staging.ohlcv")
        candles = cur.fetchone()[0]
    if warm_up:
        say(f"warm-up: a full refresh of each project ({candles:,} candles)")
        full_refresh(DB_A, a, threads)
        full_refresh(DB_B, b, threads)
    runs: dict[str, list[dict]] = {"a": [], "b": []}
    for i in range(rounds):
        for label in ("a", "b") if i % 2 == 0 else ("b", "a"):
            db, project = (DB_A, a) if label == "a" else (DB_B, b)
            got = full_refresh(db, project, threads)
            runs[label].append(got)
            say(f"round {i + 1} {label} ({project}): wall {got['wall_s']} s, Postgres {got['postgres_cpu_s']} CPU-s")
    med = {label: {"postgres_cpu_s": statistics.median(r["postgres_cpu_s"] for r in rs),
                   "wall_s": statistics.median(r["wall_s"] for r in rs),
                   "models": {m: statistics.median(r["models"].get(m, {}).get("cpu_s", 0.0) for r in rs)
                              for m in sorted({m for r in rs for m in r["models"]})}}
           for label, rs in runs.items()}
    result = {"candles": candles, "a": str(a), "b": str(b), "rounds": rounds, "threads": threads, "runs": runs,
              "median": med, "ratio_wall_a_over_b": round(med["a"]["wall_s"] / med["b"]["wall_s"], 3),
              "ratio_postgres_cpu_a_over_b": round(med["a"]["postgres_cpu_s"] / med["b"]["postgres_cpu_s"], 3)}
    if out:
        out.write_text(json.dumps(result, indent=1))
    print(f"\nPostgres CPU-s, median of {rounds}: A {med['a']['postgres_cpu_s']} / B {med['b']['postgres_cpu_s']} = "
          f"{result['ratio_postgres_cpu_a_over_b']} (wall {med['a']['wall_s']} / {med['b']['wall_s']} s)")
    print("| model | A CPU-s | B CPU-s | A/B |\n|---|---:|---:|---:|")
    models = set(med["a"]["models"]) | set(med["b"]["models"])
    for m in sorted(models, key=lambda m: -max(med["a"]["models"].get(m, 0), med["b"]["models"].get(m, 0))):
        x, y = med["a"]["models"].get(m, 0.0), med["b"]["models"].get(m, 0.0)
        print(f"| {m} | {x:.2f} | {y:.2f} | {x / y if y else float('nan'):.2f} |")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rebuild_cpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("setup")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--markets", type=int, default=100)
    p = sub.add_parser("measure")
    p.add_argument("--a", type=Path, default=REPO / "dbt")
    p.add_argument("--b", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path)
    p.add_argument("--threads", type=int, default=1, help="dbt threads (4 as bench 4b; 1 for per-model CPU)")
    p.add_argument("--no-warm-up", action="store_true",
                   help="skip the unmeasured first refresh of each project (long histories; its tables exist)")
    sub.add_parser("stop")
    args = parser.parse_args()
    if args.cmd == "setup":
        setup(args.rows, args.markets)
    elif args.cmd == "measure":
        measure(args.a, args.b, args.rounds, args.out, args.threads, not args.no_warm_up)
    else:
        hourly_dbt._server().stop()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
