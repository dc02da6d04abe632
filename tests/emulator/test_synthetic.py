"""Synthetic markets: deterministic, OHLC-consistent, O(window), in-progress candle."""

from __future__ import annotations

import itertools
import time
from decimal import Decimal

import pytest

from exchange_emulator.synthetic import SyntheticMarket
from exchange_emulator.timeframes import BINANCE_INTERVALS, DAY, OKX_BARS

LISTING = 1483228800000  # 2017-01-01
T0 = 1699920000000  # 2023-11-14 00:00 UTC


def market(exchange: str = "binance", seed: int = 42, base: str = "BTC") -> SyntheticMarket:
    return SyntheticMarket(exchange, base, "USDT", seed, LISTING)


def test_same_seed_same_candles_different_seed_different():
    tf = BINANCE_INTERVALS["5m"]
    a = market().candles(tf, T0, T0 + DAY, 300, False, T0 + 10 * DAY)
    b = market().candles(tf, T0, T0 + DAY, 300, False, T0 + 10 * DAY)
    c = market(seed=7).candles(tf, T0, T0 + DAY, 300, False, T0 + 10 * DAY)
    assert a == b and len(a) == 289  # both ends inclusive
    assert [x.close for x in a] != [x.close for x in c]


def test_window_is_independent_of_what_was_generated_before():
    tf = BINANCE_INTERVALS["1m"]
    fresh = market(seed=99)
    direct = fresh.candles(tf, T0 + 500 * 60_000, 2**62, 10, False, T0 + DAY)
    warmed = market(seed=99)
    warmed.candles(tf, T0, 2**62, 1000, False, T0 + DAY)  # generate a superset first
    assert warmed.candles(tf, T0 + 500 * 60_000, 2**62, 10, False, T0 + DAY) == direct


@pytest.mark.parametrize(
    "exchange,tf",
    [
        ("binance", BINANCE_INTERVALS["1m"]),
        ("binance", BINANCE_INTERVALS["15m"]),
        ("binance", BINANCE_INTERVALS["4h"]),
        ("binance", BINANCE_INTERVALS["1d"]),
        ("binance", BINANCE_INTERVALS["1w"]),
        ("binance", BINANCE_INTERVALS["1M"]),
        ("okx", OKX_BARS["1m"]),
        ("okx", OKX_BARS["6H"]),
        ("okx", OKX_BARS["1Dutc"]),
        ("okx", OKX_BARS["3M"]),
    ],
)
def test_ohlc_consistent_and_continuous(exchange: str, tf):
    for base in ("BTC", "XRP", "PEPE"):
        rows = SyntheticMarket(exchange, base, "USDT", 42, LISTING).candles(
            tf, T0 - 300 * DAY, 2**62, 1000, False, T0
        )
        assert rows, (base, tf.name)
        for c in rows:
            o, h, low, cl, v = (Decimal(x) for x in (c.open, c.high, c.low, c.close, c.volume))
            assert h >= max(o, cl) and low <= min(o, cl) and low > 0, (base, tf.name, c)
            if c.confirm == "1":  # an in-progress candle may be seconds old, with no volume yet
                assert v > 0 and Decimal(c.quote_volume) > 0, (base, tf.name, c)
            assert Decimal(c.taker_base) <= v
            if exchange == "binance":  # Binance prints 8 decimals everywhere
                assert all(len(x.split(".")[1]) == 8 for x in (c.open, c.high, c.low, c.close, c.volume))
            else:  # OKX trims trailing zeros
                assert not any(x.endswith("0") and "." in x for x in (c.open, c.close, c.volume))
        assert [c.ts for c in rows] == sorted({c.ts for c in rows})
        if tf.ms and tf.ms < DAY:  # intraday candles open where the previous one closed
            assert all(a.close == b.open for a, b in itertools.pairwise(rows))


def test_fixed_tick_and_lot_precision():
    m = market()
    assert (m.price_decimals, m.lot_decimals) == (2, 5)  # like Binance BTCUSDT: tick 0.01, step 0.00001
    for c in m.candles(BINANCE_INTERVALS["1m"], T0, 2**62, 200, False, T0 + DAY):
        for price in (c.open, c.high, c.low, c.close):
            assert Decimal(price) % Decimal("0.01") == 0
        assert Decimal(c.volume) % Decimal("0.00001") == 0


def test_multi_day_candles_roll_up_daily_candles():
    m = market("okx")
    week = m.candles(BINANCE_INTERVALS["1w"], T0, 2**62, 1, False, T0 + 60 * DAY)[0]
    days = m.candles(BINANCE_INTERVALS["1d"], week.ts, week.ts + 6 * DAY, 7, False, T0 + 60 * DAY)
    assert len(days) == 7 and days[0].ts == week.ts
    assert week.open == days[0].open and week.close == days[-1].close
    assert Decimal(week.high) == max(Decimal(d.high) for d in days)
    assert Decimal(week.volume) == sum(Decimal(d.volume) for d in days)


def test_in_progress_candle_and_listing_start():
    tf = BINANCE_INTERVALS["1m"]
    m = market()
    now = T0 + 30 * 60_000 + 20_000  # 20 s into a minute
    rows = m.candles(tf, 0, 2**62, 5, True, now)
    last = rows[-1]
    assert last.ts == T0 + 30 * 60_000 and last.close_ts > now and last.confirm == "0"
    assert all(c.confirm == "1" for c in rows[:-1])
    full = m.candles(tf, last.ts, last.ts, 1, False, last.ts + 120_000)[0]  # the same minute, later
    assert full.confirm == "1" and full.open == last.open
    assert Decimal(last.volume) < Decimal(full.volume)
    assert Decimal(last.low) <= Decimal(last.close) <= Decimal(last.high)
    assert m.candles(tf, 0, LISTING - 1, 10, True, now) == []
    assert m.candles(tf, 0, 2**62, 3, False, now)[0].ts == LISTING
    assert m.candles(tf, now + 60_000, 2**62, 3, False, now) == []  # nothing from the future


def test_a_window_years_after_listing_is_cheap():
    tf = BINANCE_INTERVALS["1m"]
    m = market(seed=1234)
    start = time.perf_counter()
    rows = m.candles(tf, T0 + 400 * DAY, 2**62, 1000, False, T0 + 500 * DAY)
    assert len(rows) == 1000
    assert time.perf_counter() - start < 0.5  # O(window): no walk from the 2017 listing
    assert m.candles(BINANCE_INTERVALS["1d"], 0, 2**62, 1000, True, T0)[-1].ts == T0 // DAY * DAY


def test_cross_exchange_prices_are_close_but_not_identical():
    tf = BINANCE_INTERVALS["1d"]
    b = market("binance").candles(tf, T0, 2**62, 30, False, T0 + 40 * DAY)
    o = market("okx").candles(tf, T0, 2**62, 30, False, T0 + 40 * DAY)
    for x, y in zip(b, o, strict=True):
        rel = abs(Decimal(x.open) - Decimal(y.open)) / Decimal(x.open)
        assert rel < Decimal("0.01")
    assert [x.open for x in b] != [Decimal(y.open) for y in o]


def test_the_adjacent_day_is_prefetched_only_for_a_page_crossing_a_day():
    """A page inside one day (a backfill of a day per market) makes no other day; a page running over a
    day boundary (a client paging across days) has the day after it made in the background."""
    from exchange_emulator.synthetic import BLOCK_CACHE

    tf = BINANCE_INTERVALS["1m"]
    m = market(seed=4242)
    day = T0 + 30 * DAY

    def cached(block: int) -> bool:
        return BLOCK_CACHE.get((m.exchange, m._symbol_key, m.seed, tf.ms, block)) is not None

    assert len(m.candles(tf, day, day + DAY - 60_000, 1000, False, day + 10 * DAY)) == 1000
    assert len(m.candles(tf, day + 1000 * 60_000, day + DAY - 60_000, 1000, False, day + 10 * DAY)) == 440
    time.sleep(0.5)
    assert cached(day) and not cached(day + DAY) and not cached(day + 2 * DAY)
    crossing = m.candles(tf, day + 1000 * 60_000, 2**62, 1000, False, day + 10 * DAY)  # into the next day
    assert len(crossing) == 1000
    deadline = time.monotonic() + 10
    while not cached(day + 2 * DAY) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cached(day + 2 * DAY)


def test_the_emulator_counts_its_own_time_per_kind_of_request(live):
    """/__admin/stats service_s: a 1000-candle page and a short minute call, each counted under its kind."""
    start = 1_706_745_600_000  # 2024-02-01, DOGE/USDT's synthetic history
    for limit in (1000, 3):
        status, _, _ = live.get(f"/api/v3/klines?symbol=DOGEUSDT&interval=1m&startTime={start}&limit={limit}")
        assert status == 200
    service = live.stats()["service_s"]
    assert service["binance candles page"]["requests"] == 1 and service["binance candles short"]["requests"] == 1
    assert 0 < service["binance candles short"]["seconds"] <= service["binance candles short"]["max_s"] + 1e-9
