"""
### market_maintenance

Daily housekeeping, so nothing grows without bound (`plugins/marketflow/housekeeping.py`), with the
retentions of the markets file's `housekeeping:` section:

* **prune_ops**: `ops.api_errors`, `ops.alerts`, `ops.rate_limit_metrics`, stale `ops.market_lists`,
  and completed repairs in `ops.backfill_tasks` older than `ops_retention_days` (gaps confirmed
  empty at the source keep their rows: the gap marts read them);
* **prune_rejects**: bodies of `staging.ohlcv_rejects` over 1 KB cut to their first 200 characters
  after `rejects_body_retention_days` (the row and its reason stay), rows deleted after
  `rejects_retention_days`;
* **month_partitions**: this and next month's partitions of the 1m layers (`staging.candle`,
  `marts.candles_1m`, the 1m candles with their indicators, which `ohlcv_1m` and `indicators_1m` show),
  rows that landed in a default partition moved into their month's; with
  `retention: {ohlcv_1m_months: N}` the months of `candles_1m` before
  the last N dropped whole (rollups and staging keep everything);
* **clean_airflow_metadata**: `airflow db clean` (runs, task instances, XComs, logs, jobs, ...)
  older than `airflow_metadata_retention_days`; each DAG's latest scheduled run is kept. Needs the
  connection `marketflow_airflow_db` to the metadata database (Airflow 3 tasks cannot reach it
  otherwise).

Every table is pruned in batches of `batch_size` rows, each its own short transaction, with its
progress in the task log. The cut is the run's logical date minus the retention, so re-running a
run deletes nothing more.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import CronTriggerTimetable, dag

from marketflow.config import load_config
from marketflow.tasks.defaults import DEFAULT_ARGS, deadline
from marketflow.tasks.maintenance import housekeeping_tasks, task_timeout

CONFIG = load_config()
# The tasks run side by side; the run may take one retry of the slowest.
RUN_TIMEOUT = 2 * task_timeout(CONFIG)


@dag(
    dag_id="market_maintenance",
    schedule=CronTriggerTimetable("17 3 * * *", timezone="UTC"),  # daily, off the hour the hourly DAG starts
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=RUN_TIMEOUT,
    default_args=DEFAULT_ARGS,
    deadline=deadline("market_maintenance", RUN_TIMEOUT),
    tags=["marketflow", "maintenance"],
    doc_md=__doc__,
)
def market_maintenance() -> None:
    housekeeping_tasks(CONFIG)


market_maintenance()
