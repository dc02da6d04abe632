"""The fault cases. Each one runs the candle DAG (extract -> load per market, Airflow retries) over the
same window as the fault-free baseline and must land exactly the same candles.

Emulator faults are plain fault specs (exchange_emulator/README.md); outages, kills and
concurrency are driven by a ``drive`` function that aims them at a deterministic point of the run.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pymongo

from faults.harness import (
    CLIENT_TIMEOUT_MS,
    Case,
    CaseEnv,
    CaseError,
    DagRun,
    TaskFailed,
    TryRecord,
    WorkerKilled,
    spawn_worker,
)

BINANCE_KLINES = {"exchange": "binance", "path": "/api/v3/klines"}
BINANCE_MARKETS = {"exchange": "binance", "path": "/api/v3/exchangeInfo"}
OKX_CANDLES = {"exchange": "okx", "path": "/api/v5/market/history-candles"}
OKX_MARKETS = {"exchange": "okx", "path": "/api/v5/public/instruments"}
BYBIT_KLINES = {"exchange": "bybit", "path": "/v5/market/kline"}
BYBIT_MARKETS = {"exchange": "bybit", "path": "/v5/market/instruments-info"}
# weight_budget_429: seconds of the exchange's minute left when the run starts (its market list and
# first page must fit in them; the pipeline then waits out the rest of the minute).
MINUTE_LEFT_S = 10.0
# delisted_market: a market in the markets file that the exchange does not list (a delisting), bounded
# like the recordings; the case's runs, and the permanent failures in a row that suspend a market.
DELISTED = ("binance", "LUNA/USDT", "2022-08-14T00:00:00Z", "2022-08-15T00:00:00Z")
DELISTED_SUSPEND_AFTER = 2
DELISTED_RUNS = DELISTED_SUSPEND_AFTER + 1  # the last run finds it suspended
# hung_connection: how long the exchange holds the connection without a byte of answer.
HANG_S = 60
# postgres_lock: the load's lock_timeout (defaults.timeouts.db_lock of the case's markets file).
DB_LOCK_S = 2


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
    stats = env.emulator.stats()
    over_budget = stats.get("http_429_by_cause", {}).get("rate_limit", 0)
    env.check("the emulator answered 429 for the exhausted weight budget", over_budget >= 1, f"({over_budget})")
    # A request before the Retry-After ran out would have been answered 429 again (a strike).
    env.check("the pipeline came back only after the Retry-After", over_budget == 1, f"({over_budget} 429s)")
    # Bybit, limited to one kline request a second: its second page meets retCode 10006 (HTTP 200,
    # X-Bapi-Limit-Reset-Timestamp, no Retry-After) and must be asked again, without a 403 IP block.
    bybit = stats.get("throttled_by_exchange", {}).get("bybit", {}).get("rate_limit", 0)
    env.check("Bybit answered retCode 10006 over its per-second limit", bybit >= 1, f"({bybit})")


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
            run.wait_retry_delay(exchange, n)

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
            # the write lock, not just a read's: its rows are inserted into staging.candle, not committed
            locks = _count(env, "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                                f"WHERE a.application_name LIKE 'faults-hold:%{tag}' AND l.granted "
                                "AND l.mode = 'RowExclusiveLock' AND l.relation = 'staging.candle'::regclass")
            env.check("the worker was killed inside its open upsert transaction", locks > 0,
                      f"({locks} RowExclusiveLock on staging.candle)")
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
        run.wait_retry_delay(exchange, n)

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


class Background:
    """``fn`` in a thread of its own; ``finish()`` joins it and raises what it raised. ``done`` tells
    its waits that the run is over (the moment they wait for will not come)."""

    def __init__(self, env: CaseEnv, what: str, fn: Callable[[threading.Event], None]) -> None:
        self.what, self.done, self.error = what, threading.Event(), None
        self.thread = threading.Thread(target=self._run, args=(fn,), name=f"{env.slug}-{what}", daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[threading.Event], None]) -> None:
        try:
            fn(self.done)
        except BaseException as exc:
            self.error = exc

    def finish(self, timeout: float = 90) -> None:
        self.done.set()
        self.thread.join(timeout)
        if self.error is not None:
            raise CaseError(f"{self.what}: {type(self.error).__name__}: {self.error}")


def _await(env: CaseEnv, done: threading.Event, predicate: Callable[[], Any], what: str, timeout: float = 90) -> Any:
    """Wait for ``predicate`` unless the run ends first (then the moment never came: a CaseError)."""
    value = env.wait_until(lambda: done.is_set() or predicate(), timeout, what, interval=0.01)
    if value is True and done.is_set() and not predicate():
        raise CaseError(f"the run ended before {what}")
    return value


def drive_delisted(env: CaseEnv) -> None:
    """The case's markets file lists LUNA/USDT on Binance beside ETH/USDT; the exchange does not list
    it (a delisting), so it has no candle to give: the candles the case must land are exactly the
    fault-free run's (the recordings), and LUNA/USDT adds none. Three hourly runs: in each of the
    first two the market fails for good (bad_symbol) while ETH/USDT in the same task and OKX load,
    and Airflow spends no retry on it (the retry policy); the second failure in a row suspends it
    with one alert (suspend_after_failures: 2), and the third run skips it and goes green."""
    exchange, symbol, start, end = DELISTED
    start_ms = int(datetime.fromisoformat(start.replace("Z", "+00:00")).timestamp() * 1000)
    end_ms = int(datetime.fromisoformat(end.replace("Z", "+00:00")).timestamp() * 1000)
    # The source itself is the yardstick for what exists: no listing, and its klines refused outright.
    served = {(m["exchange"], m["symbol"]) for m in env.emulator.admin("GET", "/markets")["markets"]}
    status, _, body = env.emulator.get(f"/api/v3/klines?symbol={symbol.replace('/', '')}&interval=1m"
                                       f"&startTime={start_ms}&endTime={end_ms - 1}&limit=1000")
    code = json.loads(body).get("code") if status == 400 else None
    env.check(f"the exchange holds no candle of {symbol}: not listed, its klines answered -1121 Invalid symbol, "
              "so the candles expected are the fault-free run's", (exchange, symbol) not in served and code == -1121,
              f"(listed: {(exchange, symbol) in served}; klines: HTTP {status} {body[:60]!r})")

    problems: list[str] = []
    for i in range(1, DELISTED_RUNS + 1):
        run = DagRun(env, f"{env.slug}-{i}")
        try:
            run.run()
            error = None
        except TaskFailed as exc:  # Airflow marks the task failed; the run's other tasks ran
            error = str(exc)
        outcomes = {sym: (outcome, cls) for sym, outcome, cls in env.query(
            "SELECT symbol, outcome, error_class FROM ops.market_task_outcomes WHERE run_id = %s", (run.run_id,))}
        tries = {ex: [(r.try_number, r.ok) for r in run.records if r.exchange == ex] for ex in run.exchanges}
        others_ok = (all(o == ("success", None) for sym, o in outcomes.items() if sym != symbol)
                     and len(outcomes) == 3 and tries["okx"] == [(1, True)])
        if i <= DELISTED_SUSPEND_AFTER:
            # the DAG task's retry policy fails it at its first of run.tries() tries
            not_retried = f"binance reconcile failed at try 1 of {run.tries(exchange)}, not retried (retry policy"
            want = (outcomes.get(symbol) == ("failed_permanent", "bad_symbol") and tries[exchange] == [(1, False)]
                    and error is not None and not_retried in error and "bad_symbol is permanent" in error)
            if want:  # the evidence that the delisted market hit this run
                env.event("delisted market in the markets file (bad_symbol)")
        else:
            want = outcomes.get(symbol) == ("suspended", None) and tries[exchange] == [(1, True)] and error is None
        if not (want and others_ok):
            problems.append(f"run {i}: outcomes {outcomes}, tries {tries}, error {error}")
    env.check(f"runs 1-{DELISTED_SUSPEND_AFTER}: {symbol} failed_permanent (bad_symbol), Binance's task failed at "
              f"its first try with no retry (retry policy), ETH/USDT and OKX loaded; run {DELISTED_RUNS}: it was "
              "skipped as suspended and every task succeeded", not problems, "; ".join(problems)[:600])
    health = {sym: (st, perm, cls) for sym, st, perm, cls in env.query(
        "SELECT symbol, status, consecutive_permanent_failures, last_error_class FROM ops.market_health "
        "WHERE exchange = %s", (exchange,))}
    env.check(f"ops.market_health: {symbol} suspended after {DELISTED_SUSPEND_AFTER} permanent failures "
              "(bad_symbol), ETH/USDT active",
              health == {symbol: ("suspended", DELISTED_SUSPEND_AFTER, "bad_symbol"),
                         "ETH/USDT": ("active", 0, None)}, f"({health})")
    alerts = env.query("SELECT kind, subject FROM ops.alerts ORDER BY alert_id")
    env.check(f"exactly one alert: market_suspended for {exchange} {symbol}",
              alerts == [("market_suspended", f"{exchange} {symbol}")], f"({alerts})")


def _klines_requests(env: CaseEnv) -> int:
    return int(env.emulator.stats().get("requests", {}).get("binance", {}).get(BINANCE_KLINES["path"], 0))


def drive_hung_connection(env: CaseEnv) -> None:
    """Binance's second klines page meets an exchange that accepts the connection and never answers
    (held HANG_S, far past the client's timeout), with the first page already in raw. The emulator
    decides a request's delay before its terminal faults: the first two pages are slowed 1.5 s, and
    the hang is planted as soon as the second has arrived, so it is that request, still in its delay,
    that hangs. ccxt's timeout (the markets file's timeout_ms, counted from the request) must end
    the call as a classified ``timeout`` in seconds, and the call be retried and answered."""
    marks: dict[str, Any] = {}
    watcher = pymongo.MongoClient(env.mongo_uri, serverSelectionTimeoutMS=2000)
    pages = watcher[env.mongo_db].raw_market_payload

    def plant(done: threading.Event) -> None:
        _await(env, done, lambda: _klines_requests(env) >= 2, "Binance asks for its second klines page")
        marks["hung_at"] = time.time()  # the request arrived up to one poll before
        env.emulator.add_faults([{"id": f"{env.slug}-hang", "kind": "timeout", **BINANCE_KLINES, "count": 1,
                                  "seconds": HANG_S}])
        marks["pages_stored"] = pages.count_documents({"exchange": "binance", "kind": "ohlcv"})

    background = Background(env, "plant the hang", plant)
    run = DagRun(env, f"{env.slug}-1")
    try:
        run.run()
    finally:
        background.finish()
        watcher.close()
    env.check("the hung request was Binance's second klines page, the first already in raw",
              marks.get("pages_stored") == 1, f"({marks.get('pages_stored')} Binance pages stored when it hung)")
    # A call that got no answer has no response to name its endpoint: every Binance error row counts.
    errors = env.query("SELECT extract(epoch FROM occurred_at), error_class, exception, will_retry, try_number "
                       "FROM ops.api_errors WHERE exchange = 'binance'")
    client_s = CLIENT_TIMEOUT_MS / 1000
    timeouts = [(float(at) - marks["hung_at"], retry, n) for at, cls, exc, retry, n in errors
                if cls == "timeout" and exc == "RequestTimeout"] if "hung_at" in marks else []
    env.check("ops.api_errors has the hung call: class timeout (RequestTimeout), retried in the task",
              len(errors) == 1 and len(timeouts) == 1 and timeouts[0][1:] == (True, 1), f"({errors})")
    elapsed = timeouts[0][0] if timeouts else None
    env.check(f"the client gave up after its {client_s:.0f} s timeout, not the {HANG_S} s hang",
              elapsed is not None and client_s - 1 <= elapsed <= client_s + 5,
              f"({elapsed and round(elapsed, 2)} s from the request to the error)")
    binance = [r for r in run.records if r.exchange == "binance"]
    requests = _klines_requests(env)
    tries = [(r.try_number, r.ok, round(r.seconds, 1)) for r in binance]
    env.check("the page was asked again and answered inside Binance's first try, far within the hang",
              [(n, ok) for n, ok, _ in tries] == [(1, True)] and binance[0].seconds < HANG_S / 2 and requests == 3,
              f"({requests} klines requests; tries {tries})")


def drive_lock_held(env: CaseEnv) -> None:
    """Another session takes ``LOCK TABLE staging.candle IN EXCLUSIVE MODE`` (as a long migration or a
    manual fix would) before OKX's first try and holds it until that try has failed. The load's COPY
    queues behind it; the session's lock_timeout (``defaults.timeouts.db_lock``, applied like in
    production) ends the wait as a database error (transient), and Airflow's retry, after the lock
    is gone, loads the same candles."""
    victim = "marketflow-lock-victim"
    run = DagRun(env, f"{env.slug}-1")
    run.app_names[("okx", 1)] = victim
    lock: dict[str, Any] = {}
    waits: list[tuple[str, list[int]]] = []

    def observe(done: threading.Event) -> None:
        waits.extend(_await(env, done, lambda: env.query(
            "SELECT l.mode, pg_blocking_pids(a.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE a.datname = current_database() AND a.application_name = %s AND NOT l.granted "
            "AND l.relation = 'staging.candle'::regclass", (victim,)), "the OKX load waits for the lock"))
        # A load without a lock_timeout would wait for as long as the lock is held, and the lock is only
        # released for the retry: let go after a while, so the case fails on its checks instead of hanging.
        give_up = time.monotonic() + DB_LOCK_S + 60
        while not done.is_set() and "conn" in lock and time.monotonic() < give_up:
            time.sleep(0.05)
        if not done.is_set() and "conn" in lock:
            env.event("lock released by the case after a minute: the load never gave up waiting")
            release()

    def take(exchange: str, n: int) -> None:
        if (exchange, n) != ("okx", 1):
            return
        conn = env.connect("faults-lock-holder")
        with conn.cursor() as cur:
            cur.execute("LOCK TABLE staging.candle IN EXCLUSIVE MODE")  # reads go on; every write waits
        lock.update(conn=conn, pid=conn.get_backend_pid(), taken=time.monotonic())
        lock["observer"] = Background(env, "observe the lock wait", observe)

    def release() -> None:
        conn = lock.pop("conn", None)
        if conn is not None:
            conn.rollback()
            conn.close()
            lock.update(held_s=time.monotonic() - lock["taken"], released_at=time.time())

    def gate(exchange: str, n: int) -> None:
        if (exchange, n) == ("okx", 2):
            release()
        run.wait_retry_delay(exchange, n)

    run.before_try, run.retry_gate = take, gate
    try:
        run.run()
    finally:
        release()
        if "observer" in lock:
            lock["observer"].finish()
    if waits:
        env.event("lock held on staging.candle past the load's lock_timeout")
    env.check("the OKX load waited for the lock: its RowExclusiveLock on staging.candle blocked by the holder",
              any(mode == "RowExclusiveLock" and lock.get("pid") in blockers for mode, blockers in waits),
              f"({waits}, holder {lock.get('pid')})")
    env.check(f"the lock was held past the load's lock_timeout ({DB_LOCK_S} s)",
              lock.get("held_s", 0) > DB_LOCK_S, f"(held {lock.get('held_s', 0):.1f} s)")
    client = env.mongo_client()
    try:
        load = client[env.mongo_db].raw_ingestion_log.find_one(
            {"run_id": run.run_id, "task_id": "okx.reconcile[BTC/USDT]", "try_number": 1, "stage": "load"}) or {}
    finally:
        client.close()
    env.check(f"the load gave up at its lock_timeout: database error LockNotAvailable after ~{DB_LOCK_S} s",
              load.get("status") == "failed" and load.get("error_class") == "database"
              and load.get("exception") == "LockNotAvailable" and "lock timeout" in str(load.get("error_message"))
              and DB_LOCK_S - 0.2 <= float(load.get("duration_s") or 0) <= DB_LOCK_S + 3,
              f"({ {k: load.get(k) for k in ('status', 'error_class', 'exception', 'duration_s')} })")
    okx = [r for r in run.records if r.exchange == "okx"]
    failed = okx[0].error if okx and not okx[0].ok else ""
    env.check("the failed try's error: class database, naming the lock timeout",
              "BTC/USDT: database: LockNotAvailable" in (failed or "") and "lock timeout" in (failed or ""),
              f"({(failed or '')[:200]})")
    env.check("Airflow's retry ran after the lock was released and loaded OKX (try 2); Binance's first try was "
              "untouched", [(r.try_number, r.ok) for r in okx] == [(1, False), (2, True)]
              and okx[1].started_at >= lock.get("released_at", float("inf"))
              and [(r.try_number, r.ok) for r in run.records if r.exchange == "binance"] == [(1, True)])


# ---- the cases -------------------------------------------------------------------------------------------
CASES: tuple[Case, ...] = (
    Case("http_429_burst", "429 bursts",
         "Binance answers 5 klines requests in a row with 429 (Retry-After 1 s): the 4 in-task attempts run "
         "out, the task's second try gets the last one; OKX gets a burst of 3 on history-candles; Bybit answers "
         "3 kline requests with retCode 10006 (HTTP 200, a reset time 1 s ahead, no Retry-After).",
         faults=({"kind": "http_429", **BINANCE_KLINES, "count": 5, "retry_after": 1},
                 {"kind": "http_429", **OKX_CANDLES, "count": 3, "retry_after": 1},
                 {"kind": "http_429", **BYBIT_KLINES, "count": 3, "retry_after": 1}),
         quick=True),
    Case("weight_budget_429", "429 for the weight budget",
         "The emulator's Binance budget is cut to 20 weight/min, so after the market list (20) a page is refused "
         "with a real 429 whose Retry-After runs to the end of the exchange's minute (its clock set to end it "
         f"{MINUTE_LEFT_S:.0f} s after the run starts); retrying early would be a strike and 3 strikes a ban. "
         "Bybit allows one kline request a second: its second page is answered retCode 10006.",
         emulator_config={"binance_weight_limit": 20, "bybit_endpoint_limit": 1}, drive=drive_weight_budget),
    Case("http_418", "418 bans",
         "Binance bans the IP (418, Retry-After 2 s / 3 s) on the market list and on a klines page; the pipeline "
         "pauses the exchange's shared bucket for the ban and retries after it. Bybit answers its market list "
         "and a kline page with its IP-limit 403 (plain text, no Retry-After).",
         faults=({"kind": "http_418", **BINANCE_MARKETS, "count": 1, "retry_after": 2},
                 {"kind": "http_418", **BINANCE_KLINES, "count": 1, "retry_after": 3},
                 {"kind": "http_418", **BYBIT_MARKETS, "count": 1},
                 {"kind": "http_418", **BYBIT_KLINES, "count": 1})),
    Case("http_5xx", "5xx errors",
         "Binance answers 5 klines requests with 503 (4 in-task attempts, then the task's second try); OKX "
         "answers its market list with 500 and a candles page with 502; Bybit's gateway answers its market "
         "list with a 503 page and two kline pages with 502.",
         faults=({"kind": "http_5xx", **BINANCE_KLINES, "count": 5, "status": 503},
                 {"kind": "http_5xx", **OKX_MARKETS, "count": 1, "status": 500},
                 {"kind": "http_5xx", **OKX_CANDLES, "count": 1, "status": 502},
                 {"kind": "http_5xx", **BYBIT_MARKETS, "count": 1, "status": 503},
                 {"kind": "http_5xx", **BYBIT_KLINES, "count": 2, "status": 502}),
         quick=True),
    Case("timeout", "timeouts",
         "A klines page on each exchange gets no answer (the connection is held 5 s, then closed); ccxt gives "
         "up after the markets file's 3 s timeout and the call is retried.",
         faults=({"kind": "timeout", **BINANCE_KLINES, "count": 1, "seconds": 5},
                 {"kind": "timeout", **OKX_CANDLES, "count": 1, "seconds": 5},
                 {"kind": "timeout", **BYBIT_KLINES, "count": 1, "seconds": 5})),
    Case("slow", "slow responses",
         "Every request is answered 1.5 s late (within the 3 s timeout); one OKX and one Bybit page 5 s late "
         "(past it).",
         faults=({"kind": "slow", **OKX_CANDLES, "count": 1, "ms": 5000},
                 {"kind": "slow", **BYBIT_KLINES, "count": 1, "ms": 5000},
                 {"kind": "slow", "probability": 1.0, "ms": 1500})),
    Case("malformed_json", "malformed JSON",
         "One klines page per exchange, and Binance's and Bybit's market lists, are a complete HTTP 200 whose "
         "body is not JSON.",
         faults=({"kind": "malformed_json", **BINANCE_KLINES, "count": 1},
                 {"kind": "malformed_json", **OKX_CANDLES, "count": 1},
                 {"kind": "malformed_json", **BINANCE_MARKETS, "count": 1},
                 {"kind": "malformed_json", **BYBIT_KLINES, "count": 1},
                 {"kind": "malformed_json", **BYBIT_MARKETS, "count": 1})),
    Case("truncated_json", "truncated JSON (connection cut)",
         "One klines page per exchange stops halfway: Content-Length announces the whole body, the "
         "connection closes after half of it.",
         faults=({"kind": "truncated_json", **BINANCE_KLINES, "count": 1},
                 {"kind": "truncated_json", **OKX_CANDLES, "count": 1},
                 {"kind": "truncated_json", **BYBIT_KLINES, "count": 1}),
         quick=True),
    Case("truncated_json_short", "truncated JSON (short body)",
         "One klines page per exchange is a complete HTTP 200 holding only the first half of the JSON.",
         faults=({"kind": "truncated_json", **BINANCE_KLINES, "count": 1, "cut_connection": False},
                 {"kind": "truncated_json", **OKX_CANDLES, "count": 1, "cut_connection": False},
                 {"kind": "truncated_json", **BYBIT_KLINES, "count": 1, "cut_connection": False})),
    Case("duplicate_rows", "duplicated rows",
         "Every candle response repeats 25 of its rows (identical copies next to the originals).",
         faults=({"kind": "duplicate_rows", "probability": 1.0, "n": 25},),
         drive=drive_duplicates, quick=True),
    Case("out_of_order_rows", "out-of-order rows",
         "Every candle response comes shuffled (Binance documents oldest first, OKX and Bybit newest first).",
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
    Case("delisted_market", "delisted market",
         f"The case's markets file adds {DELISTED[1]} on Binance (bounded like the recordings), which the exchange "
         "does not list: its candles do not exist at the source, so the case must land exactly the fault-free "
         f"run's. In {DELISTED_RUNS} hourly runs it fails for good (bad_symbol) without an Airflow retry while "
         f"ETH/USDT and OKX load; after {DELISTED_SUSPEND_AFTER} failures in a row it is suspended with one alert "
         "and the last run skips it.",
         extra_markets=(DELISTED,), defaults={"suspend_after_failures": DELISTED_SUSPEND_AFTER},
         drive=drive_delisted),
    Case("hung_connection", "hung exchange connection",
         f"Binance's second klines page, the first already in raw, meets an exchange that accepts the connection "
         f"and never answers ({HANG_S} s; planted while that request sits in a 1.5 s delay); ccxt's "
         f"{CLIENT_TIMEOUT_MS // 1000} s timeout ends the call as a timeout, in ops.api_errors, and the page is "
         "asked again.",
         faults=({"kind": "slow", **BINANCE_KLINES, "count": 2, "ms": 1500},),
         drive=drive_hung_connection),
    Case("postgres_lock", "Postgres lock held past the lock timeout",
         "Another session holds LOCK TABLE staging.candle IN EXCLUSIVE MODE from before OKX's first try until it "
         f"has failed: the load's COPY waits its lock_timeout (db_lock: {DB_LOCK_S} s in the case's markets file) "
         "and fails as a database error (LockNotAvailable, transient); Airflow's retry loads after the release.",
         defaults={"timeouts": {"db_lock": DB_LOCK_S}}, drive=drive_lock_held),
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

