"""Candle bucket grids for Binance intervals, OKX bars and ccxt timeframe names.

A bucket grid is either a fixed duration (``ms``) shifted by ``anchor`` ms, or calendar
months (``months``) shifted by ``anchor``. Weeks start on Monday 00:00 UTC (the Unix
epoch was a Thursday, hence the 4-day anchor); OKX bars of 6H and longer without the
``utc`` suffix are aligned to Hong Kong time (UTC+8), i.e. anchored at 16:00 UTC.
"""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
WEEK = 7 * DAY
MONDAY_ANCHOR = 4 * DAY  # 1970-01-05 was a Monday
HK_ANCHOR = -8 * HOUR  # midnight UTC+8 == 16:00 UTC


class Timeframe(NamedTuple):
    name: str  # spelling used by the exchange / ccxt
    ms: int  # fixed bucket length, 0 for calendar months
    months: int  # > 0 for calendar-month buckets
    anchor: int  # grid offset in ms

    @property
    def key(self) -> tuple[int, int, int]:
        """Identity of the grid, independent of the spelling."""
        return (self.ms, self.months, self.anchor % (self.ms or DAY) if self.ms else self.anchor)

    @property
    def is_intraday(self) -> bool:
        return 0 < self.ms < DAY

    def floor(self, ts: int) -> int:
        if self.ms:
            return (ts - self.anchor) // self.ms * self.ms + self.anchor
        shifted = dt.datetime.fromtimestamp((ts - self.anchor) / 1000, dt.UTC)
        index = (shifted.year * 12 + shifted.month - 1) // self.months * self.months
        return _month_start(index) + self.anchor

    def ceil(self, ts: int) -> int:
        start = self.floor(ts)
        return start if start == ts else self.next(start)

    def next(self, start: int) -> int:
        if self.ms:
            return start + self.ms
        return self._shift_months(start, self.months)

    def prev(self, start: int) -> int:
        if self.ms:
            return start - self.ms
        return self._shift_months(start, -self.months)

    def end(self, start: int) -> int:
        """Exclusive end of the bucket that starts at ``start``."""
        return self.next(start)

    def _shift_months(self, start: int, delta: int) -> int:
        shifted = dt.datetime.fromtimestamp((start - self.anchor) / 1000, dt.UTC)
        return _month_start(shifted.year * 12 + shifted.month - 1 + delta) + self.anchor

    def starts(self, lo: int, hi: int) -> list[int]:
        """Bucket starts s with lo <= s <= hi (lo, hi are arbitrary ms timestamps)."""
        first = self.ceil(lo)
        if self.ms:
            return list(range(first, hi + 1, self.ms)) if first <= hi else []
        out = []
        cur = first
        while cur <= hi:
            out.append(cur)
            cur = self.next(cur)
        return out

    def can_aggregate_from(self, source: Timeframe) -> bool:
        """True if every bucket of self is an exact union of ``source`` buckets."""
        if not source.ms or (self.ms and self.ms <= source.ms):
            return False
        if self.ms and self.ms % source.ms:
            return False
        if not self.ms and DAY % source.ms:
            return False
        return (self.anchor - source.anchor) % source.ms == 0


def _month_start(index: int) -> int:
    year, month0 = divmod(index, 12)
    return int(dt.datetime(year, month0 + 1, 1, tzinfo=dt.UTC).timestamp() * 1000)


def _fixed(name: str, ms: int, anchor: int = 0) -> Timeframe:
    return Timeframe(name, ms, 0, anchor)


_UNIT_MS = {"m": MINUTE, "h": HOUR, "d": DAY, "w": WEEK}

BINANCE_INTERVALS: dict[str, Timeframe] = {
    name: _fixed(name, n * _UNIT_MS[name[-1]], MONDAY_ANCHOR if name[-1] == "w" else 0)
    for name in ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w")
    for n in [int(name[:-1])]
}
BINANCE_INTERVALS["1M"] = Timeframe("1M", 0, 1, 0)


def _okx_bars() -> dict[str, Timeframe]:
    bars: dict[str, Timeframe] = {}
    for name in ("1m", "3m", "5m", "15m", "30m"):
        bars[name] = _fixed(name, int(name[:-1]) * MINUTE)
    for name in ("1H", "2H", "4H"):
        bars[name] = _fixed(name, int(name[:-1]) * HOUR)
    # >= 6H: plain spelling is Hong Kong aligned, "utc" suffix is UTC aligned
    for name, ms, utc_anchor in (
        ("6H", 6 * HOUR, 0),
        ("12H", 12 * HOUR, 0),
        ("1D", DAY, 0),
        ("2D", 2 * DAY, 0),
        ("3D", 3 * DAY, 0),
        ("1W", WEEK, MONDAY_ANCHOR),
    ):
        bars[name] = _fixed(name, ms, utc_anchor + HK_ANCHOR)
        bars[name + "utc"] = _fixed(name + "utc", ms, utc_anchor)
    for name, months in (("1M", 1), ("3M", 3)):
        bars[name] = Timeframe(name, 0, months, HK_ANCHOR)
        bars[name + "utc"] = Timeframe(name + "utc", 0, months, 0)
    return bars


OKX_BARS: dict[str, Timeframe] = _okx_bars()


def parse_ccxt_timeframe(name: str) -> Timeframe | None:
    """Timeframe from a ccxt name as used for data directories (UTC aligned)."""
    if name in BINANCE_INTERVALS:
        return BINANCE_INTERVALS[name]
    if len(name) >= 2 and name[:-1].isdigit():
        n, unit = int(name[:-1]), name[-1]
        if unit in _UNIT_MS and n > 0:
            return _fixed(name, n * _UNIT_MS[unit], MONDAY_ANCHOR if unit == "w" else 0)
        if unit == "M" and n > 0:
            return Timeframe(name, 0, n, 0)
    return None

# Bybit v5 kline intervals: minutes as numbers, D/W/M for day, week (from Monday) and calendar month, all UTC.
BYBIT_INTERVALS: dict[str, Timeframe] = {
    str(n): _fixed(str(n), n * MINUTE) for n in (1, 3, 5, 15, 30, 60, 120, 240, 360, 720)
}
BYBIT_INTERVALS["D"] = _fixed("D", DAY)
BYBIT_INTERVALS["W"] = _fixed("W", WEEK, MONDAY_ANCHOR)
BYBIT_INTERVALS["M"] = Timeframe("M", 0, 1, 0)
