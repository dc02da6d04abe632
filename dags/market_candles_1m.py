"""
### market_candles_1m

Every minute, for every configured market (`include/config/markets.yml`, or `MARKETFLOW_CONFIG`):
**extract** the minute that just closed (plus a small overlap) with ccxt into MongoDB
`raw_market_payload`, then **load** it into Postgres `staging.ohlcv` (rejects into
`staging.ohlcv_rejects`). Live markets also get a ticker snapshot into `staging.ticker`, which
`marts.latest_price` (a view) shows at once.

* One `ingest` task per exchange, in the exchange's pool, handles all its markets (`pool_slots` at
  a time): on the minute path a task per market would cost more in Airflow task start-ups than the
  work itself and miss the freshness target (bench figure 6: p95 under 30 s from the minute close
  to `latest_price`). A failing market does not stop the others; the task then fails and retries.
* Storage (DDL, ops.market_config, raw indexes) is prepared inside the task, only when the DDL
  changed; the hourly DAG's prepare_storage keeps ops.market_config in step with the markets file.
* Catch-up is bounded: after downtime the DAG resumes at the current minute (`catchup=False`);
  the hourly `market_candles_1h` run re-fetches each whole hour, which repairs missed minutes.
* A run not finished 5 minutes after it was queued raises a deadline alert (ops.alerts).
* Trigger with conf `{"start": "...Z", "end": "...Z", "exchanges": [...], "symbols": [...]}` to
  reprocess any window from the UI.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import CronDataIntervalTimetable, dag

from marketflow.airflow_tasks import DEFAULT_ARGS, deadline, live_ingest
from marketflow.config import load_config

CONFIG = load_config()


@dag(
    dag_id="market_candles_1m",
    schedule=CronDataIntervalTimetable("* * * * *", timezone="UTC"),
    start_date=CONFIG.schedule_start,
    catchup=False,
    max_active_runs=2,
    default_args=DEFAULT_ARGS,
    deadline=deadline("market_candles_1m", timedelta(minutes=5)),
    dagrun_timeout=None,
    tags=["marketflow", "extract", "1m"],
    doc_md=__doc__,
)
def market_candles_1m() -> None:
    for exchange in CONFIG.enabled_exchanges:
        live_ingest(exchange, "1m")


market_candles_1m()
