"""
### market_candles_1h

Every hour: **reconcile** the previous hour for every configured market (re-fetch all of its
1-minute candles, so anything the minute runs missed or the exchange corrected lands), then
**build the dbt marts** (`ohlcv_1m`, rollups, indicators, `latest_price`, `markets`, data quality)
with astronomer-cosmos, one task per model with its tests right after it. Then **repair gaps**:
queue re-fetches for the most recent open gaps in `marts.data_quality_gaps` (chunks of
`gap_repair_chunk_minutes`, at most `gap_repair_max_tasks` pending per exchange), work through them
per exchange for at most `gap_repair_time_budget_minutes`, and rebuild the marts if any ran. A window
the exchange keeps answering empty becomes `confirmed_empty_at_source` after `gap_repair_max_attempts`
and is not retried.

* One `reconcile` task per exchange (all its markets, in the exchange's hourly pool). A failing
  market or exchange never stops the marts: `marts_inputs` waits for every load whatever its state
  and the marts are built from what loaded.
* `run_outcome` runs last and fails the run, naming the tasks, when any task failed: the run goes on
  past a failed exchange or dbt model, and would otherwise end green.
* Schedule: without `defaults.schedule_start` the first run is the hour the DAG is first deployed and
  later runs catch up one hour at a time (`max_active_runs=1`) after downtime, never before the first
  deploy: history comes from `market_backfill`. With `schedule_start` set, runs catch up from there.
* Timeouts: each task `timeouts.hourly_task` (dbt tasks `timeouts.dbt_task`), each run
  `timeouts.hourly_run`; a run not finished 45 minutes after it was queued raises a deadline alert.
* Trigger with conf `{"start": "...Z", "end": "...Z", "exchanges": [...], "symbols": [...]}` to
  load or reprocess any window; each market's window is clipped to its configured history.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import CronDataIntervalTimetable, dag

from marketflow.config import load_config
from marketflow.tasks.dbt import dbt_marts
from marketflow.tasks.defaults import DEFAULT_ARGS, deadline, seconds
from marketflow.tasks.ingest import exchange_ingest, marts_inputs
from marketflow.tasks.outcome import run_outcome
from marketflow.tasks.repairs import gap_repairs
from marketflow.tasks.storage import prepare_storage
from marketflow.timetables import FirstRunAtDeployTimetable

CONFIG = load_config()

if CONFIG.schedule_start is None:
    SCHEDULE, START = FirstRunAtDeployTimetable("0 * * * *", timezone="UTC"), datetime(2024, 1, 1, tzinfo=UTC)
else:
    SCHEDULE, START = CronDataIntervalTimetable("0 * * * *", timezone="UTC"), CONFIG.schedule_start


@dag(
    dag_id="market_candles_1h",
    schedule=SCHEDULE,
    start_date=START,
    catchup=True,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    deadline=deadline("market_candles_1h", timedelta(minutes=45)),
    dagrun_timeout=seconds(CONFIG.timeouts.hourly_run),
    tags=["marketflow", "extract", "dbt", "1h"],
    doc_md=__doc__,
)
def market_candles_1h() -> None:
    storage = prepare_storage(CONFIG)
    inputs = marts_inputs(CONFIG)
    for exchange in CONFIG.enabled_exchanges:
        storage >> exchange_ingest(CONFIG, exchange, "1m", live=False) >> inputs
    marts = dbt_marts(CONFIG)
    repairs = gap_repairs(CONFIG)
    # Only when a gap was re-fetched: rebuild what the repaired minutes change (the marts, and the
    # hourly data-quality tallies that data_quality_summary reads).
    inputs >> marts >> repairs >> dbt_marts(CONFIG, "dbt_after_repairs",
                                            select=["path:models/marts", "int_dq_candle_hours_1m+"])
    # The work goes on past a failed exchange or dbt model; this makes such a run end failed.
    run_outcome()


market_candles_1h()
