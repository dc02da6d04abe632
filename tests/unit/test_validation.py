"""candle_problem's shortcut for valid candles must never pass a candle the named checks reject."""

from __future__ import annotations

import itertools
from decimal import Decimal

import pytest

from marketflow.parsing import Candle
from marketflow.validation import _named_problem, candle_problem

MINUTE = 60_000
RECEIVED = 1_700_000_400_000
# Values that sit on, inside and outside every bound the checks use.
VALUES = [Decimal(v) for v in ("0", "1", "2", "-1", "1e20", "99999999999999999999", "NaN", "Infinity",
                               "-Infinity", "-0", "0.00000001")]


def candle(o, h, low, c, v=Decimal(5), q: Decimal | None = Decimal(7), trades: int | None = 3,
           ts: int = RECEIVED - 5 * MINUTE) -> Candle:
    return Candle(ts, o, h, low, c, v, q, trades, 0, [])


def test_shortcut_agrees_with_the_named_checks_on_every_price_combination() -> None:
    checked = 0
    for o, h, low, c in itertools.product(VALUES, repeat=4):
        got = candle_problem(candle(o, h, low, c), "1m", RECEIVED)
        assert got == _named_problem(candle(o, h, low, c), "1m", RECEIVED), (o, h, low, c)
        checked += got is None
    assert checked > 0  # some combinations are valid, so the shortcut was taken


@pytest.mark.parametrize("v", VALUES)
@pytest.mark.parametrize("q", [None, *VALUES])
def test_shortcut_agrees_on_volumes(v: Decimal, q: Decimal | None) -> None:
    c = candle(Decimal(1), Decimal(2), Decimal(1), Decimal(2), v=v, q=q)
    assert candle_problem(c, "1m", RECEIVED) == _named_problem(c, "1m", RECEIVED)


@pytest.mark.parametrize("trades", [None, 0, -1])
@pytest.mark.parametrize("ts", [RECEIVED - 5 * MINUTE, RECEIVED - 5 * MINUTE + 1, -MINUTE, RECEIVED,
                                RECEIVED + MINUTE, RECEIVED + 2 * MINUTE])
@pytest.mark.parametrize("timeframe", ["1m", "1h", "1w"])
def test_shortcut_agrees_on_times_and_trades(trades: int | None, ts: int, timeframe: str) -> None:
    c = candle(Decimal(1), Decimal(2), Decimal(1), Decimal(2), trades=trades, ts=ts)
    assert candle_problem(c, timeframe, RECEIVED) == _named_problem(c, timeframe, RECEIVED)


def test_a_valid_candle_passes_and_a_bad_one_is_named() -> None:
    assert candle_problem(candle(Decimal(1), Decimal(2), Decimal(1), Decimal(2)), "1m", RECEIVED) is None
    assert candle_problem(candle(Decimal(1), Decimal(2), Decimal(3), Decimal(2)), "1m", RECEIVED) \
        == "high 2 is below low 3"
