"""Exchange-neutral candle record, exact decimal helpers and timeframe aggregation.

All price/volume fields are kept as the exact decimal strings they were read (or
generated) as; arithmetic, where needed, is done with ``decimal.Decimal`` so no float
rounding can leak into served data.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import NamedTuple

from exchange_emulator.timeframes import Timeframe

# wide enough for sums of 8-decimal quote volumes over years of candles
_CTX = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN)


class Candle(NamedTuple):
    ts: int  # open time, ms
    open: str
    high: str
    low: str
    close: str
    volume: str  # base asset volume
    close_ts: int  # Binance close time, ms (open + duration - 1)
    quote_volume: str  # Binance quote asset volume / OKX volCcy (spot)
    quote_volume2: str  # OKX volCcyQuote (spot: equals volCcy)
    trades: int  # Binance number of trades (0 when the source lacks it)
    taker_base: str  # Binance taker buy base volume ("0" when unknown)
    taker_quote: str  # Binance taker buy quote volume ("0" when unknown)
    confirm: str  # OKX confirm flag: "1" closed, "0" in progress


def dec_str(value: Decimal) -> str:
    """Plain (never scientific) string of a Decimal, keeping its exponent."""
    return format(value, "f")


def dec_str_trim(value: Decimal) -> str:
    """Plain string without trailing zeros ("87084.10" -> "87084.1")."""
    if value == 0:
        return "0"
    return format(value.normalize(_CTX), "f")


def fixed_str(value: Decimal, places: int) -> str:
    return format(value.quantize(Decimal(1).scaleb(-places), context=_CTX), "f")


def estimated_quote_volume(o: str, h: str, low: str, c: str, volume: str) -> str:
    """Quote volume for sources that lack it: volume * (o+h+l+c)/4, exact (division by 4 terminates)."""
    typical = _CTX.divide(_CTX.add(_CTX.add(Decimal(o), Decimal(h)), _CTX.add(Decimal(low), Decimal(c))), 4)
    return dec_str_trim(_CTX.multiply(Decimal(volume), typical))


def max_str(values: Iterable[str]) -> str:
    return max(values, key=Decimal)


def min_str(values: Iterable[str]) -> str:
    return min(values, key=Decimal)


def sum_str(values: Iterable[str]) -> str:
    total = Decimal(0)
    for v in values:
        total = _CTX.add(total, Decimal(v))
    return dec_str(total)


def aggregate(group: Sequence[Candle], start: int, end: int) -> Candle:
    """One candle for [start, end) from its ascending sub-candles; open/high/low/close keep source strings."""
    return Candle(
        ts=start,
        open=group[0].open,
        high=max_str(c.high for c in group),
        low=min_str(c.low for c in group),
        close=group[-1].close,
        volume=sum_str(c.volume for c in group),
        close_ts=end - 1,
        quote_volume=sum_str(c.quote_volume for c in group),
        quote_volume2=sum_str(c.quote_volume2 for c in group),
        trades=sum(c.trades for c in group),
        taker_base=sum_str(c.taker_base for c in group),
        taker_quote=sum_str(c.taker_quote for c in group),
        confirm="1" if all(c.confirm == "1" for c in group) else "0",
    )


def aggregate_series(
    source: Sequence[Candle], target: Timeframe, covered_from: int, covered_to: int
) -> list[Candle]:
    """Roll ascending ``source`` candles up into ``target`` buckets (UTC grid, weeks from Monday).

    Only buckets lying completely inside [covered_from, covered_to) are produced, so a
    recording that starts mid-day never yields a misleading partial daily candle.
    Gaps inside a covered bucket are tolerated (real exchanges also skip empty minutes).
    """
    out: list[Candle] = []
    i, n = 0, len(source)
    while i < n:
        start = target.floor(source[i].ts)
        end = target.end(start)
        j = i
        while j < n and source[j].ts < end:
            j += 1
        if start >= covered_from and end <= covered_to:
            out.append(aggregate(source[i:j], start, end))
        i = j
    return out


def decimals_of(value: str) -> int:
    """Significant decimal places of a decimal string ("1983.55000000" -> 2)."""
    if "." not in value:
        return 0
    frac = value.split(".", 1)[1].rstrip("0")
    return len(frac)
