"""The hourly `dbt build` on a small and a large history: does its cost grow with new data or with history?

    python -m bench.hourly_dbt setup --db h1m --rows 1000000 --markets 20
    python -m bench.hourly_dbt measure --db h1m --project /work/main/dbt --label before
    python -m bench.hourly_dbt measure --db h1m --project dbt --label after
    python -m bench.hourly_dbt next-hour --db h1m --label since --since-last-build
    python -m bench.hourly_dbt report                  # per model: seconds and the ratio large/small
    python -m bench.hourly_dbt stop                    # stop the server (the data directory stays)

`setup` generates the history straight into staging.candle of its own database (the generator of
figure 4, bench/big_tables.py; the last candle 3 h before now, ingested 65 s after it opened, as
live loading does). `measure` runs a full build of the given dbt project once (so the tables are
that project's; --full-select limits it to the models that differ from the last measured project),
appends the next 60 minutes of every market (candles and tickers ingested now, what the hourly
reconcile loads), then times `dbt build` of the whole project: what the hourly
DAG's dbt_marts group runs (one `dbt build` per model there; one process here, 1 thread, so per
model times add up). Per model: its run plus its data and unit tests (run_results.json + manifest).
Results go to <dir>/results/<db>-<label>.json.

Its own PostgreSQL under MARKETFLOW_BENCH_DIR (default .local/hourly_bench), on a port kept in
<dir>/port, left running between invocations until `stop`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2

from bench.big_tables import GENERATOR_SQL, _generate, _market_lengths, _ts, _write_markets_config
from bench.context import REPO, say
from bench.workload import symbols
from marketflow.schema import apply_ddl
from scripts import stack

ROOT = Path(os.environ.get("MARKETFLOW_BENCH_DIR") or stack.LOCAL / "hourly_bench")
HISTORY_END_MINUTES_AGO = 180  # room for the appended hours, which must be in the past


def _server() -> stack.PostgresServer:
    ROOT.mkdir(parents=True, exist_ok=True)
    port_file = ROOT / "port"
    if not port_file.exists():
        port_file.write_text(str(stack.free_port()))
    pg = stack.PostgresServer(ROOT / "postgres", int(port_file.read_text()))
    pg.start()
    return pg


def _env(pg: stack.PostgresServer, db: str, project: Path) -> dict[str, str]:
    env = stack.service_env(pg, "mongodb://127.0.0.1:9/unused", "http://127.0.0.1:9", db)
    env.update(MARKETFLOW_CONFIG=str(ROOT / db / "markets.yml"), MARKETFLOW_DBT_PROJECT_DIR=str(project),
               DBT_TARGET_PATH=str(ROOT / db / "target"), DBT_LOG_PATH=str(ROOT / db / "logs"))
    return env


def _dbt(env: dict[str, str], *args: str, threads: int = 1) -> float:
    started = time.monotonic()
    res = subprocess.run([env["MARKETFLOW_DBT_EXECUTABLE"], *args, "--profiles-dir", ".", "--threads", str(threads)],
                         cwd=env["MARKETFLOW_DBT_PROJECT_DIR"], env={**os.environ, **env},
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"dbt {' '.join(args)} failed (exit {res.returncode}):\n{res.stdout[-6000:]}")
    return time.monotonic() - started


def setup(db: str, rows: int, markets_count: int, uniform: bool = False) -> None:
    pg = _server()
    pg.drop_database(db)
    pg.create_database(db)
    dsn = pg.dsn(db)
    conn = psycopg2.connect(dsn)
    try:
        apply_ddl(conn)
        conn.commit()
        conn.autocommit = True
        markets = sorted(symbols(markets_count))
        # figure 4's shape (a tenth of the markets hold a year, the others at least a day), or every
        # market the same depth (figure 9's shape: 1M on 1,000 markets = 1,000 minutes each)
        lengths = [rows // len(markets)] * len(markets) if uniform else _market_lengths(rows, len(markets))
        end_minute = int(time.time() // 60) - HISTORY_END_MINUTES_AGO
        firsts = {s: end_minute - n + 1 for s, n in zip(markets, lengths, strict=True)}
        (ROOT / db).mkdir(parents=True, exist_ok=True)
        config_file = _write_markets_config(ROOT / db / "markets.yml", {s: _ts(m) for s, m in firsts.items()})
        env = _env(pg, db, REPO / "dbt")
        os.environ.update(env)  # load_config reads the connection settings from the environment
        _generate(conn, markets, firsts, end_minute, config_file, env)
        (ROOT / db / "state.json").write_text(json.dumps({"markets": markets, "next_minute": end_minute + 1}))
    finally:
        conn.close()


def _append_hour(conn, markets: list[str], first_minute: int) -> None:
    """The next 60 minutes of every market, ingested now (what an hourly reconcile + minute runs load)."""
    with conn.cursor() as cur:
        cur.execute(GENERATOR_SQL)
        # Straight into staging.candle as the loader writes it (the staging.ohlcv view's INSTEAD OF
        # trigger would insert row by row), with the series' market_id and the run's run_key.
        cur.execute("""
            insert into staging.candle (open_time, ingested_at, trades, market_id, run_key, open, high, low, close,
                                        volume, quote_volume, raw_payload_id)
            select c.open_time, c.ingested_at, c.trades, k.market_id, r.run_key, c.open, c.high, c.low, c.close,
                   c.volume, c.quote_volume, staging.payload_id_bytes(c.raw_payload_id)
            from unnest(%s::text[]) with ordinality as m(symbol, i)
            join staging.market as k on k.exchange = 'binance' and k.symbol = m.symbol and k.timeframe = '1m'
            cross join (select ops.run_key('bench_big') as run_key) as r,
                 lateral bench.candles((m.i - 1)::int, m.symbol, %s, %s, now()) as c
            order by m.i, c.open_time""",
                    (markets, first_minute, first_minute + 59))
        cur.execute("""
            insert into staging.ticker (exchange, symbol, ts, last, bid, ask, raw_payload_id, run_id)
            select exchange, symbol, open_time + interval '30 seconds', close, close * 0.9999,
                   close * 1.0001, raw_payload_id, run_id
            from staging.ohlcv where timeframe = '1m' and open_time >= %s and open_time < %s""",
                    (_ts(first_minute), _ts(first_minute + 60)))


def _per_model(target: Path) -> dict[str, dict[str, float]]:
    """Seconds per model: its run, and its tests (data and unit) attributed to the model they test."""
    results = json.loads((target / "run_results.json").read_text())["results"]
    manifest = json.loads((target / "manifest.json").read_text())
    nodes = {**manifest["nodes"], **manifest.get("unit_tests", {})}
    out: dict[str, dict[str, float]] = defaultdict(lambda: {"run": 0.0, "tests": 0.0})
    for r in results:
        uid = r["unique_id"]
        if uid.startswith("model."):
            out[uid.split(".")[-1]]["run"] += r["execution_time"]
            continue
        parents = [p for p in nodes.get(uid, {}).get("depends_on", {}).get("nodes", []) if p.startswith("model.")]
        owner = parents[-1].split(".")[-1] if parents else "(other)"
        out[owner]["tests"] += r["execution_time"]
    return {m: {k: round(v, 3) for k, v in t.items()} for m, t in sorted(out.items())}


def measure(db: str, project: Path, label: str, full_select: list[str]) -> None:
    pg = _server()
    env = _env(pg, db, project.resolve())
    state_file = ROOT / db / "state.json"
    state = json.loads(state_file.read_text())
    select = ["--select", *full_select] if full_select else []
    say(f"{db}/{label}: full build of {project} {' '.join(select)} ...")
    full_s = _dbt(env, "build", "--full-refresh", *select)
    conn = psycopg2.connect(pg.dsn(db))
    conn.autocommit = True
    try:
        _append_hour(conn, state["markets"], state["next_minute"])
        state["next_minute"] += 60
        state["next_data_test_since"] = (datetime.now(UTC) - timedelta(minutes=60)).isoformat()
        state_file.write_text(json.dumps(state))
        with conn.cursor() as cur:
            cur.execute("select count(*) from staging.candle")
            rows = cur.fetchone()[0]
    finally:
        conn.close()
    say(f"{db}/{label}: hourly dbt build on {rows:,} candles ...")
    wall = _dbt(env, "build")
    per_model = _per_model(Path(env["DBT_TARGET_PATH"]))
    out = {"db": db, "label": label, "project": str(project), "staging_rows": rows, "full_build_s": round(full_s, 1),
           "hourly_build_wall_s": round(wall, 1), "per_model": per_model}
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / f"{db}-{label}.json").write_text(json.dumps(out, indent=1))
    say(f"{db}/{label}: hourly build {wall:.1f}s wall (full build {full_s:.0f}s)")


def next_hour(db: str, project: Path, label: str, since_last_build: bool) -> None:
    """One more hour on the tables the last `measure`/`next-hour` built: append it, time `dbt build`. With
    ``since_last_build`` the data tests check what the hourly DAG's do after a successful run: the rows
    written since an hour before the last build started (MARKETFLOW_DATA_TEST_SINCE), not 48 hours."""
    pg = _server()
    env = _env(pg, db, project.resolve())
    state_file = ROOT / db / "state.json"
    state = json.loads(state_file.read_text())
    env["MARKETFLOW_DATA_TEST_SINCE"] = state["next_data_test_since"] if since_last_build else ""
    conn = psycopg2.connect(pg.dsn(db))
    conn.autocommit = True
    try:
        _append_hour(conn, state["markets"], state["next_minute"])
        state["next_minute"] += 60
        with conn.cursor() as cur:
            cur.execute("select count(*) from staging.candle")
            rows = cur.fetchone()[0]
    finally:
        conn.close()
    state["next_data_test_since"] = (datetime.now(UTC) - timedelta(minutes=60)).isoformat()
    say(f"{db}/{label}: hourly dbt build on {rows:,} candles, data tests since "
        f"{env['MARKETFLOW_DATA_TEST_SINCE'] or 'the 48-hour window'} ...")
    wall = _dbt(env, "build")
    state_file.write_text(json.dumps(state))
    per_model = _per_model(Path(env["DBT_TARGET_PATH"]))
    tests = sum(m["tests"] for m in per_model.values())
    out = {"db": db, "label": label, "project": str(project), "staging_rows": rows,
           "data_test_since": env["MARKETFLOW_DATA_TEST_SINCE"], "hourly_build_wall_s": round(wall, 1),
           "tests_s": round(tests, 2), "per_model": per_model}
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / f"{db}-{label}.json").write_text(json.dumps(out, indent=1))
    say(f"{db}/{label}: hourly build {wall:.1f}s wall, of it data and unit tests {tests:.1f}s")


def report(small: str, large: str) -> None:
    """Per model and label: seconds (run + tests) at the small and the large history, and their ratio."""
    results = {p.stem: json.loads(p.read_text()) for p in (ROOT / "results").glob("*.json")}
    labels = sorted({r["label"] for r in results.values()})
    for label in labels:
        s, lg = results.get(f"{small}-{label}"), results.get(f"{large}-{label}")
        if not (s and lg):
            continue
        print(f"\n## {label}: hourly dbt build, {s['staging_rows']:,} vs {lg['staging_rows']:,} candles "
              f"(wall {s['hourly_build_wall_s']} s vs {lg['hourly_build_wall_s']} s, "
              f"ratio {lg['hourly_build_wall_s'] / s['hourly_build_wall_s']:.2f})")
        print("| model | small run+tests s | large run+tests s | large/small |")
        print("|---|---:|---:|---:|")
        tot_s = tot_l = 0.0
        for model in sorted(set(s["per_model"]) | set(lg["per_model"]),
                            key=lambda m: -sum(lg["per_model"].get(m, {}).values())):
            a = sum(s["per_model"].get(model, {}).values())
            b = sum(lg["per_model"].get(model, {}).values())
            tot_s, tot_l = tot_s + a, tot_l + b
            print(f"| {model} | {a:.2f} | {b:.2f} | {b / a if a else float('nan'):.2f} |")
        print(f"| **sum** | {tot_s:.1f} | {tot_l:.1f} | {tot_l / tot_s:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hourly_dbt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("setup")
    p.add_argument("--db", required=True)
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--markets", type=int, default=20)
    p.add_argument("--uniform", action="store_true", help="every market rows/markets minutes deep")
    p = sub.add_parser("measure")
    p.add_argument("--db", required=True)
    p.add_argument("--project", type=Path, default=REPO / "dbt")
    p.add_argument("--label", required=True)
    p.add_argument("--full-select", nargs="*", default=[],
                   help="rebuild only these (dbt selectors) before the hour, e.g. the models whose SQL "
                        "changed since the last measure on this database (default: the whole project)")
    p = sub.add_parser("next-hour", help="append one more hour to the last measured tables and time dbt build")
    p.add_argument("--db", required=True)
    p.add_argument("--project", type=Path, default=REPO / "dbt")
    p.add_argument("--label", required=True)
    p.add_argument("--since-last-build", action="store_true",
                   help="data tests on the rows written since the last build (as the hourly DAG after a "
                        "successful run), not the 48-hour window")
    p = sub.add_parser("report")
    p.add_argument("--small", default="h1m")
    p.add_argument("--large", default="h10m")
    sub.add_parser("stop")
    args = parser.parse_args()
    if args.cmd == "setup":
        setup(args.db, args.rows, args.markets, args.uniform)
    elif args.cmd == "measure":
        measure(args.db, args.project, args.label, args.full_select)
    elif args.cmd == "next-hour":
        next_hour(args.db, args.project, args.label, args.since_last_build)
    elif args.cmd == "report":
        report(args.small, args.large)
    else:
        _server().stop()


if __name__ == "__main__":
    main()
