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

import pandas as pd

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
    "close_time", "candle_count", "is_complete", "first_minute_at", "last_minute_at", "last_ingested_at",
]  # fmt: skip
INDICATOR_COLUMNS = [
    "exchange", "symbol", "open_time", "close", "candle_index", "sma_20", "sma_50", "sma_200", "ema_12",
    "ema_26", "ema_50", "rsi_14", "macd_line", "macd_signal", "macd_histogram", "rsi_avg_gain_14",
    "rsi_avg_loss_14", "last_ingested_at",
]  # fmt: skip
FLOAT_INDICATORS = [c for c in INDICATOR_COLUMNS[5:] if c != "last_ingested_at"]

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
        out.insert(0, "symbol", symbol)
        out.insert(0, "exchange", exchange)
        parts.append(out)
    return pd.concat(parts, ignore_index=True)


def rollup_rows(minutes: pd.DataFrame, timeframe: str) -> dict[tuple, tuple]:
    """(exchange, symbol, open_time) -> (open, high, low, close, volume, quote_volume, trades,
    close_time, candle_count, is_complete, first_minute_at, last_minute_at, last_ingested_at) as
    Python values."""
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
            row.close_time.to_pydatetime(), int(row.candle_count), bool(row.is_complete),
            row.first_minute_at.to_pydatetime(), row.last_minute_at.to_pydatetime(),
            None if pd.isna(row.last_ingested_at) else row.last_ingested_at.to_pydatetime(),
        )  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------
# Indicators, written from the textbook definitions with pandas' ewm (adjust=False) for the
# recursions: a different implementation (and floating-point evaluation order) than the SQL's.

_EXACT = decimal.Context(prec=60)


def _mean(values: list[Decimal]) -> float:
    return float(_EXACT.divide(sum(values, Decimal(0)), Decimal(len(values))))


def _seeded_ewm(seed: float, rest: list[float], alpha: float) -> list[float]:
    """[seed, then y = (1 - alpha) * y + alpha * x for every x of rest] via pandas ewm(adjust=False)."""
    return pd.Series([seed, *rest], dtype="float64").ewm(alpha=alpha, adjust=False).mean().tolist()


def indicators(closes: list[Decimal]) -> dict[str, list[float | None]]:
    """Every indicator column for one market's closes in time order (present candles only)."""
    count = len(closes)
    out: dict[str, list[float | None]] = {name: [None] * count for name in FLOAT_INDICATORS}
    for n in (20, 50, 200):
        for i in range(n - 1, count):
            out[f"sma_{n}"][i] = _mean(closes[i + 1 - n : i + 1])
    floats = [float(c) for c in closes]
    emas = {}
    for n in (12, 26, 50):
        if count >= n:
            emas[n] = _seeded_ewm(_mean(closes[:n]), floats[n:], 2 / (n + 1))
            out[f"ema_{n}"][n - 1 :] = emas[n]
    # RSI(14), Wilder: seed = mean of the first 14 gains/losses (changes 2..15), then alpha 1/14
    if count >= 15:
        changes = [closes[i] - closes[i - 1] for i in range(1, count)]
        gains = [max(c, Decimal(0)) for c in changes]
        losses = [max(-c, Decimal(0)) for c in changes]
        avg_gain = _seeded_ewm(_mean(gains[:14]), [float(g) for g in gains[14:]], 1 / 14)
        avg_loss = _seeded_ewm(_mean(losses[:14]), [float(v) for v in losses[14:]], 1 / 14)
        out["rsi_avg_gain_14"][14:] = avg_gain
        out["rsi_avg_loss_14"][14:] = avg_loss
        out["rsi_14"][14:] = [
            50.0 if g + lo == 0 else 100 * g / (g + lo) for g, lo in zip(avg_gain, avg_loss, strict=True)
        ]
    # MACD(12, 26, 9)
    if count >= 26:
        line = [e12 - e26 for e12, e26 in zip(emas[12][26 - 12 :], emas[26], strict=True)]  # from row 26
        out["macd_line"][25:] = line
        if len(line) >= 9:
            signal = _seeded_ewm(sum(line[:9]) / 9, line[9:], 2 / 10)
            out["macd_signal"][33:] = signal
            out["macd_histogram"][33:] = [m - s for m, s in zip(line[8:], signal, strict=True)]
    return out


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
    from dbt_helpers import copy_candles

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
    """Every indicator of every market and timeframe == indicators() of the candles' closes
    (within rel * max(1, |expected|)); returns the largest relative difference per column."""
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
    """(exchange, symbol, open_time) -> the row's physical version (xmin): changes when rewritten."""
    return {r[:3]: r[3] for r in fetch(conn, f"select exchange, symbol, open_time, xmin::text from marts.{table}")}
