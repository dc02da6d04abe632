"""
### market_backfill

Load (or reprocess) history for chosen markets from the UI: **Trigger DAG w/ config**.

* `exchanges` / `symbols`: empty = every configured one; `timeframe`: default `1m`;
  `start` / `end`: ISO-8601 UTC, end exclusive; each market's window is clipped to its configured
  history and to closed candles.
* The range is cut into `chunk_hours` windows, one mapped `ingest` task each, in the exchange's
  pool; each chunk pages through the exchange into MongoDB raw at the rate the shared per-exchange
  bucket allows, logging `page i, done/total candles (candles/s)`, then loads staging.
* `from_raw: true` rebuilds staging from what MongoDB already holds, without calling the exchange.
* The `summary` task reports per market what was loaded, rejected, and left missing.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag

from marketflow.airflow_tasks import DEFAULT_ARGS, backfill_pipeline, backfill_summary, deadline, prepare_storage
from marketflow.config import load_config
from marketflow.timeframes import SUPPORTED_TIMEFRAMES

CONFIG = load_config()


@dag(
    dag_id="market_backfill",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=2,
    default_args=DEFAULT_ARGS,
    deadline=deadline("market_backfill", timedelta(hours=12)),
    tags=["marketflow", "backfill"],
    doc_md=__doc__,
    params={
        "exchanges": Param([], type="array", description="exchange names from the markets file; empty = all"),
        "symbols": Param([], type="array", description="symbols like BTC/USDT; empty = all"),
        "timeframe": Param("1m", enum=list(SUPPORTED_TIMEFRAMES)),
        "start": Param("2025-01-01T00:00:00Z", type="string", description="first candle, ISO-8601 UTC"),
        "end": Param("2025-01-02T00:00:00Z", type="string", description="end (exclusive), ISO-8601 UTC"),
        "chunk_hours": Param(24, type="integer", minimum=1, description="hours per mapped task"),
        "from_raw": Param(False, type="boolean", description="rebuild staging from MongoDB raw only"),
    },
)
def market_backfill() -> None:
    storage = prepare_storage()
    loads = []
    for exchange in CONFIG.enabled_exchanges:
        group, loaded = backfill_pipeline(exchange)
        storage >> group
        loads.append(loaded)
    backfill_summary(*loads)


market_backfill()
