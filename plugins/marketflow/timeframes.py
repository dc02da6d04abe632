"""Timeframes and extraction windows, all in UTC epoch milliseconds."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

SUPPORTED_TIMEFRAMES: tuple[str, ...] = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d", "1w")

_UNIT_MS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
# 1970-01-01 was a Thursday; exchanges (and our rollups) start weeks on Monday.
_WEEK_OFFSET_MS = 4 * 86_400_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


def timeframe_ms(timeframe: str) -> int:
    if timeframe not in SUPPORTED_TIMEFRAMES:
        raise ValueError(f"unsupported timeframe {timeframe!r}; use one of {', '.join(SUPPORTED_TIMEFRAMES)}")
    return int(timeframe[:-1]) * _UNIT_MS[timeframe[-1]]


def _offset(timeframe: str) -> int:
    """Where the timeframe's grid starts relative to the epoch: Monday 1970-01-05 for weeks, else 0."""
    return _WEEK_OFFSET_MS if timeframe.endswith("w") else 0


def is_aligned(ts_ms: int, timeframe: str) -> bool:
    """True when ``ts_ms`` is a candle open time of ``timeframe``."""
    return (ts_ms - _offset(timeframe)) % timeframe_ms(timeframe) == 0


def floor_ms(ts_ms: int, timeframe: str) -> int:
    """The open time of the candle holding ``ts_ms``: the last open time at or before it."""
    offset, step = _offset(timeframe), timeframe_ms(timeframe)
    return (ts_ms - offset) // step * step + offset


def ceil_ms(ts_ms: int, timeframe: str) -> int:
    """The first open time at or after ``ts_ms``."""
    offset, step = _offset(timeframe), timeframe_ms(timeframe)
    return -((offset - ts_ms) // step) * step + offset


def to_ms(ts: datetime) -> int:
    if ts.tzinfo is None:
        raise ValueError(f"naive datetime {ts!r}: marketflow works in UTC, pass an aware datetime")
    # Integer arithmetic: ts.timestamp() * 1000 is a float and was 1 ms off for about 1 % of instants.
    # The difference is made a plain timedelta first: Airflow hands tasks pendulum DateTimes, whose
    # difference (a pendulum Interval) cannot be floor-divided by a timedelta.
    delta = ts - _EPOCH
    return timedelta(days=delta.days, seconds=delta.seconds, microseconds=delta.microseconds) // _ONE_MS


def utc_ms(ts: datetime) -> int:
    """Epoch ms of a datetime; naive ones are UTC (that is how MongoDB hands dates back)."""
    return to_ms(ts if ts.tzinfo else ts.replace(tzinfo=UTC))


def from_ms(ts_ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ts_ms)


def iso(ts_ms: int) -> str:
    return from_ms(ts_ms).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Window:
    """A half-open interval [start_ms, end_ms) of candle open times."""

    start_ms: int
    end_ms: int

    def __post_init__(self) -> None:
        if self.end_ms < self.start_ms:
            raise ValueError(f"window end {iso(self.end_ms)} is before its start {iso(self.start_ms)}")

    @property
    def empty(self) -> bool:
        return self.end_ms <= self.start_ms

    def clip(self, start_ms: int | None, end_ms: int | None) -> Window:
        lo = self.start_ms if start_ms is None else max(self.start_ms, start_ms)
        hi = self.end_ms if end_ms is None else min(self.end_ms, end_ms)
        return Window(lo, max(lo, hi))

    def candles(self, timeframe: str) -> int:
        """How many candle open times of ``timeframe`` fall inside the window (weeks open on Monday)."""
        first, stop = ceil_ms(self.start_ms, timeframe), ceil_ms(self.end_ms, timeframe)
        return max(0, (stop - first) // timeframe_ms(timeframe))

    def __str__(self) -> str:
        return f"[{iso(self.start_ms)}, {iso(self.end_ms)})"
