"""market_backfill: plan -> ingest per work unit, per exchange, and the summary."""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from typing import Any

from airflow.sdk import TaskGroup, get_current_context, task

from marketflow.config import ExchangeConfig, MarketflowConfig, load_config
from marketflow.logs import get_logger
from marketflow.tasks.assets import STAGING_OHLCV
from marketflow.tasks.context import current_attempt
from marketflow.tasks.defaults import BACKFILL_PRIORITY, seconds

log = get_logger(__name__)

SUMMARY_KEYS = ("chunks", "chunks_skipped", "inserted", "updated", "unchanged", "rejected", "expected", "present",
                "missing")


def backfill_pipeline(config: MarketflowConfig, exchange: ExchangeConfig) -> tuple[TaskGroup, Any]:
    """plan -> ingest per work unit of a `market_backfill` request, in the exchange's backfill pool.

    A unit is ~``task_candles`` of the request (``plan_backfill``: many short markets, or a slice of a
    long one): its task works through every chunk of ``chunk_hours`` of its windows (extract to raw,
    then load to staging), so a backfill of any size plans within Airflow's mapping limit and each
    task's start-up is small beside its work. Raw is written first, so a failed load loses nothing; a
    retried task skips the chunks already complete. Returns the group and the mapped ingest (to order it
    after prepare_storage: the plan reads only the markets file, so it runs beside it; and for the summary).
    """

    @task(task_id="plan", execution_timeout=seconds(600))
    def plan() -> list[dict[str, Any]]:
        from airflow.configuration import conf

        from marketflow.planning import plan_backfill  # not marketflow.pipeline: that imports ccxt

        ctx = get_current_context()
        max_tasks = conf.getint("core", "max_map_length", fallback=1024)
        units = plan_backfill(load_config(), exchange.name, dict(ctx["params"]), max_tasks)
        markets = len({m["symbol"] for u in units for m in u["markets"]})
        candles = sum(u["candles"] for u in units)
        log.info("%s: %d market(s), %d candles in %d task(s) of ~%d candles each (max_map_length %d), to %s",
                 exchange.name, markets, candles, len(units), candles // max(len(units), 1), max_tasks,
                 "reprocess from raw" if ctx["params"].get("from_raw") else "fetch", exchange=exchange.name,
                 markets=markets, candles=candles, tasks=len(units))
        for u in units:
            log.info("task %d/%d: %s, %d candles", u["unit"], u["units"], u["label"], u["candles"],
                     exchange=exchange.name, unit=u["unit"], candles=u["candles"])
        return units

    @task(task_id="ingest", pool=exchange.backfill_pool, queue=exchange.queue, priority_weight=BACKFILL_PRIORITY,
          outlets=[STAGING_OHLCV],
          execution_timeout=seconds(config.timeouts.backfill_task),
          map_index_template="{{ task.op_kwargs['unit']['label'] }}")
    def ingest(unit: dict[str, Any]) -> list[dict[str, Any]]:
        entered, entered_cpu = time.time(), time.process_time()  # CPU: this process's own, from its fork
        preloaded = "ccxt" in sys.modules  # the worker that forked it had imported ccxt (airflow_local_settings)
        from marketflow.connections import raw_database, warehouse_connection
        from marketflow.pipeline import backfill_unit
        from marketflow.raw_store import RawStore

        attempt, ctx = current_attempt()
        cfg = load_config()
        conn = warehouse_connection(timeouts=cfg.timeouts)
        from_raw = bool(ctx["params"].get("from_raw"))
        # only fetching needs it (rate-limit bucket, API errors), not a rebuild from raw
        ops_conn = None if from_raw else warehouse_connection(timeouts=cfg.timeouts)
        if ops_conn is not None:
            ops_conn.autocommit = True
        # The work yields the CPU to the minute DAG's tasks (bench figure 11c). Set after the imports and
        # connections (~0.15 CPU-s with ccxt preloaded by the forking worker, airflow_local_settings; 0.5-0.6
        # without), which at niceness 10 took 4-25 s at load 15-20 (bench 11, setup_s).
        niceness = lower_cpu_priority(config.backfill_nice)
        ready, ready_cpu = time.time(), time.process_time()
        try:
            totals = backfill_unit(cfg, unit, RawStore(raw_database()), conn, attempt, from_raw=from_raw,
                                   ops_conn=ops_conn, skip_complete=attempt.try_number > 1)
        finally:
            conn.close()
            if ops_conn is not None:
                ops_conn.close()
        done = time.time()
        started = ctx["ti"].start_date
        # Where the task's own time went beside its markets' work (bench figure 11 reads it from the XCom):
        # Airflow's start-up (fork, DAG parse) before this function, then imports and connections.
        phases = {"before_callable_s": round(entered - started.timestamp(), 3) if started else None,
                  "setup_s": round(ready - entered, 3), "unit_s": round(done - ready, 3), "niceness": niceness,
                  "before_callable_cpu_s": round(entered_cpu, 3), "setup_cpu_s": round(ready_cpu - entered_cpu, 3),
                  "ccxt_preloaded": preloaded,
                  "live_yield_s": totals[0].get("live_yield_seconds") if totals else None}
        if totals:
            totals[0]["task_phases"] = phases
        log.info("task %d/%d of %s done: %s, %d candles present of %d", unit["unit"], unit["units"], exchange.name,
                 unit.get("label", ""), sum(t["present"] for t in totals), sum(t["expected"] for t in totals),
                 exchange=exchange.name, unit=unit["unit"], present=sum(t["present"] for t in totals),
                 expected=sum(t["expected"] for t in totals), **phases)
        return totals

    with TaskGroup(group_id=exchange.name, tooltip=f"backfill {exchange.name}, a task per market") as group:
        ingested = ingest.expand(unit=plan())
    return group, ingested


def lower_cpu_priority(niceness: int) -> int:
    """Raise this process's CPU niceness to ``niceness`` (never lower it: that needs privileges); returns
    the niceness now in force. Threads started afterwards inherit it."""
    current = os.nice(0)
    if niceness > current:
        current = os.nice(niceness - current)
    return current


@task(task_id="summary", trigger_rule="all_done", execution_timeout=timedelta(minutes=10))
def backfill_summary(*per_exchange: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """What the backfill loaded, rejected, and left missing, per market, in words and numbers."""
    totals: dict[str, dict[str, int]] = {}
    for units in per_exchange:
        for unit in units or []:
            for r in unit or []:
                m = totals.setdefault(f"{r['exchange']} {r['symbol']}", dict.fromkeys(SUMMARY_KEYS, 0))
                for key in SUMMARY_KEYS:
                    m[key] += int(r.get(key) or 0)
    if not totals:
        log.warning("backfill loaded nothing: no task finished (see the failed tasks) or no market matched")
    for market, m in sorted(totals.items()):
        log.info("%s: %d chunks (%d already complete); %d inserted, %d updated, %d unchanged, %d rejected; "
                 "%d of %d candles present, %d missing (left as gaps for the repair loop)", market, m["chunks"],
                 m["chunks_skipped"], m["inserted"], m["updated"], m["unchanged"], m["rejected"], m["present"],
                 m["expected"], m["missing"], market=market, inserted=m["inserted"], updated=m["updated"],
                 unchanged=m["unchanged"], rejected=m["rejected"], present=m["present"], expected=m["expected"],
                 missing=m["missing"])
    return totals
