"""Row-level checks a candle must pass before it reaches staging.

Each check returns a reason in words; the loader sends failing rows to staging.ohlcv_rejects
with that reason. The database's CHECK constraints are the last line, not the first.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from marketflow.parsing import Candle
from marketflow.timeframes import is_aligned, iso, timeframe_ms

# A candle may open at most this far past the moment its payload was received (clock skew).
FUTURE_TOLERANCE_MS = 60_000
TOO_LARGE = Decimal("1e20")


def candle_problem(candle: Candle, timeframe: str, received_ms: int) -> str | None:
    """Why ``candle`` is invalid, or None when it is fine."""
    # Almost every candle is fine: one chain of comparisons that implies every check below
    # (0 <= low <= open, close <= high < 1e20 makes all four finite). Anything else, NaN included
    # (ordering a NaN raises), takes the checks that name the problem.
    step = timeframe_ms(timeframe)
    c, q, t = candle, candle.quote_volume, candle.trades
    try:
        if (0 <= c.low <= c.open <= c.high < TOO_LARGE and c.low <= c.close <= c.high
                and 0 <= c.volume < TOO_LARGE and (q is None or 0 <= q < TOO_LARGE) and (t is None or t >= 0)
                and c.open_time_ms >= 0 and is_aligned(c.open_time_ms, timeframe)
                and c.open_time_ms + step <= received_ms + FUTURE_TOLERANCE_MS):
            return None
    except InvalidOperation:
        pass
    return _named_problem(candle, timeframe, received_ms)


def _named_problem(candle: Candle, timeframe: str, received_ms: int) -> str | None:
    values = {"open": candle.open, "high": candle.high, "low": candle.low, "close": candle.close,
              "volume": candle.volume}
    if candle.quote_volume is not None:
        values["quote_volume"] = candle.quote_volume
    for name, value in values.items():
        if not value.is_finite():
            return f"{name} is not a finite number ({value})"
        if value < 0:
            return f"{name} is negative ({value})"
    if candle.trades is not None and candle.trades < 0:
        return f"trades is negative ({candle.trades})"
    if candle.high < candle.low:
        return f"high {candle.high} is below low {candle.low}"
    if candle.high < max(candle.open, candle.close):
        return f"high {candle.high} is below open/close ({candle.open}/{candle.close})"
    if candle.low > min(candle.open, candle.close):
        return f"low {candle.low} is above open/close ({candle.open}/{candle.close})"
    if candle.open_time_ms < 0:
        return f"open time {candle.open_time_ms} is before 1970"
    if not is_aligned(candle.open_time_ms, timeframe):
        return f"open time {iso(candle.open_time_ms)} is not aligned to the {timeframe} timeframe"
    if candle.open_time_ms + timeframe_ms(timeframe) > received_ms + FUTURE_TOLERANCE_MS:
        return f"candle {iso(candle.open_time_ms)} closes after the response was received ({iso(received_ms)})"
    if max(values.values()) >= Decimal("1e20"):
        return "value too large for a price or volume (>= 1e20)"
    return None
