"""Independent expectations for the rollup and indicator marts, computed in pandas / Python from the
sample FILES (tests/support/sample.py), never from anything dbt built.

(A plain module next to the tests, not tests/dbt/__init__.py: a package named `dbt` would shadow
dbt-core.)
"""

from __future__ import annotations

import decimal
import math
from datetime import UTC, datetime
from decimal import Decimal

import numpy as np
import pandas as pd
import talib

# timeframe -> (pandas frequency, bucket origin, minutes per bucket). Weeks: 7-day bins from a
# Monday (1970-01-05) -- a different origin than the SQL's, same calendar.
TIMEFRAMES: dict[str, tuple[str, pd.Timestamp, int]] = {
    "5m": ("5min", pd.Timestamp("1970-01-01", tz="UTC"), 5),
    "15m": ("15min", pd.Timestamp("1970-01-01", tz="UTC"), 15),
    "1h": ("1h", pd.Timestamp("1970-01-01", tz="UTC"), 60),
    "1d": ("24h", pd.Timestamp("1970-01-01", tz="UTC"), 1440),
    "1w": ("168h", pd.Timestamp("1970-01-05", tz="UTC"), 10080),
}
ROLLUP_COLUMNS = [
    "exchange", "symbol", "open_time", "open", "high", "low", "close", "volume", "quote_volume", "trades",
    "close_time", "candle_count", "is_complete", "is_closed", "quote_volume_missing_minutes", "first_minute_at",
    "last_minute_at", "last_ingested_at",
]  # fmt: skip
INDICATOR_COLUMNS = [
    "exchange", "symbol", "open_time", "close", "candle_index", "is_closed", "inputs_complete", "sma_20",
    "sma_50", "sma_200", "ema_12", "ema_26", "ema_50", "rsi_14", "macd_line", "macd_signal", "macd_histogram",
    "rsi_avg_gain_14", "rsi_avg_loss_14", "macd_fast_ema", "last_ingested_at",
]  # fmt: skip
FLOAT_INDICATORS = [c for c in INDICATOR_COLUMNS[7:] if c != "last_ingested_at"]
# Bucket width per timeframe, for the missing-candle part of inputs_complete.
WIDTHS = {"1m": pd.Timedelta(minutes=1)} | {tf: pd.Timedelta(f"{m}min") for tf, (_f, _o, m) in TIMEFRAMES.items()}

# Market -> {open_time_ms: (open, high, low, close, volume, quote_volume, trades)} (tests/support/sample.py)
Minutes = dict[tuple[str, str], dict[int, tuple]]


def minutes_frame(
    markets: Minutes,
    ingested_at: dict[tuple[str, str, int], datetime] | None = None,
    default_ingested_at: datetime | None = None,
) -> pd.DataFrame:
    """One row per 1m candle, Decimal values in object columns, sorted by market and time;
    ingested_at per (exchange, symbol, open_time ms), else `default_ingested_at`."""
    stamps = ingested_at or {}
    rows = [
        (exchange, symbol, datetime.fromtimestamp(ms / 1000, tz=UTC), *values,
         stamps.get((exchange, symbol, ms), default_ingested_at))
        for (exchange, symbol), candles in markets.items()
        for ms, values in candles.items()
    ]  # fmt: skip
    frame = pd.DataFrame(
        rows,
        columns=["exchange", "symbol", "open_time", "open", "high", "low", "close", "volume", "quote_volume",
                 "trades", "ingested_at"],
    )  # fmt: skip
    frame["trades"] = frame["trades"].astype(object)
    return frame.sort_values(["exchange", "symbol", "open_time"], ignore_index=True)


def _sum_if_complete(values: pd.Series):
    """quote_volume / trades: the sum when every minute has a value, else None (the marts' rule)."""
    if values.isna().any():
        return None
    return sum(values)


def resample(minutes: pd.DataFrame, timeframe: str) -> pd.DataFrame:
    """pandas resample of 1m candles into UTC buckets: the expected rows of ohlcv_<timeframe>."""
    freq, origin, per_bucket = TIMEFRAMES[timeframe]
    parts = []
    for (exchange, symbol), market in minutes.groupby(["exchange", "symbol"], sort=True):
        series = market.set_index("open_time").sort_index()
        series["minute"] = series.index
        bins = series.resample(freq, origin=origin, label="left", closed="left")
        out = pd.DataFrame(
            {
                "open": bins["open"].first(),
                "high": bins["high"].agg(lambda s: max(s) if len(s) else None),
                "low": bins["low"].agg(lambda s: min(s) if len(s) else None),
                "close": bins["close"].last(),
                "volume": bins["volume"].agg(lambda s: sum(s, Decimal(0))),
                "quote_volume": bins["quote_volume"].agg(_sum_if_complete),
                "trades": bins["trades"].agg(_sum_if_complete),
                "candle_count": bins["minute"].count(),
                "quote_volume_missing_minutes": bins["quote_volume"].agg(lambda s: int(s.isna().sum())),
                "first_minute_at": bins["minute"].min(),
                "last_minute_at": bins["minute"].max(),
                "last_ingested_at": bins["ingested_at"].max(),
            }
        )
        out = out[out["candle_count"] > 0].copy()
        out.index.name = "open_time"
        out = out.reset_index()
        out["close_time"] = out["open_time"] + pd.Timedelta(freq)
        out["is_complete"] = out["candle_count"] == per_bucket
        out["is_closed"] = out["close_time"] <= pd.Timestamp.now(tz="UTC")  # the sample's buckets are long over
        out.insert(0, "symbol", symbol)
        out.insert(0, "exchange", exchange)
        parts.append(out)
    return pd.concat(parts, ignore_index=True)


def rollup_rows(minutes: pd.DataFrame, timeframe: str) -> dict[tuple, tuple]:
    """(exchange, symbol, open_time) -> (open, high, low, close, volume, quote_volume, trades,
    close_time, candle_count, is_complete, is_closed, quote_volume_missing_minutes, first_minute_at,
    last_minute_at, last_ingested_at) as Python values."""
    frame = resample(minutes, timeframe)
    out = {}
    for row in frame.itertuples(index=False):
        trades = (
            None
            if row.trades is None or (isinstance(row.trades, float) and math.isnan(row.trades))
            else (int(row.trades))
        )
        out[(row.exchange, row.symbol, row.open_time.to_pydatetime())] = (
            row.open, row.high, row.low, row.close, row.volume,
            row.quote_volume if isinstance(row.quote_volume, Decimal) else None, trades,
            row.close_time.to_pydatetime(), int(row.candle_count), bool(row.is_complete), bool(row.is_closed),
            int(row.quote_volume_missing_minutes), row.first_minute_at.to_pydatetime(),
            row.last_minute_at.to_pydatetime(),
            None if pd.isna(row.last_ingested_at) else row.last_ingested_at.to_pydatetime(),
        )  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------
# Indicators: TA-Lib (the `ta-lib` wheel, its bundled C library) is the oracle for every value it
# computes; the Wilder averages behind RSI (TA-Lib keeps them internal) come from pandas' ewm.


def _mean(values: list[Decimal]) -> float:
    return float(_EXACT.divide(sum(values, Decimal(0)), Decimal(len(values))))


_EXACT = decimal.Context(prec=60)


def _seeded_ewm(seed: float, rest: list[float], alpha: float) -> list[float]:
    """[seed, then y = (1 - alpha) * y + alpha * x for every x of rest] via pandas ewm(adjust=False)."""
    return pd.Series([seed, *rest], dtype="float64").ewm(alpha=alpha, adjust=False).mean().tolist()


def _values(array: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in array]


def indicators(closes: list[Decimal]) -> dict[str, list[float | None]]:
    """Every float indicator column for one market's closes in time order (present candles only),
    as TA-Lib computes them on that series (NaN -> None)."""
    count = len(closes)
    out: dict[str, list[float | None]] = {name: [None] * count for name in FLOAT_INDICATORS}
    x = np.array([float(c) for c in closes], dtype="float64")
    for n in (20, 50, 200):
        out[f"sma_{n}"] = _values(talib.SMA(x, timeperiod=n))
    for n in (12, 26, 50):
        out[f"ema_{n}"] = _values(talib.EMA(x, timeperiod=n))
    out["rsi_14"] = _values(talib.RSI(x, timeperiod=14))
    line, signal, histogram = talib.MACD(x, fastperiod=12, slowperiod=26, signalperiod=9)
    out["macd_line"], out["macd_signal"], out["macd_histogram"] = _values(line), _values(signal), _values(histogram)
    # MACD's fast EMA as TA-Lib's MACD seeds it internally: EMA(12) of closes 15.. (0-based 14..), so
    # its first value is the mean of closes 15..26, at candle 26
    if count >= 26:
        out["macd_fast_ema"][25:] = _values(talib.EMA(x[14:], timeperiod=12))[11:]
    # Wilder averages: seed = mean of the first 14 gains/losses (changes 2..15), then alpha 1/14
    if count >= 15:
        changes = [closes[i] - closes[i - 1] for i in range(1, count)]
        gains = [max(c, Decimal(0)) for c in changes]
        losses = [max(-c, Decimal(0)) for c in changes]
        out["rsi_avg_gain_14"][14:] = _seeded_ewm(_mean(gains[:14]), [float(g) for g in gains[14:]], 1 / 14)
        out["rsi_avg_loss_14"][14:] = _seeded_ewm(_mean(losses[:14]), [float(v) for v in losses[14:]], 1 / 14)
    return out


def input_flags(open_times: list[datetime], final: list[bool], width: pd.Timedelta, window: int = 200) -> list[bool]:
    """inputs_complete by brute force: the candle and the window - 1 before it (fewer at the start)
    are all final (closed and complete) and follow each other without a missing bucket."""
    flags = []
    for i in range(len(open_times)):
        lo = max(0, i - window + 1)
        consecutive = all(open_times[j] - open_times[j - 1] == width for j in range(lo + 1, i + 1))
        flags.append(consecutive and all(final[lo : i + 1]))
    return flags


def close_enough(actual: float | None, expected: float | None, rel: float) -> bool:
    """Equal, or both numbers within rel * max(1, |expected|)."""
    if actual is None or expected is None:
        return actual is None and expected is None
    return abs(actual - expected) <= rel * max(1.0, abs(expected))


# ---------------------------------------------------------------------------------------------
# The warehouse side: load candles with chosen ingested_at stamps, read the marts back.

ROLLUPS = [f"ohlcv_{tf}" for tf in TIMEFRAMES]
INDICATOR_MODELS = [f"indicators_{tf}" for tf in ("1m", *TIMEFRAMES)]
# dbt selection for these tests: the rollups, the indicators and everything upstream, with only
# the tests whose parents are all selected (not ohlcv_1m's relationship test to `markets`).
DBT_SELECT = ("--select", "+path:models/marts/indicators", "--indirect-selection", "cautious")


def load_minutes(conn, candles: list, run_id: str, ingested_at: datetime | None = None) -> None:
    """COPY candles (dbt_helpers.Candle) into staging.ohlcv; stamp them with `ingested_at`."""
    from support.dbt_helpers import copy_candles

    copy_candles(conn, candles, run_id=run_id)
    if ingested_at is not None:
        with conn.cursor() as cur:
            cur.execute("update staging.ohlcv set ingested_at = %s where run_id = %s", (ingested_at, run_id))
        conn.commit()


def fetch(conn, sql: str, params=None) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall()
    conn.commit()
    return rows


def rollup_table(conn, timeframe: str) -> dict[tuple, tuple]:
    """marts.ohlcv_<timeframe> as (exchange, symbol, open_time) -> the other columns."""
    rows = fetch(conn, f"select {', '.join(ROLLUP_COLUMNS)} from marts.ohlcv_{timeframe}")
    return {row[:3]: row[3:] for row in rows}


def exact(values: tuple) -> tuple:
    """Decimals as their text, so 1.10 and 1.1 differ (the exchange's digits must survive)."""
    return tuple(str(v) if isinstance(v, Decimal) else v for v in values)


def assert_rollups_match(conn, minutes: pd.DataFrame) -> dict[str, int]:
    """Every rollup == the pandas resample of `minutes`, value for value; returns row counts."""
    counts = {}
    for timeframe in TIMEFRAMES:
        expected = rollup_rows(minutes, timeframe)
        actual = rollup_table(conn, timeframe)
        assert sorted(actual) == sorted(expected), f"ohlcv_{timeframe}: bucket keys differ"
        wrong = [(k, actual[k], expected[k]) for k in expected if exact(actual[k]) != exact(expected[k])]
        assert not wrong, f"ohlcv_{timeframe}: {len(wrong)} buckets differ, first: {wrong[0]}"
        counts[timeframe] = len(actual)
    return counts


def indicator_rows(conn, model: str) -> dict[tuple[str, str], list[dict]]:
    rows = fetch(conn, f"select {', '.join(INDICATOR_COLUMNS)} from marts.{model} order by exchange, symbol, open_time")
    markets: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        markets.setdefault(row[:2], []).append(dict(zip(INDICATOR_COLUMNS, row, strict=True)))
    return markets


def assert_indicators_match(conn, minutes: pd.DataFrame, rel: float) -> dict[str, float]:
    """Every indicator of every market and timeframe == TA-Lib on the candles' closes (within
    rel * max(1, |expected|)), the flags == a brute-force check of the windows; returns the largest
    relative difference per column."""
    worst = dict.fromkeys(FLOAT_INDICATORS, 0.0)
    for timeframe in ("1m", *TIMEFRAMES):
        candles = minutes if timeframe == "1m" else resample(minutes, timeframe)
        stored = indicator_rows(conn, f"indicators_{timeframe}")
        markets = {key: frame for key, frame in candles.groupby(["exchange", "symbol"], sort=True)}
        assert sorted(stored) == sorted(markets), timeframe
        for key, frame in markets.items():
            rows = stored[key]
            closes = list(frame["close"])
            assert [r["open_time"] for r in rows] == [t.to_pydatetime() for t in frame["open_time"]], (timeframe, key)
            assert [r["close"] for r in rows] == closes, (timeframe, key)
            assert [r["candle_index"] for r in rows] == list(range(1, len(rows) + 1)), (timeframe, key)
            expected = indicators(closes)
            final = [True] * len(rows) if timeframe == "1m" else [bool(v) for v in frame["is_complete"]]
            times = [t.to_pydatetime() for t in frame["open_time"]]
            assert [r["is_closed"] for r in rows] == [True] * len(rows), (timeframe, key)  # the sample is history
            flags = input_flags(times, final, WIDTHS[timeframe])
            assert [r["inputs_complete"] for r in rows] == flags, (timeframe, key)
            for column in FLOAT_INDICATORS:
                for i, row in enumerate(rows):
                    actual, wanted = row[column], expected[column][i]
                    assert close_enough(actual, wanted, rel), (
                        f"indicators_{timeframe} {key} {column} at candle_index {i + 1}: {actual} != {wanted}"
                    )
                    if actual is not None:
                        worst[column] = max(worst[column], abs(actual - wanted) / max(1.0, abs(wanted)))
    return worst


def table_checksums(conn, tables: list[str]) -> dict[str, tuple[int, str]]:
    """(row count, md5 over every row's text in key order) per marts table: equal checksums mean
    equal values to the last bit (double precision prints shortest-exact)."""
    result = {}
    for table in tables:
        ((count, digest),) = fetch(
            conn,
            f"select count(*), coalesce(md5(string_agg(t::text, E'\\n' order by exchange, symbol, open_time)), '')"
            f" from marts.{table} t",
        )
        result[table] = (count, digest)
    return result


def row_versions(conn, table: str) -> dict[tuple, str]:
    """(exchange, symbol, open_time) -> the row's physical version (xmin): changes when rewritten.
    candles_1m (the 1m candles and indicators, keyed by market_id): its markets' names joined in."""
    if table == "candles_1m":
        return {r[:3]: r[3] for r in fetch(conn, "select m.exchange, m.symbol, t.open_time, t.xmin::text"
                                                 " from marts.candles_1m as t join staging.market as m"
                                                 " using (market_id)")}
    return {r[:3]: r[3] for r in fetch(conn, f"select exchange, symbol, open_time, xmin::text from marts.{table}")}
