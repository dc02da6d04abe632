"""The machinery of the fault suite: services, an Airflow-like task runner, and the bookkeeping.

* ``Services``: a dedicated exchange emulator (short ban settings), PostgreSQL and MongoDB. The suite
  starts its own (``Services.start``) or borrows the pytest session's (``Services.attach``).
* ``CaseEnv``: one case's world: a fresh warehouse database with include/sql applied, a fresh MongoDB
  database, a markets file pointing at the emulator, and the case's own counters and checks.
* ``DagRun``: what Airflow does with one run of the candle DAG: per market an extract task, then a
  load task, each tried up to ``tries`` times (at-least-once: a failed try is simply run again with
  try_number + 1), every try on fresh database connections like a fresh task process. Inside each
  try the pipeline does its own in-task retries (marketflow.exchanges.call_with_retries).
* ``Suite``: runs a fault-free baseline once, then each case on its own databases, and compares
  staging.ohlcv candle by candle (and by checksum) with the baseline.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import pymongo
import stack

from faults import REPO
from marketflow.config import MarketConfig, MarketflowConfig, load_config
from marketflow.emulator.testing import EmulatorProcess
from marketflow.pipeline import Attempt, extract_market, load_market, plan_window
from marketflow.raw_store import RawStore
from marketflow.schema import apply_ddl
from marketflow.staging_load import table_checksum
from marketflow.timeframes import Window

log = logging.getLogger("faults")

SAMPLE_DATA = REPO / "include" / "sample_data"
DAG_ID = "fault_suite"
TIMEFRAME = "1m"

# The bundled real recordings, bounded to a few hours each and to at least two pages, so a fault
# can hit the second page after the first one is stored (Binance pages hold 1000 candles, OKX 300).
MARKETS: tuple[tuple[str, str, str, str], ...] = (
    ("binance", "ETH/USDT", "2022-08-14T00:00:00Z", "2022-08-15T00:00:00Z"),  # 1440 candles, 2 pages
    ("okx", "BTC/USDT", "2025-11-24T00:00:00Z", "2025-11-24T10:00:00Z"),  # 600 candles, 2 pages
)
# The run's window (dag_run.conf start/end) spans both; each market is clipped to its history.
RUN_CONF = {"start": "2022-08-14T00:00:00Z", "end": "2025-11-25T00:00:00Z"}
CLIENT_TIMEOUT_MS = 3000  # the markets file's timeout_ms: ccxt gives up on a silent exchange after 3 s

# The dedicated emulator: Binance's real weight budget (6000/min, which the pipeline's own pacing
# must respect), and short bans so a pacing mistake costs seconds, not minutes.
EMULATOR_CONFIG = {"binance_weight_limit": 6000, "ban_seconds": 5, "ban_after": 3, "okx_rate_limit_factor": 1.0}

# Airflow: DEFAULT_ARGS of airflow_tasks.py give a task 3 retries (4 tries) with a 20 s exponential
# delay. The suite is stricter, 3 tries per task, and waits 1 s between them (the rate-limit pauses
# and bans the pipeline records live in Postgres, so they outlast the shorter delay anyway).
TASK_TRIES = 3
RETRY_DELAY_S = 1.0
# MongoHook's client waits up to 30 s for a server; the suite's gives up after 3 s, so its short
# outages fail the try they hit, as a longer outage would in production, instead of stalling it.
MONGO_TIMEOUT_MS = 3000

KEY = ("exchange", "symbol", "timeframe", "open_time")
# Lineage changes with every run (run_id, ingested_at) and with a faulted body (raw_payload_id is the
# hash of the response); the candle itself is everything else.
LINEAGE = ("raw_payload_id", "run_id", "ingested_at")

# Holds a load's transaction open after its rows are inserted, for connections whose
# application_name is 'faults-hold:<seconds>[:tag]': only the suite's own victims ever sleep.
HOLD_TRIGGER_SQL = """
CREATE OR REPLACE FUNCTION public.faults_hold_load() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('application_name') LIKE 'faults-hold:%' THEN
        PERFORM pg_sleep(split_part(current_setting('application_name'), ':', 2)::float);
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS faults_hold_load ON staging.ohlcv;
CREATE TRIGGER faults_hold_load AFTER INSERT ON staging.ohlcv
    FOR EACH STATEMENT EXECUTE FUNCTION public.faults_hold_load();
"""

MARKETS_YML = """\
# Written by the fault suite (faults/harness.py): the bundled recordings, a few hours each.
defaults:
  timeframes: [1m]
  overlap_minutes: 0
exchanges:
{blocks}"""
MARKET_BLOCK = """\
  {exchange}:
    api_base_url: {url}
    options: {{fetchMarkets: {{types: [spot]}}}}
    timeout_ms: {timeout_ms}
    markets:
      - {{symbol: {symbol}, history_start: "{start}", history_end: "{end}"}}
"""


def write_markets_file(path: Path, emulator_url: str) -> Path:
    blocks = "".join(MARKET_BLOCK.format(exchange=ex, symbol=sym, start=start, end=end, url=emulator_url,
                                         timeout_ms=CLIENT_TIMEOUT_MS) for ex, sym, start, end in MARKETS)
    path.write_text(MARKETS_YML.format(blocks=blocks))
    return path


def market_windows(config: MarketflowConfig) -> dict[str, Window]:
    """exchange -> the window its market is extracted for (what every case must land exactly)."""
    from marketflow.pipeline import market_window

    run_window = plan_window(TIMEFRAME, None, None, RUN_CONF, 0)
    now_ms = int(time.time() * 1000)
    return {m.exchange: market_window(m, TIMEFRAME, run_window, now_ms) for m in config.markets(TIMEFRAME)}


class CaseError(RuntimeError):
    """The case could not do what it claims (e.g. the outage never hit the task it was aimed at)."""


# ---- services --------------------------------------------------------------------------------------
def _pg_ctl(pg: stack.PostgresServer, *args: str) -> None:
    cmd = [str(stack._pg_bindir() / "pg_ctl"), *args, "-D", str(pg.data_dir)]
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root (as stack.py does it)
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@dataclass
class Services:
    pg: stack.PostgresServer
    mongo_uri: str
    emulator: EmulatorProcess
    workdir: Path
    mongo: stack.ManagedProcess | None = None  # None: MongoDB is not ours to stop
    owns_pg: bool = False
    owns_workdir: bool = False

    @classmethod
    def start(cls, workdir: Path) -> Services:
        """Start a PostgreSQL, a MongoDB and an emulator of our own under ``workdir``."""
        workdir.mkdir(parents=True, exist_ok=True)
        started: list[Callable[[], None]] = []
        try:
            pg = stack.PostgresServer(workdir / "postgres", stack.free_port())
            pg.start()
            started.append(pg.stop)
            mongo = stack.mongo_server(workdir, workdir / "run", stack.free_port())
            mongo.start()
            started.append(mongo.stop)
            emulator = start_emulator()
        except BaseException:
            for stop in reversed(started):
                with contextlib.suppress(Exception):
                    stop()
            raise
        return cls(pg, f"mongodb://127.0.0.1:{mongo.port}", emulator, workdir, mongo, owns_pg=True,
                   owns_workdir=True)

    @classmethod
    def attach(cls, pg: stack.PostgresServer, mongo_uri: str, workdir: Path,
               mongo: stack.ManagedProcess | None = None) -> Services:
        """Use servers someone else runs (the pytest session's); only the emulator is our own."""
        workdir.mkdir(parents=True, exist_ok=True)
        return cls(pg, mongo_uri, start_emulator(), workdir, mongo)

    def close(self) -> None:
        self.emulator.stop()
        if self.owns_pg:
            if self.mongo is not None:
                self.mongo.stop()
            with contextlib.suppress(Exception):
                self.pg.stop()
        if self.owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Outages. Only servers this suite started are ever stopped, by the PID recorded at start.
    def stop_mongo(self) -> None:
        if self.mongo is None or not self.owns_pg:
            raise CaseError("this case stops MongoDB, so it needs a MongoDB the suite started itself")
        self.mongo.stop()

    def start_mongo(self) -> None:
        assert self.mongo is not None
        self.mongo.start()

    def stop_postgres(self, mode: str = "immediate") -> None:
        if not self.owns_pg:
            raise CaseError("this case stops PostgreSQL, so it needs a PostgreSQL the suite started itself")
        _pg_ctl(self.pg, "stop", "-m", mode, "-w", "-t", "60")

    def start_postgres(self) -> None:
        self.pg.start()  # crash recovery after an immediate stop happens here


def start_emulator() -> EmulatorProcess:
    python = str(stack.VENV_BIN / "python") if (stack.VENV_BIN / "python").exists() else sys.executable
    return EmulatorProcess(SAMPLE_DATA, binance_weight_limit=EMULATOR_CONFIG["binance_weight_limit"],
                           ban_seconds=EMULATOR_CONFIG["ban_seconds"], ban_after=EMULATOR_CONFIG["ban_after"],
                           python=python).start()


# ---- one case's world --------------------------------------------------------------------------------
@dataclass
class Check:
    what: str
    ok: bool
    detail: str = ""


@dataclass
class CaseEnv:
    slug: str
    database: str  # the warehouse database and the MongoDB database, both fresh per case
    dsn: str
    mongo_uri: str
    config_path: Path
    config: MarketflowConfig
    tries: int = TASK_TRIES
    services: Services | None = None  # None in a worker process
    events: Counter = field(default_factory=Counter)  # the suite's own faults (outages, kills)
    checks: list[Check] = field(default_factory=list)
    runs: list[DagRun] = field(default_factory=list)  # every DagRun of the case, for its report

    @property
    def mongo_db(self) -> str:
        return self.database

    @property
    def emulator(self) -> EmulatorProcess:
        assert self.services is not None
        return self.services.emulator

    @property
    def windows(self) -> dict[str, Window]:
        return market_windows(self.config)

    def market(self, exchange: str) -> MarketConfig:
        return next(m for m in self.config.markets(TIMEFRAME) if m.exchange == exchange)

    def connect(self, application_name: str = "marketflow-faults", autocommit: bool = False):
        conn = psycopg2.connect(self.dsn, application_name=application_name, connect_timeout=10)
        conn.autocommit = autocommit
        return conn

    def mongo_client(self) -> pymongo.MongoClient:
        return pymongo.MongoClient(self.mongo_uri, serverSelectionTimeoutMS=MONGO_TIMEOUT_MS,
                                   connectTimeoutMS=MONGO_TIMEOUT_MS)

    def event(self, what: str, n: int = 1) -> None:
        self.events[what] += n
        log.info("%s: %s", self.slug, what)

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(what, bool(ok), detail))
        log.info("%s: check %s: %s %s", self.slug, "ok" if ok else "FAILED", what, detail)
        return bool(ok)

    def query(self, sql: str, params: Any = None) -> list[tuple]:
        conn = self.connect(autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def staging_state(self) -> tuple[int, str]:
        """(rows, checksum) of staging.ohlcv, lineage excluded: equal means the same candles."""
        conn = self.connect()
        try:
            return table_checksum(conn, "staging.ohlcv", KEY, exclude=LINEAGE)
        finally:
            conn.close()

    def install_hold_trigger(self) -> None:
        conn = self.connect(autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(HOLD_TRIGGER_SQL)
        finally:
            conn.close()

    def held_backends(self, tag: str) -> list[tuple[int, str | None]]:
        """(pid, wait_event) of this database's sessions whose application_name carries ``tag``."""
        return [(int(pid), wait) for pid, wait in self.query(
            "SELECT pid, wait_event FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name LIKE %s", (f"faults-hold:%{tag}%",))]

    def wait_until(self, predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(psycopg2.OperationalError, pymongo.errors.PyMongoError):
                value = predicate()
                if value:
                    return value
            if time.monotonic() > deadline:
                raise CaseError(f"{self.slug}: timed out after {timeout:.0f}s waiting until {what}")
            time.sleep(interval)


# ---- the Airflow model -------------------------------------------------------------------------------
@dataclass
class TryRecord:
    task: str
    exchange: str
    try_number: int
    ok: bool
    seconds: float
    error: str | None = None
    started_at: float = 0.0
    ended_at: float = 0.0


class TaskFailed(RuntimeError):
    """A task failed all its tries: Airflow would mark it failed (and the run with it)."""


class WorkerKilled(RuntimeError):
    pass


TryFn = Callable[[int], Any]


class DagRun:
    """One run of the candle DAG: for each market an extract task, then its load task.

    Hooks (all optional) let a case aim a fault at one try:
      ``app_names[(task, exchange, try)]``  application_name of that try's warehouse connection
      ``overrides[(task, exchange, try)]``  a callable run instead of the in-process try
      ``before_try(task, exchange, try)``   called before every try
      ``after_failure(record)``            called when a try fails
      ``retry_gate(task, exchange, try)``   waits before a retry (default: RETRY_DELAY_S)
    """

    def __init__(self, env: CaseEnv, run_id: str, tries: int | None = None, load_app_name: str | None = None):
        self.env = env
        self.run_id = run_id
        self.tries = tries or env.tries
        self.load_app_name = load_app_name or "marketflow"
        self.app_names: dict[tuple[str, str, int], str] = {}
        self.overrides: dict[tuple[str, str, int], Callable[[], Any]] = {}
        self.before_try: Callable[[str, str, int], None] = lambda task, exchange, n: None
        self.after_failure: Callable[[TryRecord], None] = lambda record: None
        self.retry_gate: Callable[[str, str, int], None] = lambda task, exchange, n: time.sleep(RETRY_DELAY_S)
        self.records: list[TryRecord] = []
        self.extracted: dict[str, dict[str, Any]] = {}
        self.loaded: dict[str, dict[str, Any]] = {}
        self.window = plan_window(TIMEFRAME, None, None, RUN_CONF, env.config.overlap_minutes)
        env.runs.append(self)

    def attempt(self, task: str, exchange: str, try_number: int) -> Attempt:
        index = [m.exchange for m in self.env.config.markets(TIMEFRAME)].index(exchange)
        return Attempt(DAG_ID, self.run_id, f"{exchange}.{task}", index, try_number)

    def run(self) -> DagRun:
        """Every market's extract -> load; like Airflow's mapped task groups, a market whose task
        failed all its tries does not stop the others, and the run fails at the end."""
        failed = []
        for market in self.env.config.markets(TIMEFRAME):
            try:
                self.run_market(market.exchange)
            except TaskFailed as exc:
                failed.append(str(exc))
        if failed:
            raise TaskFailed("; ".join(failed))
        return self

    def run_market(self, exchange: str) -> dict[str, Any]:
        self.extracted[exchange] = self.task("extract", exchange, lambda n: self.extract_try(exchange, n))
        self.loaded[exchange] = self.task("load", exchange,
                                          lambda n: self.load_try(exchange, self.extracted[exchange], n))
        return self.loaded[exchange]

    def task(self, task: str, exchange: str, fn: TryFn) -> Any:
        last: BaseException | None = None
        for n in range(1, self.tries + 1):
            if n > 1:
                self.retry_gate(task, exchange, n)
            self.before_try(task, exchange, n)
            override = self.overrides.get((task, exchange, n))
            started, wall = time.monotonic(), time.time()
            try:
                result = override() if override is not None else fn(n)
            except Exception as exc:
                last = exc
                record = TryRecord(task, exchange, n, False, time.monotonic() - started,
                                   f"{type(exc).__name__}: {exc}"[:300], wall, time.time())
                self.records.append(record)
                log.warning("%s %s %s try %d/%d failed: %s", self.run_id, exchange, task, n, self.tries,
                            record.error)
                self.after_failure(record)
                continue
            self.records.append(TryRecord(task, exchange, n, True, time.monotonic() - started, None, wall,
                                          time.time()))
            return result
        raise TaskFailed(f"{exchange} {task} failed all {self.tries} tries; last: {type(last).__name__}: {last}")

    def app_name(self, task: str, exchange: str, n: int, default: str) -> str:
        return self.app_names.get((task, exchange, n), default)

    def extract_try(self, exchange: str, n: int) -> dict[str, Any]:
        """The extract task's body (airflow_tasks.extract): raw store, shared rate limiter, error log."""
        env = self.env
        client = env.mongo_client()
        ops_conn = None
        try:
            ops_conn = env.connect(self.app_name("extract", exchange, n, "marketflow"), autocommit=True)
            return extract_market(env.config, env.market(exchange), TIMEFRAME, self.window,
                                  RawStore(client[env.mongo_db]), self.attempt("extract", exchange, n),
                                  ops_conn=ops_conn)
        finally:
            if ops_conn is not None:
                with contextlib.suppress(Exception):
                    ops_conn.close()
            client.close()

    def load_try(self, exchange: str, extracted: dict[str, Any], n: int) -> dict[str, Any]:
        """The load task's body (airflow_tasks.load)."""
        env = self.env
        client = env.mongo_client()
        conn = None
        try:
            conn = env.connect(self.app_name("load", exchange, n, self.load_app_name))
            return load_market(conn, RawStore(client[env.mongo_db]), extracted, self.attempt("load", exchange, n))
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            client.close()

    def failed_tries(self, task: str | None = None, exchange: str | None = None) -> list[TryRecord]:
        return [r for r in self.records if not r.ok and (task is None or r.task == task)
                and (exchange is None or r.exchange == exchange)]

    def changed_rows(self) -> int:
        return sum(r.get("inserted", 0) + r.get("updated", 0) for r in self.loaded.values())


# ---- child processes ---------------------------------------------------------------------------------
@dataclass
class Worker:
    """A task process of our own, forked like Airflow's LocalExecutor forks its task processes (the
    child starts with everything imported), running faults.worker.run_spec; killed only by its PID."""

    proc: multiprocessing.process.BaseProcess
    spec_path: Path
    result_path: Path
    log_path: Path

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    @property
    def exitcode(self) -> int | None:
        return self.proc.exitcode

    def running(self) -> bool:
        return self.proc.is_alive()

    def kill(self) -> None:
        if self.proc.is_alive():
            os.kill(self.pid, signal.SIGKILL)
        self.proc.join(30)

    def wait(self, timeout: float) -> int | None:
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.kill()
            raise CaseError(f"worker {self.pid} did not finish in {timeout:.0f}s; see {self.log_path}")
        return self.proc.exitcode

    def result(self) -> dict[str, Any]:
        if not self.result_path.exists():
            tail = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
            raise CaseError(f"worker {self.pid} left no result (exit {self.exitcode}):\n{tail}")
        return json.loads(self.result_path.read_text())


def spawn_worker(env: CaseEnv, name: str, spec: dict[str, Any]) -> Worker:
    from faults.worker import run_spec

    assert env.services is not None
    base = env.services.workdir / "workers" / f"{env.slug}-{name}"
    base.parent.mkdir(parents=True, exist_ok=True)
    spec_path, result_path, log_path = (base.with_suffix(s) for s in (".json", ".result.json", ".log"))
    spec = {"dsn": env.dsn, "mongo_uri": env.mongo_uri, "database": env.database,
            "config_path": str(env.config_path), "slug": env.slug, "tries": env.tries, **spec,
            "result_path": str(result_path), "log_path": str(log_path)}
    result_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps(spec))  # `python -m faults.worker <spec>` reruns it by hand
    proc = multiprocessing.get_context("fork").Process(target=run_spec, args=(spec,), name=f"faults-{name}",
                                                       daemon=True)
    proc.start()
    return Worker(proc, spec_path, result_path, log_path)


# ---- measuring ---------------------------------------------------------------------------------------
Row = tuple[Any, ...]


def staging_rows(env: CaseEnv) -> list[tuple[tuple[str, str, str, int], Row]]:
    """Every staging.ohlcv row as (key, values); values as Postgres prints them (the exchange's scale)."""
    return [((ex, sym, tf, int(ms)), tuple(values)) for ex, sym, tf, ms, *values in env.query(
        "SELECT exchange, symbol, timeframe, (extract(epoch FROM open_time) * 1000)::bigint, open::text, "
        "high::text, low::text, close::text, volume::text, quote_volume::text, trades FROM staging.ohlcv")]


@dataclass
class Baseline:
    rows: dict[tuple[str, str, str, int], Row]
    state: tuple[int, str]
    seconds: float


@dataclass
class CaseResult:
    slug: str
    name: str
    faults: str = ""
    expected: int = 0
    landed: int = 0
    lost: int = 0
    wrong: int = 0  # present with other values than the fault-free run (counted in lost)
    duplicated: int = 0
    bans: int = 0
    checksum_ok: bool = False
    error: str | None = None
    checks: list[Check] = field(default_factory=list)
    tries: str = ""
    in_task_retries: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (self.error is None and self.lost == 0 and self.duplicated == 0 and self.bans == 0
                and self.checksum_ok and all(c.ok for c in self.checks))

    def problems(self) -> list[str]:
        out = [f"error: {self.error}"] if self.error else []
        if self.lost:
            out.append(f"{self.lost} candles lost ({self.wrong} of them present with other values)")
        if self.duplicated:
            out.append(f"{self.duplicated} candles duplicated")
        if self.bans:
            out.append(f"{self.bans} bans (418 sent because the pipeline ignored a Retry-After)")
        if not self.checksum_ok and self.error is None:
            out.append("staging.ohlcv checksum differs from the fault-free run")
        out += [f"check failed: {c.what} {c.detail}".strip() for c in self.checks if not c.ok]
        return out

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def describe_faults(stats: dict[str, Any], events: Counter) -> str:
    """What hit the pipeline: the emulator's fired faults and rate-limit answers, and our own outages."""
    parts = [f"{n}x {kind}" for kind, n in sorted(stats.get("faults_fired", {}).get("by_kind", {}).items())]
    by_cause = stats.get("http_429_by_cause", {})
    if by_cause.get("rate_limit"):
        parts.append(f"{by_cause['rate_limit']}x 429 over weight budget")
    parts += [f"{n}x {what}" for what, n in events.items()]
    return ", ".join(parts) or "none"


def summarize_tries(records: list[TryRecord]) -> str:
    """e.g. 'binance extract 2/3, okx load 2' for the tasks that needed more than one try."""
    last: dict[tuple[str, str], TryRecord] = {}
    for r in records:
        key = (r.exchange, r.task)
        if key not in last or r.try_number >= last[key].try_number:
            last[key] = r
    out = [f"{ex} {task} try {r.try_number}{'' if r.ok else ' (failed)'}" for (ex, task), r in last.items()
           if r.try_number > 1 or not r.ok]
    return ", ".join(out) or "all first tries"


@dataclass
class Case:
    """One fault scenario. ``faults`` are installed on the emulator before ``drive`` runs the DAG."""

    slug: str
    name: str
    summary: str
    faults: tuple[dict[str, Any], ...] = ()
    emulator_config: dict[str, Any] = field(default_factory=dict)
    drive: Callable[[CaseEnv], Any] | None = None  # default: one DagRun
    quick: bool = False
    tries: int | None = None


class Suite:
    def __init__(self, services: Services, tries: int = TASK_TRIES, keep: bool = False) -> None:
        self.services = services
        self.tries = tries
        self.keep = keep
        self.config_path = write_markets_file(services.workdir / "markets.yml", services.emulator.base_url)
        self.config = load_config(self.config_path)
        self.windows = market_windows(self.config)
        self.baseline: Baseline | None = None

    @property
    def expected(self) -> int:
        return sum(w.candles(TIMEFRAME) for w in self.windows.values())

    @contextlib.contextmanager
    def case_env(self, slug: str, tries: int | None = None) -> Iterator[CaseEnv]:
        database = f"faults_{os.getpid()}_{slug}"[:63]
        pg = self.services.pg
        pg.drop_database(database)
        pg.create_database(database)
        env = CaseEnv(slug, database, pg.dsn(database), self.services.mongo_uri, self.config_path, self.config,
                      tries or self.tries, self.services)
        conn = env.connect()
        try:
            apply_ddl(conn)
        finally:
            conn.close()
        client = env.mongo_client()
        client.drop_database(database)
        try:
            RawStore(client[database]).ensure_indexes(self.config.raw_retention_days)
        finally:
            client.close()
        try:
            yield env
        finally:
            if not self.keep:
                with contextlib.suppress(Exception):
                    pg.drop_database(database)
                with contextlib.suppress(Exception):
                    client = env.mongo_client()
                    client.drop_database(database)
                    client.close()

    def reset_emulator(self, config: dict[str, Any] | None = None) -> None:
        emu = self.services.emulator
        emu.clear_faults()
        emu.configure(**{**EMULATOR_CONFIG, **(config or {})})
        emu.reset()

    def run_baseline(self) -> Baseline:
        """The fault-free run every case is compared with."""
        started = time.monotonic()
        self.reset_emulator()
        with self.case_env("baseline") as env:
            DagRun(env, "baseline").run()
            rows = staging_rows(env)
            state = env.staging_state()
        stats = self.services.emulator.stats()
        if len(rows) != self.expected or state[0] != self.expected:
            raise RuntimeError(f"the fault-free run landed {len(rows)} candles, the windows hold {self.expected}")
        if stats.get("http_429_sent") or stats.get("http_418_sent"):
            raise RuntimeError(f"the fault-free run was rate limited: {stats}")
        self.baseline = Baseline(dict(rows), state, time.monotonic() - started)
        return self.baseline

    def run_case(self, case: Case) -> CaseResult:
        if self.baseline is None:
            self.run_baseline()
        assert self.baseline is not None
        result = CaseResult(case.slug, case.name, expected=len(self.baseline.rows))
        started = time.monotonic()
        self.reset_emulator(case.emulator_config)
        emu = self.services.emulator
        with self.case_env(case.slug, case.tries) as env:
            try:
                if case.faults:  # fixed ids: the emulator seeds each fault's RNG with its id
                    emu.add_faults([{"id": f"{case.slug}-{i}", **f} for i, f in enumerate(case.faults, 1)])
                if case.drive is None:
                    DagRun(env, f"{case.slug}-1").run()
                else:
                    case.drive(env)
            except Exception as exc:
                result.error = f"{type(exc).__name__}: {exc}"
                log.error("%s: %s", case.slug, traceback.format_exc())
            finally:
                with contextlib.suppress(Exception):
                    planted = emu.faults()
                    unfired = [f["id"] for f in planted if (f["remaining"] or 0) > 0 or not f["fired"]]
                    if planted:
                        env.check("every planted fault fired", not unfired,
                                  f"(not fired: {unfired})" if unfired else "")
                with contextlib.suppress(Exception):
                    emu.clear_faults()
            stats = emu.stats()
            result.faults = describe_faults(stats, env.events)
            result.bans = int(stats.get("http_418_by_cause", {}).get("ban", 0))
            result.checks = list(env.checks)
            result.tries = "; ".join(summarize_tries(r.records) for r in env.runs if r.records) or "-"
            try:
                self.measure(env, result)
                result.in_task_retries = int(env.query("SELECT count(*) FROM ops.api_errors WHERE will_retry")[0][0])
            except Exception as exc:
                result.error = result.error or f"measuring failed: {type(exc).__name__}: {exc}"
        result.seconds = time.monotonic() - started
        log.info("%s: %s", case.slug, json.dumps(result.as_dict(), default=str))
        return result

    def measure(self, env: CaseEnv, result: CaseResult) -> None:
        assert self.baseline is not None
        rows = staging_rows(env)
        landed_keys = [k for k, _ in rows]
        present = dict(rows)
        truth = self.baseline.rows
        result.landed = sum(1 for k, v in truth.items() if present.get(k) == v)
        result.wrong = sum(1 for k, v in truth.items() if k in present and present[k] != v)
        result.lost = len(truth) - result.landed
        # A candle twice: a second row for a key (if the primary key ever went) or a row the
        # fault-free run does not have (e.g. a duplicated candle landing on another minute).
        result.duplicated = (len(landed_keys) - len(set(landed_keys))) + sum(1 for k in present if k not in truth)
        result.checksum_ok = env.staging_state() == self.baseline.state
