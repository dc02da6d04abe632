"""Figure 12 (issue 17): the market-data API under 100 concurrent clients, standalone and through
Airflow's API server.

A candle history built straight in Postgres by bench.history, the marts by dbt: in a whole run the
large history of figure 5x, handed over (full: 30M candles of 1,000 markets, 10 of them with a year
of 1m; QUICK: ~350k of 100 markets); run alone (`--only 12`) its own of the same shape
(MARKETFLOW_BENCH_API_MILLIONS=1/3/10/30 picks another full size). Then, on the same warehouse:

* standalone: ``uvicorn --factory marketflow.api.app:standalone_app --workers 2`` as its own login
  role (a member of marketflow_api), with a bearer token of ops.api_tokens;
* Airflow: ``airflow api-server --workers 2`` with the marketflow plugin (the app at /marketflow),
  Airflow's JWT from POST /auth/token.

100 users (asyncio, an httpx client with one keep-alive connection each), each a loop of a request and a think time of
0.5-1.5 s (~100 requests/s offered), on two routes in turn:

12a/12c ``/latest?exchange=&symbol=`` of a random market           p95 <= 20 ms
12b/12d ``/ohlcv`` a day of 1m (1,440 candles) of a long market     p95 <= 100 ms

Every answer is checked (200, the market asked for, 1,440 candles): any other is an error, and the
target needs zero. Value: p95 under the 100 users; reference: p95 of one user asking back to back
in the same run (what concurrency adds is the ratio). p50/p99, throughput and errors in the detail.

Where the CPU goes: for each phase the CPU-seconds of the bench's PostgreSQL, of the API server's
processes, of the load generator (this process) and of the whole machine (other users of the shared
cores included), per request. ``ohlcv_cold``: one user asking a different day each time (a page the
API has not built yet: its full cost; a day asked again is served from the API's page cache,
marketflow/api/pages.py).

Run alone in full mode it measures two histories in the same run: MARKETFLOW_BENCH_API_MILLIONS
(default ``1,30``: the 1M reference and the scale issue's 30M). MARKETFLOW_BENCH_KEEP=1 keeps the
histories (and the bench's PostgreSQL) for the next run.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg2

from bench.analyst_queries import Size, _vacuum_marts
from bench.big_tables import _pct
from bench.context import BenchContext, say
from bench.history import START, History, build_history
from bench.report import Figure
from scripts import stack

USERS = 100
THINK_S = (0.5, 1.5)
WORKERS = 2
TARGET_MS = {"latest": 20.0, "ohlcv": 100.0}
ROLE = "bench_api_login"
# The marts the measured routes read (/ohlcv: ohlcv_1m and markets; /latest: latest_price) and what they
# are built from: the rest of the project (rollups, quality) is not needed and took most of dbt's ~30 min
# at 30M candles.
API_DBT_ARGS = ("run", "--select", "+markets", "+latest_price")
COLD_REQUESTS = 30


@dataclass(frozen=True)
class Route:
    key: str
    path: Callable[[random.Random], tuple[str, dict[str, str]]]
    check: Callable[[httpx.Response, dict[str, str]], str | None]  # None: a right answer, else what is wrong


def size_for(quick: bool, millions: int | None) -> Size:
    """The history: QUICK ~350k candles; full 30M (figure 5x's large size) unless ``millions`` says."""
    if quick:
        return Size("quick 0.35M", 100, 3_000, 1, 35 * 1440)
    year = 365 * 1440
    long_candles = 10 * year  # 5.26M in 10 markets with a year each
    total = (millions or 30) * 1_000_000
    if total <= 3_000_000:  # small development sizes: one market with a year, the rest short
        return Size(f"{total / 1e6:g}M", 1000, (total - year) // 999, 1, year)
    return Size(f"{total / 1e6:g}M", 1000, (total - long_candles) // 990, 10, year)


def routes(markets: list[tuple[str, str]], long_market: tuple[str, str], day: date) -> list[Route]:
    next_day = day + timedelta(days=1)

    def latest(rng: random.Random) -> tuple[str, dict[str, str]]:
        exchange, symbol = rng.choice(markets)
        return "/latest", {"exchange": exchange, "symbol": symbol}

    def latest_ok(r: httpx.Response, params: dict[str, str]) -> str | None:
        if r.status_code != 200:
            return f"HTTP {r.status_code}"
        rows = r.json()["prices"]
        return None if [(x["exchange"], x["symbol"]) for x in rows] == [(params["exchange"], params["symbol"])] \
            else f"wrong rows {rows[:2]}"

    def ohlcv(rng: random.Random) -> tuple[str, dict[str, str]]:
        exchange, symbol = long_market
        return "/ohlcv", {"exchange": exchange, "symbol": symbol, "timeframe": "1m", "start": f"{day}T00:00:00Z",
                          "end": f"{next_day}T00:00:00Z", "limit": "1440"}

    def ohlcv_ok(r: httpx.Response, params: dict[str, str]) -> str | None:
        if r.status_code != 200:
            return f"HTTP {r.status_code}"
        n = len(r.json()["candles"])
        return None if n == 1440 else f"{n} candles, not 1,440"

    days_back = itertools.count()

    def ohlcv_cold(rng: random.Random) -> tuple[str, dict[str, str]]:
        # a day of the long market's history not asked before in this run of 31 requests (QUICK: 35 days)
        first = day - timedelta(days=1 + next(days_back) % 34)
        path, params = ohlcv(rng)
        return path, params | {"start": f"{first}T00:00:00Z", "end": f"{first + timedelta(days=1)}T00:00:00Z"}

    return [Route("latest", latest, latest_ok), Route("ohlcv", ohlcv, ohlcv_ok), Route("ohlcv_cold", ohlcv_cold,
                                                                                        ohlcv_ok)]


def _cpu_snapshot(ctx: BenchContext) -> dict[str, float]:
    """CPU-seconds so far: the bench's PostgreSQL, the API server's process tree, this process (the load
    generator) and every core of the machine busy (/proc/stat: all but idle and iowait)."""
    by_tree = ctx.cpu_seconds()
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return {"postgres": by_tree.get("postgres", 0.0), "api_server": by_tree.get("api server", 0.0),
            "load_generator": by_tree.get("bench driver (pipeline workers)", 0.0),
            "machine": (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")}


def _cpu_per_request(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float]:
    """Milliseconds of CPU per request of each part; ``other``: the rest of the machine's busy time (the
    other users of the shared cores, MongoDB, the kernel's idle work)."""
    ms = {k: (after[k] - before[k]) * 1000 / max(requests, 1) for k in before}
    ms["other"] = ms["machine"] - ms["postgres"] - ms["api_server"] - ms["load_generator"]
    return {k: round(v, 2) for k, v in ms.items()}


async def _drive(base: str, headers: dict[str, str], route: Route, users: int, per_user: int,
                 think: tuple[float, float] | None, cpu: Callable[[], dict[str, float]]) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    # One client (one keep-alive connection) per user, as 100 browsers or scripts would be: a single
    # httpx client shared by 100 coroutines spends its time in its own connection pool (bench figure 12:
    # ~9 ms of the driver's CPU per request, with the servers mostly idle). The answer is checked after
    # the clock stops: parsing a day of candles is the client's work, not the API's latency.
    clients = [httpx.AsyncClient(base_url=base, headers=headers, timeout=60,
                                 limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
               for _ in range(users)]
    # An answer byte for byte equal to one already checked for the same request gets the same verdict:
    # each distinct body is parsed once (a day of candles is ~3 ms of this process's CPU, on the same two
    # cores as the servers, which would count the load generator's JSON parsing against the API).
    verdicts: dict[tuple, str | None] = {}

    async def user(index: int) -> None:
        client, rng = clients[index], random.Random(index)
        if think:
            await asyncio.sleep(rng.uniform(0, think[1]))  # users arrive spread, not in one burst
        for _ in range(per_user):
            path, params = route.path(rng)
            started = time.perf_counter()
            try:
                response = await client.get(path, params=params)
                await response.aread()
                elapsed = time.perf_counter() - started
                seen = (path, tuple(sorted(params.items())), response.status_code,
                        hashlib.blake2b(response.content, digest_size=16).digest())
                if seen not in verdicts:
                    verdicts[seen] = route.check(response, params)
                problem = verdicts[seen]
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                elapsed, problem = time.perf_counter() - started, f"{type(exc).__name__}: {exc}"
            if problem is None:
                latencies.append(elapsed * 1000)
            else:
                errors.append(problem)
            if think:
                await asyncio.sleep(rng.uniform(*think))

    try:
        # one request per user first, untimed: connections open, each worker's pool warm
        warm = route.path(random.Random(-1))
        await asyncio.gather(*(c.get(warm[0], params=warm[1]) for c in clients))
        cpu_before = cpu()
        started = time.perf_counter()
        await asyncio.gather(*(user(i) for i in range(users)))
        seconds = time.perf_counter() - started
        cpu_after = cpu()
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    done = len(latencies)
    return {"requests": done + len(errors), "errors": len(errors), "first_errors": sorted(set(errors))[:3],
            "p50_ms": round(_pct(latencies, 0.50), 2) if done else None,
            "p95_ms": round(_pct(latencies, 0.95), 2) if done else None,
            "p99_ms": round(_pct(latencies, 0.99), 2) if done else None,
            "max_ms": round(max(latencies), 2) if done else None,
            "per_second": round((done + len(errors)) / seconds, 1), "seconds": round(seconds, 1),
            "distinct_answers_checked": len(verdicts),
            "cpu_ms_per_request": _cpu_per_request(cpu_before, cpu_after, done + len(errors))}


def measure(ctx: BenchContext, base: str, headers: dict[str, str], all_routes: list[Route],
            per_user: int) -> dict[str, dict]:
    out: dict[str, dict] = {}

    def cpu() -> dict[str, float]:
        return _cpu_snapshot(ctx)

    for route in all_routes:
        if route.key == "ohlcv_cold":  # one user, every request a page not built yet: the full cost
            one = asyncio.run(_drive(base, headers, route, 1, COLD_REQUESTS, None, cpu))
            out[route.key] = {"one_user": one}
            say(f"  {base} {route.key}: 1 user p50/p95 {one['p50_ms']}/{one['p95_ms']} ms, CPU ms per request "
                f"{one['cpu_ms_per_request']}")
            continue
        one = asyncio.run(_drive(base, headers, route, 1, max(per_user * 3, 30), None, cpu))
        many = asyncio.run(_drive(base, headers, route, USERS, per_user, THINK_S, cpu))
        out[route.key] = {"one_user": one, "users": many}
        say(f"  {base} {route.key}: 1 user p95 {one['p95_ms']} ms; {USERS} users p50/p95/p99 "
            f"{many['p50_ms']}/{many['p95_ms']}/{many['p99_ms']} ms, {many['per_second']} req/s, "
            f"{many['errors']} errors; CPU ms per request {many['cpu_ms_per_request']}")
    return out


def _api_role(dsn: str) -> tuple[str, str]:
    """A login role of marketflow_api and a bearer token for the standalone API."""
    from marketflow.api.auth import new_token

    token, digest = new_token()
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,))
            verb = "ALTER" if cur.fetchone() else "CREATE"
            cur.execute(f"{verb} ROLE {ROLE} LOGIN PASSWORD 'bench'")
            cur.execute(f"GRANT marketflow_api TO {ROLE}")
            cur.execute("INSERT INTO ops.api_tokens (name, token_sha256) VALUES ('bench', %s)", (digest,))
    finally:
        conn.close()
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(netloc=f"{ROLE}:bench@{parts.hostname}:{parts.port}")), token


def _standalone(ctx: BenchContext, api_dsn: str, token: str, all_routes: list[Route], per_user: int) -> dict:
    port = stack.free_port()
    server = stack.ManagedProcess(
        "bench-api", ctx.run_dir, [str(stack.VENV_BIN / "python"), "-m", "uvicorn", "--factory",
                                   "marketflow.api.app:standalone_app", "--host", "127.0.0.1", "--port", str(port),
                                   "--workers", str(WORKERS), "--no-access-log"], port,
        env={"MARKETFLOW_API_DATABASE": api_dsn, "MARKETFLOW_API_LOG_LEVEL": "WARNING",
             "PYTHONPATH": f"{stack.REPO / 'plugins'}:{stack.REPO}"}, ready_timeout=120)
    server.start()
    ctx.services["api server"] = server.pid()
    try:
        return measure(ctx, f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}, all_routes, per_user)
    finally:
        ctx.services.pop("api server", None)
        server.stop()


class AirflowApi:
    """Airflow's API server with the marketflow plugin, its metadata database migrated once per run."""

    metadata_db = "bench_api_airflow"

    def __init__(self, ctx: BenchContext) -> None:
        self.ctx = ctx
        self.home = ctx.root / "api_airflow_home"
        self.password = "bench-" + os.urandom(6).hex()

    def __enter__(self) -> AirflowApi:
        import subprocess

        shutil.rmtree(self.home, ignore_errors=True)
        self.home.mkdir(parents=True)
        (self.home / "passwords.json").write_text(json.dumps({stack.ADMIN_USER: self.password}))
        self.ctx.pg.drop_database(self.metadata_db)
        self.ctx.pg.create_database(self.metadata_db)
        started = time.monotonic()
        env = stack.airflow_env(self.home, self.ctx.pg, stack.free_port(), self.metadata_db)
        subprocess.run([str(stack.VENV_BIN / "airflow"), "db", "migrate"], env={**os.environ, **env}, check=True,
                       capture_output=True, timeout=900)
        say(f"  Airflow metadata migrated in {time.monotonic() - started:.0f}s")
        return self

    def __exit__(self, *exc: object) -> None:
        self.ctx.pg.drop_database(self.metadata_db)
        shutil.rmtree(self.home, ignore_errors=True)

    def measure(self, api_dsn: str, all_routes: list[Route], per_user: int) -> dict:
        port = stack.free_port()
        env = stack.airflow_env(self.home, self.ctx.pg, port, self.metadata_db) | {"MARKETFLOW_API_DATABASE": api_dsn}
        started = time.monotonic()
        server = stack.ManagedProcess("bench-airflow-api", self.ctx.run_dir,
                                      [str(stack.VENV_BIN / "airflow"), "api-server", "--port", str(port),
                                       "--workers", str(WORKERS)], port, env=env, ready_timeout=300)
        server.start()
        self.ctx.services["api server"] = server.pid()
        say(f"  Airflow API server up in {time.monotonic() - started:.0f}s")
        try:
            base = f"http://127.0.0.1:{port}"
            jwt = httpx.post(f"{base}/auth/token", json={"username": stack.ADMIN_USER, "password": self.password},
                             timeout=60).json()["access_token"]
            return measure(self.ctx, f"{base}/marketflow", {"Authorization": f"Bearer {jwt}"}, all_routes, per_user)
        finally:
            self.ctx.services.pop("api server", None)
            server.stop()


def _keep() -> bool:
    return os.environ.get("MARKETFLOW_BENCH_KEEP") not in (None, "", "0")


def _history(ctx: BenchContext, size: Size, name: str) -> tuple[History, float, bool]:
    """The history of ``size`` in database ``name``: built (and vacuumed), or with MARKETFLOW_BENCH_KEEP=1
    the one a previous run kept. Returns it, the vacuum's seconds and whether it was reused."""
    record = ctx.root / f"{name}.json"
    if _keep() and record.exists() and ctx.pg.psql_admin(f"SELECT 1 FROM pg_database WHERE datname = '{name}'"):
        kept = json.loads(record.read_text())
        say(f"reusing the kept history {name} ({kept['candles']:,} candles)")
        history = History(ctx.pg.dsn(name), {}, Path(kept["work"]), [tuple(m) for m in kept["markets"]],
                          kept["candles"], kept["generate_seconds"], kept["dbt_seconds"])
        return history, kept["vacuum_seconds"], True
    history = build_history(ctx, name, size.markets, size.minutes, API_DBT_ARGS, long_markets=size.long_markets,
                            long_minutes=size.long_minutes, ticker_minutes=60)
    vacuum_s = _vacuum_marts(history.dsn)
    if _keep():
        record.write_text(json.dumps({"candles": history.candles, "work": str(history.work),
                                      "markets": history.markets, "generate_seconds": history.generate_seconds,
                                      "dbt_seconds": history.dbt_seconds, "vacuum_seconds": vacuum_s}))
    return history, vacuum_s, False


def _drop(ctx: BenchContext, name: str, history: History) -> None:
    if _keep():
        return
    ctx.pg.drop_database(name)
    shutil.rmtree(history.work, ignore_errors=True)


def run(ctx: BenchContext) -> list[Figure]:
    per_user = 5 if ctx.quick else 20
    handed = ctx.shared.pop("history_for_api_load", None)
    if handed:  # figure 5x's large history (30M in a full run), its marts built and vacuumed
        plan = [(handed[1], handed[2], handed[0])]
    else:
        millions = os.environ.get("MARKETFLOW_BENCH_API_MILLIONS") or ("" if ctx.quick else "1,30")
        sizes = [size_for(True, None)] if ctx.quick else [size_for(False, int(m)) for m in millions.split(",")]
        plan = [(size, f"bench_api_load_{size.label.replace(' ', '_').replace('.', '_')}", None) for size in sizes]
    figures: list[Figure] = []
    try:
        with AirflowApi(ctx) as airflow:
            for size, name, history in plan:
                figures += _one_size(ctx, size, name, history, airflow, per_user)
    finally:
        with psycopg2.connect(ctx.pg.dsn("postgres")) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,))
            if cur.fetchone() and not _keep():
                cur.execute(f"DROP ROLE {ROLE}")
    return figures


def _one_size(ctx: BenchContext, size: Size, name: str, handed: History | None, airflow: AirflowApi,
              per_user: int) -> list[Figure]:
    if handed:
        say(f"on figure 5x's history ({size.label})")
        history, vacuum_s, reused = handed, 0.0, True
    else:
        history, vacuum_s, reused = _history(ctx, size, name)
    try:
        span = max(size.minutes, size.long_minutes)
        last_day = (START + timedelta(minutes=span) - timedelta(days=1)).date()
        all_routes = routes(history.markets, history.markets[0], last_day)
        api_dsn, token = _api_role(history.dsn)
        say(f"history {history.candles:,} candles ({size.label}); {USERS} users, {per_user} requests each per route")
        results = {"standalone": _standalone(ctx, api_dsn, token, all_routes, per_user),
                   "airflow": airflow.measure(api_dsn, all_routes, per_user)}
    finally:
        _drop(ctx, name, history)  # a handed history too: figure 5x left it to this figure
    built = {"candles": history.candles, "size": size.label, "generate_s": round(history.generate_seconds, 1),
             "dbt_run_s": round(history.dbt_seconds, 1), "vacuum_s": round(vacuum_s, 1), "reused": reused,
             "users": USERS, "think_s": THINK_S, "workers": WORKERS, "requests_per_user": per_user,
             "load_average_1m_at_end": round(os.getloadavg()[0], 1)}  # a shared machine: how busy it was
    figures = []
    for letter, (where, key) in zip("abcd", [("standalone", "latest"), ("standalone", "ohlcv"),
                                             ("airflow", "latest"), ("airflow", "ohlcv")], strict=True):
        got = results[where][key]
        many, one = got["users"], got["one_user"]
        label = {"latest": "/latest", "ohlcv": "/ohlcv a day of 1m"}[key]
        value = many["p95_ms"] or 0.0
        detail = {"users": many, "one_user": one, "history": built}
        if key == "ohlcv":
            detail["cold_one_user"] = results[where]["ohlcv_cold"]["one_user"]
        figures.append(Figure(
            figure=f"12{letter} {label}, {USERS} users, {'standalone' if where == 'standalone' else 'in Airflow'}"
                   f" ({size.label} candles), p95",
            value=value, unit="ms",
            reference=f"1 user back to back: p95 {one['p95_ms']} ms",
            target=f"p95 <= {TARGET_MS[key]:g} ms, 0 errors",
            met=bool(many["p95_ms"] is not None and value <= TARGET_MS[key] and many["errors"] == 0
                     and one["errors"] == 0),
            ratio=value / one["p95_ms"] if one["p95_ms"] else None, reference_value=one["p95_ms"],
            detail=detail))
    return figures
