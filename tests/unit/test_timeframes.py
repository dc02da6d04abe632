"""Window arithmetic of every supported timeframe against a brute-force calendar oracle.

The oracle never uses the code's epoch-ms modulo: it decides "is this instant a candle open time"
from the UTC calendar fields (minute, hour, midnight, Monday) and enumerates candidate instants one
calendar unit at a time. Weeks start Monday 00:00 UTC; 1970-01-01 was a Thursday, so an epoch-based
grid would put week starts on Thursdays, which is the defect these tests catch.

A dense deterministic grid: around anchors on and off bucket starts (Mondays and Thursdays, the
epoch itself, a leap day), every pair of points within a few buckets, plus a seeded random sample.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from support.candle_calendar import brute_ceil, brute_floor, brute_starts, dt_of, is_open_time, ms_of

from marketflow.pipeline import plan_window
from marketflow.timeframes import (
    SUPPORTED_TIMEFRAMES,
    Window,
    ceil_ms,
    floor_ms,
    from_ms,
    is_aligned,
    iso,
    timeframe_ms,
    to_ms,
)

ANCHORS = [
    datetime(1970, 1, 1, tzinfo=UTC),  # the epoch: a Thursday
    datetime(1970, 1, 5, tzinfo=UTC),  # the first Monday
    datetime(2022, 8, 15, tzinfo=UTC),  # Monday (the Binance recording)
    datetime(2022, 8, 18, 7, 31, tzinfo=UTC),  # Thursday, mid-bucket for most timeframes
    datetime(2024, 2, 29, 23, 59, 59, 999000, tzinfo=UTC),  # leap day, 1 ms before midnight
    datetime(2025, 11, 24, tzinfo=UTC),  # Monday (the OKX recording)
    datetime(2025, 11, 27, 12, tzinfo=UTC),  # Thursday noon
]


def grid_points(tf: str) -> list[int]:
    """Points on and just off bucket starts near each anchor, and the Thursday/Monday epoch grids."""
    step = timeframe_ms(tf)
    points: set[int] = set()
    deltas = (0, 1, -1, 1000, -1000, 60_000, -60_000, step // 2, step - 1, -(step - 1))
    for anchor in ANCHORS:
        base = brute_floor(ms_of(anchor), tf)
        for k in (-1, 0, 1, 2):
            for delta in deltas:
                points.add(base + k * step + delta)
        points.add(ms_of(anchor))
        # where an epoch-aligned grid of the same step would start buckets (Thursdays for weeks)
        epoch_grid = ms_of(anchor) // step * step
        for delta in (0, 1, -1):
            points.add(epoch_grid + delta)
    return sorted(points)


def windows(tf: str) -> list[tuple[int, int]]:
    points, step = grid_points(tf), timeframe_ms(tf)
    out = [(a, b) for a in points for b in points if a <= b and b - a <= 3 * step + 60_000]
    rng = random.Random(f"windows-{tf}")
    for _ in range(400):
        lo = rng.randrange(-(2**36), 2**42)
        out.append((lo, lo + rng.randrange(0, 4 * step)))
    return out


@pytest.mark.parametrize("tf", SUPPORTED_TIMEFRAMES)
def test_is_aligned_floor_and_ceil_match_the_calendar(tf: str) -> None:
    points = grid_points(tf)
    rng = random.Random(f"points-{tf}")
    points += [rng.randrange(-(2**36), 2**42) for _ in range(500)]
    for t in points:
        assert is_aligned(t, tf) == is_open_time(t, tf), (tf, iso(t))
        assert floor_ms(t, tf) == brute_floor(t, tf), (tf, iso(t))
        assert ceil_ms(t, tf) == brute_ceil(t, tf), (tf, iso(t))


@pytest.mark.parametrize("tf", SUPPORTED_TIMEFRAMES)
def test_candle_count_of_every_window_matches_brute_force(tf: str) -> None:
    checked = 0
    for lo, hi in windows(tf):
        expected = len(brute_starts(lo, hi, tf))
        assert Window(lo, hi).candles(tf) == expected, (tf, str(Window(lo, hi)), expected)
        checked += 1
    assert checked > 1000  # the grid is dense, not a handful of cases


@pytest.mark.parametrize("tf", SUPPORTED_TIMEFRAMES)
def test_conf_window_covers_exactly_the_buckets_touched(tf: str) -> None:
    """`dag_run.conf` start/end widen to whole buckets: from the bucket holding start to the first
    bucket start at or after end."""
    for lo, hi in windows(tf)[::7]:
        if lo < 0:
            continue
        conf = {"start": iso(lo), "end": iso(hi)}
        start, end = brute_floor(lo, tf), brute_ceil(hi, tf)
        if end <= start:
            with pytest.raises(ValueError, match="is not after start"):
                plan_window(tf, None, None, conf, 0)
            continue
        window = plan_window(tf, None, None, conf, 0)
        assert (window.start_ms, window.end_ms) == (start, end), (tf, conf)
        assert window.candles(tf) == len(brute_starts(start, end, tf)) >= 1


def test_monday_to_thursday_holds_one_weekly_candle() -> None:
    """The issue's case: 2025-11-24 is a Monday, 2025-11-27 a Thursday (a 1970-epoch week boundary)."""
    monday, thursday = ms_of(datetime(2025, 11, 24, tzinfo=UTC)), ms_of(datetime(2025, 11, 27, tzinfo=UTC))
    assert Window(monday, thursday).candles("1w") == 1
    assert Window(monday + 1, thursday).candles("1w") == 0
    assert Window(thursday, thursday + 7 * 86_400_000).candles("1w") == 1  # holds Monday 2025-12-01
    assert Window(monday, monday).candles("1w") == 0  # empty
    window = plan_window("1w", None, None, {"start": "2025-11-24T00:00:00Z", "end": "2025-11-27T00:00:00Z"}, 0)
    assert (iso(window.start_ms), iso(window.end_ms)) == ("2025-11-24T00:00:00Z", "2025-12-01T00:00:00Z")


def test_epoch_milliseconds_round_trip_exactly() -> None:
    rng = random.Random(7)
    for t in [0, 1, -1, 999, 1_086_009_440_909, *(rng.randrange(-(2**40), 2**43) for _ in range(20_000))]:
        assert to_ms(from_ms(t)) == t, t
        assert from_ms(t) == dt_of(t)


def test_airflows_pendulum_datetimes_convert_like_plain_ones() -> None:
    """Airflow hands a scheduled task its data interval as pendulum DateTimes (dags test and conf
    windows do not): plan_window must take them as it takes datetime."""
    import calendar

    import pendulum

    start = pendulum.datetime(2026, 12, 3, 16, 54, 0, 123_000, tz="UTC")
    expected = calendar.timegm((2026, 12, 3, 16, 54, 0)) * 1000 + 123
    assert to_ms(start) == to_ms(datetime(2026, 12, 3, 16, 54, 0, 123_000, tzinfo=UTC)) == expected
    window = plan_window("1m", start, start.add(minutes=1), {}, 2)
    assert (iso(window.start_ms), iso(window.end_ms)) == ("2026-12-03T16:52:00Z", "2026-12-03T16:55:00Z")


@pytest.mark.parametrize("timeframe", SUPPORTED_TIMEFRAMES)
def test_durations_agree_with_ccxt_and_the_emulator(timeframe: str) -> None:
    """Three implementations kept apart on purpose (the emulator is the tests' model of the exchanges
    and shares no code with the pipeline; the pipeline does not import ccxt at DAG parse time, which
    costs over a second): each timeframe's length in ccxt's parse_timeframe, the pipeline's and the
    emulator's grid must be the same, and so must the weekly grid's Monday anchor."""
    from ccxt.base.exchange import Exchange

    from exchange_emulator.timeframes import parse_ccxt_timeframe

    grid = parse_ccxt_timeframe(timeframe)
    assert grid is not None
    assert timeframe_ms(timeframe) == Exchange.parse_timeframe(timeframe) * 1000 == grid.ms
    monday = ms_of(datetime(2024, 1, 1, tzinfo=UTC))  # a Monday
    assert floor_ms(monday + 1, timeframe) == grid.floor(monday + 1)
