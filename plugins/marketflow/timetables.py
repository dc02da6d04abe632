"""The DAGs' schedules.

``LeadingCronDataIntervalTimetable`` (the minute DAG): a run starts a little before its interval
closes, so its task is started, imported and connected when the minute closes (see below).

``FirstRunAtDeployTimetable`` (the hourly DAG): the first run at the hour of the first deploy,
catch-up after that.

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

from datetime import timedelta
from typing import Any

from airflow._shared.timezones.timezone import parse_timezone
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


class LeadingCronDataIntervalTimetable(CronDataIntervalTimetable):
    """Cron data intervals whose run is created ``lead`` before the interval ends, not at its end.

    The data interval is unchanged (the run still stands for the closed minute, its logical date and
    run id are the same); only ``run_after`` moves earlier. On a busy machine an Airflow task takes
    seconds to tens of seconds to start (process, DAG parse with ccxt, connections, market lists):
    started ahead, the minute ingest does all of that while the minute is still open, then waits for
    the close (``pipeline.fetch_start_at``) and fetches at once. A run whose interval closed long ago
    (catch-up, backfill, a rerun) gets ``run_after`` in the past, so it starts and fetches at once.
    ``run_after`` never precedes the interval's start, so ``lead`` must be shorter than the interval.
    """

    def __init__(self, cron: str, timezone: Any, lead: timedelta = timedelta(0)) -> None:
        super().__init__(cron, timezone)
        if lead < timedelta(0):
            raise ValueError(f"lead {lead} is negative; give the seconds a run starts before its interval ends")
        self._lead = lead

    @property
    def lead(self) -> timedelta:
        return self._lead

    def next_dagrun_info(self, *, last_automated_data_interval: DataInterval | None,
                         restriction: TimeRestriction) -> DagRunInfo | None:
        info = super().next_dagrun_info(last_automated_data_interval=last_automated_data_interval,
                                        restriction=restriction)
        if info is None or info.data_interval is None or not self._lead:
            return info
        interval = info.data_interval
        return info._replace(run_after=max(interval.start, interval.end - self._lead))

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> LeadingCronDataIntervalTimetable:
        return cls(data["expression"], parse_timezone(data["timezone"]),
                   timedelta(seconds=float(data.get("lead_seconds", 0))))

    def serialize(self) -> dict[str, Any]:
        return {**super().serialize(), "lead_seconds": self._lead.total_seconds()}

    @property
    def summary(self) -> str:
        return f"{super().summary}, started {self._lead.total_seconds():g} s before the interval ends"
