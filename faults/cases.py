"""The fault cases. Each one runs the candle DAG (extract -> load per market, Airflow retries) over the
same window as the fault-free baseline and must land exactly the same candles.

Emulator faults are plain fault specs (plugins/marketflow/emulator/README.md); outages, kills and
concurrency are driven by a ``drive`` function that aims them at a deterministic point of the run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pymongo

from faults.harness import (
    RETRY_DELAY_S,
    Case,
    CaseEnv,
    CaseError,
    DagRun,
    TryRecord,
    WorkerKilled,
    spawn_worker,
)

BINANCE_KLINES = {"exchange": "binance", "path": "/api/v3/klines"}
BINANCE_MARKETS = {"exchange": "binance", "path": "/api/v3/exchangeInfo"}
OKX_CANDLES = {"exchange": "okx", "path": "/api/v5/market/history-candles"}
OKX_MARKETS = {"exchange": "okx", "path": "/api/v5/public/instruments"}
# weight_budget_429: seconds of the exchange's minute left when the run starts (its market list and
# first page must fit in them; the pipeline then waits out the rest of the minute).
MINUTE_LEFT_S = 10.0


def _count(env: CaseEnv, sql: str) -> int:
    return int(env.query(sql)[0][0])


def _epoch(value: datetime | str) -> float:
    """A time from MongoDB (a datetime, naive meaning UTC; or ISO text) as epoch seconds."""
    stamp = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()


# ---- drivers -------------------------------------------------------------------------------------------
def drive_weight_budget(env: CaseEnv) -> None:
    """The emulator's Binance budget is cut to 20 weight/min: the market list (20) fits, the first
    page (2) is answered 429 with Retry-After = the rest of the exchange's minute. Retrying before
    then is a strike, 3 strikes a 418 ban: zero bans proves the pipeline waits out the Retry-After it
    is given. The exchange's clock is set so that its minute ends MINUTE_LEFT_S after the run starts:
    the list and the first page fall into one minute, and the wait is seconds, not up to a minute."""
    offset = (60 - MINUTE_LEFT_S) - time.time() % 60
    env.emulator.configure(clock_offset_s=offset)
    DagRun(env, f"{env.slug}-1").run()
    over_budget = env.emulator.stats().get("http_429_by_cause", {}).get("rate_limit", 0)
    env.check("the emulator answered 429 for the exhausted weight budget", over_budget >= 1, f"({over_budget})")
    # A request before the Retry-After ran out would have been answered 429 again (a strike).
    env.check("the pipeline came back only after the Retry-After", over_budget == 1, f"({over_budget} 429s)")


def drive_duplicates(env: CaseEnv) -> None:
    run = DagRun(env, f"{env.slug}-1").run()
    seen = sum(int(d.get("duplicates_in_batch") or 0) for d in run.load_logs())
    env.check("the loader saw the duplicated rows", seen > 0, f"({seen} duplicates in batch)")
    recorded = _count(env, "SELECT count(*) FROM staging.ohlcv_anomalies WHERE kind = 'duplicate_identical'")
    env.check("staging.ohlcv_anomalies records them", recorded > 0, f"({recorded})")


def drive_out_of_order(env: CaseEnv) -> None:
    DagRun(env, f"{env.slug}-1").run()
    recorded = _count(env, "SELECT count(*) FROM staging.ohlcv_anomalies WHERE kind = 'out_of_order'")
    env.check("staging.ohlcv_anomalies records rows out of order", recorded > 0, f"({recorded})")


class Outage:
    """Runs ``take_down`` in a thread once ``ready`` holds, keeps the service down until a task try has
    failed because of it, then ``bring_up``; the run's next try waits for that (Airflow's retry delay
    outlasting the outage)."""

    def __init__(self, env: CaseEnv, ready, what: str, take_down, bring_up) -> None:
        self.env, self.ready, self.what, self.take_down, self.bring_up = env, ready, what, take_down, bring_up
        self.failed, self.restored, self.ended = threading.Event(), threading.Event(), threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"outage-{env.slug}", daemon=True)

    def _run(self) -> None:
        down = False
        try:
            self.env.wait_until(lambda: self.ended.is_set() or self.ready(), 90, f"the moment to stop ({self.what})",
                                interval=0.01)
            if self.ended.is_set():
                raise CaseError("the run ended before the moment to stop came")
            self.take_down()
            down = True
            self.env.event(self.what)
            self.failed.wait(90)
        except BaseException as exc:
            self.error = exc
        finally:
            try:
                if down:
                    self.bring_up()
            except BaseException as exc:
                self.error = self.error or exc
            self.restored.set()

    def attach(self, run: DagRun) -> None:
        run.after_failure = lambda record: self.failed.set()

        def gate(exchange: str, n: int) -> None:
            self.restored.wait(180)
            time.sleep(RETRY_DELAY_S)

        run.retry_gate = gate
        self.thread.start()

    def finish(self) -> None:
        self.ended.set()
        self.failed.set()  # the run ended without a failed try: stop waiting for one
        self.thread.join(180)
        if self.error is not None:
            raise CaseError(f"{self.what}: {type(self.error).__name__}: {self.error}")


def drive_mongo_stopped(env: CaseEnv) -> None:
    """MongoDB is stopped as soon as the first Binance page is in raw, while the second page is on
    its way (slowed by 2 s): storing it fails, the extract try fails, MongoDB comes back, and the
    retried extract re-stores the first page onto the same document (same _id)."""
    assert env.services is not None
    _outage_mid_extract(env, "MongoDB stopped mid-extract", env.services.stop_mongo, env.services.start_mongo)


def drive_postgres_stopped_extract(env: CaseEnv) -> None:
    """PostgreSQL (the shared rate-limit bucket, ops.api_errors, market health) is stopped once the
    first Binance page is in raw, while the second (slowed 2 s) is in flight; restarted once the
    extract try has failed."""
    assert env.services is not None
    services = env.services
    _outage_mid_extract(env, "PostgreSQL stopped mid-extract", lambda: services.stop_postgres("immediate"),
                        services.start_postgres)


def _outage_mid_extract(env: CaseEnv, what: str, stop: Callable[[], None], start: Callable[[], None]) -> None:
    """Run the DAG with ``stop`` once the first Binance page is in raw and ``start`` once the try
    running then has failed; that try of Binance's task must have failed."""
    watcher = pymongo.MongoClient(env.mongo_uri, serverSelectionTimeoutMS=2000)
    pages = watcher[env.mongo_db].raw_market_payload
    outage = Outage(env, lambda: pages.count_documents({"kind": "ohlcv"}) >= 1, what, stop, start)
    run = DagRun(env, f"{env.slug}-1")
    outage.attach(run)
    try:
        run.run()
    finally:
        outage.finish()
        watcher.close()
    failed = run.failed_tries("binance")
    env.check("the Binance task try running during the outage failed", failed,
              f"({failed[0].error if failed else 'no failed try'})")


def drive_postgres_stopped(env: CaseEnv) -> None:
    """PostgreSQL is stopped (immediate: a crash, recovered from WAL on restart) while the OKX load
    holds its transaction open with every row inserted; Binance is already committed. Before the
    retry, staging must hold exactly what it held before the interrupted try."""
    assert env.services is not None
    services = env.services
    env.install_hold_trigger()
    tag = "pgstop"
    run = DagRun(env, f"{env.slug}-1")
    run.app_names[("okx", 1)] = f"faults-hold:60:{tag}"
    before: dict[str, Any] = {}

    def snapshot(exchange: str, n: int) -> None:
        if (exchange, n) == ("okx", 1):
            before["state"] = env.staging_state()

    run.before_try = snapshot
    outage = Outage(env, lambda: any(w == "PgSleep" for _, w in env.held_backends(tag)),
                    "PostgreSQL stopped mid-load", lambda: services.stop_postgres("immediate"),
                    services.start_postgres)
    outage.attach(run)
    gate = run.retry_gate

    def check_then_retry(exchange: str, n: int) -> None:
        gate(exchange, n)
        if (exchange, n) == ("okx", 2):
            after = env.staging_state()
            env.check("after the restart staging holds what it held before the interrupted load",
                      after == before.get("state"), f"(before {before.get('state')}, after {after})")

    run.retry_gate = check_then_retry
    try:
        run.run()
    finally:
        outage.finish()
    env.check("the OKX task try running during the outage failed", run.failed_tries("okx"))


def drive_worker_killed(env: CaseEnv) -> None:
    """The first try of OKX's task runs in a worker process of its own, held inside its load
    transaction after inserting every row (an AFTER INSERT trigger sleeps for that session only); the
    worker is SIGKILLed there. Its session dies with the transaction; the retry must find staging as
    it was before (Binance only) and end equal to the fault-free run."""
    env.install_hold_trigger()
    tag = "sigkill"
    run = DagRun(env, f"{env.slug}-1")
    before: dict[str, Any] = {}

    def killed_try() -> Any:
        before["state"] = env.staging_state()
        worker = spawn_worker(env, "okx-try-1", {"mode": "task", "run_id": run.run_id, "exchange": "okx",
                                                 "try_number": 1, "app_name": f"faults-hold:5:{tag}"})
        try:
            env.wait_until(lambda: not worker.running()
                           or any(w == "PgSleep" for _, w in env.held_backends(tag)),
                           120, "the worker holds its load transaction open")
            if not worker.running():
                raise CaseError(f"the worker exited ({worker.exitcode}) before it could be killed; "
                                f"see {worker.log_path}")
            locks = _count(env, "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                                f"WHERE a.application_name LIKE 'faults-hold:%{tag}' "
                                "AND l.relation = 'staging.ohlcv'::regclass")
            env.check("the worker was killed inside its open upsert transaction", locks > 0,
                      f"({locks} locks on staging.ohlcv)")
        finally:
            worker.kill()
        env.event("worker SIGKILLed mid-load")
        raise WorkerKilled(f"worker {worker.pid} SIGKILLed with its load transaction open (exit {worker.exitcode})")

    run.overrides[("okx", 1)] = killed_try

    def gate(exchange: str, n: int) -> None:
        if (exchange, n) == ("okx", 2):
            # the orphaned session ends once its statement finishes and it finds the client gone
            env.wait_until(lambda: not env.held_backends(tag), 60, "the killed worker's sessions have ended")
            after = env.staging_state()
            env.check("nothing the killed worker wrote remains (staging as before its try)",
                      after == before.get("state"), f"(before {before.get('state')}, after {after})")
        time.sleep(RETRY_DELAY_S)

    run.retry_gate = gate
    run.run()


def drive_two_runs(env: CaseEnv) -> None:
    """Two DAG runs of the same window in two processes, started together: both extract (every
    request slowed, so they overlap) and both load (each upsert held 2 s inside its
    transaction, so the second waits on the first's rows), then both work through the gap-repair
    queue (pipeline.run_gap_repairs: ops.backfill_tasks, FOR UPDATE SKIP LOCKED) holding one window
    per market. Afterwards each window was repaired exactly once, and a third run changes nothing."""
    assert env.services is not None
    env.install_hold_trigger()
    conn = env.connect()
    try:
        with conn.cursor() as cur:
            for exchange, window in env.windows.items():
                cur.execute("INSERT INTO ops.backfill_tasks (exchange, symbol, timeframe, window_start, window_end, "
                            "reason) VALUES (%s, %s, '1m', to_timestamp(%s / 1000.0), to_timestamp(%s / 1000.0), "
                            "'gap')", (exchange, env.market(exchange).symbol, window.start_ms, window.end_ms))
        conn.commit()
    finally:
        conn.close()
    base = env.services.workdir / "workers"
    base.mkdir(parents=True, exist_ok=True)
    go = base / f"{env.slug}.go"
    go.unlink(missing_ok=True)
    names = ("a", "b")
    ready = {name: base / f"{env.slug}-{name}.ready" for name in names}
    workers = {}
    for name in names:
        ready[name].unlink(missing_ok=True)
        workers[name] = spawn_worker(env, f"run-{name}", {
            "mode": "dag", "run_id": f"{env.slug}-{name}", "app_name": "faults-hold:2:concurrent",
            "repair_gaps": True, "ready_path": str(ready[name]), "go_path": str(go)})
    try:
        env.wait_until(lambda: all(p.exists() for p in ready.values()), 120, "both runs are ready")
        go.write_text("go")
        env.event("runs of the same window at once", len(names))
        for w in workers.values():
            w.wait(300)
    finally:
        for w in workers.values():
            w.kill()
    results = {name: w.result() for name, w in workers.items()}
    runs = []
    for name, res in results.items():
        run = DagRun(env, f"{env.slug}-{name}")  # the worker's run, for the report
        run.records = [TryRecord(**r) for r in res["records"]]
        runs.append(run)
        if res.get("error"):
            raise CaseError(f"run {name} failed: {res['error']}")

    def overlapped(spans: list[tuple[float, float]]) -> bool:
        return len(spans) == 2 and max(s for s, _ in spans) < min(e for _, e in spans)

    tasks = {ex: [(r.started_at, r.ended_at) for run in runs for r in run.records if r.ok and r.exchange == ex]
             for ex in env.windows}
    env.check("the two runs' tasks overlapped in time", all(overlapped(s) for s in tasks.values()))
    # the pipeline's own log of each load (raw_ingestion_log): start and end of every market's load
    loads = {ex: [(_epoch(d["started_at"]), _epoch(d["finished_at"])) for run in runs
                  for d in run.load_logs() if d.get("exchange") == ex] for ex in env.windows}
    env.check("the two runs' loads overlapped in time", all(overlapped(s) for s in loads.values()), f"({loads})")
    repaired = sum(sum(counts.values()) for res in results.values() for counts in res["repairs"].values())
    queue = env.query("SELECT task_id, status, attempts FROM ops.backfill_tasks ORDER BY task_id")
    env.check("each queued window was claimed by exactly one run", repaired == len(queue) and all(
        a == 1 for _, _, a in queue), f"(repairs {[res['repairs'] for res in results.values()]}, queue {queue})")
    env.check("each queued window was repaired", all(s == "completed" for _, s, _ in queue), f"({queue})")
    state = env.staging_state()
    third = DagRun(env, f"{env.slug}-c").run()
    env.check("a third run of the window changes nothing", third.changed_rows() == 0
              and env.staging_state() == state, f"({third.changed_rows()} rows inserted or updated)")


# ---- the cases -------------------------------------------------------------------------------------------
CASES: tuple[Case, ...] = (
    Case("http_429_burst", "429 bursts",
         "Binance answers 5 klines requests in a row with 429 (Retry-After 1 s): the 4 in-task attempts run "
         "out, the task's second try gets the last one; OKX gets a burst of 3 on history-candles.",
         faults=({"kind": "http_429", **BINANCE_KLINES, "count": 5, "retry_after": 1},
                 {"kind": "http_429", **OKX_CANDLES, "count": 3, "retry_after": 1}),
         quick=True),
    Case("weight_budget_429", "429 for the weight budget",
         "The emulator's Binance budget is cut to 20 weight/min, so after the market list (20) a page is refused "
         "with a real 429 whose Retry-After runs to the end of the exchange's minute (its clock set to end it "
         f"{MINUTE_LEFT_S:.0f} s after the run starts); retrying early would be a strike and 3 strikes a ban.",
         emulator_config={"binance_weight_limit": 20}, drive=drive_weight_budget),
    Case("http_418", "418 bans",
         "Binance bans the IP (418, Retry-After 2 s / 3 s) on the market list and on a klines page; the pipeline "
         "pauses the exchange's shared bucket for the ban and retries after it.",
         faults=({"kind": "http_418", **BINANCE_MARKETS, "count": 1, "retry_after": 2},
                 {"kind": "http_418", **BINANCE_KLINES, "count": 1, "retry_after": 3})),
    Case("http_5xx", "5xx errors",
         "Binance answers 5 klines requests with 503 (4 in-task attempts, then the task's second try); OKX "
         "answers its market list with 500 and a candles page with 502.",
         faults=({"kind": "http_5xx", **BINANCE_KLINES, "count": 5, "status": 503},
                 {"kind": "http_5xx", **OKX_MARKETS, "count": 1, "status": 500},
                 {"kind": "http_5xx", **OKX_CANDLES, "count": 1, "status": 502}),
         quick=True),
    Case("timeout", "timeouts",
         "A klines page on each exchange gets no answer (the connection is held 5 s, then closed); ccxt gives "
         "up after the markets file's 3 s timeout and the call is retried.",
         faults=({"kind": "timeout", **BINANCE_KLINES, "count": 1, "seconds": 5},
                 {"kind": "timeout", **OKX_CANDLES, "count": 1, "seconds": 5})),
    Case("slow", "slow responses",
         "Every request is answered 1.5 s late (within the 3 s timeout); one OKX page 5 s late (past it).",
         faults=({"kind": "slow", **OKX_CANDLES, "count": 1, "ms": 5000},
                 {"kind": "slow", "probability": 1.0, "ms": 1500})),
    Case("malformed_json", "malformed JSON",
         "One klines page per exchange, and Binance's market list, are a complete HTTP 200 whose body is "
         "not JSON.",
         faults=({"kind": "malformed_json", **BINANCE_KLINES, "count": 1},
                 {"kind": "malformed_json", **OKX_CANDLES, "count": 1},
                 {"kind": "malformed_json", **BINANCE_MARKETS, "count": 1})),
    Case("truncated_json", "truncated JSON (connection cut)",
         "One klines page per exchange stops halfway: Content-Length announces the whole body, the "
         "connection closes after half of it.",
         faults=({"kind": "truncated_json", **BINANCE_KLINES, "count": 1},
                 {"kind": "truncated_json", **OKX_CANDLES, "count": 1}),
         quick=True),
    Case("truncated_json_short", "truncated JSON (short body)",
         "One klines page per exchange is a complete HTTP 200 holding only the first half of the JSON.",
         faults=({"kind": "truncated_json", **BINANCE_KLINES, "count": 1, "cut_connection": False},
                 {"kind": "truncated_json", **OKX_CANDLES, "count": 1, "cut_connection": False})),
    Case("duplicate_rows", "duplicated rows",
         "Every candle response repeats 25 of its rows (identical copies next to the originals).",
         faults=({"kind": "duplicate_rows", "probability": 1.0, "n": 25},),
         drive=drive_duplicates, quick=True),
    Case("out_of_order_rows", "out-of-order rows",
         "Every candle response comes shuffled (Binance documents oldest first, OKX newest first).",
         faults=({"kind": "out_of_order_rows", "probability": 1.0},),
         drive=drive_out_of_order),
    Case("mongo_stopped", "MongoDB stopped during extract",
         "MongoDB is stopped once the first Binance page is stored, while the second (slowed 2 s) is in "
         "flight; it is restarted after the extract try has failed.",
         faults=({"kind": "slow", **BINANCE_KLINES, "count": 2, "ms": 2000},),
         drive=drive_mongo_stopped, exclusive=True),
    Case("postgres_stopped_extract", "Postgres stopped during extract",
         "PostgreSQL, which holds the exchange's shared rate-limit bucket, is stopped (immediate shutdown) once "
         "the first Binance page is stored, while the second (slowed 2 s) is in flight; restarted after the "
         "extract try has failed.",
         faults=({"kind": "slow", **BINANCE_KLINES, "count": 2, "ms": 2000},),
         drive=drive_postgres_stopped_extract, exclusive=True),
    Case("postgres_stopped", "Postgres stopped during load",
         "PostgreSQL is stopped (immediate shutdown) while the OKX load holds its upsert transaction open; "
         "restarted (crash recovery) after the try has failed.",
         drive=drive_postgres_stopped, exclusive=True),
    Case("worker_sigkill", "worker SIGKILLed mid-load",
         "OKX's task runs in a worker process that is SIGKILLed inside its load's upsert transaction; the "
         "task's retry runs after the orphaned session is gone.",
         drive=drive_worker_killed, exclusive=True),
    Case("two_runs", "same window, two runs at once",
         "Two processes run the DAG for the same window at the same moment (every request slowed 0.3 s, "
         "upserts held 2 s inside their transactions) and then both claim the gap-repair queue; then a third run.",
         faults=({"kind": "slow", "probability": 1.0, "ms": 300},),
         drive=drive_two_runs, quick=True, exclusive=True),
    Case("mixed", "all transient faults, at random",
         "Every request may get a 429, a 5xx, a cut-off body or no answer (10 % each, seeded), every candle "
         "response may repeat or shuffle rows (50 % each): the faults a bad hour on a real exchange brings.",
         faults=({"kind": "http_429", "probability": 0.1, "retry_after": 1},
                 {"kind": "http_5xx", "probability": 0.1, "status": 502},
                 {"kind": "timeout", "probability": 0.1, "seconds": 4},
                 {"kind": "truncated_json", "probability": 0.1},
                 {"kind": "duplicate_rows", "probability": 0.5, "n": 10},
                 {"kind": "out_of_order_rows", "probability": 0.5})),
)

QUICK: tuple[Case, ...] = tuple(c for c in CASES if c.quick)


def by_slug(slugs: list[str]) -> list[Case]:
    known = {c.slug: c for c in CASES}
    unknown = [s for s in slugs if s not in known]
    if unknown:
        raise SystemExit(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[s] for s in slugs]

