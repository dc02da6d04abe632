"""The machinery of the fault suite: services, an Airflow-like task runner, and the bookkeeping.

* ``Services``: a dedicated exchange emulator (short ban settings), PostgreSQL and MongoDB, all the
  suite's own (``Services.start``): some cases stop them.
* ``CaseEnv``: one case's world: a fresh warehouse database with include/sql applied, a fresh MongoDB
  database, a markets file pointing at the emulator, and the case's own counters and checks.
* ``DagRun``: what Airflow does with one run of the hourly candle DAG: per exchange its reconcile
  task (pipeline.run_exchange_markets), retried as the DAG's task object says (its retries, retry
  policy and delays, read from dags/market_candles_1h.py: a failed try is run again with
  try_number + 1 unless the policy fails it), every try on fresh database connections and caches
  like a fresh task process. Inside each try the pipeline does its own in-task retries
  (marketflow.exchanges.call_with_retries).
* ``Suite``: runs a fault-free baseline once, then each case on its own databases, and compares
  staging.ohlcv candle by candle (and by checksum) with the baseline, then the marts dbt builds from
  it (ohlcv_1m and the rollups, faults/marts.py) by count and checksum.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
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
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg2
import pymongo
import yaml

from exchange_emulator.testing import EmulatorProcess
from faults import REPO
from faults.marts import MartBuilder, MartState, differing_marts, expected_mart_rows, mart_state
from marketflow import exchanges
from marketflow.config import MarketConfig, MarketflowConfig, load_config
from marketflow.connections import session_options
from marketflow.pipeline import Attempt, plan_window
from marketflow.raw_store import INGESTION_LOG, RawStore
from marketflow.schema import apply_ddl
from marketflow.timeframes import Window
from scripts import stack
from scripts.warehouse_checks import table_checksum

log = logging.getLogger("faults")

SAMPLE_DATA = REPO / "include" / "sample_data"
DAG_ID = "fault_suite"
TIMEFRAME = "1m"

# The bundled real recordings and one synthetic Bybit market, bounded to a few hours each and to at
# least two pages, so a fault can hit the second page after the first one is stored (Binance and
# Bybit pages hold 1000 candles, OKX 300). Bybit's candles are the emulator's seeded synthetic ones
# (deterministic for closed candles), served newest first like Bybit.
MARKETS: tuple[tuple[str, str, str, str], ...] = (
    ("binance", "ETH/USDT", "2022-08-14T00:00:00Z", "2022-08-15T00:00:00Z"),  # 1440 candles, 2 pages
    ("okx", "BTC/USDT", "2025-11-24T00:00:00Z", "2025-11-24T10:00:00Z"),  # 600 candles, 2 pages
    ("bybit", "BTC/USDT", "2025-11-24T00:00:00Z", "2025-11-25T00:00:00Z"),  # 1440 candles, 2 pages
)
# The run's window (dag_run.conf start/end) spans both; each market is clipped to its history.
RUN_CONF = {"start": "2022-08-14T00:00:00Z", "end": "2025-11-25T00:00:00Z"}
CLIENT_TIMEOUT_MS = 3000  # the markets file's timeout_ms: ccxt gives up on a silent exchange after 3 s

# The dedicated emulator: Binance's real weight budget (6000/min, which the pipeline's own pacing
# must respect), and short bans so a pacing mistake costs seconds, not minutes.
EMULATOR_CONFIG = {"binance_weight_limit": 6000, "ban_seconds": 5, "ban_after": 3, "okx_rate_limit_factor": 1.0,
                   "bybit_ip_limit": 600, "bybit_endpoint_limit": 20, "bybit_ban_seconds": 5, "clock_offset_s": 0.0}

# Airflow's part is read from the DAG itself: the hourly DAG's `<exchange>.reconcile` task object, as
# dags/market_candles_1h.py builds it, gives the tries (retries + 1), the retry policy (a permanent
# error class fails without a retry) and the delays (retry_delay, backoff, max_retry_delay). The
# delays are compressed by RETRY_TIME_SCALE so a case does not sit through minutes of waiting (the
# rate-limit pauses and bans the pipeline records live in Postgres and are honoured inside the task
# anyway); the first retry of a 20 s retry_delay waits 1 s.
HOURLY_DAG_FILE = REPO / "dags" / "market_candles_1h.py"
RETRY_TIME_SCALE = 1 / 20
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
DROP TRIGGER IF EXISTS faults_hold_load ON staging.candle;
CREATE TRIGGER faults_hold_load AFTER INSERT ON staging.candle
    FOR EACH STATEMENT EXECUTE FUNCTION public.faults_hold_load();
"""

# Per exchange keys of the markets file (none today: every exchange runs on its defaults).
EXCHANGE_SETTINGS: dict[str, dict[str, Any]] = {}

MARKETS_HEADER = "# Written by the fault suite (faults/harness.py): the bundled recordings, a few hours each.\n"


def markets_document(emulator_url: str, markets: Iterable[tuple[str, str, str, str]] = MARKETS,
                     defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """The markets file of a run: every exchange pointed at the emulator with the suite's client
    timeout, each market bounded to its window; ``defaults`` adds or overrides keys of ``defaults:``."""
    exchanges: dict[str, Any] = {}
    for exchange, symbol, start, end in markets:
        block = exchanges.setdefault(exchange, {"api_base_url": emulator_url,
                                                "options": {"fetchMarkets": {"types": ["spot"]}},
                                                "timeout_ms": CLIENT_TIMEOUT_MS, **EXCHANGE_SETTINGS.get(exchange, {}),
                                                "markets": []})
        block["markets"].append({"symbol": symbol, "history_start": start, "history_end": end})
    return {"defaults": {"timeframes": [TIMEFRAME], "overlap_minutes": 0, **(defaults or {})},
            "exchanges": exchanges}


def write_markets_file(path: Path, emulator_url: str, markets: Iterable[tuple[str, str, str, str]] = MARKETS,
                       defaults: dict[str, Any] | None = None) -> Path:
    document = markets_document(emulator_url, markets, defaults)
    path.write_text(MARKETS_HEADER + yaml.safe_dump(document, sort_keys=False))
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
    mongo: stack.ManagedProcess
    owns_workdir: bool = True  # False: keep the servers' data (python -m faults --keep)

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
        return cls(pg, f"mongodb://127.0.0.1:{mongo.port}", emulator, workdir, mongo)

    def close(self) -> None:
        self.emulator.stop()
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
        self.mongo.stop()

    def start_mongo(self) -> None:
        self.mongo.start()

    def stop_postgres(self, mode: str = "immediate") -> None:
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
    database: str  # the warehouse database, fresh per case
    dsn: str
    mongo_uri: str
    config_path: Path
    config: MarketflowConfig
    tries: int | None = None  # None: the DAG task's own (retries + 1)
    mongo_db: str = ""  # the MongoDB database, fresh per case
    services: Services | None = None  # None in a worker process
    events: Counter = field(default_factory=Counter)  # the suite's own faults (outages, kills)
    checks: list[Check] = field(default_factory=list)
    runs: list[DagRun] = field(default_factory=list)  # every DagRun of the case, for its report

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
        """A session of the suite's own (setup, checks, measuring): no pipeline timeouts."""
        conn = psycopg2.connect(self.dsn, application_name=application_name, connect_timeout=10)
        conn.autocommit = autocommit
        return conn

    def pipeline_connect(self, application_name: str = "marketflow"):
        """A session of the pipeline, opened as production opens every one of them
        (connections.warehouse_connection): lock_timeout, statement_timeout and
        idle_in_transaction_session_timeout from the markets file's ``defaults.timeouts``."""
        return psycopg2.connect(self.dsn, application_name=application_name, connect_timeout=10,
                                options=session_options(self.config.timeouts))

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


@dataclass(frozen=True)
class RetryRules:
    """How Airflow retries one task of a DAG, read from the task object the DAG file builds."""

    task_id: str
    tries: int  # retries + 1
    policy: Any  # airflow.sdk.RetryPolicy or None
    retry_delay: timedelta
    backoff: float  # retry_exponential_backoff: a multiplier; 0 or 1 is a constant delay
    max_retry_delay: timedelta | None

    @classmethod
    def of(cls, task: Any) -> RetryRules:
        return cls(task.task_id, task.retries + 1, getattr(task, "retry_policy", None), task.retry_delay,
                   float(task.retry_exponential_backoff or 0), task.max_retry_delay)

    def decide(self, exc: BaseException, try_number: int, tries: int) -> tuple[bool, timedelta | None, str]:
        """(retry?, the delay the policy asks for or None, why) after try ``try_number`` failed with ``exc``,
        as Airflow's task runner decides it: the policy first (FAIL ends the task at once), then the count."""
        decision = None if self.policy is None else self.policy.evaluate(exc, try_number, tries - 1)
        if decision is not None and decision.action.name == "FAIL":
            return False, None, f"retry policy: {decision.reason}"
        if try_number >= tries:
            return False, None, f"all {tries} tries used"
        return True, decision.retry_delay if decision is not None else None, "retried"

    def delay_before(self, try_number: int, override: timedelta | None = None) -> float:
        """Seconds Airflow waits before try ``try_number`` (>= 2): the policy's delay, else retry_delay
        times backoff ** (retries so far - 1), capped at max_retry_delay. (Airflow adds up to as much
        again, a hash of the try, to spread retries; the lower bound is modelled.)"""
        delay = override
        if delay is None:
            factor = self.backoff ** (try_number - 2) if self.backoff not in (0.0, 1.0) else 1.0
            delay = max(timedelta(seconds=1), self.retry_delay * factor)
            if self.max_retry_delay:
                delay = min(delay, self.max_retry_delay)
        return delay.total_seconds()


@functools.cache
def hourly_dag_retry_rules(config_path: str) -> dict[str, RetryRules]:
    """task_id -> RetryRules of every task of market_candles_1h, as dags/market_candles_1h.py builds the
    DAG for the markets file ``config_path``: the one source of the suite's retries."""
    saved = os.environ.get("MARKETFLOW_CONFIG")
    os.environ["MARKETFLOW_CONFIG"] = config_path
    try:
        spec = importlib.util.spec_from_file_location("faults_market_candles_1h", HOURLY_DAG_FILE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        dag = module.market_candles_1h()
    finally:
        if saved is None:
            os.environ.pop("MARKETFLOW_CONFIG", None)
        else:
            os.environ["MARKETFLOW_CONFIG"] = saved
    return {task.task_id: RetryRules.of(task) for task in dag.tasks}


def describe_retry_rules(config_path: str) -> str:
    """The reconcile task's retry settings in words, for the suite's report."""
    rules = next(r for task_id, r in hourly_dag_retry_rules(config_path).items() if task_id.endswith(".reconcile"))
    growth = f"times {rules.backoff:g} per retry" if rules.backoff not in (0.0, 1.0) else "constant"
    cap = f", at most {rules.max_retry_delay.total_seconds():.0f} s" if rules.max_retry_delay else ""
    delay = rules.retry_delay.total_seconds()
    return (f"{rules.tries} tries ({rules.tries - 1} retries), a retry delay of {delay:.0f} s "
            f"({growth}{cap}), waited at {RETRY_TIME_SCALE:g} of its length, and the retry policy "
            f"`{type(rules.policy).__name__}`")


class TaskFailed(RuntimeError):
    """A task failed all its tries: Airflow would mark it failed (and the run with it)."""


class WorkerKilled(RuntimeError):
    pass


def fresh_task_process() -> None:
    """Forget what this process cached from earlier tries, as a new Airflow task process would.

    Every try runs in this one process, but in Airflow each is a process of its own: ccxt's market
    list kept by an earlier try (or the baseline) would answer the next one without a request, so
    faults planted on the market list would never fire. What tasks share across processes
    (ops.market_lists in the case's database) is kept."""
    exchanges._markets_cache.clear()


class DagRun:
    """One run of the hourly candle DAG over the suite's window (dag_run.conf start/end): per exchange
    its ``<exchange>.reconcile`` task (tasks.ingest.exchange_ingest), whose body is
    ``pipeline.run_exchange_markets``: every market of the exchange extracted into raw and loaded
    into staging, each on its own. Airflow's part is played here with the task's own retry settings
    (hourly_dag_retry_rules: retries, retry policy, delays): each try on fresh connections and with
    nothing cached in the process; a permanent failure (the policy's FAIL) is not retried; a later try
    re-runs only the markets an earlier one left failing (the pipeline's per-market retry). ``tries``
    overrides the DAG's count (the yardstick self-test). Exchanges run one after the other, so a fault
    can be aimed at a point of the run.

    Hooks (all optional) let a case aim a fault at one try of one exchange's task:
      ``app_names[(exchange, try)]``  application_name of every warehouse connection of that try
      ``overrides[(exchange, try)]``  a callable run instead of the in-process try (e.g. a worker)
      ``before_try(exchange, try)``   called before every try
      ``after_failure(record)``      called when a try fails
      ``retry_gate(exchange, try)``   waits before a retry (default: wait_retry_delay, the DAG's delay)
    """

    TASK = "reconcile"

    def __init__(self, env: CaseEnv, run_id: str, tries: int | None = None, app_name: str | None = None):
        self.env = env
        self.run_id = run_id
        self.rules = hourly_dag_retry_rules(str(env.config_path))
        self.tries_override = tries or env.tries
        self.default_app_name = app_name or "marketflow"
        self.app_names: dict[tuple[str, int], str] = {}
        self.overrides: dict[tuple[str, int], Callable[[], Any]] = {}
        self.before_try: Callable[[str, int], None] = lambda exchange, n: None
        self.after_failure: Callable[[TryRecord], None] = lambda record: None
        self.retry_gate: Callable[[str, int], None] = self.wait_retry_delay
        self._delay_override: dict[tuple[str, int], timedelta | None] = {}
        self.records: list[TryRecord] = []
        self.results: dict[str, dict[str, Any]] = {}  # exchange -> what its task returned
        self.window = plan_window(TIMEFRAME, None, None, RUN_CONF, env.config.overlap_minutes)
        env.runs.append(self)

    @property
    def exchanges(self) -> list[str]:
        return list(dict.fromkeys(m.exchange for m in self.env.config.markets(TIMEFRAME)))

    def task_rules(self, exchange: str) -> RetryRules:
        return self.rules[f"{exchange}.{self.TASK}"]

    def tries(self, exchange: str) -> int:
        return self.tries_override or self.task_rules(exchange).tries

    def wait_retry_delay(self, exchange: str, n: int) -> None:
        """Wait what Airflow would before try ``n`` of the exchange's task, times RETRY_TIME_SCALE."""
        delay = self.task_rules(exchange).delay_before(n, self._delay_override.get((exchange, n)))
        time.sleep(delay * RETRY_TIME_SCALE)

    def attempt(self, exchange: str, try_number: int) -> Attempt:
        return Attempt(DAG_ID, self.run_id, f"{exchange}.{self.TASK}", -1, try_number)

    def run(self) -> DagRun:
        """Every exchange's task; like Airflow, a task that failed does not stop the others' and the
        run fails at the end."""
        failed = []
        for exchange in self.exchanges:
            try:
                self.results[exchange] = self.task(exchange)
            except TaskFailed as exc:
                failed.append(str(exc))
        if failed:
            raise TaskFailed("; ".join(failed))
        return self

    def task(self, exchange: str) -> dict[str, Any]:
        rules, tries = self.task_rules(exchange), self.tries(exchange)
        for n in range(1, tries + 1):
            if n > 1:
                self.retry_gate(exchange, n)
            fresh_task_process()
            self.before_try(exchange, n)
            override = self.overrides.get((exchange, n))
            started, wall = time.monotonic(), time.time()
            try:
                result = override() if override is not None else self.try_task(exchange, n)
            except Exception as exc:
                record = TryRecord(self.TASK, exchange, n, False, time.monotonic() - started,
                                   f"{type(exc).__name__}: {exc}"[:300], wall, time.time())
                self.records.append(record)
                log.warning("%s %s.%s try %d/%d failed: %s", self.run_id, exchange, self.TASK, n, tries,
                            record.error)
                self.after_failure(record)
                if isinstance(exc, WorkerKilled):
                    # A killed task process never reaches the policy: Airflow retries it while tries are left.
                    retry, delay, why = n < tries, None, f"all {tries} tries used"
                else:
                    retry, delay, why = rules.decide(exc, n, tries)
                if not retry:
                    raise TaskFailed(f"{exchange} {self.TASK} failed at try {n} of {tries}, not retried ({why}): "
                                     f"{type(exc).__name__}: {exc}") from exc
                self._delay_override[(exchange, n + 1)] = delay
                continue
            self.records.append(TryRecord(self.TASK, exchange, n, True, time.monotonic() - started, None, wall,
                                          time.time()))
            return result
        raise AssertionError("unreachable")

    def app_name(self, exchange: str, n: int) -> str:
        return self.app_names.get((exchange, n), self.default_app_name)

    def try_task(self, exchange: str, n: int) -> dict[str, Any]:
        """One try of the task's body, as tasks.ingest.exchange_ingest's reconcile task runs it."""
        from marketflow.pipeline import run_exchange_markets

        env = self.env
        client = env.mongo_client()
        try:
            return run_exchange_markets(env.config, exchange, TIMEFRAME, self.window, RUN_CONF,
                                        RawStore(client[env.mongo_db]),
                                        lambda: env.pipeline_connect(self.app_name(exchange, n)),
                                        self.attempt(exchange, n), live=False)
        finally:
            client.close()

    def failed_tries(self, exchange: str | None = None) -> list[TryRecord]:
        return [r for r in self.records if not r.ok and (exchange is None or r.exchange == exchange)]

    def load_logs(self) -> list[dict[str, Any]]:
        """The pipeline's own record of the successful loads of this run's tasks (raw_ingestion_log,
        one document per market attempt): counts (inserted, updated, duplicates_in_batch, ...), times."""
        tasks = tuple(f"{exchange}.{self.TASK}" for exchange in self.exchanges)
        client = self.env.mongo_client()
        try:
            docs = client[self.env.mongo_db][INGESTION_LOG].find(
                {"run_id": self.run_id, "stage": "load", "status": "success"})
            return [d for d in docs if str(d.get("task_id", "")).startswith(tasks)]  # not the gap repairs'
        finally:
            client.close()

    def changed_rows(self) -> int:
        return sum(int(d.get("inserted") or 0) + int(d.get("updated") or 0) for d in self.load_logs())


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
    spec = {"dsn": env.dsn, "mongo_uri": env.mongo_uri, "database": env.database, "mongo_db": env.mongo_db,
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


def bybit_wire_candles(base_url: str, symbol: str, window: Window) -> dict[int, Row]:
    """Bybit's candles for ``window`` as the emulator's kline endpoint serves them, read with plain HTTP
    (pages of 1000 walked forward by ``start``, each newest first): an oracle for the fault-free run's
    Bybit rows that shares nothing with ccxt or marketflow's parser."""
    out: dict[int, Row] = {}
    start = window.start_ms
    while start < window.end_ms:
        url = (f"{base_url}/v5/market/kline?category=spot&symbol={symbol.replace('/', '')}&interval=1"
               f"&start={start}&end={window.end_ms - 1}&limit=1000")
        with urllib.request.urlopen(url, timeout=30) as resp:
            rows = json.loads(resp.read())["result"]["list"]
        if not rows:
            break
        for ts, o, h, low, c, volume, turnover in rows:
            out[int(ts)] = (o, h, low, c, volume, turnover, None)  # Bybit sends no trade count
        start = int(rows[0][0]) + 60_000
    return out


@dataclass
class Baseline:
    rows: dict[tuple[str, str, str, int], Row]
    state: tuple[int, str]
    marts: MartState
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
    marts: MartState = field(default_factory=dict)
    marts_differ: list[str] = field(default_factory=list)  # empty and marts built: as the fault-free run
    error: str | None = None
    checks: list[Check] = field(default_factory=list)
    tries: str = ""
    in_task_retries: int = 0
    seconds: float = 0.0
    dbt_seconds: float = 0.0

    @property
    def marts_ok(self) -> bool:
        return bool(self.marts) and not self.marts_differ

    @property
    def ok(self) -> bool:
        return (self.error is None and self.lost == 0 and self.duplicated == 0 and self.bans == 0
                and self.checksum_ok and self.marts_ok and all(c.ok for c in self.checks))

    def problems(self) -> list[str]:
        out = [f"error: {self.error}"] if self.error else []
        if self.lost:
            out.append(f"{self.lost} candles lost ({self.wrong} of them present with other values)")
        if self.duplicated:
            out.append(f"{self.duplicated} candles duplicated")
        if self.bans:
            out.append(f"{self.bans} bans (418 sent because the pipeline ignored a Retry-After, or Bybit's 403 "
                       "IP block for going over its request limit)")
        if not self.checksum_ok and self.error is None:
            out.append("staging.ohlcv checksum differs from the fault-free run")
        if self.marts_differ:
            out.append("marts differ from the fault-free run: " + ", ".join(self.marts_differ))
        elif not self.marts and self.error is None:
            out.append("the marts were not built")
        out += [f"check failed: {c.what} {c.detail}".strip() for c in self.checks if not c.ok]
        return out

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "marts_ok": self.marts_ok}


def faults_hit(stats: dict[str, Any], events: Counter) -> int:
    """How many faults hit the run: the emulator's fired faults and rate-limit answers (Binance's
    weight-budget 429s, Bybit's 10006s), our outages."""
    return (sum(stats.get("faults_fired", {}).get("by_kind", {}).values())
            + stats.get("throttled_by_cause", {}).get("rate_limit", 0) + sum(events.values()))


def bans_earned(stats: dict[str, Any]) -> int:
    """Bans the emulator imposed on its own (Binance's 418 after ignored Retry-Afters, Bybit's 403 IP
    block after its 600-per-5-s limit); injected 418/403s are faults, not counted here."""
    return int(stats.get("bans_by_cause", {}).get("ban", 0))


def describe_faults(stats: dict[str, Any], events: Counter) -> str:
    """What hit the pipeline: the emulator's fired faults and rate-limit answers, and our own outages."""
    parts = [f"{n}x {kind}" for kind, n in sorted(stats.get("faults_fired", {}).get("by_kind", {}).items())]
    for exchange, causes in sorted(stats.get("throttled_by_exchange", {}).items()):
        if causes.get("rate_limit"):
            what = "10006 over the per-second limit" if exchange == "bybit" else "429 over weight budget"
            parts.append(f"{causes['rate_limit']}x {exchange} {what}")
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
    """One fault scenario. ``faults`` are installed on the emulator before ``drive`` runs the DAG
    (default: one DagRun of the window). ``drive`` may add its own checks (``env.check``) and
    events (``env.event``); the suite then checks that every planted fault fired and that some
    fault hit the run at all, and compares staging and the marts with the fault-free run."""

    slug: str
    name: str
    summary: str
    faults: tuple[dict[str, Any], ...] = ()
    emulator_config: dict[str, Any] = field(default_factory=dict)
    drive: Callable[[CaseEnv], Any] | None = None  # default: one DagRun
    quick: bool = False
    tries: int | None = None
    # The case's own markets file: markets beside the recordings (e.g. one the exchange does not list)
    # and keys of its ``defaults:`` (e.g. timeouts). The fault-free candles stay the yardstick.
    extra_markets: tuple[tuple[str, str, str, str], ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    # Nothing may run beside it (the previous case's marts build): it stops a service, or forks worker
    # processes (a fork while another thread holds a lock can leave the child stuck on it).
    exclusive: bool = False


@dataclass
class Lane:
    """A warehouse database name and the dbt process that builds marts in it: a parsed dbt manifest
    names its database, so each lane's dbt serves one name. Two lanes let a case's marts build
    while the next case runs (dbt costs CPU for seconds; most cases wait on retries and timeouts)."""

    marts: MartBuilder
    pending: Future[CaseResult] | None = None

    @property
    def database(self) -> str:
        return self.marts.database

    def wait(self) -> None:
        if self.pending is not None:
            with contextlib.suppress(Exception):  # a finishing job records its own errors in its result
                self.pending.result()
            self.pending = None


LANES = ("a", "b")


def start_mart_builders(workdir: Path) -> list[MartBuilder]:
    """The lanes' dbt processes, started: their start-up and parse need no server, so start them
    before the services (a few seconds of CPU each that would otherwise hold up the baseline)."""
    builders: list[MartBuilder] = []
    try:
        for name in LANES:
            # the same name every run: dbt's parse state is kept per name (faults/marts.py)
            builders.append(MartBuilder(f"faults_{name}", workdir / name))
            builders[-1].start()
    except BaseException:
        for builder in builders:
            builder.close()
        raise
    return builders


class Suite:
    """The baseline and the cases on ``services``; close() (or ``with``) stops its dbt processes
    (``marts``: started by start_mart_builders, else here).

    ``run_case`` runs one case to the end. ``run_cases`` overlaps: while a case's marts are built
    and compared in the background, the next case runs (on the other lane's database); an
    ``exclusive`` case waits until nothing runs in the background."""

    def __init__(self, services: Services, tries: int | None = None, keep: bool = False,
                 marts: list[MartBuilder] | None = None) -> None:
        self.services = services
        self.tries = tries
        self.keep = keep
        self.lanes = [Lane(b) for b in marts or start_mart_builders(services.workdir / "dbt")]
        self.config_path = write_markets_file(services.workdir / "markets.yml", services.emulator.base_url)
        self.config = load_config(self.config_path)
        self.windows = market_windows(self.config)
        self.baseline: Baseline | None = None
        self._turn = 0
        self._background = ThreadPoolExecutor(max_workers=len(self.lanes), thread_name_prefix="marts")

    def close(self) -> None:
        for lane in self.lanes:
            lane.wait()
            lane.marts.close()
        self._background.shutdown()

    def __enter__(self) -> Suite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def expected(self) -> int:
        return sum(w.candles(TIMEFRAME) for w in self.windows.values())

    def _lane(self, exclusive: bool) -> Lane:
        """The next lane, once its previous case is done (every lane's, for an exclusive case)."""
        lane = self.lanes[self._turn]
        self._turn = (self._turn + 1) % len(self.lanes)
        for other in self.lanes if exclusive else [lane]:
            other.wait()
        return lane

    def open_env(self, slug: str, lane: Lane, tries: int | None = None, case: Case | None = None) -> CaseEnv:
        """A fresh warehouse (include/sql applied) under the lane's name and a fresh MongoDB database;
        the suite's markets file, or the case's own when it adds markets or defaults."""
        database, mongo_db = lane.database, f"faults_{slug}"[:63]
        config_path, config = self.config_path, self.config
        if case is not None and (case.extra_markets or case.defaults):
            config_path = write_markets_file(self.services.workdir / f"markets-{slug}.yml",
                                             self.services.emulator.base_url, MARKETS + case.extra_markets,
                                             case.defaults)
            config = load_config(config_path)
        pg = self.services.pg
        pg.drop_database(database)
        pg.create_database(database)
        env = CaseEnv(slug, database, pg.dsn(database), self.services.mongo_uri, config_path, config,
                      tries or self.tries, mongo_db, self.services)
        conn = env.connect()
        try:
            apply_ddl(conn)
        finally:
            conn.close()
        client = env.mongo_client()
        try:
            client.drop_database(mongo_db)
            RawStore(client[mongo_db]).ensure_indexes(self.config.raw_retention_days)
        finally:
            client.close()
        return env

    def close_env(self, env: CaseEnv) -> None:
        """Drop the case's databases, or with ``keep`` rename the warehouse after the case."""
        pg = self.services.pg
        with contextlib.suppress(Exception):
            if self.keep:
                kept = f"faults_{env.slug}"[:63]
                pg.drop_database(kept)
                pg.psql_admin(f'ALTER DATABASE "{env.database}" RENAME TO "{kept}"')
            else:
                pg.drop_database(env.database)
        if not self.keep:
            with contextlib.suppress(Exception):
                client = env.mongo_client()
                client.drop_database(env.mongo_db)
                client.close()

    def reset_emulator(self, config: dict[str, Any] | None = None) -> None:
        emu = self.services.emulator
        emu.clear_faults()
        emu.configure(**{**EMULATOR_CONFIG, **(config or {})})
        emu.reset()

    def build_marts(self, env: CaseEnv, lane: Lane) -> MartState:
        """dbt run of ohlcv_1m and its rollups in the case's warehouse, then their counts and checksums."""
        lane.marts.build(env.dsn)
        conn = env.connect()
        try:
            return mart_state(conn)
        finally:
            conn.close()

    def run_baseline(self) -> Baseline:
        """The fault-free run every case is compared with."""
        started = time.monotonic()
        self.reset_emulator()
        for lane in self.lanes:
            lane.wait()
        lane = self.lanes[0]  # the lane whose dbt is started first; the first case takes it too
        env = self.open_env("baseline", lane)
        try:
            DagRun(env, "baseline").run()
            rows = staging_rows(env)
            state = env.staging_state()
            marts = self.build_marts(env, lane)
        finally:
            self.close_env(env)
        stats = self.services.emulator.stats()
        if len(rows) != self.expected or state[0] != self.expected:
            raise RuntimeError(f"the fault-free run landed {len(rows)} candles, the windows hold {self.expected}")
        # Every case is compared with this run, so its Bybit rows are checked against the exchange's wire.
        for exchange, symbol, _, _ in MARKETS:
            if exchange != "bybit":
                continue
            wire = bybit_wire_candles(self.services.emulator.base_url, symbol, self.windows[exchange])
            landed = {ms: values for (ex, sym, _, ms), values in rows if (ex, sym) == (exchange, symbol)}
            differ = sorted(ms for ms in wire.keys() | landed.keys()
                            if ms not in wire or ms not in landed
                            or [Decimal(v) for v in landed[ms][:6]] != [Decimal(v) for v in wire[ms][:6]]
                            or landed[ms][6] is not None)
            if differ:
                raise RuntimeError(f"the fault-free run's {exchange} {symbol} candles differ from what the emulator "
                                   f"serves at {len(differ)} open times, first {differ[:3]}")
        if stats.get("http_429_sent") or stats.get("http_418_sent") or stats.get("throttled_by_cause") \
                or stats.get("bans_by_cause"):
            raise RuntimeError(f"the fault-free run was rate limited: {stats}")
        # The yardstick's marts must hold every candle and bucket (counted here from the candles), or
        # comparing the cases with them would prove little.
        times: dict[tuple[str, str], list[int]] = {}
        for (exchange, symbol, _, ms), _values in rows:
            times.setdefault((exchange, symbol), []).append(ms)
        want = expected_mart_rows(times)
        got = {mart: n for mart, (n, _) in marts.items()}
        if got != want:
            raise RuntimeError(f"the fault-free run's marts hold {got} rows; its candles make {want}")
        self.baseline = Baseline(dict(rows), state, marts, time.monotonic() - started)
        return self.baseline

    def run_case(self, case: Case) -> CaseResult:
        return self.start_case(case).result()

    def run_cases(self, cases: Iterable[Case]) -> Iterator[CaseResult]:
        """Every case's result, in order; each case's marts are built while the next case runs."""
        previous: Future[CaseResult] | None = None
        for case in cases:
            current = self.start_case(case)
            if previous is not None:
                yield previous.result()
            previous = current
        if previous is not None:
            yield previous.result()

    def start_case(self, case: Case) -> Future[CaseResult]:
        """Run the case and measure staging here; build and compare its marts in the background."""
        if self.baseline is None:
            self.run_baseline()
        assert self.baseline is not None
        lane = self._lane(case.exclusive)
        result = CaseResult(case.slug, case.name, expected=len(self.baseline.rows))
        started = time.monotonic()
        self.reset_emulator(case.emulator_config)
        emu = self.services.emulator
        env = self.open_env(case.slug, lane, case.tries, case)
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
                    env.check("every planted fault fired", not unfired, f"(not fired: {unfired})" if unfired else "")
            with contextlib.suppress(Exception):
                emu.clear_faults()
        try:
            stats = emu.stats()
            hits = faults_hit(stats, env.events)
            env.check("faults hit the run", hits > 0, f"({hits})")
            result.faults = describe_faults(stats, env.events)
            result.bans = bans_earned(stats)
            result.tries = "; ".join(summarize_tries(r.records) for r in env.runs if r.records) or "-"
            self.measure_staging(env, result)
            result.in_task_retries = int(env.query("SELECT count(*) FROM ops.api_errors WHERE will_retry")[0][0])
        except Exception as exc:
            result.error = result.error or f"measuring failed: {type(exc).__name__}: {exc}"
        result.seconds = time.monotonic() - started
        lane.pending = self._background.submit(self._finish_case, env, lane, result)
        return lane.pending

    def _finish_case(self, env: CaseEnv, lane: Lane, result: CaseResult) -> CaseResult:
        started = time.monotonic()
        try:
            result.marts = self.build_marts(env, lane)
            assert self.baseline is not None
            result.marts_differ = differing_marts(result.marts, self.baseline.marts)
        except Exception as exc:
            result.error = result.error or f"building the marts failed: {type(exc).__name__}: {exc}"
            log.error("%s: %s", env.slug, traceback.format_exc())
        finally:
            self.close_env(env)
        result.dbt_seconds = time.monotonic() - started
        result.checks = list(env.checks)
        log.info("%s: %s", env.slug, json.dumps(result.as_dict(), default=str))
        return result

    def measure_staging(self, env: CaseEnv, result: CaseResult) -> None:
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
