"""Storage preparation: the staging DDL, ops.market_config mirrored from the markets file, raw indexes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from airflow.sdk import task

from marketflow.config import MarketflowConfig, load_config
from marketflow.tasks.defaults import seconds


def prepare(conn: Any, config: MarketflowConfig, span: tuple[datetime, datetime] | None = None) -> None:
    """Apply the staging DDL, create the coming month partitions (and those of ``span``, a backfill's
    window), mirror the markets file into ops.market_config, index the raw collections. All idempotent."""
    from marketflow.connections import raw_database
    from marketflow.housekeeping import ensure_month_partitions
    from marketflow.ops import sync_market_config
    from marketflow.raw_store import RawStore
    from marketflow.schema import apply_ddl

    apply_ddl(conn)
    # next month's partitions exist a month ahead of need; rows a load put in a DEFAULT partition move out
    ensure_month_partitions(conn, datetime.now(UTC), span=span)
    sync_market_config(conn, config)
    RawStore(raw_database()).ensure_indexes(config.raw_retention_days)


def prepare_storage(config: MarketflowConfig, backfill_request: bool = False) -> Any:
    """The storage preparation task; ``backfill_request`` (market_backfill): also the month partitions of
    the run's requested window (its params), so the backfill's rows never land in a DEFAULT partition."""
    @task(task_id="prepare_storage", retries=2, execution_timeout=seconds(config.timeouts.hourly_task))
    def prepare_task() -> bool:
        """Apply the staging DDL, mirror the markets file into ops.market_config, index the raw
        collections. All idempotent."""
        from marketflow.connections import warehouse_connection

        cfg = load_config()
        span = None
        if backfill_request:
            from airflow.sdk import get_current_context

            from marketflow.planning import request_span

            try:
                span = request_span(cfg, dict(get_current_context()["params"]))
            except ValueError:  # a malformed request: the plan task fails on it, in words; storage goes on
                span = None
        conn = warehouse_connection(timeouts=cfg.timeouts)
        try:
            prepare(conn, cfg, span)
        finally:
            conn.close()
        return True

    return prepare_task()
