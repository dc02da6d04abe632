"""
### market_candles_1h

Every hour: **reconcile** the previous hour for every configured market (re-fetch all of its
1-minute candles, so anything the minute runs missed or the exchange corrected lands), then
**build the dbt marts** (`ohlcv_1m`, rollups, indicators, `latest_price`, `markets`, data quality)
with astronomer-cosmos, one task per model with its tests right after it. Then **repair gaps**:
queue re-fetches for the most recent open gaps in `marts.data_quality_gaps` (bounded per run,
`ops.backfill_tasks`), run them per exchange in its pool, and rebuild the marts if any ran. A window
the exchange keeps answering empty becomes `confirmed_empty_at_source` after
`gap_repair_max_attempts` and is not retried.

* A run not finished 45 minutes after it was queued raises a deadline alert (ops.alerts).
* Catch-up runs one hour at a time (`max_active_runs=1`) from `defaults.schedule_start`.
* Trigger with conf `{"start": "...Z", "end": "...Z", "exchanges": [...], "symbols": [...]}` to
  load or reprocess any window; each market's window is clipped to its configured history.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import CronDataIntervalTimetable, dag

from marketflow.airflow_tasks import DEFAULT_ARGS, candle_pipeline, dbt_marts, deadline, gap_repairs, prepare_storage
from marketflow.config import load_config

CONFIG = load_config()


@dag(
    dag_id="market_candles_1h",
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=CONFIG.schedule_start,
    catchup=True,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    deadline=deadline("market_candles_1h", timedelta(minutes=45)),
    tags=["marketflow", "extract", "dbt", "1h"],
    doc_md=__doc__,
)
def market_candles_1h() -> None:
    storage = prepare_storage()
    marts = dbt_marts()
    for exchange in CONFIG.enabled_exchanges:
        storage >> candle_pipeline(exchange, "1m", with_ticker=False) >> marts
    repairs = gap_repairs(CONFIG)
    # Only when a gap was re-fetched: rebuild what the repaired minutes change (the marts, and the
    # hourly data-quality tallies that data_quality_summary reads).
    marts >> repairs >> dbt_marts("dbt_after_repairs", select=["path:models/marts", "int_dq_candle_hours_1m+"])


market_candles_1h()
