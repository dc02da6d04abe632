"""Task factories the DAG files wire together. Airflow-specific glue only; the work is in pipeline.py.

Who runs where (pools per exchange, from ``ExchangeConfig.pools()``), so live data never waits for
history:

* ``exchange_<name>``           the minute DAG's ingest task only (priority 1000)
* ``exchange_<name>_hourly``    the hourly reconcile and gap repairs (priority 10)
* ``exchange_<name>_backfill``  market_backfill (priority 1)
* ``marketflow_dbt``             dbt tasks, so they never fill the executor

With core.parallelism at least ``MarketflowConfig.required_parallelism()`` (the sum of the pools), no
mix of history tasks can hold every executor slot while a live task waits.
History work also leaves the exchange's ``live_rate_reserve`` of the shared rate-limit bucket to the
minute path (rate_limit.py). Every task has an execution_timeout and every DAG a run timeout from
the markets file's ``defaults.timeouts``.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import Asset, DeadlineAlert, DeadlineReference, SyncCallback, TaskGroup, get_current_context, task

from marketflow import PROJECT_ROOT
from marketflow.config import DBT_POOL, ExchangeConfig, MarketflowConfig, load_config
from marketflow.errors import retry_policy

log = logging.getLogger(__name__)

# Asset URIs name the warehouse logically (Airflow's postgres scheme wants host/db/schema/table).
STAGING_OHLCV = Asset(name="staging.ohlcv", uri="postgres://warehouse:5432/marketflow/staging/ohlcv",
                      group="marketflow")
MART_OHLCV_1M = Asset(name="marts.ohlcv_1m", uri="postgres://warehouse:5432/marketflow/marts/ohlcv_1m",
                      group="marketflow")

# Absolute priorities: when executor slots are scarce the scheduler queues live work first.
LIVE_PRIORITY, HOURLY_PRIORITY, BACKFILL_PRIORITY = 1000, 10, 1
# A task stops starting new work this long before its execution_timeout, so it can finish what it
# started and report per market instead of being killed mid-write.
TIME_MARGIN = 0.15

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "marketflow",
    # bad symbol, auth, bad request, data: a retry cannot help, so the task fails at once.
    "retry_policy": retry_policy(),
    "retries": 3,
    "retry_delay": timedelta(seconds=20),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=5),
    "weight_rule": "absolute",
    "priority_weight": HOURLY_PRIORITY,
}


def deadline(dag_id: str, limit: timedelta) -> DeadlineAlert:
    """Alert (ops.alerts, log, optional webhook) when a run is not done ``limit`` after being queued.

    Airflow 3's replacement for SLAs. Note apache/airflow#73428: `airflow dags test` crashes at the
    end of a run of a DAG with a deadline; the tests exercise the callback directly.
    """
    words = f"{int(limit.total_seconds() // 60)} minutes"
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=limit,
        callback=SyncCallback("marketflow.alerts.deadline_missed", kwargs={"dag_id": dag_id, "limit": words}),
        name=f"{dag_id} not done within {words}",
    )


def seconds(value: int) -> timedelta:
    return timedelta(seconds=value)


def _attempt():
    from marketflow.pipeline import Attempt

    ctx = get_current_context()
    ti = ctx["ti"]
    return Attempt(ti.dag_id, ti.run_id, ti.task_id, ti.map_index if ti.map_index is not None else -1,
                   ti.try_number or 1), ctx


def _run_window(ctx: dict[str, Any], config: MarketflowConfig, timeframe: str):
    from marketflow.pipeline import plan_window

    conf = ctx["dag_run"].conf or {}
    return plan_window(timeframe, ctx.get("data_interval_start"), ctx.get("data_interval_end"), conf,
                       config.overlap_minutes), conf


def _time_budget(timeout_s: int) -> float:
    """time.monotonic() by which a task stops starting new work (see TIME_MARGIN)."""
    return time.monotonic() + timeout_s * (1 - TIME_MARGIN)


def _prepare(conn, config: MarketflowConfig) -> None:
    """Apply the staging DDL, mirror the markets file into ops.market_config, index the raw collections.
    All idempotent."""
    from marketflow.connections import raw_database
    from marketflow.ops import sync_market_config
    from marketflow.raw_store import RawStore
    from marketflow.schema import apply_ddl

    apply_ddl(conn)
    sync_market_config(conn, config)
    RawStore(raw_database()).ensure_indexes(config.raw_retention_days)


def prepare_storage(config: MarketflowConfig) -> Any:
    @task(task_id="prepare_storage", retries=2, execution_timeout=seconds(config.timeouts.hourly_task))
    def prepare() -> bool:
        """Apply the staging DDL, mirror the markets file into ops.market_config, index the raw
        collections. All idempotent."""
        from marketflow.connections import warehouse_connection

        cfg = load_config()
        conn = warehouse_connection(timeouts=cfg.timeouts)
        try:
            _prepare(conn, cfg)
        finally:
            conn.close()
        return True

    return prepare()


def exchange_ingest(config: MarketflowConfig, exchange: ExchangeConfig, timeframe: str, *, live: bool) -> Any:
    """One task for every market of one exchange: extract and load each market's window, ``pool_slots``
    markets at a time in threads.

    ``live``: the minute DAG's ``<exchange>.ingest`` (the live pool, the whole rate budget, a ticker per
    live market); else the hourly DAG's ``<exchange>.reconcile`` (the hourly pool, history's share of
    the budget, candles only).

    One task instead of an extract and a load task per market: on these paths each Airflow task costs
    a process start, a DAG parse and a scheduling round (seconds each, tens of seconds on a busy 2-core
    machine), more than the work of a market. The markets stay independent: a failing market is
    recorded (ops.market_health, ops.market_task_outcomes) and never stops the others; suspended
    markets are skipped. Retries are per market: the task fails with every failed market's class
    (MarketsFailed); when any failure is transient Airflow retries it, and the retry re-runs only the
    markets that failed transiently; when all are permanent it fails without a retry.
    """
    symbols = [m.symbol for m in exchange.markets if timeframe in m.timeframes]
    timeout = config.timeouts.minute_task if live else config.timeouts.hourly_task

    @task(task_id="ingest" if live else "reconcile", pool=exchange.pool if live else exchange.hourly_pool,
          priority_weight=LIVE_PRIORITY if live else HOURLY_PRIORITY, execution_timeout=seconds(timeout),
          outlets=[STAGING_OHLCV], doc_md=f"extract + load {exchange.name}: {', '.join(symbols)}")
    def ingest(exchange_name: str) -> dict[str, Any]:
        from marketflow.connections import raw_database, warehouse_connection
        from marketflow.pipeline import run_exchange_markets
        from marketflow.raw_store import RawStore

        cfg = load_config()
        budget = _time_budget(cfg.timeouts.minute_task if live else cfg.timeouts.hourly_task)
        attempt, ctx = _attempt()
        window, conf = _run_window(ctx, cfg, timeframe)
        return run_exchange_markets(cfg, exchange_name, timeframe, window, conf, RawStore(raw_database()),
                                    lambda: warehouse_connection(timeouts=cfg.timeouts), attempt, live=live,
                                    deadline=budget, prepare=_prepare if live else None)

    with TaskGroup(group_id=exchange.name, tooltip=f"{exchange.name}: {', '.join(symbols)}") as group:
        ingest(exchange_name=exchange.name)
    return group


def marts_inputs(config: MarketflowConfig) -> Any:
    """The gate between the hourly loads and dbt: it runs whatever the loads did (trigger rule
    all_done), so one failing market or exchange never stops the marts of the others; the marts are
    built from what loaded. It fails only when storage itself was not prepared."""

    @task(task_id="marts_inputs", trigger_rule="all_done", execution_timeout=seconds(300))
    def gate() -> dict[str, Any]:
        from marketflow.connections import warehouse_connection

        attempt, ctx = _attempt()
        if not ctx["ti"].xcom_pull(task_ids="prepare_storage"):
            raise RuntimeError("prepare_storage did not succeed in this run, so the marts are not built; "
                               "see that task's log")
        cfg = load_config()
        conn = warehouse_connection(timeouts=cfg.timeouts)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT exchange, outcome, count(*), string_agg(symbol, ', ' ORDER BY symbol) "
                            "FROM ops.market_task_outcomes WHERE dag_id = %s AND run_id = %s "
                            "GROUP BY 1, 2 ORDER BY 1, 2", (attempt.dag_id, attempt.run_id))
                rows = cur.fetchall()
        finally:
            conn.close()
        for exchange, outcome, count, symbols in rows:
            (log.info if outcome == "success" else log.warning)("%s: %d market(s) %s: %s", exchange, count,
                                                                 outcome.replace("_", " "), symbols)
        log.info("building the marts from what loaded")
        return {f"{ex} {outcome}": int(count) for ex, outcome, count, _ in rows}

    return gate()


def gap_repairs(config: MarketflowConfig, group_id: str = "gap_repairs") -> TaskGroup:
    """Queue re-fetches for open gaps (chunks of ``gap_repair_chunk_minutes``, newest first, at most
    ``gap_repair_max_tasks`` pending per exchange), then one task per exchange works through them in
    the exchange's hourly pool for at most ``gap_repair_time_budget_minutes``."""

    @task(task_id="schedule", execution_timeout=seconds(600))
    def schedule() -> int:
        from marketflow.connections import warehouse_connection
        from marketflow.ops import schedule_gap_repairs

        cfg = load_config()
        attempt, _ = _attempt()
        conn = warehouse_connection(timeouts=cfg.timeouts)
        try:
            queued = schedule_gap_repairs(conn, cfg.gap_repair_max_tasks, cfg.gap_repair_max_attempts,
                                          attempt.run_id, cfg.gap_repair_chunk_minutes,
                                          cfg.gap_repair_retry_failed_hours)
        finally:
            conn.close()
        log.info("queued %d gap re-fetches (chunks of at most %d minutes, at most %d pending per exchange, "
                 "most recent first)", queued, cfg.gap_repair_chunk_minutes, cfg.gap_repair_max_tasks)
        return queued

    def exchange_repairs(exchange: ExchangeConfig):
        @task(task_id=f"repair_{exchange.name}", pool=exchange.hourly_pool, priority_weight=HOURLY_PRIORITY,
              execution_timeout=seconds(config.timeouts.hourly_task))
        def repair() -> dict[str, int]:
            from marketflow.connections import raw_database, warehouse_connection
            from marketflow.ops import pending_repairs
            from marketflow.pipeline import run_gap_repairs
            from marketflow.raw_store import RawStore

            cfg = load_config()
            attempt, _ = _attempt()
            ex = cfg.exchange(exchange.name)
            # The budget never runs into the task's own timeout.
            budget = min(cfg.gap_repair_time_budget_minutes * 60, cfg.timeouts.hourly_task * (1 - 2 * TIME_MARGIN))
            counts = run_gap_repairs(cfg, ex.name, RawStore(raw_database()),
                                     lambda: warehouse_connection(timeouts=cfg.timeouts), attempt,
                                     threads=ex.pool_slots, budget_seconds=budget)
            conn = warehouse_connection(timeouts=cfg.timeouts)
            try:
                left = pending_repairs(conn, ex.name)
            finally:
                conn.close()
            log.info("%s: %d gap chunk(s) re-fetched (%s); %d still queued for the next hourly run", ex.name,
                     sum(counts.values()), ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "none", left)
            return counts

        return repair()

    @task.short_circuit(task_id="anything_repaired", trigger_rule="all_done", execution_timeout=seconds(300))
    def anything_repaired(*results: dict[str, int] | None) -> bool:
        return any(sum((r or {}).values()) for r in results)

    with TaskGroup(group_id=group_id, tooltip="re-fetch open gaps from marts.data_quality_gaps") as group:
        queued = schedule()
        repairs = [exchange_repairs(exchange) for exchange in config.enabled_exchanges]
        queued >> repairs
        # Waits for every repair (failed ones too), then skips the rebuild when nothing was re-fetched.
        anything_repaired(*repairs)
    return group


def dbt_marts(config: MarketflowConfig, group_id: str = "dbt_marts", select: list[str] | None = None) -> TaskGroup:
    """The dbt project (or the ``select``ed part) as a task group: one `dbt build` task per model."""
    from cosmos import DbtTaskGroup, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
    from cosmos.constants import InvocationMode, LoadMode, TestBehavior
    from cosmos.profiles import PostgresUserPasswordProfileMapping

    from marketflow.connections import POSTGRES_CONN_ID
    from marketflow.dbt_failures import DbtRetryPolicy, log_failing_tests

    project_dir = Path(os.environ.get("MARKETFLOW_DBT_PROJECT_DIR", PROJECT_ROOT / "dbt"))
    manifest = project_dir / "target" / "manifest.json"
    if not manifest.exists():
        raise FileNotFoundError(f"dbt manifest {manifest} is missing; run `make dbt-parse` (dbt parse) first")
    dbt = os.environ.get("MARKETFLOW_DBT_EXECUTABLE", str(PROJECT_ROOT / ".local" / "dbt-venv" / "bin" / "dbt"))
    return DbtTaskGroup(
        group_id=group_id,
        project_config=ProjectConfig(dbt_project_path=project_dir, manifest_path=manifest),
        profile_config=ProfileConfig(
            profile_name="marketflow", target_name="airflow",
            profile_mapping=PostgresUserPasswordProfileMapping(conn_id=POSTGRES_CONN_ID,
                                                               profile_args={"schema": "marts"}),
        ),
        execution_config=ExecutionConfig(dbt_executable_path=dbt, invocation_mode=InvocationMode.SUBPROCESS),
        # One `dbt build` per model (its run and its tests in one dbt process: half the process start-ups
        # of run-then-test); a failing test fails the model's task, so nothing downstream runs. A test
        # over two models (relationships) runs as its own task after both are built.
        render_config=RenderConfig(load_method=LoadMode.DBT_MANIFEST, test_behavior=TestBehavior.BUILD,
                                   should_detach_multiple_parents_tests=True, select=select or []),
        operator_args={"install_deps": False, "outlets": [MART_OHLCV_1M], "pool": DBT_POOL},
        default_args={"retries": 2, "retry_policy": DbtRetryPolicy(), "on_failure_callback": log_failing_tests,
                      "execution_timeout": seconds(config.timeouts.dbt_task), "weight_rule": "absolute",
                      "priority_weight": HOURLY_PRIORITY},
    )


def backfill_pipeline(config: MarketflowConfig, exchange: ExchangeConfig) -> tuple[TaskGroup, Any]:
    """plan -> ingest per work unit of a `market_backfill` request, in the exchange's backfill pool.

    A unit is one market (or, past Airflow's max_map_length, several): its task works through every
    chunk of ``chunk_hours`` of its markets' windows (extract to raw, then load to staging), so a
    backfill of any size plans within Airflow's mapping limit, and a year of a market is one task
    process, not 365. Raw is written first, so a failed load loses nothing; a retried task skips the
    chunks already complete. Returns the group (to order it after other tasks) and the mapped output
    (for the summary).
    """

    @task(task_id="plan", execution_timeout=seconds(600))
    def plan() -> list[dict[str, Any]]:
        from airflow.configuration import conf

        from marketflow.pipeline import plan_backfill

        ctx = get_current_context()
        max_tasks = conf.getint("core", "max_map_length", fallback=1024)
        units = plan_backfill(load_config(), exchange.name, dict(ctx["params"]), max_tasks)
        markets = sum(len(u["markets"]) for u in units)
        log.info("%s: %d market(s) in %d task(s) (max_map_length %d), to %s", exchange.name, markets, len(units),
                 max_tasks, "reprocess from raw" if ctx["params"].get("from_raw") else "fetch")
        return units

    @task(task_id="ingest", pool=exchange.backfill_pool, priority_weight=BACKFILL_PRIORITY, outlets=[STAGING_OHLCV],
          execution_timeout=seconds(config.timeouts.backfill_task),
          map_index_template="{{ task.op_kwargs['unit']['markets'] | map(attribute='symbol') | join(', ') }}")
    def ingest(unit: dict[str, Any]) -> list[dict[str, Any]]:
        from marketflow.connections import raw_database, warehouse_connection
        from marketflow.pipeline import backfill_unit
        from marketflow.raw_store import RawStore

        attempt, ctx = _attempt()
        cfg = load_config()
        conn = warehouse_connection(timeouts=cfg.timeouts)
        from_raw = bool(ctx["params"].get("from_raw"))
        # only fetching needs it (rate-limit bucket, API errors), not a rebuild from raw
        ops_conn = None if from_raw else warehouse_connection(timeouts=cfg.timeouts)
        if ops_conn is not None:
            ops_conn.autocommit = True
        try:
            totals = backfill_unit(cfg, unit, RawStore(raw_database()), conn, attempt, from_raw=from_raw,
                                   ops_conn=ops_conn, skip_complete=attempt.try_number > 1)
        finally:
            conn.close()
            if ops_conn is not None:
                ops_conn.close()
        log.info("unit %d/%d of %s done", unit["unit"], unit["units"], exchange.name)
        return totals

    with TaskGroup(group_id=exchange.name, tooltip=f"backfill {exchange.name}, a task per market") as group:
        ingested = ingest.expand(unit=plan())
    return group, ingested


@task(task_id="summary", trigger_rule="all_done", execution_timeout=timedelta(minutes=10))
def backfill_summary(*per_exchange: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """What the backfill loaded, rejected, and left missing, per market, in words and numbers."""
    totals: dict[str, dict[str, int]] = {}
    keys = ("chunks", "chunks_skipped", "inserted", "updated", "unchanged", "rejected", "expected", "present",
            "missing")
    for units in per_exchange:
        for unit in units or []:
            for r in unit or []:
                m = totals.setdefault(f"{r['exchange']} {r['symbol']}", dict.fromkeys(keys, 0))
                for key in keys:
                    m[key] += int(r.get(key) or 0)
    if not totals:
        log.warning("backfill loaded nothing: no task finished (see the failed tasks) or no market matched")
    for market, m in sorted(totals.items()):
        log.info("%s: %d chunks (%d already complete); %d inserted, %d updated, %d unchanged, %d rejected; "
                 "%d of %d candles present, %d missing (left as gaps for the repair loop)", market, m["chunks"],
                 m["chunks_skipped"], m["inserted"], m["updated"], m["unchanged"], m["rejected"], m["present"],
                 m["expected"], m["missing"])
    return totals
