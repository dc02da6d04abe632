"""The hourly DAG's schedule on a fresh deploy: one run, not a catch-up storm; catch-up after downtime.

Airflow's own cron timetable is the reference: with catchup=True it starts at start_date (the storm a
fresh deploy with a date in the past got); FirstRunAtDeployTimetable must start with the latest closed
hour at deploy (one run), then follow the last run like the reference does.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow._shared.timezones.timezone import coerce_datetime
from airflow.timetables.base import DataInterval, TimeRestriction
from airflow.timetables.interval import CronDataIntervalTimetable

from marketflow.timetables import FirstRunAtDeployTimetable

LONG_AGO = coerce_datetime(datetime(2024, 1, 1, tzinfo=UTC))
RESTRICTION = TimeRestriction(earliest=LONG_AGO, latest=None, catchup=True)


def _hour(ts: datetime) -> datetime:
    return coerce_datetime(ts.replace(minute=0, second=0, microsecond=0))


def test_the_first_run_is_the_hour_before_the_deploy_not_the_start_date() -> None:
    before = _hour(datetime.now(UTC))
    first = FirstRunAtDeployTimetable("0 * * * *", "UTC").next_dagrun_info(
        last_automated_data_interval=None, restriction=RESTRICTION)
    after = _hour(datetime.now(UTC))
    assert first is not None  # one run, at once: the latest closed hour
    assert (first.data_interval.start, first.data_interval.end) in {
        (before - timedelta(hours=1), before), (after - timedelta(hours=1), after)}
    # the reference with catchup=True would have started at the start date: ~26,000 runs to catch up
    storm = CronDataIntervalTimetable("0 * * * *", "UTC").next_dagrun_info(
        last_automated_data_interval=None, restriction=RESTRICTION)
    assert storm is not None and storm.data_interval.start == LONG_AGO


def test_after_the_first_run_missed_hours_are_caught_up_one_at_a_time() -> None:
    now = _hour(datetime.now(UTC))
    last = DataInterval(now - timedelta(hours=5), now - timedelta(hours=4))  # down for four hours
    ours = FirstRunAtDeployTimetable("0 * * * *", "UTC")
    reference = CronDataIntervalTimetable("0 * * * *", "UTC")
    nxt = ours.next_dagrun_info(last_automated_data_interval=last, restriction=RESTRICTION)
    assert nxt is not None and nxt == reference.next_dagrun_info(last_automated_data_interval=last,
                                                                 restriction=RESTRICTION)
    assert (nxt.data_interval.start, nxt.data_interval.end) == (now - timedelta(hours=4), now - timedelta(hours=3))


def _walk(timetable, start: datetime, end: datetime) -> list[DataInterval]:
    """What `airflow backfill create` does (SerializedDAG.iter_dagrun_infos_between): from no run at
    all, with the range's end as the latest bound."""
    restriction, last, out = TimeRestriction(start, end, catchup=True), None, []
    while (info := timetable.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)):
        out.append(info.data_interval)
        last = info.data_interval
    return out


def test_a_backfill_of_a_bounded_range_walks_every_hour_of_it() -> None:
    start, end = LONG_AGO, LONG_AGO + timedelta(hours=5)
    walked = _walk(FirstRunAtDeployTimetable("0 * * * *", "UTC"), start, end)
    assert walked == _walk(CronDataIntervalTimetable("0 * * * *", "UTC"), start, end)
    assert [i.start for i in walked] == [start + timedelta(hours=h) for h in range(6)]
