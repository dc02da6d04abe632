"""The hourly DAG's schedule: the first run at the hour of the first deploy, catch-up after that.

A fresh deploy must not start with a storm of catch-up runs from some date in the past (each a full
reconcile, dbt build and repair round), nor should the start move on every DAG parse or restart.
``FirstRunAtDeployTimetable`` is Airflow's data-interval cron timetable, except for the run it
schedules when the DAG has no run yet: that one is the latest closed interval (the hour before the
deploy, run at once, so the marts exist within minutes), as with ``catchup=False``. Every later run
follows the last one, as with ``catchup=True``: after downtime the missed hours are run one at a time
(``max_active_runs=1``), never hours before the deploy.
The first run lives in Airflow's metadata, so nothing has to be persisted beside it and it survives
restarts and redeploys. History before the deploy is loaded with ``market_backfill``.

Registered with Airflow through ``plugins/marketflow_plugin.py`` (Airflow must be able to
deserialize the DAG's timetable in the scheduler).
"""

from __future__ import annotations

from airflow.timetables.base import DagRunInfo, DataInterval, TimeRestriction
from airflow.timetables.interval import CronDataIntervalTimetable


class FirstRunAtDeployTimetable(CronDataIntervalTimetable):
    """Cron data intervals: no catch-up before the first run, catch-up after it."""

    def next_dagrun_info(self, *, last_automated_data_interval: DataInterval | None,
                         restriction: TimeRestriction) -> DagRunInfo | None:
        # The scheduler's first run: no catch-up before it. A bounded range (restriction.latest set:
        # `airflow backfill create` walks its hours from an empty start too) is walked as Airflow does.
        if last_automated_data_interval is None and restriction.latest is None:
            restriction = TimeRestriction(restriction.earliest, restriction.latest, catchup=False)
        return super().next_dagrun_info(last_automated_data_interval=last_automated_data_interval,
                                        restriction=restriction)
