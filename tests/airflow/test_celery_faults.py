"""Queues, rate limits and lost workers on the CeleryExecutor (issue 18, items 2 and 4): `make faults`.

One Celery topology (scripts/topology.py: Redis, PgBouncer, api-server, scheduler, dag-processor,
triggerer, two workers listening on `default,exchange_binance,exchange_okx`, both with the egress
identity `default`, so they share one rate-limit bucket per exchange) against an exchange emulator
of its own with Binance's weight limit on (120 weight a minute per IP, a fiftieth of Binance's, so a
test-sized backfill runs at the full limit for minutes; the markets file tells the bucket the same
limit).

In order (one stack, so the module runs top to bottom):

1. the hourly DAG on the bundled real candles with the worker running Binance's reconcile SIGKILLed
   mid-extract (the whole worker: its Celery processes and the task process, as when a host is lost);
2. the hourly DAG again with Redis restarted while the run's tasks sit in its queues;
3. market_backfill of 3 synthetic Binance markets x 10 days (6 tasks, 4 at once) at the full limit on
   both workers, with a minute run (the live path) of the same markets during it and once before it as the reference;
4. market_backfill of 10 other days with a worker SIGKILLed while it runs a backfill task.

Oracles: the bundled source files (support.sample: the marts hold exactly their candles, every value,
no candle more) and the emulator's own candles, read over plain HTTP after the runs with its limit
lifted. Zero 429s and 418s from the emulator's /__admin/stats.

Test-stack settings (the defaults would make a lost worker cost minutes): `[scheduler]
task_instance_heartbeat_timeout` 60 s (default 300) and its detection interval 5 s (default 10): a
task process that stopped heartbeating is failed after 60 s and retried (retry_delay 20 s) on a live
worker. Celery keeps `task_acks_late` (the provider's default, True) and the provider's 24 h
visibility timeout: a killed worker's unacked message is not redelivered before the scheduler has
retried the task; a redelivery after that is refused by the Execution API (the try is no longer queued).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psycopg2
import pytest
import requests
from support.celery_stack import CeleryStack, celery_stack, kill_worker, metadata_rows, warehouse_rows
from support.sample import assert_marts_equal_sample
from test_airflow_path import ONLY_RERUN_CHECKED_MARTS
from test_celery_path import ADMIN_PASSWORD, run_hourly  # run_hourly logs in with this password

from exchange_emulator.testing import EmulatorProcess
from scripts import demo, stack, topology
from scripts.warehouse_checks import LINEAGE_COLUMNS, table_checksum

pytestmark = [pytest.mark.airflow, pytest.mark.scenario]


WEIGHT_LIMIT = 120  # the emulator's Binance weight per minute and IP
SYMBOLS = ["BTC/USDT", "SOL/USDT", "XRP/USDT"]  # the emulator's synthetic Binance markets
HISTORY = ("2025-06-01T00:00:00Z", "2025-06-21T00:00:00Z")
FIRST_BACKFILL = {"start": "2025-06-01T00:00:00Z", "end": "2025-06-11T00:00:00Z"}
SECOND_BACKFILL = {"start": "2025-06-11T00:00:00Z", "end": "2025-06-21T00:00:00Z"}
MINUTE_REFERENCE = {"start": "2025-06-12T00:00:00Z", "end": "2025-06-12T00:10:00Z"}
MINUTE_DURING = {"start": "2025-06-13T00:00:00Z", "end": "2025-06-13T00:10:00Z"}
# The hourly runs' other dbt models are marked successful (test_airflow_path), and so are the gap
# repairs (the synthetic markets' configured history would be queued as gaps and fetched) and the
# rebuild after them (with the repairs marked done it would start at once, beside the reconcile).
HOURLY_MARKED = rf"(?:{ONLY_RERUN_CHECKED_MARTS})|gap_repairs\..*|dbt_after_repairs\..*"
RESULTS = Path(stack.REPO / ".local" / "test-logs" / "celery-faults.json")

MARKETS = """\
defaults:
  timeframes: [1m]
  overlap_minutes: 2
  schedule_start: ${{MARKETFLOW_SCHEDULE_START:}}
exchanges:
  binance:
    api_base_url: ${{MARKETFLOW_EXCHANGE_URL}}
    options: {{fetchMarkets: {{types: [spot]}}}}
    # the emulator's {weight} weight a minute in ccxt cost units (5 weight each)
    rate_limit_per_minute: {units}
    # 4 backfill tasks at once on workers of 3 slots each: both workers take some
    backfill_pool_slots: 4
    markets:
      - {{symbol: ETH/USDT, history_start: "2022-08-14T00:00:00Z", history_end: "2022-08-16T00:00:00Z"}}
{synthetic}
  okx:
    api_base_url: ${{MARKETFLOW_EXCHANGE_URL}}
    options: {{fetchMarkets: {{types: [spot]}}}}
    markets:
      - {{symbol: BTC/USDT, history_start: "2025-11-23T16:00:00Z", history_end: "2025-11-25T16:00:00Z"}}
"""


def write_markets(path: Path, with_synthetic: bool) -> None:
    synthetic = "\n".join(f'      - {{symbol: {s}, history_start: "{HISTORY[0]}", history_end: "{HISTORY[1]}"}}'
                          for s in SYMBOLS) if with_synthetic else ""
    path.write_text(MARKETS.format(weight=WEIGHT_LIMIT, units=WEIGHT_LIMIT // 5, synthetic=synthetic))


def record(case: str, **outcome) -> None:
    """The measured outcome of a case, for docs/faults.md's Celery table."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[case] = {**outcome, "at": datetime.now(UTC).isoformat(timespec="seconds")}
    RESULTS.write_text(json.dumps(results, indent=2))


@pytest.fixture(scope="module")
def emulator(test_root: Path, sample_data_dir: Path) -> Iterator[EmulatorProcess]:
    with EmulatorProcess(sample_data_dir, binance_weight_limit=WEIGHT_LIMIT) as emu:
        yield emu


@pytest.fixture(scope="module")
def markets_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("celery_faults_config") / "markets.yml"
    write_markets(path, with_synthetic=False)
    return path


@pytest.fixture(scope="module")
def celery(tmp_path_factory, pg_server, mongo_uri, emulator, markets_file) -> Iterator[CeleryStack]:
    settings = {"AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5"}
    with celery_stack(tmp_path_factory.mktemp("celery_faults"), pg_server, mongo_uri, emulator.base_url,
                      markets_file, ADMIN_PASSWORD, extra_env=settings, concurrency=3, parallelism=6) as started:
        queues = {w.argv[w.argv.index(topology.QUEUES_OPTION) + 1] for w in started.workers}
        assert queues == {"default,exchange_binance,exchange_okx"}
        assert {w.env[topology.EGRESS_VAR] for w in started.workers} == {"default"}
        yield started


def ti_rows(env: dict[str, str], dag_id: str, run_id: str) -> list[tuple]:
    return metadata_rows(env, "SELECT task_id, map_index, state, try_number, pid, queue, start_date, end_date "
                              "FROM task_instance WHERE dag_id = %s AND run_id = %s", dag_id, run_id)


def wait_for(what: str, check, timeout: float = 600, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def kill_the_worker_running(celery: CeleryStack, dag_id: str, run_id: str, task_id: str,
                            ready=lambda: True) -> tuple[stack.ManagedProcess, float]:
    """Once ``task_id`` of the run is running (and ``ready()``), SIGKILL the whole worker running it."""
    def running():
        rows = [r for r in ti_rows(celery.env, dag_id, run_id) if r[0] == task_id and r[2] == "running" and r[4]]
        for row in rows:
            worker = celery.worker_running(row[4])
            if worker is not None and ready():
                return worker
        return None

    worker = wait_for(f"{task_id} of {run_id} running on a worker", running, timeout=900)
    kill_worker(worker)
    return worker, time.monotonic()


def emulator_candles(emulator: EmulatorProcess, symbol: str, start: str, end: str) -> dict[int, tuple]:
    """The emulator's 1m klines of ``symbol`` in [start, end), over plain HTTP (not ccxt, not the pipeline)."""
    to_ms = lambda iso: int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)  # noqa: E731
    since, stop, out = to_ms(start), to_ms(end), {}
    while since < stop:
        page = requests.get(f"{emulator.base_url}/api/v3/klines", timeout=30, params={
            "symbol": symbol.replace("/", ""), "interval": "1m", "startTime": since, "endTime": stop - 1,
            "limit": 1000}).json()
        if not page:
            break
        for k in page:
            out[int(k[0])] = (*(Decimal(v) for v in k[1:6]), Decimal(k[7]), int(k[8]))
        since = int(page[-1][0]) + 60_000
    return out


def staging_candles(env: dict[str, str], symbol: str, start: str, end: str) -> dict[int, tuple]:
    rows = warehouse_rows(env, "SELECT (extract(epoch FROM open_time) * 1000)::bigint, open, high, low, close, "
                               "volume, quote_volume, trades FROM staging.ohlcv WHERE exchange = 'binance' AND "
                               "symbol = %s AND timeframe = '1m' AND open_time >= %s AND open_time < %s",
                          symbol, start, end)
    assert len(rows) == len({r[0] for r in rows})
    return {int(r[0]): tuple(r[1:]) for r in rows}


def assert_staging_equals_the_emulator(celery: CeleryStack, emulator: EmulatorProcess, window: dict) -> int:
    """Every candle of the window landed with the exchange's values, none more (the emulator's limit is
    lifted for reading them, then restored)."""
    emulator.configure(binance_weight_limit=0)
    try:
        total = 0
        for symbol in SYMBOLS:
            truth = emulator_candles(emulator, symbol, window["start"], window["end"])
            assert len(truth) == 10 * 1440
            assert staging_candles(celery.env, symbol, window["start"], window["end"]) == truth, symbol
            total += len(truth)
        return total
    finally:
        emulator.configure(binance_weight_limit=WEIGHT_LIMIT)


def trigger(env: dict[str, str], dag_id: str, conf: dict, prefix: str) -> str:
    run_id = f"{prefix}__{os.urandom(4).hex()}"
    demo.airflow(env, "dags", "unpause", dag_id)
    demo.airflow(env, "dags", "trigger", dag_id, "--run-id", run_id, "--conf", json.dumps(conf))
    return run_id


def wait_for_run(env: dict[str, str], dag_id: str, run_id: str, timeout: float = 1800) -> str:
    def ended():
        rows = metadata_rows(env, "SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", dag_id, run_id)
        return rows and rows[0][0] in ("success", "failed") and rows[0][0]
    return wait_for(f"{dag_id} {run_id} to end", ended, timeout=timeout, every=3)


def bans_and_429s(emulator: EmulatorProcess) -> tuple[int, int]:
    stats = emulator.stats()
    return stats["http_429_sent"], stats["http_418_sent"]


def mart_checksums(env: dict[str, str]) -> dict[str, tuple[int, str]]:
    with psycopg2.connect(demo.warehouse_dsn(env)) as conn:
        return {table: table_checksum(conn, table, key, LINEAGE_COLUMNS)
                for table, key in (("marts.ohlcv_1m", ["exchange", "symbol", "open_time"]),
                                   ("staging.ohlcv", ["exchange", "symbol", "timeframe", "open_time"]))}


HOURLY: dict[str, dict] = {}


def test_hourly_run_with_the_worker_running_binances_reconcile_sigkilled(celery: CeleryStack,
                                                                         emulator: EmulatorProcess) -> None:
    """The killed try stops heartbeating; the scheduler fails it after the heartbeat timeout and the
    retry runs on the other worker (the only one left); the marts hold exactly the source files' candles."""
    env = celery.env
    emulator.reset()
    # Binance's pages answer 3 s late, so the task is mid-extract (a page in flight) when it is killed.
    emulator.add_faults({"kind": "slow", "exchange": "binance", "path": "/api/v3/klines", "ms": 3000, "count": 2})
    killed: dict = {}

    def kill(run_id: str) -> None:
        def page_asked() -> bool:
            return emulator.stats()["requests"].get("binance", {}).get("/api/v3/klines", 0) >= 1
        killed["worker"], killed["at"] = kill_the_worker_running(celery, demo.DAG_ID, run_id, "binance.reconcile",
                                                                 ready=page_asked)

    started = time.monotonic()
    run_id = run_hourly(env, celery.services, mark_success=HOURLY_MARKED, during=kill)
    took = time.monotonic() - started
    tis = {(t, m): r for t, m, *r in ti_rows(env, demo.DAG_ID, run_id)}
    state, tries, _, queue, _, ended = tis[("binance.reconcile", -1)]
    assert state == "success" and tries >= 2, tis[("binance.reconcile", -1)]
    assert queue == "exchange_binance" and tis[("okx.reconcile", -1)][3] == "exchange_okx"
    assert tis[("marts_inputs", -1)][3] == "default"
    survivor = next(w for w in celery.workers if w is not killed["worker"])
    assert run_id in survivor.log_file.read_text()
    with psycopg2.connect(demo.warehouse_dsn(env)) as conn, conn.cursor() as cur:
        assert_marts_equal_sample(cur)
    HOURLY["after kill"] = mart_checksums(env)
    assert bans_and_429s(emulator) == (0, 0)
    recovered = ended.timestamp() - (time.time() - (time.monotonic() - killed["at"]))
    record("hourly run, worker SIGKILLed mid-extract", expected=5760, landed=5760, lost=0, duplicated=0, bans=0,
           tries=tries, recover_seconds=round(recovered), run_seconds=round(took))
    killed["worker"].start()  # back for the next cases


def test_hourly_run_with_redis_restarted_while_tasks_are_queued(celery: CeleryStack, emulator: EmulatorProcess) -> None:
    env = celery.env
    emulator.reset()
    outage: dict = {}

    def restart_redis(run_id: str) -> None:
        def queued_or_running():
            return any(r[2] in ("queued", "running") for r in ti_rows(env, demo.DAG_ID, run_id)
                       if r[0].endswith(".reconcile"))
        wait_for("a reconcile task queued or running", queued_or_running, timeout=900)
        outage["at"] = time.monotonic()
        celery.redis.stop(30)  # SIGTERM: Redis writes its append-only file and exits
        time.sleep(5)
        celery.redis.start()
        outage["back"] = time.monotonic()

    started = time.monotonic()
    run_id = run_hourly(env, celery.services, mark_success=HOURLY_MARKED, during=restart_redis)
    took = time.monotonic() - started
    tis = ti_rows(env, demo.DAG_ID, run_id)
    assert {r[2] for r in tis} <= {"success", "skipped"}, tis
    with psycopg2.connect(demo.warehouse_dsn(env)) as conn, conn.cursor() as cur:
        assert_marts_equal_sample(cur)
    # the re-run of the same window changes no candle of the marts or staging
    assert mart_checksums(env) == HOURLY["after kill"]
    assert bans_and_429s(emulator) == (0, 0)
    retried = sorted(f"{t} try {n}" for t, _, _, n, *_ in tis if n > 1)
    record("hourly run, Redis restarted with tasks queued", expected=5760, landed=5760, lost=0, duplicated=0,
           bans=0, tries=retried or "all first tries", outage_seconds=round(outage["back"] - outage["at"], 1),
           run_seconds=round(took))


def minute_run(celery: CeleryStack, window: dict) -> dict:
    """A run of market_candles_1m (the live path) for a past window of the synthetic markets."""
    env = celery.env
    run_id = trigger(env, "market_candles_1m", {**window, "exchanges": ["binance"], "symbols": SYMBOLS}, "live")
    assert wait_for_run(env, "market_candles_1m", run_id, timeout=900) == "success"
    landed = warehouse_rows(env, "SELECT count(*) FROM staging.ohlcv WHERE exchange = 'binance' AND run_id = %s",
                            run_id)[0][0]
    seconds = warehouse_rows(env, "SELECT max(seconds) FROM ops.market_task_outcomes WHERE run_id = %s",
                             run_id)[0][0]
    ti = next(r for r in ti_rows(env, "market_candles_1m", run_id) if r[0] == "binance.ingest")
    return {"run_id": run_id, "landed": landed, "market_seconds": float(seconds or 0), "queue": ti[5],
            "task_seconds": (ti[7] - ti[6]).total_seconds(), "started": ti[6], "ended": ti[7]}


def test_backfill_on_two_workers_of_one_identity_at_the_full_limit_keeps_the_live_path_first(
        celery: CeleryStack, emulator: EmulatorProcess, markets_file: Path) -> None:
    env = celery.env
    write_markets(markets_file, with_synthetic=True)  # read by every task at its start
    reference = minute_run(celery, MINUTE_REFERENCE)
    emulator.reset()
    run_id = trigger(env, "market_backfill", {**FIRST_BACKFILL, "exchanges": ["binance"], "symbols": SYMBOLS,
                                              "chunk_hours": 24, "task_candles": 5 * 1440}, "history")
    # once the backfill runs at the limit (history waited for the bucket), a minute run of other minutes
    wait_for("the backfill waiting on the shared bucket", lambda: warehouse_rows(
        env, "SELECT coalesce(sum(denied), 0) FROM ops.rate_limit_metrics WHERE exchange = 'binance'")[0][0] > 20,
        timeout=900, every=2)
    during = minute_run(celery, MINUTE_DURING)
    assert wait_for_run(env, "market_backfill", run_id) == "success"
    demo.airflow(env, "dags", "pause", "market_candles_1m")

    assert bans_and_429s(emulator) == (0, 0)
    landed = assert_staging_equals_the_emulator(celery, emulator, FIRST_BACKFILL)
    # both workers took backfill tasks off the exchange's queue, and they shared one bucket
    ingests = [r for r in ti_rows(env, "market_backfill", run_id) if r[0] == "binance.ingest"]
    assert {r[5] for r in ingests} == {"exchange_binance"} and len(ingests) >= 4, ingests
    took = {w.name: w.log_file.read_text().count(run_id) for w in celery.workers}
    assert all(took.values()), took
    assert warehouse_rows(env, "SELECT exchange, egress_id FROM ops.rate_limit_buckets ORDER BY 1") == [
        ("binance", "default"), ("okx", "default")]
    # the live path: every candle of its window, in its usual time, no wait for tokens
    for run in (reference, during):
        assert run["landed"] == len(SYMBOLS) * 10 and run["queue"] == "exchange_binance", run
    assert during["market_seconds"] <= 2 * reference["market_seconds"] + 5, (reference, during)
    # the minutes of the live run during the backfill: history waited for the bucket (saturated), the live
    # calls at most for the refill of their own cost (the reserve is theirs), not behind history's calls
    live_wait, history_wait, live_tokens = warehouse_rows(
        env, "SELECT sum(live_wait_seconds), sum(wait_seconds - live_wait_seconds), sum(live_tokens_used) "
             "FROM ops.rate_limit_metrics WHERE exchange = 'binance' "
             "AND minute BETWEEN date_trunc('minute', %s::timestamptz) AND %s", during["started"], during["ended"])[0]
    refill = warehouse_rows(env, "SELECT refill_per_second FROM ops.rate_limit_buckets "
                                 "WHERE exchange = 'binance'")[0][0]
    assert history_wait > 0 and live_wait <= live_tokens / refill + 1, (live_wait, history_wait, live_tokens, refill)
    record("backfill at the full limit, 2 workers on one egress identity", expected=landed, landed=landed, lost=0,
           duplicated=0, bans=0, http_429=0, tasks_per_worker=took,
           live_market_seconds={"reference": reference["market_seconds"], "during": during["market_seconds"]},
           live_task_seconds={"reference": reference["task_seconds"], "during": during["task_seconds"]},
           live_wait_seconds=float(live_wait), history_wait_seconds=float(history_wait))


def test_backfill_with_a_worker_sigkilled_mid_task(celery: CeleryStack, emulator: EmulatorProcess,
                                                   markets_file: Path) -> None:
    env = celery.env
    write_markets(markets_file, with_synthetic=True)  # as the case before leaves it (also when run alone)
    emulator.reset()
    run_id = trigger(env, "market_backfill", {**SECOND_BACKFILL, "exchanges": ["binance"], "symbols": SYMBOLS,
                                              "chunk_hours": 24, "task_candles": 10 * 1440}, "history")

    def some_loaded() -> bool:
        return warehouse_rows(env, "SELECT count(*) FROM staging.ohlcv WHERE run_id = %s", run_id)[0][0] > 0

    worker, killed_at = kill_the_worker_running(celery, "market_backfill", run_id, "binance.ingest",
                                                ready=some_loaded)
    assert wait_for_run(env, "market_backfill", run_id) == "success"
    ended = max(r[7] for r in ti_rows(env, "market_backfill", run_id) if r[0] == "binance.ingest")
    recovered = ended.timestamp() - (time.time() - (time.monotonic() - killed_at))
    ingests = [r for r in ti_rows(env, "market_backfill", run_id) if r[0] == "binance.ingest"]
    retried = [r for r in ingests if r[3] > 1]
    assert retried and all(r[2] == "success" for r in ingests), ingests
    assert bans_and_429s(emulator) == (0, 0)
    landed = assert_staging_equals_the_emulator(celery, emulator, SECOND_BACKFILL)
    record("backfill, worker SIGKILLed mid-task", expected=landed, landed=landed, lost=0, duplicated=0, bans=0,
           tries=sorted(f"unit {r[1]} try {r[3]}" for r in retried), recover_seconds=round(recovered))
    worker.start()
