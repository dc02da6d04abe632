"""Task factories the DAG files wire together. Airflow-specific glue only; the work is in pipeline.py."""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import Asset, DeadlineAlert, DeadlineReference, SyncCallback, TaskGroup, get_current_context, task

from marketflow import PROJECT_ROOT
from marketflow.config import ExchangeConfig, MarketflowConfig, load_config
from marketflow.errors import retry_policy

log = logging.getLogger(__name__)

# Asset URIs name the warehouse logically (Airflow's postgres scheme wants host/db/schema/table).
STAGING_OHLCV = Asset(name="staging.ohlcv", uri="postgres://warehouse:5432/marketflow/staging/ohlcv",
                      group="marketflow")
MART_OHLCV_1M = Asset(name="marts.ohlcv_1m", uri="postgres://warehouse:5432/marketflow/marts/ohlcv_1m",
                      group="marketflow")

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "marketflow",
    # bad symbol, auth, bad request, data: a retry cannot help, so the task fails at once.
    "retry_policy": retry_policy(),
    "retries": 3,
    "retry_delay": timedelta(seconds=20),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=5),
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


@task(task_id="prepare_storage", retries=2)
def prepare_storage() -> None:
    """Apply the staging DDL, mirror the markets file into ops.market_config, index the raw collections.
    All idempotent."""
    from marketflow.connections import warehouse_connection

    conn = warehouse_connection()
    try:
        _prepare(conn, load_config())
    finally:
        conn.close()


def candle_pipeline(exchange: ExchangeConfig, timeframe: str, with_ticker: bool) -> TaskGroup:
    """extract -> load for every market of one exchange, mapped one task per market, in the exchange's pool."""
    symbols = [m.symbol for m in exchange.markets if timeframe in m.timeframes]

    @task(task_id="extract", pool=exchange.pool, map_index_template="{{ task.op_kwargs['symbol'] }}")
    def extract(symbol: str, exchange_name: str) -> dict[str, Any]:
        from marketflow.connections import raw_database, warehouse_connection
        from marketflow.pipeline import extract_market, selected
        from marketflow.raw_store import RawStore

        config = load_config()
        attempt, ctx = _attempt()
        window, conf = _run_window(ctx, config, timeframe)
        market = config.market(exchange_name, symbol)
        if not selected(market, conf):
            log.info("%s %s is not selected by dag_run.conf %s; skipping", exchange_name, symbol, conf)
            return {"exchange": exchange_name, "symbol": symbol, "timeframe": timeframe, "payload_ids": [],
                    "window_start_ms": window.start_ms, "window_end_ms": window.start_ms, "skipped": True}
        # Tickers only make sense for the live edge, not for a historical window.
        live = with_ticker and not conf.get("start") and market.history_end is None
        ops_conn = warehouse_connection()
        ops_conn.autocommit = True  # bucket takes and error rows commit at once
        try:
            return extract_market(config, market, timeframe, window, RawStore(raw_database()), attempt,
                                  with_ticker=live, ops_conn=ops_conn)
        finally:
            ops_conn.close()

    @task(task_id="load", pool=exchange.pool, outlets=[STAGING_OHLCV],
          map_index_template="{{ task.op_kwargs['extracted']['symbol'] }}")
    def load(extracted: dict[str, Any]) -> dict[str, Any]:
        from marketflow.connections import raw_database, warehouse_connection
        from marketflow.pipeline import load_market
        from marketflow.raw_store import RawStore

        attempt, _ = _attempt()
        if extracted.get("skipped"):
            return {"skipped": True}
        conn = warehouse_connection()
        try:
            return load_market(conn, RawStore(raw_database()), extracted, attempt)
        finally:
            conn.close()

    with TaskGroup(group_id=exchange.name, tooltip=f"{exchange.name}: {', '.join(symbols)}") as group:
        load.expand(extracted=extract.partial(exchange_name=exchange.name).expand(symbol=symbols))
    return group


def live_ingest(exchange: ExchangeConfig, timeframe: str) -> Any:
    """The minute path of one exchange: one task that extracts and loads every market (candles, and a
    ticker for live markets), ``pool_slots`` markets at a time in threads.

    One task instead of an extract and a load task per market: on the minute path each Airflow task
    costs a process start, a DAG parse and a scheduling round (seconds each, tens of seconds on a
    busy 2-core machine), far more than the work of a market (two small API calls and a short
    transaction). The markets stay independent: one failing market does not stop the others; the
    task fails afterwards (with the first error, so the retry policy sees its class) and the retry
    re-runs all of them, which is idempotent. Storage is prepared inline, and only when the DDL
    changed (one SELECT), instead of a prepare_storage task ahead of it.
    """
    symbols = [m.symbol for m in exchange.markets if timeframe in m.timeframes]

    @task(task_id="ingest", pool=exchange.pool, outlets=[STAGING_OHLCV],
          doc_md=f"extract + load {exchange.name}: {', '.join(symbols)}")
    def ingest(exchange_name: str) -> dict[str, Any]:
        import dataclasses
        import threading
        from concurrent.futures import ThreadPoolExecutor

        from marketflow.connections import raw_database, warehouse_connection
        from marketflow.pipeline import ingest_market, selected
        from marketflow.raw_store import RawStore
        from marketflow.schema import ddl_is_current

        config = load_config()
        attempt, ctx = _attempt()
        window, conf = _run_window(ctx, config, timeframe)
        conn = warehouse_connection()
        try:
            if not ddl_is_current(conn):
                log.info("DDL not applied yet or changed: preparing storage first")
                _prepare(conn, config)
        finally:
            conn.close()
        markets = [m for m in config.exchange(exchange_name).markets if timeframe in m.timeframes and selected(m, conf)]
        raw = RawStore(raw_database())
        local = threading.local()
        opened: list[Any] = []
        lock = threading.Lock()

        def connections() -> tuple[Any, Any]:
            # One load connection and one autocommit ops connection (rate-limit bucket, error rows) per thread.
            if not hasattr(local, "conns"):
                ops_conn, load_conn = warehouse_connection(), warehouse_connection()
                ops_conn.autocommit = True
                local.conns = (ops_conn, load_conn)
                with lock:
                    opened.extend(local.conns)
            return local.conns

        def one(market) -> dict[str, Any]:
            # Its own attempt identity per market: raw_ingestion_log keeps one document per market attempt.
            market_attempt = dataclasses.replace(attempt, task_id=f"{attempt.task_id}[{market.symbol}]")
            live = not conf.get("start") and market.history_end is None
            ops_conn, load_conn = connections()
            return ingest_market(config, market, timeframe, window, raw, load_conn, market_attempt,
                                 with_ticker=live, ops_conn=ops_conn)

        results: dict[str, Any] = {}
        errors: list[tuple[str, BaseException]] = []
        try:
            with ThreadPoolExecutor(max(1, min(exchange.pool_slots, len(markets))),
                                    thread_name_prefix=f"ingest-{exchange_name}") as pool:
                futures = {m.symbol: pool.submit(one, m) for m in markets}
                for symbol, future in futures.items():
                    try:
                        results[symbol] = future.result()
                    except Exception as exc:  # the other markets go on; reported and raised below
                        log.error("%s %s: %s: %s", exchange_name, symbol, type(exc).__name__, exc)
                        errors.append((symbol, exc))
        finally:
            for c in opened:
                c.close()
        log.info("%s: %d markets ingested, %d failed%s", exchange_name, len(results), len(errors),
                 f" ({', '.join(s for s, _ in errors)})" if errors else "")
        if errors:
            raise errors[0][1]
        return {"exchange": exchange_name, "markets": len(results),
                "inserted": sum(int(r.get("inserted") or 0) for r in results.values()),
                "tickers": sum(int(r.get("tickers") or 0) for r in results.values())}

    with TaskGroup(group_id=exchange.name, tooltip=f"{exchange.name}: {', '.join(symbols)}") as group:
        ingest(exchange_name=exchange.name)
    return group


def gap_repairs(config: MarketflowConfig, group_id: str = "gap_repairs") -> TaskGroup:
    """Queue re-fetches for open gaps, run them per exchange (in its pool), record each outcome."""

    @task(task_id="schedule")
    def schedule() -> int:
        from marketflow.connections import warehouse_connection
        from marketflow.ops import schedule_gap_repairs

        attempt, _ = _attempt()
        conn = warehouse_connection()
        try:
            queued = schedule_gap_repairs(conn, config.gap_repair_max_tasks, config.gap_repair_max_attempts,
                                          attempt.run_id)
        finally:
            conn.close()
        log.info("queued %d gap re-fetches (at most %d per run, most recent first)", queued,
                 config.gap_repair_max_tasks)
        return queued

    def exchange_repairs(exchange: ExchangeConfig):
        @task(task_id=f"claim_{exchange.name}", pool=exchange.pool)
        def claim() -> list[dict[str, Any]]:
            from marketflow.connections import warehouse_connection
            from marketflow.ops import claim_tasks

            attempt, _ = _attempt()
            conn = warehouse_connection()
            try:
                tasks = claim_tasks(conn, exchange.name, config.gap_repair_max_tasks, attempt.run_id)
            finally:
                conn.close()
            log.info("%s: %d gap windows to re-fetch", exchange.name, len(tasks))
            return [t.as_dict() for t in tasks]

        @task(task_id=f"repair_{exchange.name}", pool=exchange.pool,
              map_index_template="{{ task.op_kwargs['gap']['symbol'] }} {{ task.op_kwargs['gap']['task_id'] }}")
        def repair(gap: dict[str, Any]) -> str:
            from marketflow.connections import raw_database, warehouse_connection
            from marketflow.ops import BackfillTask
            from marketflow.pipeline import repair_gap
            from marketflow.raw_store import RawStore

            attempt, _ = _attempt()
            conn = warehouse_connection()
            try:
                return repair_gap(load_config(), BackfillTask(**gap), RawStore(raw_database()), conn, attempt)
            finally:
                conn.close()

        claimed = claim()
        return claimed, repair.expand(gap=claimed)

    @task.short_circuit(task_id="anything_repaired", trigger_rule="all_done")
    def anything_repaired(*claimed: list[dict[str, Any]]) -> bool:
        return any(claimed)

    with TaskGroup(group_id=group_id, tooltip="re-fetch open gaps from marts.data_quality_gaps") as group:
        queued = schedule()
        claims, repairs = [], []
        for exchange in config.enabled_exchanges:
            claimed, repaired = exchange_repairs(exchange)
            queued >> claimed
            claims.append(claimed)
            repairs.append(repaired)
        # Waits for every repair (failed ones too), then skips the rebuild when nothing was claimed.
        anything_repaired(*claims) << repairs
    return group


def dbt_marts(group_id: str = "dbt_marts", select: list[str] | None = None) -> TaskGroup:
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
        operator_args={"install_deps": False, "outlets": [MART_OHLCV_1M]},
        default_args={"retries": 2, "retry_policy": DbtRetryPolicy(), "on_failure_callback": log_failing_tests},
    )


def backfill_pipeline(exchange: ExchangeConfig) -> tuple[TaskGroup, Any]:
    """plan -> ingest (extract to raw, then load to staging) per chunk of a `market_backfill` request,
    in the exchange's pool.

    One mapped task per chunk, not an extract and a load task: half the task processes, and the load
    takes the payloads its extract just stored from memory. Raw is written first, so a failed load
    loses nothing (the retry fetches again; ``from_raw`` rebuilds from what is stored).
    Returns the group (to order it after other tasks) and the mapped output (for the summary).
    """

    @task(task_id="plan")
    def plan() -> list[dict[str, Any]]:
        from marketflow.pipeline import plan_chunks

        ctx = get_current_context()
        chunks = plan_chunks(load_config(), exchange.name, dict(ctx["params"]))
        log.info("%s: %d chunks to %s", exchange.name, len(chunks),
                 "reprocess from raw" if ctx["params"].get("from_raw") else "fetch")
        return chunks

    @task(task_id="ingest", pool=exchange.pool, outlets=[STAGING_OHLCV],
          map_index_template="{{ task.op_kwargs['chunk']['symbol'] }} "
                             "{{ task.op_kwargs['chunk']['chunk'] }}/{{ task.op_kwargs['chunk']['chunks'] }}")
    def ingest(chunk: dict[str, Any]) -> dict[str, Any]:
        from marketflow.connections import raw_database, warehouse_connection
        from marketflow.pipeline import ingest_market, reprocess_from_raw, window_coverage
        from marketflow.raw_store import RawStore
        from marketflow.timeframes import Window

        attempt, ctx = _attempt()
        config = load_config()
        window = Window(chunk["window_start_ms"], chunk["window_end_ms"])
        raw = RawStore(raw_database())
        conn = warehouse_connection()
        ops_conn = None  # only fetching needs it (rate-limit bucket, API errors), not a rebuild from raw
        try:
            if ctx["params"].get("from_raw"):
                result = reprocess_from_raw(conn, raw, chunk, attempt)
            else:
                ops_conn = warehouse_connection()
                ops_conn.autocommit = True
                result = ingest_market(config, config.market(exchange.name, chunk["symbol"]), chunk["timeframe"],
                                       window, raw, conn, attempt, ops_conn=ops_conn)
            coverage = window_coverage(conn, exchange.name, chunk["symbol"], chunk["timeframe"], window)
        finally:
            conn.close()
            if ops_conn is not None:
                ops_conn.close()
        log.info("chunk %d/%d of %s done", chunk["chunk"], chunk["chunks"], exchange.name)
        return {"exchange": exchange.name, "symbol": chunk["symbol"], "chunk": chunk["chunk"],
                "chunks": chunk["chunks"], **result, **coverage}

    with TaskGroup(group_id=exchange.name, tooltip=f"backfill {exchange.name} in chunks") as group:
        ingested = ingest.expand(chunk=plan())
    return group, ingested


@task(task_id="summary", trigger_rule="all_done")
def backfill_summary(*per_exchange: list[dict[str, Any]]) -> dict[str, Any]:
    """What the backfill loaded, rejected, and left missing, per market, in words and numbers."""
    totals: dict[str, dict[str, int]] = {}
    for results in per_exchange:
        for r in results or []:
            m = totals.setdefault(f"{r['exchange']} {r['symbol']}", {"chunks": 0, "inserted": 0, "updated": 0,
                                                                    "unchanged": 0, "rejected": 0, "expected": 0,
                                                                    "present": 0, "missing": 0})
            m["chunks"] += 1
            for key in ("inserted", "updated", "unchanged", "rejected", "expected", "present", "missing"):
                m[key] += int(r.get(key) or 0)
    if not totals:
        log.warning("backfill loaded nothing: no chunk finished (see the failed tasks) or no market matched")
    for market, m in sorted(totals.items()):
        log.info("%s: %d chunks; %d inserted, %d updated, %d unchanged, %d rejected; %d of %d candles present, "
                 "%d missing (left as gaps for the repair loop)", market, m["chunks"], m["inserted"], m["updated"],
                 m["unchanged"], m["rejected"], m["present"], m["expected"], m["missing"])
    return totals
