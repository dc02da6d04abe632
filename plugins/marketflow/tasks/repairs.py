"""Gap repairs of the hourly DAG: queue re-fetches of open gaps, then work through them per exchange."""

from __future__ import annotations

import time

from airflow.sdk import TaskGroup, task

from marketflow.config import ExchangeConfig, MarketflowConfig, load_config
from marketflow.logs import get_logger
from marketflow.tasks.assets import STAGING_OHLCV
from marketflow.tasks.context import TIME_MARGIN, current_attempt
from marketflow.tasks.defaults import HOURLY_PRIORITY, seconds

log = get_logger(__name__)


def gap_repairs(config: MarketflowConfig, group_id: str = "gap_repairs") -> TaskGroup:
    """Queue re-fetches for open gaps (chunks of ``gap_repair_chunk_minutes``, newest first, at most
    ``gap_repair_max_tasks`` pending per exchange), then one task per exchange works through them in
    the exchange's hourly pool for at most ``gap_repair_time_budget_minutes``."""

    @task(task_id="schedule", execution_timeout=seconds(600))
    def schedule() -> int:
        from marketflow.connections import warehouse_connection
        from marketflow.exchange_facts import history_floors
        from marketflow.ops import schedule_gap_repairs

        cfg = load_config()
        attempt, _ = current_attempt()
        conn = warehouse_connection(timeouts=cfg.timeouts)
        try:
            # chunks older than a capped exchange serves are recorded beyond_exchange_history, not queued
            queued = schedule_gap_repairs(conn, cfg.gap_repair_max_tasks, cfg.gap_repair_max_attempts,
                                          attempt.run_id, cfg.gap_repair_chunk_minutes,
                                          cfg.gap_repair_retry_failed_hours,
                                          history_floors=history_floors(cfg.exchanges, int(time.time() * 1000)))
        finally:
            conn.close()
        log.info("queued %d gap re-fetches (chunks of at most %d minutes, at most %d pending per exchange, "
                 "most recent first)", queued, cfg.gap_repair_chunk_minutes, cfg.gap_repair_max_tasks, queued=queued)
        return queued

    def exchange_repairs(exchange: ExchangeConfig):
        @task(task_id=f"repair_{exchange.name}", pool=exchange.hourly_pool, queue=exchange.queue,
              priority_weight=HOURLY_PRIORITY,
              execution_timeout=seconds(config.timeouts.hourly_task), outlets=[STAGING_OHLCV])
        def repair() -> dict[str, int]:
            from marketflow.connections import raw_database, warehouse_connection
            from marketflow.ops import pending_repairs
            from marketflow.pipeline import run_gap_repairs
            from marketflow.raw_store import RawStore

            cfg = load_config()
            attempt, _ = current_attempt()
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
                     sum(counts.values()), ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "none", left,
                     exchange=ex.name, outcomes=dict(counts), queued=left)
            return counts

        return repair()

    # ignore_downstream_trigger_rules=False: skip the rebuild only (its own tasks then skip in turn), not
    # run_outcome after it, which must run to fail the run when something before failed.
    @task.short_circuit(task_id="anything_repaired", trigger_rule="all_done", execution_timeout=seconds(300),
                        ignore_downstream_trigger_rules=False)
    def anything_repaired(*results: dict[str, int] | None) -> bool:
        return any(sum((r or {}).values()) for r in results)

    with TaskGroup(group_id=group_id, tooltip="re-fetch open gaps from marts.data_quality_gaps") as group:
        queued = schedule()
        repairs = [exchange_repairs(exchange) for exchange in config.enabled_exchanges]
        queued >> repairs
        # Waits for every repair (failed ones too), then skips the rebuild when nothing was re-fetched.
        anything_repaired(*repairs)
    return group
