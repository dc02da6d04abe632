"""Bucket grids and exact roll-ups of recorded 1m candles."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from exchange_emulator.candles import aggregate_series
from exchange_emulator.loaders import RecordedMarket, RecordedSeries, load_file
from exchange_emulator.markets import RecordedSource
from exchange_emulator.timeframes import BINANCE_INTERVALS, DAY, HOUR, OKX_BARS, parse_ccxt_timeframe

from .helpers import BINANCE_DAY1, BINANCE_DIR, OKX_DIR, binance_rows


def ms(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=dt.UTC).timestamp() * 1000)


def test_weeks_start_on_monday_and_months_on_the_first():
    w = BINANCE_INTERVALS["1w"]
    assert w.floor(ms(2022, 8, 14, 13)) == ms(2022, 8, 8)  # Sunday -> previous Monday
    assert w.floor(ms(2022, 8, 15)) == ms(2022, 8, 15)  # Monday
    m = BINANCE_INTERVALS["1M"]
    assert m.floor(ms(2024, 2, 29, 23)) == ms(2024, 2, 1)
    assert m.next(ms(2024, 12, 1)) == ms(2025, 1, 1)
    assert m.starts(ms(2024, 1, 15), ms(2024, 4, 1)) == [ms(2024, 2, 1), ms(2024, 3, 1), ms(2024, 4, 1)]


def test_okx_bars_utc_and_hong_kong_alignment():
    assert OKX_BARS["1Dutc"].floor(ms(2025, 11, 24, 10)) == ms(2025, 11, 24)
    assert OKX_BARS["1D"].floor(ms(2025, 11, 24, 10)) == ms(2025, 11, 23, 16)  # 00:00 UTC+8
    assert OKX_BARS["6Hutc"].floor(ms(2025, 11, 24, 5)) == ms(2025, 11, 24, 0)
    assert OKX_BARS["6H"].floor(ms(2025, 11, 24, 5)) == ms(2025, 11, 24, 4)
    assert OKX_BARS["1Wutc"].floor(ms(2025, 11, 26)) == ms(2025, 11, 24)
    assert OKX_BARS["1H"].ms == HOUR and OKX_BARS["4H"].floor(ms(2025, 11, 24, 7)) == ms(2025, 11, 24, 4)
    assert OKX_BARS["1Mutc"].floor(ms(2025, 11, 24)) == ms(2025, 11, 1)
    assert parse_ccxt_timeframe("1h") == BINANCE_INTERVALS["1h"]
    assert parse_ccxt_timeframe("bogus") is None


def _expected_hour(rows: list[list[str]]) -> list[str]:
    d = [[Decimal(x) for x in r[1:6]] + [Decimal(r[7])] for r in rows]
    return [
        rows[0][1],
        str(max(r[1] for r in d)),
        str(min(r[2] for r in d)),
        rows[-1][4],
        str(sum((r[4] for r in d), Decimal(0))),
        str(sum((r[5] for r in d), Decimal(0))),
    ]


def test_hourly_rollup_of_real_binance_minutes_is_exact():
    raw = binance_rows()
    source = [c for p in sorted(BINANCE_DIR.glob("*.csv")) for c in load_file(p)]
    hours = aggregate_series(source, BINANCE_INTERVALS["1h"], source[0].ts, source[-1].ts + 60_000)
    assert len(hours) == 48
    for k, h in enumerate(hours):
        chunk = raw[k * 60 : (k + 1) * 60]
        assert h.ts == BINANCE_DAY1 + k * HOUR and h.close_ts == h.ts + HOUR - 1
        got = [h.open, h.high, h.low, h.close, h.volume, h.quote_volume]
        exp = _expected_hour(chunk)
        assert got[:4] == exp[:4]  # exact source strings, e.g. "1983.55000000"
        assert [Decimal(x) for x in got[4:]] == [Decimal(x) for x in exp[4:]]
        assert h.trades == sum(int(r[8]) for r in chunk)
    # the day totals match too, and keep Binance's 8 decimals
    days = aggregate_series(source, BINANCE_INTERVALS["1d"], source[0].ts, source[-1].ts + 60_000)
    assert [d.ts for d in days] == [BINANCE_DAY1, BINANCE_DAY1 + DAY]
    assert days[0].volume == str(sum((Decimal(r[5]) for r in raw[:1440]), Decimal(0)))
    assert days[0].volume.endswith("0") and len(days[0].volume.split(".")[1]) == 8


def test_partial_buckets_are_not_served():
    # the OKX export starts at 16:00 UTC: the first UTC day is incomplete and must not appear
    series = RecordedSeries(parse_ccxt_timeframe("1m"), sorted(OKX_DIR.glob("*.csv")))  # type: ignore[arg-type]
    src = RecordedSource(RecordedMarket("okx", "BTC", "USDT", {"1m": series}))
    days = src.candles(OKX_BARS["1Dutc"], 0, 2**62, 100, False, 2**62)
    assert [d.ts for d in days] == [ms(2025, 11, 24)]
    hk_days = src.candles(OKX_BARS["1D"], 0, 2**62, 100, False, 2**62)  # UTC+8 days are complete
    assert [d.ts for d in hk_days] == [ms(2025, 11, 23, 16), ms(2025, 11, 24, 16)]
    first_hk = hk_days[0]
    minutes = series.candles()[:1440]
    assert first_hk.open == minutes[0].open and first_hk.close == minutes[-1].close
    assert first_hk.high == max((c.high for c in minutes), key=Decimal)
    assert Decimal(first_hk.quote_volume2) == sum(Decimal(c.quote_volume2) for c in minutes)
    # lower than recorded cannot be served; higher-than-daily with no complete bucket is empty
    assert src.candles(OKX_BARS["1Wutc"], 0, 2**62, 10, False, 2**62) == []
