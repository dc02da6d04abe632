"""`python -m bench [--quick] [--only 1,2,...]`: run the figures, write bench/results/latest.{json,md}.

Figures (see bench/README.md): 1 load path, 2 backfill end to end, 3 peer (freqtrade), 4 dbt,
5 queries on 10M+ rows (5x: at 1,000 markets and 30M candles), 6 freshness on the running stack, 6c the
minute DAG at 1,000 markets, 7 peak memory during 2, 6 and 6c, 8 bytes per 1m candle in Postgres,
9 the hourly run of 1,000 markets at a small and a large history, 10 monthly partitions vs plain
tables, 11 backfills under Airflow (task overhead, minute feed), 12 the market-data API under 100
concurrent users (standalone and in Airflow's API server); rebuild: one market-day vs the full rebuild.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from pathlib import Path

from bench.context import REPO, BenchContext, say
from bench.report import Figure, now_iso, write_report

# Order matters: 3 compares against 2's run; 7 is reported by 2 and 6.
STEPS: list[tuple[str, str]] = [
    ("1", "bench.load_path"),
    ("2", "bench.backfill"),
    ("3", "bench.peer"),
    ("4", "bench.big_tables"),  # 4 and 5 share the 10M-row dataset
    ("5x", "bench.analyst_queries"),  # figure 5 at 30M candles and 1,000 markets (5d-5g)
    # the market-data API under 100 users, standalone and in Airflow's API server, on 5x's large history
    # (handed over, not built twice) or, run alone, on its own
    ("12", "bench.api_load"),
    ("rebuild", "bench.rebuild_slice"),  # marketflow rebuild of one market-day vs the full rebuild
    ("6", "bench.freshness"),
    ("6c", "bench.minute_scale"),  # 1,000 markets on the minute DAG (QUICK: 200), and 7c its memory
    ("8", "bench.storage"),  # bytes per 1m candle, and the narrower layouts (8b)
    ("9", "bench.hourly"),  # the hourly run at 1M and 30M candles of history
    ("10", "bench.partitions"),  # monthly partitions vs plain tables: load, dbt incremental, pruning
    ("11", "bench.backfill_airflow"),  # market_backfill under Airflow: task overhead, the minute feed beside it
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", default=os.environ.get("QUICK") not in (None, "", "0"),
                        help="smaller sizes (QUICK=1): ~21 minutes on 2 cores, no figure over 6")
    parser.add_argument("--only", default="", help="comma-separated step numbers, e.g. 1,4 (default: all)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}

    ctx = BenchContext(quick=args.quick)
    started = time.monotonic()
    figures: list[Figure] = []
    failures: list[str] = []
    say(f"{'QUICK' if ctx.quick else 'full'} run; sizes {ctx.sizes}")
    ctx.shared["api_load_takes_history"] = not only or {"5x", "12"} <= only
    ctx.start()
    try:
        for number, module in STEPS:
            if only and number not in only and not (number == "4" and "5" in only):
                continue
            step_started = time.monotonic()
            say(f"--- {module} ---")
            try:
                got = importlib.import_module(module).run(ctx)
            except Exception as exc:  # one broken figure must not hide the others
                traceback.print_exc()
                failures.append(f"{module}: {exc}")
                got = [Figure(figure=f"{module} failed", value=0, unit="", reference=str(exc)[:300],
                              target="runs", met=False)]
            figures.extend(got)
            for f in got:
                say(f"{f.figure}: {f.value:,.4g} {f.unit} (ratio {f.ratio if f.ratio is None else round(f.ratio, 3)},"
                    f" target {f.target}: {'met' if f.met else 'NOT met'})")
            say(f"{module} took {time.monotonic() - step_started:.0f}s")
    finally:
        ctx.stop()
    seconds = time.monotonic() - started
    meta = {"finished_at": now_iso(), "quick": ctx.quick, "seconds": round(seconds, 1), "cpus": os.cpu_count(),
            "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
            "sizes": vars(ctx.sizes), "failures": failures}
    json_path, md_path = write_report(figures, args.out, meta)
    say(f"report: {md_path} and {json_path} ({seconds / 60:.1f} min)")
    print(md_path.read_text())
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
