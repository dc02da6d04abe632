"""The DAGs' schedules. The hourly DAG on a fresh deploy: one run, not a catch-up storm; catch-up after
downtime. The minute DAG: each run created its lead before its minute closes, the data interval unchanged.

Airflow's own cron timetable is the reference: with catchup=True it starts at start_date (the storm a
fresh deploy with a date in the past got); FirstRunAtDeployTimetable must start with the latest closed
hour at deploy (one run), then follow the last run like the reference does.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from airflow._shared.timezones.timezone import coerce_datetime
from airflow.timetables.base import DataInterval, TimeRestriction
from airflow.timetables.interval import CronDataIntervalTimetable

from marketflow.config import MarketflowConfig
from marketflow.pipeline import LEAD_SLACK_SECONDS, fetch_start_at, wait_until
from marketflow.timeframes import Window
from marketflow.timetables import FirstRunAtDeployTimetable, LeadingCronDataIntervalTimetable

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


# --- the minute DAG: runs started ahead of their close -------------------------------------------------

LEAD = timedelta(seconds=20)


def _minute(ts: datetime) -> datetime:
    return coerce_datetime(ts.replace(second=0, microsecond=0))


def test_a_minute_run_starts_its_lead_before_the_close_and_still_stands_for_the_closed_minute() -> None:
    now = _minute(datetime.now(UTC))
    last = DataInterval(now - timedelta(minutes=1), now)
    ours = LeadingCronDataIntervalTimetable("* * * * *", "UTC", LEAD)
    reference = CronDataIntervalTimetable("* * * * *", "UTC")
    for restriction in (RESTRICTION, TimeRestriction(LONG_AGO, None, catchup=False)):
        nxt = ours.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
        ref = reference.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
        assert nxt is not None and ref is not None
        assert nxt.data_interval == ref.data_interval == DataInterval(now, now + timedelta(minutes=1))
        assert nxt.logical_date == ref.logical_date  # same run identity
        assert ref.run_after == now + timedelta(minutes=1)  # Airflow's: at the close
        assert nxt.run_after == now + timedelta(seconds=40)  # ours: 20 s before it


def test_without_a_lead_it_is_airflows_cron_timetable() -> None:
    now = _minute(datetime.now(UTC))
    last = DataInterval(now - timedelta(minutes=1), now)
    ours = LeadingCronDataIntervalTimetable("* * * * *", "UTC")
    reference = CronDataIntervalTimetable("* * * * *", "UTC")
    assert ours.next_dagrun_info(last_automated_data_interval=last, restriction=RESTRICTION) == \
        reference.next_dagrun_info(last_automated_data_interval=last, restriction=RESTRICTION)


def test_catch_up_and_backfill_walk_the_same_minutes_and_are_due_at_once() -> None:
    start, end = LONG_AGO, LONG_AGO + timedelta(minutes=5)
    ours = LeadingCronDataIntervalTimetable("* * * * *", "UTC", LEAD)
    walked = _walk(ours, start, end)
    assert walked == _walk(CronDataIntervalTimetable("* * * * *", "UTC"), start, end)
    assert [i.start for i in walked] == [start + timedelta(minutes=m) for m in range(6)]
    # every one of those windows closed long ago: due now, and its task does not wait (fetch_start_at)
    now = coerce_datetime(datetime.now(UTC))
    info = ours.next_dagrun_info(last_automated_data_interval=walked[0], restriction=RESTRICTION)
    assert info is not None and info.run_after < now


def test_catchup_false_after_downtime_resumes_at_the_last_closed_minute() -> None:
    ours = LeadingCronDataIntervalTimetable("* * * * *", "UTC", LEAD)
    before = _minute(datetime.now(UTC))
    info = ours.next_dagrun_info(last_automated_data_interval=DataInterval(LONG_AGO, LONG_AGO + timedelta(minutes=1)),
                                 restriction=TimeRestriction(LONG_AGO, None, catchup=False))
    after = _minute(datetime.now(UTC))
    assert info is not None
    assert info.data_interval.end in {before, after}  # the latest closed minute, not 2024's
    assert info.run_after == info.data_interval.end - LEAD


def test_the_lead_survives_serialization_and_is_bounded() -> None:
    ours = LeadingCronDataIntervalTimetable("* * * * *", "UTC", LEAD)
    back = LeadingCronDataIntervalTimetable.deserialize(ours.serialize())
    assert back.lead == LEAD and back.serialize() == ours.serialize()
    assert "20 s before" in ours.summary
    with pytest.raises(ValueError, match="negative"):
        LeadingCronDataIntervalTimetable("* * * * *", "UTC", -LEAD)
    # a lead longer than the interval: run_after never before the interval starts
    long = LeadingCronDataIntervalTimetable("* * * * *", "UTC", timedelta(minutes=5))
    now = _minute(datetime.now(UTC))
    info = long.next_dagrun_info(last_automated_data_interval=DataInterval(now - timedelta(minutes=1), now),
                                 restriction=RESTRICTION)
    assert info is not None and info.run_after == info.data_interval.start


# --- the task's side: when a live minute run fetches ----------------------------------------------------

def _config(lead: int = 20, settle: float = 0.5) -> MarketflowConfig:
    return MarketflowConfig(source=Path("markets.yml"), exchanges=(), minute_run_lead_seconds=lead,
                            close_settle_seconds=settle)


def test_a_run_started_ahead_fetches_at_the_close_plus_the_settle_delay() -> None:
    close = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    window = Window(int(close * 1000) - 3 * 60_000, int(close * 1000))
    assert fetch_start_at(window, {}, _config(), now=close - 18.0) == close + 0.5
    assert fetch_start_at(window, None, _config(settle=2), now=close - 1.0) == close + 2
    # the close passed (a late start, catch-up, backfill, a rerun): no wait
    assert fetch_start_at(window, {}, _config(), now=close + 0.5) is None
    assert fetch_start_at(window, {}, _config(), now=close + 3600) is None
    # a window from dag_run.conf: never waited for
    assert fetch_start_at(window, {"start": "x", "end": "y"}, _config(), now=close - 10) is None
    # further ahead than the lead allows (with its slack): not waited for
    assert fetch_start_at(window, {}, _config(lead=20), now=close - 20.5 - LEAD_SLACK_SECONDS - 1) is None
    assert fetch_start_at(window, {}, _config(lead=0), now=close - 10) == close + 0.5  # within the slack


def test_wait_until_sleeps_only_for_a_future_time() -> None:
    assert wait_until(None) == 0.0
    assert wait_until(time.time() - 5) == 0.0
    started = time.monotonic()
    slept = wait_until(time.time() + 0.3)
    assert 0.2 < slept <= 0.3 and time.monotonic() - started >= 0.25
