"""Airflow task factories, one module per concern; the DAG files in dags/ only wire them together.

* ``defaults``     DEFAULT_ARGS, priorities, run deadlines: what every DAG shares
* ``assets``       the Assets the tasks emit (staging.ohlcv, one per mart)
* ``storage``      prepare_storage: DDL, ops.market_config, raw indexes
* ``ingest``       the minute ``ingest`` / hourly ``reconcile`` task per exchange, and the marts gate
* ``repairs``      gap repairs of the hourly DAG
* ``dbt``          the cosmos configuration, declared once, and the dbt task groups
* ``backfill``     market_backfill's plan -> ingest per market and its summary
* ``maintenance``  market_maintenance's housekeeping tasks

The work itself is in pipeline.py, ops.py, housekeeping.py; these modules are Airflow glue only.
"""
