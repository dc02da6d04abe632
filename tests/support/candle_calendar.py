"""Brute-force oracle for candle open times: the UTC calendar, never the code's epoch-ms modulo.

"Is this instant a candle open time" is decided from the calendar fields (minute, hour, midnight,
Monday), and candidates are enumerated one calendar unit at a time. Weeks start Monday 00:00 UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UNIT = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(days=1)}


def dt_of(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def ms_of(ts: datetime) -> int:
    return (ts - _EPOCH) // timedelta(milliseconds=1)


def is_open_time(ms: int, tf: str) -> bool:
    """Calendar definition of a candle start: UTC buckets aligned to the hour / day, weeks on Monday."""
    ts = dt_of(ms)
    n, unit = int(tf[:-1]), tf[-1]
    if ts.microsecond or ts.second:
        return False
    if unit == "m":
        return ts.minute % n == 0
    if ts.minute:
        return False
    if unit == "h":
        return ts.hour % n == 0
    if ts.hour:
        return False
    return unit == "d" or ts.weekday() == 0  # "w": Monday


def _unit_floor(ms: int, tf: str) -> datetime:
    ts = dt_of(ms).replace(second=0, microsecond=0)
    if tf[-1] in "hdw":
        ts = ts.replace(minute=0)
    if tf[-1] in "dw":
        ts = ts.replace(hour=0)
    return ts


def brute_starts(lo: int, hi: int, tf: str) -> list[int]:
    """Every open time in [lo, hi), found by walking calendar units one by one."""
    out, ts, unit = [], _unit_floor(lo, tf), _UNIT[tf[-1]]
    while ms_of(ts) < hi:
        if ms_of(ts) >= lo and is_open_time(ms_of(ts), tf):
            out.append(ms_of(ts))
        ts += unit
    return out


def brute_floor(ms: int, tf: str) -> int:
    ts, unit = _unit_floor(ms, tf), _UNIT[tf[-1]]
    while not is_open_time(ms_of(ts), tf):
        ts -= unit
    return ms_of(ts)


def brute_ceil(ms: int, tf: str) -> int:
    ts, unit = _unit_floor(ms, tf), _UNIT[tf[-1]]
    while ms_of(ts) < ms or not is_open_time(ms_of(ts), tf):
        ts += unit
    return ms_of(ts)
