"""`make demo`: the whole pipeline offline, through Airflow, on the bundled real candles (Binance
ETH/USDT, OKX BTC/USDT) and one Bybit market of the emulator's synthetic candles (BTC/USDT).

1. start Postgres, MongoDB (mongod or nx-27017), the exchange emulator and Airflow standalone;
2. create one pool per exchange, unpause the hourly DAG and trigger it with a conf window
   spanning every market's bounded history (each market's window is clipped to its own);
3. show progress until the run ends, then print rows per mart, latest prices, table checksums
   (compared with the previous demo run: a re-run must change nothing), the UI and SQL access.

EMULATOR_DATA_DIR and MARKETFLOW_CONFIG point it at another dataset / markets file.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import httpx
import psycopg2
from psycopg2 import sql

from marketflow.config import load_config
from scripts import stack
from scripts.warehouse_checks import DERIVED_COLUMNS, LINEAGE_COLUMNS, RERUN_INVARIANT_TABLES, table_checksum

DAG_ID = "market_candles_1h"
# The demo's run waits behind the first scheduled hour (max_active_runs=1), a second full run: on a
# busy 2-core machine the two passed 30 minutes with the CeleryExecutor (the pools cap dbt at 2 tasks).
TIMEOUT_S = 60 * 60


def say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def airflow(env: dict[str, str], *args: str, capture: bool = False) -> str:
    res = subprocess.run([str(stack.VENV_BIN / "airflow"), *args], env={**os.environ, **env}, text=True,
                         capture_output=True)
    if res.returncode != 0:
        raise SystemExit(f"`airflow {' '.join(args)}` failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    return res.stdout if capture else ""


def warehouse_dsn(env: dict[str, str]) -> str:
    """The warehouse as libpq takes it: the Airflow connection's URI without its extras (?pooler=...)."""
    return env["AIRFLOW_CONN_MARKETFLOW_POSTGRES"].split("?", 1)[0]


def metadata_dsn(env: dict[str, str]) -> str:
    return env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].replace("postgresql+psycopg2://", "postgresql://")


def prepare(env: dict[str, str], airflow_home: Path) -> None:
    """Metadata database, warehouse schema and pools, before any Airflow process starts (both executors,
    the demo and the Celery-path test)."""
    airflow_home.mkdir(parents=True, exist_ok=True)
    airflow(env, "db", "migrate")
    say("migrating the warehouse schema (marketflow db upgrade)")
    subprocess.run([str(stack.VENV_BIN / "python"), "-m", "marketflow.cli", "db", "upgrade"],
                   env={**os.environ, **env}, check=True)
    grant_api_login(env)
    pools = subprocess.run([str(stack.VENV_BIN / "python"), "-m", "marketflow.cli", "pools", "--format", "json"],
                           env={**os.environ, **env}, check=True, capture_output=True, text=True).stdout
    (airflow_home / "pools.json").write_text(pools)
    airflow(env, "pools", "import", str(airflow_home / "pools.json"))


def grant_api_login(env: dict[str, str]) -> None:
    """The API's login role (MARKETFLOW_API_DATABASE) as a member of marketflow_api, which the schema
    migration just created: the API reads the marts as an analyst, never as the owner."""
    api = psycopg2.extensions.parse_dsn(env["MARKETFLOW_API_DATABASE"])
    with psycopg2.connect(warehouse_dsn(env)) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (api["user"],))
        verb = "ALTER" if cur.fetchone() else "CREATE"
        cur.execute(sql.SQL(verb + " ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(api["user"])),
                    (api["password"],))
        cur.execute(sql.SQL("GRANT marketflow_api TO {}").format(sql.Identifier(api["user"])))


def wait_for_dag(env: dict[str, str], logs: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg2.connect(metadata_dsn(env)) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM dag WHERE dag_id = %s", (DAG_ID,))
            if cur.fetchone()[0]:
                return
        time.sleep(3)
    raise SystemExit(f"Airflow did not parse {DAG_ID} within {timeout:.0f}s; see the logs in {logs}")


def trigger(env: dict[str, str], window: dict[str, str], prefix: str = "demo") -> str:
    airflow(env, "dags", "unpause", DAG_ID)
    run_id = f"{prefix}__{time.strftime('%Y%m%dT%H%M%S')}"
    airflow(env, "dags", "trigger", DAG_ID, "--run-id", run_id, "--conf", json.dumps(window))
    say(f"triggered {DAG_ID} run {run_id} for {window['start']} .. {window['end']}")
    return run_id


def wait_for_run(env: dict[str, str], run_id: str, timeout: float = TIMEOUT_S) -> str:
    """Progress lines until the run ends; its final state ("success", "failed", or "timeout")."""
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        state, line = progress(env, run_id)
        if line != last:
            say(line)
            last = line
        if state in ("success", "failed"):
            return state
        time.sleep(5)
    return "timeout"


def trigger_window(config) -> dict[str, str]:
    """One window covering every configured market's bounded history."""
    markets = config.markets("1m")
    start = min(m.history_start for m in markets)
    ends = [m.history_end for m in markets]
    if any(e is None for e in ends):
        raise SystemExit("make demo backfills bounded recordings; every market in MARKETFLOW_CONFIG needs "
                         "history_end (see include/config/markets.demo.yml)")
    return {"start": start.isoformat().replace("+00:00", "Z"), "end": max(ends).isoformat().replace("+00:00", "Z")}


def progress(env: dict[str, str], run_id: str) -> tuple[str, str]:
    with psycopg2.connect(metadata_dsn(env)) as conn, conn.cursor() as cur:
        cur.execute("SELECT state, count(*) FROM task_instance WHERE dag_id = %s AND run_id = %s GROUP BY state",
                    (DAG_ID, run_id))
        states = {s or "scheduled": n for s, n in cur.fetchall()}
        cur.execute("SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", (DAG_ID, run_id))
        row = cur.fetchone()
    run_state = row[0] if row else "queued"
    try:
        with psycopg2.connect(warehouse_dsn(env)) as wconn, wconn.cursor() as cur:
            cur.execute("SELECT count(*) FROM staging.ohlcv")
            candles = cur.fetchone()[0]
    except psycopg2.Error:
        candles = 0
    done = sum(n for s, n in states.items() if s in ("success", "skipped", "failed", "upstream_failed"))
    detail = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    total = sum(states.values())
    return run_state, f"run {run_state}: {done}/{total} tasks done ({detail}); {candles} candles in staging"


def report(warehouse_dsn: str, st: stack.Stack) -> None:
    checksum_file = st.state_dir / "demo-checksums.json"
    previous = json.loads(checksum_file.read_text()) if checksum_file.exists() else None
    current: dict[str, list] = {}
    with psycopg2.connect(warehouse_dsn) as conn:
        print("\nRows and checksums (md5 over rows in key order; data: without the lineage columns "
              f"{', '.join(LINEAGE_COLUMNS)} and ohlcv_1m's indicator columns,\nequal between any two stacks that "
              "loaded the same candles, "
              "whichever executor ran them):")
        for table, (key, computed) in RERUN_INVARIANT_TABLES.items():
            count, digest = table_checksum(conn, table, key, computed)
            _, data_digest = table_checksum(conn, table, key,
                                            [*computed, *LINEAGE_COLUMNS, *DERIVED_COLUMNS.get(table, [])])
            current[table] = [count, digest]
            same = ""
            if previous and table in previous:
                same = "  unchanged since the last demo run" if previous[table] == current[table] else \
                    f"  CHANGED (was {previous[table][0]} rows, {previous[table][1][:12]})"
            print(f"  {table:<24} {count:>7} rows  {digest[:12] or '(empty)':<12}  "
                  f"data {data_digest[:12] or '(empty)':<12}{same}")
        with conn.cursor() as cur:
            cur.execute("SELECT exchange, symbol, price, as_of, staleness_seconds FROM marts.latest_price "
                        "ORDER BY exchange, symbol")
            print("\nLatest prices (marts.latest_price):")
            for ex, sym, price, as_of, stale in cur.fetchall():
                print(f"  {ex:<8} {sym:<10} {price}  as of {as_of:%Y-%m-%d %H:%M} UTC ({int(stale)} s old)")
    checksum_file.write_text(json.dumps(current, indent=2))
    if previous and any(previous.get(t) != v for t, v in current.items() if t in previous):
        print("\nWARNING: a table changed between two demo runs of the same window.")


def generate_dbt_docs(st: stack.Stack, env: dict[str, str]) -> Path:
    """dbt docs (lineage, column docs) into the directory cosmos' Airflow plugin serves."""
    target = st.state_dir / "dbt-docs"
    res = subprocess.run([env["MARKETFLOW_DBT_EXECUTABLE"], "docs", "generate", "--quiet", "--profiles-dir", ".",
                          "--target-path", str(target)], cwd=env["MARKETFLOW_DBT_PROJECT_DIR"],
                         env={**os.environ, **env}, capture_output=True, text=True)
    if res.returncode != 0:
        say(f"dbt docs generate failed (the marts are fine):\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    return target


def api_curl(base: str, token: str, exchange: str, symbol: str, start: datetime, end: datetime) -> str:
    """The `curl` command that reads the 1m candles of [start, end) of one market from the market-data API
    at ``base`` (Airflow's /marketflow, or a standalone API's root) with a bearer token."""
    def iso(t: datetime) -> str:
        return t.isoformat().replace("+00:00", "Z")

    query = urlencode({"exchange": exchange, "symbol": symbol, "timeframe": "1m", "limit": 1440,
                       "start": iso(start), "end": iso(end)})
    return f"curl -sf -H {shlex.quote(f'Authorization: Bearer {token}')} {shlex.quote(f'{base}/ohlcv?{query}')}"


def demo_api_example(airflow_url: str, user: str, password: str, config) -> tuple[str, int]:
    """A token for the demo user (a JWT from Airflow's POST /auth/token: inside Airflow the API takes
    Airflow's login) and a curl command for the first day of the first bundled market; the command is
    run once here so the printed one is known to answer. Returns (command, candles it returned)."""
    response = httpx.post(f"{airflow_url}/auth/token", json={"username": user, "password": password}, timeout=60)
    response.raise_for_status()
    token = response.json()["access_token"]
    market = next(m for ex in config.exchanges for m in ex.markets if m.history_end is not None)  # bundled
    start = market.history_start.replace(hour=0, minute=0, second=0, microsecond=0)
    command = api_curl(f"{airflow_url}/marketflow", token, market.exchange, market.symbol, start,
                       start + timedelta(days=1))
    answer = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=60)
    if answer.returncode != 0:
        raise RuntimeError(f"the API example failed (curl exit {answer.returncode}): {command}")
    return command, len(json.loads(answer.stdout)["candles"])


def main() -> int:
    st = stack.Stack()
    env = st.env()
    os.environ.update(env)
    config = load_config(env["MARKETFLOW_CONFIG"], env={**os.environ, **env})
    say(f"markets file {env['MARKETFLOW_CONFIG']}; emulator data {st.emulator_data_dir}")
    stack.up(st, with_airflow=False)
    say("preparing the Airflow metadata database and pools")
    prepare(env, st.airflow_home)
    stack.up(st, with_airflow=True)
    say(f"Airflow ({st.executor} executor) is up at http://127.0.0.1:{st.airflow_port}; waiting for it to "
        f"parse {DAG_ID}")
    wait_for_dag(env, st.run_dir)
    run_id = trigger(env, trigger_window(config))
    state = wait_for_run(env, run_id)
    warehouse = warehouse_dsn(env)
    if state != "success":
        say(f"the run ended {state}; task logs are in {st.airflow_home / 'logs'} and the Airflow UI")
        return 1
    report(warehouse, st)
    generate_dbt_docs(st, env)
    airflow_url = f"http://127.0.0.1:{st.airflow_port}"
    try:
        curl, candles = demo_api_example(airflow_url, stack.ADMIN_USER, st.admin_password(), config)
        api_lines = (f"{curl}\n               ({candles} candles; a token of the demo user, valid 24 h: POST "
                     f"{airflow_url}/auth/token; without one: 401)")
    except (httpx.HTTPError, RuntimeError, KeyError, ValueError) as exc:
        api_lines = f"(the example call failed: {exc}; see {st.airflow_home / 'logs'})"
    print(f"""
Market API     {api_lines}
Airflow UI     http://127.0.0.1:{st.airflow_port}   login {stack.ADMIN_USER} / {st.admin_password()}
               (a random token kept in {st.state_dir / 'airflow-admin.password'}; DAGs: market_candles_1h,
               market_candles_1m, market_maintenance)
dbt docs       http://127.0.0.1:{st.airflow_port}/cosmos/marketflow/dbt_docs_index.html  (Browse > dbt docs)
Markets page   {airflow_url}/plugin/markets  (Markets in the navigation, after the login; the page alone:
               {airflow_url}/marketflow/ui/)
SQL            psql '{warehouse}'
               e.g. SELECT * FROM marts.ohlcv_1m ORDER BY open_time DESC LIMIT 5;
Raw payloads   {env['MONGO_URI']}  (collections raw_market_payload, raw_ingestion_log)
Stop           make down   (data stays in {st.state_dir}; make demo again re-runs the same window)
""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
