"""The Assets marketflow's tasks emit, so a downstream DAG can be scheduled on what it reads:

* ``staging.ohlcv``: every task that writes candles to staging (minute ingest, hourly reconcile, gap
  repairs, backfill);
* ``marts.<model>``: the dbt task that builds that mart (one asset per model in the ``marts`` schema,
  e.g. ``marts.ohlcv_1h``); dbt's test tasks and the staging/intermediate models emit none.

The URIs name the warehouse logically, not by the host and port it has in one environment
(Airflow's ``postgres`` scheme wants ``host:port/database/schema/table``): the same DAG deployed
locally, in compose or in production emits the same URI. An asset is its URI alone (Airflow names it
by the URI): a consumer that declares ``Asset("<uri>")`` is the same asset, where one with another
name for the same URI would conflict with ours and Airflow would refuse both as inactive. A consumer
writes

    @dag(schedule=[Asset("postgres://warehouse:5432/marketflow/marts/ohlcv_1h")], ...)

or, with marketflow on its path, ``schedule=[marketflow.tasks.assets.mart("ohlcv_1h")]``.
"""

from __future__ import annotations

from airflow.sdk import Asset

WAREHOUSE_URI = "postgres://warehouse:5432/marketflow"


def relation(schema: str, table: str) -> Asset:
    """The asset of one warehouse relation ``schema.table``."""
    return Asset(f"{WAREHOUSE_URI}/{schema}/{table}")


def mart(model: str) -> Asset:
    """The asset a dbt mart model's task emits, e.g. ``mart("ohlcv_1h")``."""
    return relation("marts", model)


STAGING_OHLCV = relation("staging", "ohlcv")
