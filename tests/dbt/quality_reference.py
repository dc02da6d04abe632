"""Independent expectations for the data-quality models, computed with pandas / numpy from the
tables the pipeline writes (staging.ohlcv, staging.ohlcv_anomalies, ops.market_config,
ops.backfill_tasks), never from anything dbt built.

The rules come from the models' documentation (int_dq_*.yml, data_quality_*.yml, README "Data
quality"), and the method is deliberately another one than the SQL's:
- gaps: every expected open time of a series is enumerated on its grid and the runs of absent
  ones are the gaps (the model looks at neighbouring present candles instead);
- spikes / volume anomalies: the baselines are the sample standard deviation (numpy, two-pass)
  of an explicit window of the previous N candles (the model differences running sums);
- divergence: every pair of exchanges listing the symbol, joined on the minute, in Decimal;
- the score in Decimal from the documented formula.

(A plain module next to the tests, like ohlcv_reference.py: a package named `dbt` would shadow
dbt-core.)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

# dbt_project.yml's defaults (int_dq_candle_hours_1m.yml / int_dq_expected_ranges.yml)
DEFAULT_RULES = {
    "dq_expected_delay_minutes": 2,
    "dq_baseline_candles": 60,
    "dq_min_baseline_candles": 30,
    "dq_spike_k": 8.0,
    "dq_spike_min_return": 0.003,
    "dq_return_max_gap_minutes": 5,
    "dq_volume_z": 4.0,
    "dq_volume_min_ratio": 20.0,
}
# data_quality_summary.yml: what one flagged candle costs, in candles
WEIGHTS = {
    "price_spikes": Decimal(1),
    "duplicates": Decimal("0.5"),
    "corrections": Decimal("0.25"),
    "volume_anomalies": Decimal("0.25"),
    "out_of_order": Decimal("0.1"),
}
ANOMALY_COLUMNS = {"duplicate_conflict": "duplicates", "revised": "corrections", "out_of_order": "out_of_order"}
MINUTE = pd.Timedelta(minutes=1)
HOUR = pd.Timedelta(hours=1)
EPOCH = pd.Timestamp("1970-01-01", tz="UTC")
MONDAY = pd.Timestamp("1970-01-05", tz="UTC")  # weeks start on Monday

GAP_COLUMNS = [
    "exchange", "symbol", "timeframe", "gap_start", "gap_end", "missing_candles", "missing_minutes", "gap_kind",
    "status", "is_missing", "task_id", "task_status", "task_outcome", "attempts", "last_error", "candles_found",
    "updated_at",
]  # fmt: skip
CANDLE_HOUR_COLUMNS = [
    "exchange", "symbol", "period_start", "present", "price_spikes", "volume_anomalies", "spike_times",
    "volume_anomaly_times", "cross_exchange_divergence_bps", "max_ingested_at",
]  # fmt: skip
COUNT_COLUMNS = [
    "expected", "present", "missing", "duplicates", "corrections", "out_of_order", "price_spikes", "volume_anomalies",
]  # fmt: skip
HOURLY_COLUMNS = [
    "exchange", "symbol", "timeframe", "period_start", "period_end", *COUNT_COLUMNS, "cross_exchange_divergence_bps",
]  # fmt: skip
SUMMARY_COLUMNS = [
    "exchange", "symbol", "timeframe", "grain", "period_start", "period_end", *COUNT_COLUMNS,
    "cross_exchange_divergence_bps", "quality_score",
]  # fmt: skip
FLAGGED_COLUMNS = [
    "exchange", "symbol", "timeframe", "open_time", "period_start", "is_price_spike", "is_volume_anomaly",
    "is_duplicate", "is_correction", "is_out_of_order", "close", "volume",
]  # fmt: skip
RANGE_COLUMNS = ["exchange", "symbol", "timeframe", "range_source", "range_start", "range_end", "expected_candles"]


@dataclass
class Inputs:
    candles: pd.DataFrame  # exchange, symbol, timeframe, open_time, close, volume (Decimal), ingested_at
    anomalies: pd.DataFrame  # exchange, symbol, timeframe, kind, open_time
    config: pd.DataFrame  # exchange, symbol, timeframe, history_start, history_end, enabled
    tasks: pd.DataFrame  # ops.backfill_tasks
    as_of: pd.Timestamp


def _frame(conn, sql: str, columns: list[str], times: list[str]) -> pd.DataFrame:
    with conn.cursor() as cur:
        cur.execute(sql)
        rows = cur.fetchall()
    conn.commit()
    frame = pd.DataFrame(rows, columns=columns, dtype=object)
    for column in times:
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def read_inputs(conn, as_of: datetime) -> Inputs:
    """The pipeline's tables as they are now; `as_of` = the build time the models were given (dq_as_of)."""
    candles = _frame(
        conn,
        "SELECT exchange, symbol, timeframe, open_time, close, volume, ingested_at FROM staging.ohlcv",
        ["exchange", "symbol", "timeframe", "open_time", "close", "volume", "ingested_at"],
        ["open_time", "ingested_at"],
    )
    anomalies = _frame(
        conn,
        "SELECT exchange, symbol, timeframe, kind, open_time FROM staging.ohlcv_anomalies",
        ["exchange", "symbol", "timeframe", "kind", "open_time"],
        ["open_time"],
    )
    config = _frame(
        conn,
        "SELECT exchange, symbol, timeframe, history_start, history_end, enabled FROM ops.market_config",
        ["exchange", "symbol", "timeframe", "history_start", "history_end", "enabled"],
        ["history_start", "history_end"],
    )
    task_columns = ["task_id", "exchange", "symbol", "timeframe", "window_start", "window_end", "status", "outcome",
                    "attempts", "last_error", "candles_found", "updated_at"]  # fmt: skip
    tasks = _frame(
        conn,
        f"SELECT {', '.join(task_columns)} FROM ops.backfill_tasks",
        task_columns,
        ["window_start", "window_end", "updated_at"],
    )
    return Inputs(candles, anomalies, config, tasks, pd.Timestamp(as_of).tz_convert("UTC"))


# ---------------------------------------------------------------------------------------------
# Time grid


def step_of(timeframe: str) -> pd.Timedelta:
    """ccxt timeframe -> its length ('1m', '15m', '1h', '1d', '1w')."""
    unit = {"m": "min", "h": "h", "d": "D", "w": "W"}[timeframe[-1]]
    return pd.Timedelta(int(timeframe[:-1]), unit=unit)


def _floor(ts: pd.Timestamp, timeframe: str) -> pd.Timestamp:
    origin = MONDAY if timeframe.endswith("w") else EPOCH
    step = step_of(timeframe)
    return origin + ((ts - origin) // step) * step


def _ceil(ts: pd.Timestamp, timeframe: str) -> pd.Timestamp:
    floored = _floor(ts, timeframe)
    return floored if floored == ts else floored + step_of(timeframe)


# ---------------------------------------------------------------------------------------------
# Expected ranges (int_dq_expected_ranges.yml)


def expected_ranges(inputs: Inputs, rules: dict | None = None) -> pd.DataFrame:
    """One row per series configured or with candles: [range_start, range_end)."""
    rules = DEFAULT_RULES | (rules or {})
    keys = ["exchange", "symbol", "timeframe"]
    bounds = inputs.candles.groupby(keys, as_index=False).agg(first=("open_time", "min"), last=("open_time", "max"))
    merged = inputs.config.merge(bounds, on=keys, how="outer", indicator="found_in")
    due = inputs.as_of - pd.Timedelta(minutes=int(rules["dq_expected_delay_minutes"]))
    rows = []
    for r in merged.itertuples(index=False):
        step = step_of(r.timeframe)
        if r.found_in == "right_only":  # candles, no config row: first to last candle
            source, start, end = "observed", r.first, r.last + step
        else:
            source, start = "config", _floor(r.history_start, r.timeframe)
            ends = [_floor(due, r.timeframe)]
            if not pd.isna(r.history_end):
                ends.append(_ceil(r.history_end, r.timeframe))
            if not r.enabled:  # a disabled market: nothing expected after its last candle
                ends.append(r.last + step if not pd.isna(r.last) else start)
            end = max(start, min(ends))
        rows.append((r.exchange, r.symbol, r.timeframe, source, start, end, int((end - start) / step)))
    return pd.DataFrame(rows, columns=RANGE_COLUMNS)


# ---------------------------------------------------------------------------------------------
# Gaps (data_quality_gaps.yml)


def _covers(windows: list[tuple[pd.Timestamp, pd.Timestamp]], start: pd.Timestamp, end: pd.Timestamp) -> bool:
    """Do the union of the half-open windows cover [start, end)?"""
    reached = start
    for w_start, w_end in sorted(windows):
        if w_start > reached:
            break
        reached = max(reached, w_end)
    return reached >= end


def missing_runs(inputs: Inputs, ranges: pd.DataFrame) -> pd.DataFrame:
    """Every expected open time on its grid, the runs of absent ones: exchange, symbol, timeframe,
    gap_start, gap_end, gap_kind."""
    keys = ["exchange", "symbol", "timeframe"]
    grids = []
    for r in ranges[ranges["range_end"] > ranges["range_start"]].itertuples(index=False):
        times = pd.date_range(r.range_start, r.range_end, freq=step_of(r.timeframe), inclusive="left")
        grids.append(pd.DataFrame({"exchange": r.exchange, "symbol": r.symbol, "timeframe": r.timeframe,
                                   "open_time": times, "range_start": r.range_start,
                                   "range_end": r.range_end}))  # fmt: skip
    if not grids:
        return pd.DataFrame(columns=[*keys, "gap_start", "gap_end", "gap_kind"])
    grid = pd.concat(grids, ignore_index=True)
    present = inputs.candles[[*keys, "open_time"]].assign(present=True)
    grid = grid.merge(present, on=[*keys, "open_time"], how="left")
    grid["present"] = grid["present"].fillna(False).astype(bool)
    grid["any_present"] = grid.groupby(keys)["present"].transform("any")
    # a new run starts where presence flips or the series changes
    series_id = grid.groupby(keys, sort=False).ngroup()
    run = ((grid["present"] != grid["present"].shift()) | (series_id != series_id.shift())).cumsum()
    holes = grid[~grid["present"]].groupby(run[~grid["present"]]).agg(
        exchange=("exchange", "first"), symbol=("symbol", "first"), timeframe=("timeframe", "first"),
        gap_start=("open_time", "min"), last_missing=("open_time", "max"), range_start=("range_start", "first"),
        range_end=("range_end", "first"), any_present=("any_present", "first"),
    )  # fmt: skip
    holes["gap_end"] = holes["last_missing"] + pd.to_timedelta(holes["timeframe"].map(step_of))
    holes["gap_kind"] = np.select(
        [~holes["any_present"], holes["gap_start"] == holes["range_start"], holes["gap_end"] == holes["range_end"]],
        ["no_candles", "leading", "trailing"],
        "interior",
    )
    return holes[[*keys, "gap_start", "gap_end", "gap_kind"]].reset_index(drop=True)


def gaps(inputs: Inputs, ranges: pd.DataFrame | None = None) -> list[tuple]:
    """The rows of data_quality_gaps (GAP_COLUMNS), sorted."""
    ranges = expected_ranges(inputs) if ranges is None else ranges
    holes = missing_runs(inputs, ranges)
    keys = ["exchange", "symbol", "timeframe"]
    tasks = inputs.tasks
    out = []
    for g in holes.itertuples(index=False):
        mine = tasks[(tasks["exchange"] == g.exchange) & (tasks["symbol"] == g.symbol)
                     & (tasks["timeframe"] == g.timeframe) & (tasks["window_start"] < g.gap_end)
                     & (tasks["window_end"] > g.gap_start)]  # fmt: skip
        active = mine["status"].isin(["pending", "running"])
        # windows the exchange cannot fill: answered empty, or older than its history depth
        empty = mine[(mine["status"] == "completed")
                     & mine["outcome"].isin(["confirmed_empty", "beyond_exchange_history"])]  # fmt: skip
        if active.any():
            status = "repair_scheduled"
        elif _covers(list(zip(empty["window_start"], empty["window_end"], strict=True)), g.gap_start, g.gap_end):
            beyond = (empty["outcome"] == "beyond_exchange_history").any()
            status = "beyond_exchange_history" if beyond else "confirmed_empty_at_source"
        else:
            status = "open"
        # the task shown: the active one, else the one with exactly the gap's window, else the latest
        ranked = mine.assign(
            active=active, exact=(mine["window_start"] == g.gap_start) & (mine["window_end"] == g.gap_end)
        ).sort_values(["active", "exact", "updated_at", "task_id"], ascending=False)
        task = ranked.iloc[0] if len(ranked) else None
        out.append(_gap_row(g.exchange, g.symbol, g.timeframe, g.gap_start, g.gap_end, g.gap_kind, status, task))
    # completed repairs whose window is no longer inside a gap
    repairs = tasks[(tasks["status"] == "completed") & (tasks["outcome"] == "repaired")]
    for t in repairs.to_dict("records"):
        inside = holes[(holes[keys] == [t["exchange"], t["symbol"], t["timeframe"]]).all(axis=1)
                       & (holes["gap_start"] <= t["window_start"]) & (holes["gap_end"] >= t["window_end"])]  # fmt: skip
        if inside.empty:
            out.append(_gap_row(t["exchange"], t["symbol"], t["timeframe"], t["window_start"], t["window_end"], None,
                                "repaired", t))  # fmt: skip
    return sorted(out, key=lambda row: row[:5])


def _py(value):
    """pandas / numpy scalars -> plain Python values as psycopg2 returns them."""
    if value is None or (not isinstance(value, (str, list, Decimal)) and pd.isna(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    return value


def _gap_row(exchange, symbol, timeframe, start, end, kind, status, task) -> tuple:
    length = end - start
    task_values = (
        [task["task_id"], task["status"], task["outcome"], task["attempts"], task["last_error"], task["candles_found"],
         task["updated_at"]] if task is not None else [None] * 7
    )  # fmt: skip
    return tuple(
        _py(v)
        for v in [exchange, symbol, timeframe, start, end, int(length / step_of(timeframe)), int(length / MINUTE),
                  kind, status, status != "repaired", *task_values]
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Per-candle flags (int_dq_candle_hours_1m.yml)


def _previous_window(values: np.ndarray, n: int) -> np.ndarray:
    """Row i -> values[i-n .. i-1] (NaN before the first value): the previous n candles."""
    padded = np.concatenate([np.full(n, np.nan), values])
    return sliding_window_view(padded, n)[:-1]


def _baseline(values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count, mean and sample stddev of the non-NaN values among each row's previous n candles."""
    windows = _previous_window(values, n)
    count = np.sum(~np.isnan(windows), axis=1)
    # an empty or one-value window has no mean / stddev (NaN): numpy warns, the rules then say False
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(windows, axis=1)
        std = np.nanstd(windows, axis=1, ddof=1)
    return count, mean, std


def _outliers(returns: np.ndarray, baseline_returns: np.ndarray, r: dict) -> np.ndarray:
    """|return| > max(k x stddev of the previous N candles' baseline returns, min return), with at
    least min_n baseline returns."""
    count, _mean, std = _baseline(baseline_returns, int(r["dq_baseline_candles"]))
    threshold = np.maximum(r["dq_spike_k"] * std, r["dq_spike_min_return"])
    with np.errstate(invalid="ignore"):
        return (count >= int(r["dq_min_baseline_candles"])) & (np.abs(returns) > threshold)


def flag_series(times: pd.Series, closes: pd.Series, volumes: pd.Series, rules: dict | None = None) -> pd.DataFrame:
    """One market's 1m candles in time order -> is_price_spike, is_volume_anomaly per candle."""
    r = DEFAULT_RULES | (rules or {})
    close = np.array([float(c) for c in closes], dtype="float64")
    volume = np.array([float(v) for v in volumes], dtype="float64")
    t = times.to_numpy()
    # return to the previous candle, none across a hole longer than the max gap or from a close <= 0
    returns = np.full(len(close), np.nan)
    if len(close) > 1:
        near = (t[1:] - t[:-1]) <= np.timedelta64(int(r["dq_return_max_gap_minutes"]), "m")
        positive = (close[1:] > 0) & (close[:-1] > 0)
        with np.errstate(all="ignore"):
            returns[1:] = np.where(near & positive, np.log(close[1:] / np.where(positive, close[:-1], 1.0)), np.nan)
    # pass 1 on every return, only to keep outliers and the move after each out of pass 2's baseline
    rough = _outliers(returns, returns, r)
    clean = np.where(rough | np.concatenate([[False], rough[:-1]]), np.nan, returns)
    candidate = _outliers(returns, clean, r)
    # a candidate right after an opposite-signed candidate is the reversion of the same event
    prev_candidate = np.concatenate([[False], candidate[:-1]])
    prev_return = np.concatenate([[np.nan], returns[:-1]])
    with np.errstate(invalid="ignore"):
        reversion = prev_candidate & (np.sign(returns) != np.sign(prev_return))
    spike = candidate & ~reversion
    # volume: ln(volume) against the mean and stddev of ln(volume) of the previous N candles with volume > 0
    with np.errstate(divide="ignore"):
        log_volume = np.where(volume > 0, np.log(np.where(volume > 0, volume, 1.0)), np.nan)
    count, mean, std = _baseline(log_volume, int(r["dq_baseline_candles"]))
    threshold = np.maximum(r["dq_volume_z"] * std, np.log(r["dq_volume_min_ratio"]))
    with np.errstate(invalid="ignore"):
        anomaly = (count >= int(r["dq_min_baseline_candles"])) & (log_volume - mean > threshold)
    return pd.DataFrame({"is_price_spike": spike, "is_volume_anomaly": anomaly}, index=times.index)


def minute_candles(inputs: Inputs, rules: dict | None = None) -> pd.DataFrame:
    """The 1m candles with their flags and hour, sorted by market and time."""
    minutes = inputs.candles[inputs.candles["timeframe"] == "1m"].sort_values(
        ["exchange", "symbol", "open_time"], ignore_index=True
    )
    flags = [
        flag_series(market["open_time"], market["close"], market["volume"], rules)
        for _key, market in minutes.groupby(["exchange", "symbol"], sort=False)
    ]
    minutes = minutes.join(pd.concat(flags)) if flags else minutes.assign(is_price_spike=False, is_volume_anomaly=False)
    minutes["period_start"] = minutes["open_time"].dt.floor("h")
    return minutes


def _bps(close: Decimal, other: Decimal) -> Decimal:
    return abs(close - other) / ((close + other) / 2) * 10_000


def divergence_by_hour(minutes: pd.DataFrame) -> pd.Series:
    """(exchange, symbol, period_start) -> max bps over the hour's minutes to any other exchange's close
    of the same minute, 4 decimals; hours without a shared minute are absent."""
    closes = minutes[["exchange", "symbol", "open_time", "period_start", "close"]]
    pairs = closes.merge(closes, on=["symbol", "open_time"], suffixes=("", "_other"))
    pairs = pairs[pairs["exchange"] != pairs["exchange_other"]]
    if pairs.empty:
        return pd.Series(dtype=object)
    pairs = pairs.assign(bps=[_bps(a, b) for a, b in zip(pairs["close"], pairs["close_other"], strict=True)])
    worst = pairs.groupby(["exchange", "symbol", "period_start"])["bps"].agg(lambda s: max(s))
    return worst.map(lambda v: v.quantize(Decimal("0.0001"), ROUND_HALF_UP))


def candle_hours(inputs: Inputs, minutes: pd.DataFrame | None = None) -> list[tuple]:
    """The rows of int_dq_candle_hours_1m (CANDLE_HOUR_COLUMNS), sorted."""
    minutes = minute_candles(inputs) if minutes is None else minutes
    divergence = divergence_by_hour(minutes)
    out = []
    for (exchange, symbol, hour), candles in minutes.groupby(["exchange", "symbol", "period_start"], sort=True):
        spikes = [_py(t) for t in candles.loc[candles["is_price_spike"], "open_time"]]
        bursts = [_py(t) for t in candles.loc[candles["is_volume_anomaly"], "open_time"]]
        out.append((exchange, symbol, _py(hour), len(candles), len(spikes), len(bursts), spikes, bursts,
                    divergence.get((exchange, symbol, hour)), _py(candles["ingested_at"].max())))  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------
# Hourly counts, summary and score (int_dq_hourly_1m.yml, data_quality_summary.yml)


def _in_range(frame: pd.DataFrame, ranges: pd.DataFrame) -> pd.DataFrame:
    merged = frame.merge(ranges[["exchange", "symbol", "range_start", "range_end"]], on=["exchange", "symbol"])
    return merged[(merged["open_time"] >= merged["range_start"]) & (merged["open_time"] < merged["range_end"])]


def hourly(inputs: Inputs, minutes: pd.DataFrame | None = None, ranges: pd.DataFrame | None = None) -> pd.DataFrame:
    """The rows of int_dq_hourly_1m as a frame (HOURLY_COLUMNS)."""
    minutes = minute_candles(inputs) if minutes is None else minutes
    ranges = expected_ranges(inputs) if ranges is None else ranges
    ranges = ranges[(ranges["timeframe"] == "1m") & (ranges["range_end"] > ranges["range_start"])]
    keys = ["exchange", "symbol", "period_start"]
    # every hour that overlaps a range; expected = its minutes inside the range
    periods = []
    for r in ranges.itertuples(index=False):
        hours = pd.Series(pd.date_range(r.range_start.floor("h"), r.range_end - MINUTE, freq="h"))
        expected = ((hours + HOUR).clip(upper=r.range_end) - hours.clip(lower=r.range_start)) // MINUTE
        periods.append(pd.DataFrame({"exchange": r.exchange, "symbol": r.symbol, "period_start": hours,
                                     "expected": expected.astype("int64")}))  # fmt: skip
    if not periods:
        return pd.DataFrame(columns=HOURLY_COLUMNS)
    frame = pd.concat(periods, ignore_index=True)
    inside = _in_range(minutes, ranges)
    counts = inside.groupby(keys).agg(
        present=("open_time", "size"), price_spikes=("is_price_spike", "sum"),
        volume_anomalies=("is_volume_anomaly", "sum"),
    )  # fmt: skip
    # loader anomalies: distinct minutes per kind (a minute seen in three payloads counts once)
    anomalies = _in_range(inputs.anomalies[inputs.anomalies["timeframe"] == "1m"], ranges)
    anomalies = anomalies[anomalies["kind"].isin(list(ANOMALY_COLUMNS))].drop_duplicates(
        ["exchange", "symbol", "kind", "open_time"]
    )
    for kind, column in ANOMALY_COLUMNS.items():
        of_kind = anomalies[anomalies["kind"] == kind]
        per_hour = of_kind.groupby([of_kind["exchange"], of_kind["symbol"], of_kind["open_time"].dt.floor("h")]).size()
        frame[column] = [per_hour.get(k, 0) for k in zip(*(frame[c] for c in keys), strict=True)]
    frame = frame.join(counts, on=keys)
    count_columns = ["present", "price_spikes", "volume_anomalies", *ANOMALY_COLUMNS.values()]
    frame[count_columns] = frame[count_columns].fillna(0).astype("int64")
    frame["missing"] = frame["expected"] - frame["present"]
    # the divergence is the whole hour's (also minutes outside a range the hour straddles)
    divergence = divergence_by_hour(minutes)
    frame["cross_exchange_divergence_bps"] = [divergence.get(k) for k in zip(*(frame[c] for c in keys), strict=True)]
    frame["timeframe"] = "1m"
    frame["period_end"] = frame["period_start"] + HOUR
    return frame[HOURLY_COLUMNS]


def quality_score(counts: dict) -> Decimal:
    """round(100 * greatest(0, present - weighted flags) / expected, 2) (data_quality_summary.yml)."""
    penalty = sum((weight * counts[column] for column, weight in WEIGHTS.items()), Decimal(0))
    share = Decimal(100) * max(Decimal(0), counts["present"] - penalty) / counts["expected"]
    return share.quantize(Decimal("0.01"), ROUND_HALF_UP)


def summary(hours: pd.DataFrame) -> list[tuple]:
    """The rows of data_quality_summary (SUMMARY_COLUMNS): the hours and their UTC days, scored."""
    days = hours.assign(period_start=hours["period_start"].dt.floor("D"))
    sums = days.groupby(["exchange", "symbol", "timeframe", "period_start"], as_index=False)[COUNT_COLUMNS].sum()
    worst = days.groupby(["exchange", "symbol", "timeframe", "period_start"])["cross_exchange_divergence_bps"].agg(
        lambda s: max((v for v in s if v is not None), default=None)
    )
    sums["cross_exchange_divergence_bps"] = [worst.loc[tuple(k)] for k in sums[["exchange", "symbol", "timeframe",
                                                                               "period_start"]].to_numpy()]  # fmt: skip
    sums["period_end"] = sums["period_start"] + pd.Timedelta(days=1)
    out = []
    for grain, frame in (("hour", hours), ("day", sums)):
        for row in frame.to_dict("records"):
            counts = {c: int(row[c]) for c in COUNT_COLUMNS}
            out.append((row["exchange"], row["symbol"], row["timeframe"], grain, _py(row["period_start"]),
                        _py(row["period_end"]), *counts.values(), _py(row["cross_exchange_divergence_bps"]),
                        quality_score(counts)))  # fmt: skip
    return sorted(out, key=lambda row: row[:5])


def flagged_candles(
    inputs: Inputs, minutes: pd.DataFrame | None = None, ranges: pd.DataFrame | None = None
) -> list[tuple]:
    """The rows of data_quality_flagged_candles (FLAGGED_COLUMNS): every candle a summary count holds."""
    minutes = minute_candles(inputs) if minutes is None else minutes
    ranges = expected_ranges(inputs) if ranges is None else ranges
    ranges = ranges[ranges["timeframe"] == "1m"]
    keys = ["exchange", "symbol", "open_time"]
    flags = minutes.loc[minutes["is_price_spike"] | minutes["is_volume_anomaly"], [*keys, "is_price_spike",
                                                                                    "is_volume_anomaly"]]  # fmt: skip
    loader = inputs.anomalies[inputs.anomalies["timeframe"] == "1m"]
    kinds = loader[keys].drop_duplicates()
    for kind, column in (("duplicate_conflict", "is_duplicate"), ("revised", "is_correction"),
                         ("out_of_order", "is_out_of_order")):  # fmt: skip
        of_kind = loader.loc[loader["kind"] == kind, keys].drop_duplicates().assign(**{column: True})
        kinds = kinds.merge(of_kind, on=keys, how="left")
    both = _in_range(flags.merge(kinds, on=keys, how="outer"), ranges)
    bool_columns = ["is_price_spike", "is_volume_anomaly", "is_duplicate", "is_correction", "is_out_of_order"]
    # absent = False; a row with no flag at all (an identical duplicate only) is not a flagged candle
    both = both.assign(**{c: both[c].eq(True) for c in bool_columns})
    both = both[both[bool_columns].any(axis=1)]
    staged = minutes[[*keys, "close", "volume"]]
    both = both.merge(staged, on=keys, how="left")
    return sorted(
        (r["exchange"], r["symbol"], "1m", _py(r["open_time"]), _py(r["open_time"].floor("h")),
         *(bool(r[c]) for c in bool_columns), _py(r["close"]), _py(r["volume"]))
        for r in both.to_dict("records")
    )  # fmt: skip


def range_rows(ranges: pd.DataFrame) -> list[tuple]:
    return sorted(tuple(_py(v) for v in row) for row in ranges[RANGE_COLUMNS].itertuples(index=False))


@dataclass
class Expected:
    """Every data-quality relation as the oracle expects it, rows sorted like `actual()` sorts them."""

    ranges: list[tuple]
    gaps: list[tuple]
    candle_hours: list[tuple]
    hourly: list[tuple]
    summary: list[tuple]
    flagged: list[tuple]


def expected(inputs: Inputs, rules: dict | None = None) -> Expected:
    ranges = expected_ranges(inputs, rules)
    minutes = minute_candles(inputs, rules)
    hours = hourly(inputs, minutes, ranges)
    return Expected(
        ranges=range_rows(ranges),
        gaps=gaps(inputs, ranges),
        candle_hours=candle_hours(inputs, minutes),
        hourly=sorted(tuple(_py(v) for v in row) for row in hours.itertuples(index=False)),
        summary=summary(hours),
        flagged=flagged_candles(inputs, minutes, ranges),
    )
