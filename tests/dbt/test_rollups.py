"""The candle rollups (marts.ohlcv_5m ... ohlcv_1w) on the real sample candles: equal, value for
value and Decimal-exact, to an independent pandas resample of the SOURCE FILES; late and corrected
minutes update their bucket incrementally; incremental == full refresh."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import ohlcv_reference as ref
from support.dbt_helpers import Candle, DbtRunner
from support.sample import sample_candles as read_sample_files

# the indicator columns on a rollup's row, after its candle columns (indicators_<tf> is a view of them)
ROLLUP_INDICATOR_COLUMNS = ["candle_index", "inputs_complete", "sma_20", "sma_50", "sma_200", "ema_12", "ema_26",
                            "ema_50", "rsi_14", "macd_line", "macd_signal", "rsi_avg_gain_14", "rsi_avg_loss_14",
                            "macd_fast_ema"]
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


# Holes and a missing quote_volume, so that incomplete buckets, a missing 15m bucket and the
# "NULL when any minute lacks it" rule are all exercised by the real data.
REMOVED = {
    ("binance", datetime(2022, 8, 14, 0, 2, tzinfo=UTC)),  # 5m/1h/1d/1w bucket with a hole
    *(("binance", datetime(2022, 8, 15, 10, m, tzinfo=UTC)) for m in range(15)),  # a whole 15m bucket
    ("okx", datetime(2025, 11, 24, 23, 59, tzinfo=UTC)),  # last minute of a UTC day
}
NO_QUOTE_VOLUME = {("okx", datetime(2025, 11, 24, 12, 7, tzinfo=UTC))}


def _staged(candles: list[Candle]) -> list[Candle]:
    """The sample as loaded: without REMOVED, quote_volume blanked for NO_QUOTE_VOLUME."""
    return [
        replace(c, quote_volume=None) if (c.exchange, c.open_time) in NO_QUOTE_VOLUME else c
        for c in candles
        if (c.exchange, c.open_time) not in REMOVED
    ]


def _files(removed=REMOVED, corrections=None) -> ref.Minutes:
    """The same candles read from the files by tests/support/sample.py, same edits applied."""
    markets = read_sample_files()
    for (exchange, _symbol), candles in markets.items():
        for ex, moment in removed:
            if ex == exchange:
                candles.pop(_ms(moment), None)
        for ex, moment in NO_QUOTE_VOLUME:
            if ex == exchange and _ms(moment) in candles:
                values = list(candles[_ms(moment)])
                values[5] = None
                candles[_ms(moment)] = tuple(values)
        for (ex, moment), values in (corrections or {}).items():
            if ex == exchange:
                candles[_ms(moment)] = values
    return markets


def test_rollups_equal_a_pandas_resample_of_the_files(dbt: DbtRunner, pg_conn, sample_candles) -> None:
    conn = pg_conn
    # UTC buckets whatever the session time zone: dbt's sessions run in UTC+05:45 here
    with conn.cursor() as cur:
        cur.execute("select current_database()")
        (database,) = cur.fetchone()
        cur.execute(f"alter database \"{database}\" set timezone = 'Asia/Kathmandu'")
    conn.commit()
    ref.load_minutes(conn, _staged(sample_candles), "sample", T0)

    result = dbt("build", *ref.DBT_SELECT)  # models, data tests and unit tests
    print(f"\ndbt build (rollups + indicators and upstream, 5,744 candles, fresh database): {result.seconds:.1f} s")

    for table in ref.ROLLUPS:
        columns = [
            r[0]
            for r in ref.fetch(
                conn,
                "select column_name from information_schema.columns"
                " where table_schema = 'marts' and table_name = %s order by ordinal_position",
                (table,),
            )
        ]
        # the candle columns first, as analysts read them, then the indicators (indicators_<tf> a view of them)
        assert columns == ref.ROLLUP_COLUMNS + ROLLUP_INDICATOR_COLUMNS, table

    minutes = ref.minutes_frame(_files(), default_ingested_at=T0)
    counts = ref.assert_rollups_match(conn, minutes)
    assert counts == {"5m": 1149, "15m": 383, "1h": 96, "1d": 5, "1w": 4}

    # spot checks of what the comparison covered
    rows_5m = ref.rollup_table(conn, "5m")
    hole = rows_5m[("binance", "ETH/USDT", datetime(2022, 8, 14, tzinfo=UTC))]
    assert hole[8:11] == (4, False, True)  # candle_count, is_complete, is_closed: a gap, not a forming bucket
    assert ("binance", "ETH/USDT", datetime(2022, 8, 15, 10, 5, tzinfo=UTC)) not in rows_5m
    no_quote = rows_5m[("okx", "BTC/USDT", datetime(2025, 11, 24, 12, 5, tzinfo=UTC))]
    # quote_volume NULL, and how many minutes lack it; the bucket is still complete
    assert (no_quote[5], no_quote[8], no_quote[11]) == (None, 5, 1)
    ((day_missing,),) = ref.fetch(
        conn, "select quote_volume_missing_minutes from marts.ohlcv_1d where exchange = 'okx'"
        " and open_time = '2025-11-24T00:00Z'"
    )
    assert day_missing == 1
    weeks = {(*k[:2], k[2].date().isoformat()): v[8] for k, v in ref.rollup_table(conn, "1w").items()}
    # 2022-08-14 and 2025-11-23 are Sundays: the next day starts a new (Monday) week
    assert weeks == {
        ("binance", "ETH/USDT", "2022-08-08"): 1439,
        ("binance", "ETH/USDT", "2022-08-15"): 1425,
        ("okx", "BTC/USDT", "2025-11-17"): 480,
        ("okx", "BTC/USDT", "2025-11-24"): 2399,
    }
    days = {k[2]: v[8:10] for k, v in ref.rollup_table(conn, "1d").items() if k[0] == "okx"}
    assert days == {
        datetime(2025, 11, 23, tzinfo=UTC): (480, False),
        datetime(2025, 11, 24, tzinfo=UTC): (1439, False),
        datetime(2025, 11, 25, tzinfo=UTC): (960, False),
    }


def _row_texts(conn, table: str) -> dict[tuple, str]:
    """(exchange, symbol, open_time) -> the whole row (candle and indicators) as text."""
    return {r[:3]: r[3] for r in ref.fetch(conn, f"select exchange, symbol, open_time, t::text from marts.{table} t")}


def test_late_and_corrected_minutes_update_their_buckets(dbt: DbtRunner, pg_conn, sample_candles) -> None:
    conn = pg_conn
    late_minute = datetime(2022, 8, 14, 0, 2, tzinfo=UTC)  # the hole of the first test
    corrected = datetime(2025, 11, 24, 12, 7, tzinfo=UTC)  # middle of a 5m bucket, a day, a week
    new_minutes = [datetime(2022, 8, 15, 10, m, tzinfo=UTC) for m in range(15)]  # backfill of a 15m hole
    newest = datetime(2025, 11, 23, 16, tzinfo=UTC)  # the minute with the newest ingested_at
    # everything was loaded a day before the newest minute: outside the 60 minute lookback
    t_old = T0 - timedelta(days=1)
    ref.load_minutes(conn, _staged(sample_candles), "first", t_old)
    with conn.cursor() as cur:
        cur.execute("update staging.ohlcv set ingested_at = %s where exchange = 'okx' and open_time = %s", (T0, newest))
    conn.commit()
    full_first = dbt("run", *ref.DBT_SELECT)
    versions_before = {t: ref.row_versions(conn, t) for t in ref.ROLLUPS}
    candles_before = {t: ref.rollup_table(conn, t.split("_")[1]) for t in ref.ROLLUPS}
    rows_before = {t: _row_texts(conn, t) for t in ref.ROLLUPS}
    day_before = candles_before["ohlcv_1d"]

    t_late = T0 - timedelta(minutes=10)  # a load that committed late: stamped before the watermark
    t_fix = datetime.now(UTC)
    by_key = {(c.exchange, c.open_time): c for c in sample_candles}
    ref.load_minutes(conn, [by_key[("binance", late_minute)]], "late", t_late)
    ref.load_minutes(conn, [by_key[("binance", m)] for m in new_minutes], "backfill", t_fix)
    with conn.cursor() as cur:
        # the exchange corrected a candle: close moved to the high, volume changed
        cur.execute(
            "update staging.ohlcv set close = high, volume = volume + 1.5, raw_payload_id = 'fix',"
            " run_id = 'fix', ingested_at = %s where exchange = 'okx' and open_time = %s",
            (t_fix, corrected),
        )
    conn.commit()
    incremental = dbt("run", *ref.DBT_SELECT)
    print(
        f"\ndbt run, fresh database: {full_first.seconds:.1f} s;"
        f" incremental run (1 late, 15 backfilled, 1 corrected minute): {incremental.seconds:.1f} s"
    )

    # expected: the files with the same edits, stamped like the loads
    files = _files(removed={k for k in REMOVED if k[0] != "binance"})
    okx = files[("okx", "BTC/USDT")]
    o, h, lo, _c, v, qv, tr = okx[_ms(corrected)]
    okx[_ms(corrected)] = (o, h, lo, h, v + Decimal("1.5"), qv, tr)
    stamps = {("okx", "BTC/USDT", _ms(newest)): T0, ("binance", "ETH/USDT", _ms(late_minute)): t_late}
    stamps |= {("binance", "ETH/USDT", _ms(m)): t_fix for m in new_minutes}
    stamps[("okx", "BTC/USDT", _ms(corrected))] = t_fix
    minutes = ref.minutes_frame(files, stamps, default_ingested_at=t_old)
    ref.assert_rollups_match(conn, minutes)

    rows_5m = ref.rollup_table(conn, "5m")
    assert rows_5m[("binance", "ETH/USDT", datetime(2022, 8, 14, tzinfo=UTC))][8:10] == (5, True)
    # the corrected minute's day was recomputed from all its 1439 minutes, not just the new one
    day = ("okx", "BTC/USDT", datetime(2025, 11, 24, tzinfo=UTC))
    assert ref.rollup_table(conn, "1d")[day][4] == day_before[day][4] + Decimal("1.5")  # volume
    assert ref.rollup_table(conn, "1d")[day][8] == 1439

    # only the touched buckets changed their candle; the rows rewritten are exactly those whose values
    # changed: the touched buckets and the later rows of their markets whose indicators moved with them
    touched = {
        "ohlcv_5m": {("binance", "2022-08-14 00:00"), ("okx", "2025-11-24 12:05")}
        | {("binance", f"2022-08-15 10:{m:02d}") for m in (0, 5, 10)},
        "ohlcv_15m": {("binance", "2022-08-14 00:00"), ("okx", "2025-11-24 12:00"), ("binance", "2022-08-15 10:00")},
        "ohlcv_1h": {("binance", "2022-08-14 00:00"), ("okx", "2025-11-24 12:00"), ("binance", "2022-08-15 10:00")},
        "ohlcv_1d": {("binance", "2022-08-14 00:00"), ("okx", "2025-11-24 00:00"), ("binance", "2022-08-15 00:00")},
        "ohlcv_1w": {("binance", "2022-08-08 00:00"), ("okx", "2025-11-24 00:00"), ("binance", "2022-08-15 00:00")},
    }
    for table in ref.ROLLUPS:
        after = ref.row_versions(conn, table)
        rewritten = {
            (k[0], f"{k[2]:%Y-%m-%d %H:%M}") for k, xmin in after.items() if versions_before[table].get(k) != xmin
        }
        fmt = {(k[0], f"{k[2]:%Y-%m-%d %H:%M}"): k for k in after}
        candles_after = ref.rollup_table(conn, table.split("_")[1])
        assert {b for b, k in fmt.items() if candles_before[table].get(k) != candles_after[k]} == touched[table], table
        rows_after = _row_texts(conn, table)
        changed = {b for b, k in fmt.items() if rows_before[table].get(k) != rows_after[k]}
        assert rewritten == changed, table
        assert rewritten >= touched[table], table

    # incremental == full refresh, for every rollup
    incremental_sums = ref.table_checksums(conn, ref.ROLLUPS)
    dbt("run", "--full-refresh", *ref.DBT_SELECT)
    assert ref.table_checksums(conn, ref.ROLLUPS) == incremental_sums
    assert incremental_sums["ohlcv_5m"][0] == 1152


def test_forming_buckets_close_on_a_later_build(dbt: DbtRunner, pg_conn, sample_candles) -> None:
    """is_closed apart from is_complete: OKX loaded up to 12:06 and built as of 12:07:30, then
    built again as of 12:10:30 with no new minute. The buckets still forming are open and
    incomplete; the 12:05 bucket closes with its last three minutes missing (closed, incomplete: a
    gap), and only the rows whose flags changed are rewritten (the rollup row, with its
    indicators). Then incremental == full refresh as of the same instant."""
    conn = pg_conn
    cut = datetime(2025, 11, 24, 12, 7, tzinfo=UTC)
    ref.load_minutes(conn, [c for c in sample_candles if c.exchange == "okx" and c.open_time < cut], "okx", T0)
    as_of = {"dq_as_of": "2025-11-24T12:07:30Z"}
    dbt("run", *ref.DBT_SELECT, "--vars", json.dumps(as_of))

    forming = {
        "5m": datetime(2025, 11, 24, 12, 5, tzinfo=UTC),
        "15m": datetime(2025, 11, 24, 12, tzinfo=UTC),
        "1h": datetime(2025, 11, 24, 12, tzinfo=UTC),
        "1d": datetime(2025, 11, 24, tzinfo=UTC),
        "1w": datetime(2025, 11, 24, tzinfo=UTC),  # a Monday
    }

    def flags(timeframe: str) -> dict[datetime, tuple[bool, bool]]:
        rows = ref.fetch(conn, f"select open_time, is_complete, is_closed from marts.ohlcv_{timeframe}")
        return {t: (complete, closed) for t, complete, closed in rows}

    def indicator_flags(timeframe: str) -> dict[datetime, tuple[bool, bool]]:
        rows = ref.fetch(conn, f"select open_time, is_closed, inputs_complete from marts.indicators_{timeframe}")
        return {t: (closed, complete) for t, closed, complete in rows}

    for timeframe, bucket in forming.items():
        got = flags(timeframe)
        assert got[bucket] == (False, False), timeframe  # forming: not over, not complete
        assert all(closed for t, (_c, closed) in got.items() if t != bucket), timeframe
        assert max(got) == bucket
        assert indicator_flags(timeframe)[bucket] == (False, False), timeframe
    last_minute = indicator_flags("1m")[cut - timedelta(minutes=1)]
    assert last_minute == (True, True)  # closed minutes, none missing in the window

    # (the indicators are on the rollup rows: indicators_5m, indicators_15m are views of them)
    versions = {t: ref.row_versions(conn, t) for t in ("ohlcv_5m", "ohlcv_15m")}
    as_of = {"dq_as_of": "2025-11-24T12:10:30Z"}
    dbt("run", *ref.DBT_SELECT, "--vars", json.dumps(as_of))
    # no new minute: the 12:05 bucket closed with 12:07-12:09 missing, the 15m bucket still forms
    assert flags("5m")[forming["5m"]] == (False, True)
    assert indicator_flags("5m")[forming["5m"]] == (True, False)
    assert flags("15m")[forming["15m"]] == (False, False)
    for table, before in versions.items():
        after = ref.row_versions(conn, table)
        rewritten = {k[2] for k, xmin in after.items() if before.get(k) != xmin}
        assert rewritten == ({forming["5m"]} if table.endswith("_5m") else set()), table

    tables = ref.ROLLUPS + ref.INDICATOR_MODELS
    incremental = ref.table_checksums(conn, tables)
    dbt("run", "--full-refresh", *ref.DBT_SELECT, "--vars", json.dumps(as_of))
    assert ref.table_checksums(conn, tables) == incremental


def test_a_table_from_before_the_flags_asks_for_a_full_refresh(dbt: DbtRunner, pg_conn, sample_candles) -> None:
    """An upgrade adds columns to incremental tables (on_schema_change: fail): the run names the
    table and the one command that fixes it, and that command works."""
    ref.load_minutes(pg_conn, [c for c in sample_candles if c.exchange == "okx"], "okx", T0)
    dbt("run", *ref.DBT_SELECT)
    with pg_conn.cursor() as cur:
        # as built by the release before the flags (indicators_1h, now a view of ohlcv_1h, dropped with it)
        cur.execute("alter table marts.ohlcv_1h drop column is_closed cascade")
    pg_conn.commit()
    failed = dbt("run", "--select", "ohlcv_1h", expect_success=False)
    assert "was built before it had the columns is_closed" in failed.output, failed.output
    assert "dbt build --full-refresh -s ohlcv_1h+" in failed.output, failed.output
    dbt("build", "--full-refresh", "-s", "ohlcv_1h+", "--indirect-selection", "cautious")
    assert ref.fetch(pg_conn, "select count(*) filter (where is_closed) from marts.ohlcv_1h") == [(48,)]


def test_rollups_from_before_their_indicators_ask_for_their_rebuild(dbt: DbtRunner, pg_conn, sample_candles) -> None:
    """The release that put the indicators on the rollup rows: an install whose rollups are the
    earlier layout (ohlcv_<tf> without the indicator columns, indicators_<tf> a table of them) stops
    its next incremental run naming the table and the commands that fix it, and both work: the
    full refresh, and the in-place move (for installs whose retention dropped 1m months, which a
    full refresh of the rollups would lose). Either way indicators_<tf> is the view again with the
    values the table had, and the next incremental run continues from them as a full build would."""
    ref.load_minutes(pg_conn, [c for c in sample_candles if c.exchange == "okx"], "okx", T0)
    dbt("run", *ref.DBT_SELECT)
    tables = ["ohlcv_15m", "ohlcv_1h", "indicators_15m", "indicators_1h"]
    before = ref.table_checksums(pg_conn, tables)

    def earlier_layout(*timeframes: str) -> None:
        with pg_conn.cursor() as cur:
            for tf in timeframes:
                cur.execute(f"create table marts.indicators_{tf}_old as select * from marts.indicators_{tf}")
                cur.execute(f"drop view marts.indicators_{tf}")
                cur.execute(f"alter table marts.indicators_{tf}_old rename to indicators_{tf}")
                cur.execute(f"alter table marts.ohlcv_{tf} "
                            + ", ".join(f"drop column {c}" for c in ROLLUP_INDICATOR_COLUMNS))
        pg_conn.commit()

    earlier_layout("15m", "1h")
    failed = dbt("run", "--select", "ohlcv_15m", expect_success=False)
    assert '"ohlcv_15m" was built before it had the columns candle_index, inputs_complete, macd_fast_ema' in (
        failed.output), failed.output
    assert "dbt build --full-refresh -s ohlcv_5m+" in failed.output, failed.output
    assert "dbt run-operation move_rollup_indicators_onto_rows" in failed.output, failed.output

    # in place: the rows keep their values, the next build only makes the views
    dbt("run-operation", "move_rollup_indicators_onto_rows")
    dbt("run-operation", "move_rollup_indicators_onto_rows")  # again: nothing left to move
    dbt("run", "-s", "ohlcv_5m+")
    for tf in ("15m", "1h"):
        assert ref.fetch(pg_conn, f"select relkind::text from pg_class where oid = 'marts.indicators_{tf}'::regclass"
                         ) == [("v",)]
    assert ref.table_checksums(pg_conn, tables) == before

    earlier_layout("15m")
    dbt("build", "--full-refresh", "-s", "ohlcv_5m+", "--indirect-selection", "cautious")
    assert ref.table_checksums(pg_conn, tables) == before


def _statistics(conn, table: str) -> tuple[str | None, float]:
    """What the last ANALYZE of marts.<table> recorded: the exchanges it saw (pg_stats), its row count."""
    ((exchanges,),) = ref.fetch(conn, "select most_common_vals::text from pg_stats where schemaname = 'marts'"
                                      " and tablename = %s and attname = 'exchange'", (table,))
    ((reltuples,),) = ref.fetch(conn, "select reltuples from pg_class where oid = %s::regclass", (f"marts.{table}",))
    return exchanges, reltuples


def test_incremental_runs_analyze_a_rollup_only_after_a_large_change(dbt: DbtRunner, pg_conn, sample_candles) -> None:
    """The incremental models' post-hook (macro analyze_when_changed) re-samples the table only
    when its row count moved by more than 10 % since the last ANALYZE, counting the run's own
    merge: an ANALYZE after every hourly run read every page of a rollup up to 30,000 (its cost
    grew with history, bench figure 9). A full build is analyzed; 15 minutes of a second market
    (3 new buckets of 579) leave the statistics as they were; the rest of that market (twice the
    rows) is analyzed by the run that merged it. Autovacuum is off for the table, so only the
    post-hook can have analyzed it."""
    conn = pg_conn
    select = ("--select", "+ohlcv_5m")
    okx = sorted((c for c in sample_candles if c.exchange == "okx"), key=lambda c: c.open_time)
    ref.load_minutes(conn, [c for c in sample_candles if c.exchange == "binance"], "binance", T0)
    dbt("run", *select)
    with conn.cursor() as cur:
        cur.execute("alter table marts.ohlcv_5m set (autovacuum_enabled = false)")
    conn.commit()
    assert _statistics(conn, "ohlcv_5m") == ("{binance}", 576), "the first build analyzes the table"

    ref.load_minutes(conn, okx[:15], "okx_first", datetime.now(UTC))
    dbt("run", *select)
    assert ref.fetch(conn, "select exchange, count(*) from marts.ohlcv_5m group by 1 order by 1") == [
        ("binance", 576), ("okx", 3)]
    assert _statistics(conn, "ohlcv_5m") == ("{binance}", 576), "3 new rows of 579: not analyzed"

    ref.load_minutes(conn, okx[15:], "okx_rest", datetime.now(UTC))
    dbt("run", *select)
    assert ref.fetch(conn, "select count(*) from marts.ohlcv_5m") == [(1152,)]
    assert _statistics(conn, "ohlcv_5m") == ("{binance,okx}", 1152), "twice the rows: analyzed in the same run"
