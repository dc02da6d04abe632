"""The Assets marketflow's tasks emit, so a downstream DAG can be scheduled on what it reads:

* ``staging.ohlcv``: every task that writes candles to staging (minute ingest, hourly reconcile, gap
  repairs, backfill);
* ``marts.<model>``: the dbt task that builds that mart (one asset per model in the ``marts`` schema,
  e.g. ``marts.ohlcv_1h``); dbt's test tasks and the staging/intermediate models emit none.

The URIs name the warehouse logically, not by the host and port it has in one environment
(Airflow's ``postgres`` scheme wants ``host:port/database/schema/table``): the same DAG deployed
locally, in compose or in production emits the same URI, and a consumer writes

    from marketflow.tasks.assets import mart
    @dag(schedule=[mart("ohlcv_1h")], ...)

or, in a project without marketflow on its path, ``Asset("postgres://warehouse:5432/marketflow/marts/ohlcv_1h")``.
"""

from __future__ import annotations

from airflow.sdk import Asset

WAREHOUSE_URI = "postgres://warehouse:5432/marketflow"
GROUP = "marketflow"


def relation(schema: str, table: str) -> Asset:
    """The asset of one warehouse relation, named ``schema.table``."""
    return Asset(name=f"{schema}.{table}", uri=f"{WAREHOUSE_URI}/{schema}/{table}", group=GROUP)


def mart(model: str) -> Asset:
    """The asset a dbt mart model's task emits, e.g. ``mart("ohlcv_1h")``."""
    return relation("marts", model)


STAGING_OHLCV = relation("staging", "ohlcv")
