"""
### market_candles_1m

Every minute, for every configured market (`include/config/markets.yml`, or `MARKETFLOW_CONFIG`):
**extract** the minute that just closed (plus a small overlap) with ccxt into MongoDB
`raw_market_payload`, then **load** it into Postgres `staging.ohlcv` (rejects into
`staging.ohlcv_rejects`). Live markets also get a ticker snapshot into `staging.ticker`, which
`marts.latest_price` (a view) shows at once.

* One `ingest` task per exchange handles all its markets (fetched by at least 8 threads, written in
  batches: one raw bulk write and one staging transaction a second) in the exchange's
  **live pool** `exchange_<name>`, where nothing else runs: backfills and repairs have pools of their
  own and leave the exchange's `live_rate_reserve` of the rate budget to this DAG, so live data never
  waits for history. A task per market would cost more in Airflow task start-ups than the work itself
  (bench figure 6: p95 under 30 s from the minute close to `latest_price`).
* A failing market never stops the others: it is recorded (`ops.market_health`, `marts.markets.status`),
  raises one alert, and is suspended after `suspend_after_failures` permanent failures in a row
  (`python -m marketflow.cli markets resume <exchange> <symbol>` to resume). The task fails with
  every failed market's class; a retry re-runs only the markets that failed transiently.
* Storage (DDL, ops.market_config, raw indexes) is prepared inside the task, only when the DDL
  changed; the hourly DAG's prepare_storage keeps ops.market_config in step with the markets file.
* Started ahead: a run is created `minute_run_lead_seconds` (20 s) before its minute closes
  (`LeadingCronDataIntervalTimetable`; its data interval is still that minute), so the task's start-up
  (process, DAG parse, connections, market lists) happens while the minute is open; it then waits for
  the close (+ `close_settle_seconds`) and fetches. Runs of past windows (catch-up, reruns, conf windows)
  fetch at once. One run at a time (`max_active_runs=1`): the next one waits while this one runs.
* Catch-up is bounded: after downtime the DAG resumes at the current minute (`catchup=False`);
  the hourly `market_candles_1h` run re-fetches each whole hour, which repairs missed minutes.
* Timeouts: each task `timeouts.minute_task`, each run `timeouts.minute_run`; a run not finished
  5 minutes after it was queued raises a deadline alert (ops.alerts).
* Trigger with conf `{"start": "...Z", "end": "...Z", "exchanges": [...], "symbols": [...]}` to
  reprocess any window from the UI.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag

from marketflow.config import load_config
from marketflow.tasks.defaults import DEFAULT_ARGS, deadline, seconds
from marketflow.tasks.ingest import exchange_ingest
from marketflow.timetables import LeadingCronDataIntervalTimetable

CONFIG = load_config()
LEAD = timedelta(seconds=CONFIG.minute_run_lead_seconds)


@dag(
    dag_id="market_candles_1m",
    schedule=LeadingCronDataIntervalTimetable("* * * * *", "UTC", LEAD),
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    # never two at once: started ahead of its close, a run waits (queued) while the previous one runs
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    # queued LEAD before its minute closes: still 5 minutes from the close
    deadline=deadline("market_candles_1m", timedelta(minutes=5) + LEAD),
    dagrun_timeout=seconds(CONFIG.timeouts.minute_run),
    tags=["marketflow", "extract", "1m"],
    doc_md=__doc__,
)
def market_candles_1m() -> None:
    for exchange in CONFIG.enabled_exchanges:
        exchange_ingest(CONFIG, exchange, "1m", live=True)


market_candles_1m()
