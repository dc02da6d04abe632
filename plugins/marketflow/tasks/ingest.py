"""Extract + load per exchange: the minute DAG's ``<exchange>.ingest`` and the hourly DAG's
``<exchange>.reconcile``, and ``marts_inputs``, the gate between the hourly loads and dbt."""

from __future__ import annotations

import time
from typing import Any

from airflow.sdk import TaskGroup, task

from marketflow.config import ExchangeConfig, MarketflowConfig, load_config
from marketflow.logs import get_logger
from marketflow.tasks.assets import STAGING_OHLCV
from marketflow.tasks.context import current_attempt, run_window, time_budget
from marketflow.tasks.defaults import HOURLY_PRIORITY, LIVE_PRIORITY, seconds
from marketflow.tasks.storage import prepare

log = get_logger(__name__)


def exchange_ingest(config: MarketflowConfig, exchange: ExchangeConfig, timeframe: str, *, live: bool) -> TaskGroup:
    """One task for every market of one exchange: extract and load each market's window, ``pool_slots``
    markets at a time in threads.

    ``live``: the minute DAG's ``<exchange>.ingest`` (the live pool, the whole rate budget, then the
    tickers of all its live markets in one batch call); else the hourly DAG's ``<exchange>.reconcile``
    (the hourly pool, history's share of the budget, candles only).

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
          queue=exchange.queue, priority_weight=LIVE_PRIORITY if live else HOURLY_PRIORITY,
          execution_timeout=seconds(timeout), outlets=[STAGING_OHLCV],
          doc_md=f"extract + load {exchange.name}: {', '.join(symbols)}")
    def ingest(exchange_name: str) -> dict[str, Any]:
        from marketflow.connections import raw_database, warehouse_connection
        from marketflow.pipeline import fetch_start_at, run_exchange_markets
        from marketflow.raw_store import RawStore

        cfg = load_config()
        budget = time_budget(cfg.timeouts.minute_task if live else cfg.timeouts.hourly_task)
        attempt, ctx = current_attempt()
        window, conf = run_window(ctx, cfg, timeframe)
        # A minute run starts before its minute closes (LeadingCronDataIntervalTimetable): everything up
        # to the first fetch is done now, the fetches wait for the close. A past window does not wait.
        start_at = fetch_start_at(window, conf, cfg) if live else None
        if start_at is not None:
            log.info("started %.1f s before the minute closes: connecting now, fetching at the close + %.1f s",
                     start_at - time.time() - cfg.close_settle_seconds, cfg.close_settle_seconds)
        return run_exchange_markets(cfg, exchange_name, timeframe, window, conf, RawStore(raw_database()),
                                    lambda: warehouse_connection(timeouts=cfg.timeouts), attempt, live=live,
                                    deadline=budget, prepare=prepare if live else None, start_at=start_at)

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

        attempt, ctx = current_attempt()
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
                                                                 outcome.replace("_", " "), symbols, exchange=exchange,
                                                                 outcome=outcome, markets=int(count))
        log.info("building the marts from what loaded")
        return {f"{ex} {outcome}": int(count) for ex, outcome, count, _ in rows}

    return gate()
