"""`marketflow rebuild` of one market-day against the full rebuild of the same history (issue 16, item 5).

A history built by bench.history (full: 100 markets x 10,000 minutes = 1M candles; QUICK: 20 x
2,880), the marts built by `dbt run`; then, on the same database and the same machine, timed:

* reference: `dbt run --full-refresh` of the whole project (every mart rebuilt from staging);
* value: `python -m marketflow.cli rebuild --exchange binance --symbol BTC/USDT --start D --end D+1d`
  (the operator's command end to end: delete the slice, dbt run of the incremental models bounded
  to it), the market's last full day.

Checked on the way: the rebuilt day of ohlcv_1m equals the full build's (as text), and no row of
ohlcv_1m outside the day was rewritten (xmin).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import timedelta

import psycopg2

from bench.context import REPO, BenchContext, say
from bench.history import START, build_history
from bench.report import Figure


def run(ctx: BenchContext) -> list[Figure]:
    markets, minutes = (20, 2_880) if ctx.quick else (100, 10_000)
    name = "bench_rebuild"
    history = build_history(ctx, name, markets, minutes, ("run",))
    try:
        return [_measure(ctx, history, minutes)]
    finally:
        ctx.pg.drop_database(name)
        shutil.rmtree(history.work, ignore_errors=True)


def _measure(ctx: BenchContext, history, minutes: int) -> Figure:
    exchange, symbol = history.markets[0]
    end = (START + timedelta(minutes=minutes)).replace(hour=0, minute=0)
    start = end - timedelta(days=1)
    day_sql = ("select t::text from marts.ohlcv_1m as t where exchange = %s and symbol = %s"
               " and open_time >= %s and open_time < %s order by open_time")
    conn = psycopg2.connect(history.dsn)
    conn.autocommit = True
    try:
        full_s = ctx.dbt(history.env, "run", "--full-refresh")
        say(f"full rebuild (dbt run --full-refresh) of {history.candles:,} candles: {full_s:.1f}s")
        with conn.cursor() as cur:
            cur.execute(day_sql, (exchange, symbol, start, end))
            day_before = cur.fetchall()
            cur.execute("select count(*) from marts.ohlcv_1m")
            rows = cur.fetchone()[0]
            cur.execute("select txid_current()")
            boundary = cur.fetchone()[0]
        env = {**os.environ, **history.env, "MARKETFLOW_REBUILD_DIR": str(history.work / "rebuild"),
               "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO)])}
        argv = [sys.executable, "-m", "marketflow.cli", "rebuild", "--exchange", exchange, "--symbol", symbol,
                "--start", start.isoformat(), "--end", end.isoformat()]
        started = time.monotonic()
        res = subprocess.run(argv, env=env, capture_output=True, text=True)
        slice_s = time.monotonic() - started
        if res.returncode != 0:
            raise RuntimeError(f"marketflow rebuild failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        say(f"rebuild of one market-day: {slice_s:.1f}s ({res.stdout.strip()})")
        with conn.cursor() as cur:
            cur.execute(day_sql, (exchange, symbol, start, end))
            day_after = cur.fetchall()
            # rows written after the boundary transaction, outside the day: must be none
            cur.execute("select count(*) from marts.candles_1m as t join marts.candles_1m_markets as m"
                        " using (market_id) where t.xmin::text::bigint > %s"
                        " and not (exchange = %s and symbol = %s and open_time >= %s and open_time < %s)",
                        (boundary % 2**32, exchange, symbol, start, end))
            outside = cur.fetchone()[0]
    finally:
        conn.close()
    ok = day_after == day_before and len(day_after) == 1440 and outside == 0
    results = json.loads((history.work / "rebuild" / "target" / "run_results.json").read_text())["results"]
    models = sorted(((r["unique_id"].rsplit(".", 1)[-1], round(r["execution_time"], 1)) for r in results),
                    key=lambda m: -m[1])
    return Figure(
        figure=f"rebuild of one market-day ({exchange} {symbol}, {start:%Y-%m-%d}) vs the full rebuild, "
               f"{history.candles:,} candles",
        value=round(slice_s, 1), unit="s (marketflow rebuild, end to end)",
        reference=f"dbt run --full-refresh of the whole project ({full_s:.1f} s)", reference_value=round(full_s, 1),
        ratio=round(slice_s / full_s, 3), target="the day equals the full build's, nothing else rewritten", met=ok,
        detail={"candles": history.candles, "ohlcv_1m_rows": rows, "day_rows": len(day_after),
                "day_equals_full_build": day_after == day_before, "rows_outside_rewritten": outside,
                "rebuild_models_seconds": dict(models),
                "rebuild_models_seconds_sum": round(sum(t for _, t in models), 1),
                "command": " ".join(argv[2:]), "output": res.stdout.strip()})
