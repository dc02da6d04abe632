"""
### market_backfill

Load (or reprocess) history for chosen markets from the UI: **Trigger DAG w/ config**.

* `exchanges` / `symbols`: empty = every configured one; `timeframe`: default `1m`;
  `start` / `end`: ISO-8601 UTC, end exclusive; each market's window is clipped to its configured
  history and to closed candles.
* The request is cut into mapped `ingest` tasks of about `task_candles` candles (default 1,000,000:
  a day of 1,000 markets is 2 tasks, a year of 20 markets 12: a multiple of the pool's slots where the
  limits allow, so the last wave fills the pool), never more than Airflow's `max_map_length`; each
  task's label names its markets. They run in the exchange's **backfill pool**
  `exchange_<name>_backfill`: a task works through its windows in chunks of `chunk_hours`, oldest
  first, each paged through the exchange into MongoDB raw and loaded into staging, logging
  `chunk i/n up to <time> done, x% of the market's window`. History work
  leaves the exchange's `live_rate_reserve` of the rate budget to the minute DAG, whose own pool it
  never touches, waits out the minute feed's call bursts (`live_burst_seconds`), and runs at CPU
  niceness `backfill_nice` (default 10) so the minute DAG's tasks win the CPU. A retried task skips
  the chunks already complete. The plan runs beside `prepare_storage`, which creates the month
  partitions of the requested window first (the rows never land in a DEFAULT partition).
* `from_raw: true` rebuilds staging from what MongoDB already holds, without calling the exchange.
* The `summary` task reports per market what was loaded, rejected, and left missing; `run_outcome`
  then fails the run, naming them, when any task failed (the summary runs whatever the chunks did).
* Timeouts: each task `timeouts.backfill_task`, the run `timeouts.backfill_run`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import Param, dag

from marketflow.config import load_config
from marketflow.tasks.backfill import backfill_pipeline, backfill_summary
from marketflow.tasks.defaults import DEFAULT_ARGS, deadline, seconds
from marketflow.tasks.outcome import run_outcome
from marketflow.tasks.storage import prepare_storage
from marketflow.timeframes import SUPPORTED_TIMEFRAMES

CONFIG = load_config()


@dag(
    dag_id="market_backfill",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=2,
    default_args=DEFAULT_ARGS,
    deadline=deadline("market_backfill", timedelta(hours=12)),
    dagrun_timeout=seconds(CONFIG.timeouts.backfill_run),
    tags=["marketflow", "backfill"],
    doc_md=__doc__,
    params={
        "exchanges": Param([], type="array", description="exchange names from the markets file; empty = all"),
        "symbols": Param([], type="array", description="symbols like BTC/USDT; empty = all"),
        "timeframe": Param("1m", enum=list(SUPPORTED_TIMEFRAMES)),
        "start": Param("2025-01-01T00:00:00Z", type="string", description="first candle, ISO-8601 UTC"),
        "end": Param("2025-01-02T00:00:00Z", type="string", description="end (exclusive), ISO-8601 UTC"),
        "chunk_hours": Param(24, type="integer", minimum=1,
                             description="hours fetched and loaded per step (one commit) within a market's task"),
        # = marketflow.pipeline.BACKFILL_TASK_CANDLES (not imported here: pipeline imports ccxt)
        "task_candles": Param(1_000_000, type="integer", minimum=1,
                              description="candles per mapped task: many markets per task, or a slice of a long one"),
        "from_raw": Param(False, type="boolean", description="rebuild staging from MongoDB raw only"),
    },
)
def market_backfill() -> None:
    storage = prepare_storage(CONFIG, backfill_request=True)  # with the request's month partitions
    loads = []
    for exchange in CONFIG.enabled_exchanges:
        _, loaded = backfill_pipeline(CONFIG, exchange)
        storage >> loaded  # the plan needs only the markets file: it runs beside prepare_storage
        loads.append(loaded)
    backfill_summary(*loads)
    run_outcome()  # a run with failed chunks ends failed (summary runs whatever they did)


market_backfill()
