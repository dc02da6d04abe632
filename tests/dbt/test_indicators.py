"""The indicator marts (marts.indicators_1m ... indicators_1w) on the real sample candles: every
value against TA-Lib (the `ta-lib` wheel's bundled C library) on the candle closes of the SOURCE
FILES, the flags against a brute-force check, and incremental runs equal to a full rebuild bit
for bit.

Tolerance for the comparison with TA-Lib: |actual - expected| <= 1e-9 * max(1, |expected|)
(relative; absolute for values below 1, e.g. a MACD histogram crossing zero). The SQL sums the
SMA windows and the EMA seeds exactly in numeric, TA-Lib in double as it goes, so last-bit
differences are expected; any convention difference (seed, warm-up row, flat RSI) is orders of
magnitude larger. The Wilder averages behind RSI, which TA-Lib keeps internal, are checked against
pandas' ewm.

Incremental vs full rebuild: no tolerance. Both must be identical to the last bit (checksums of
the rows' text, double precision printing shortest-exact, and max |difference| = 0).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import ohlcv_reference as ref
from support.dbt_helpers import Candle, DbtRunner
from support.sample import sample_candles as read_sample_files

REL_TOLERANCE = 1e-9
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def test_indicators_equal_an_independent_computation(dbt: DbtRunner, loaded_warehouse) -> None:
    conn = loaded_warehouse
    result = dbt("run", *ref.DBT_SELECT)
    print(f"\ndbt run (candles, rollups, indicators; 5,760 candles, fresh database): {result.seconds:.1f} s")
    ((loaded_at,),) = ref.fetch(conn, "select max(ingested_at) from staging.ohlcv")
    minutes = ref.minutes_frame(read_sample_files(), default_ingested_at=loaded_at)

    for model in ref.INDICATOR_MODELS:
        columns = [
            r[0]
            for r in ref.fetch(
                conn,
                "select column_name from information_schema.columns"
                " where table_schema = 'marts' and table_name = %s order by ordinal_position",
                (model,),
            )
        ]
        assert columns == ref.INDICATOR_COLUMNS, model

    worst = ref.assert_indicators_match(conn, minutes, REL_TOLERANCE)
    print("largest relative difference to TA-Lib per column:", {k: f"{v:.1e}" for k, v in worst.items()})
    counts = {m: n for m, (n, _) in ref.table_checksums(conn, ref.INDICATOR_MODELS).items()}
    assert counts == {
        "indicators_1m": 5760,
        "indicators_5m": 1152,
        "indicators_15m": 384,
        "indicators_1h": 96,
        "indicators_1d": 5,
        "indicators_1w": 4,
    }
    # every indicator has values on the sample (not only NULL warm-up rows) in 1m .. 1h
    ((non_null,),) = ref.fetch(
        conn,
        "select count(*) from marts.indicators_1h where sma_20 is not null and rsi_14 is not null"
        " and macd_signal is not null",
    )
    assert non_null == 2 * (48 - 33)


def test_rsi_of_a_market_that_only_rises_is_100(dbt: DbtRunner, pg_conn) -> None:
    """No losses: TA-Lib's RSI is 100 exactly (it takes gain / (gain + loss), then * 100). The
    mart computed 100 * gain / (gain + loss), which for some gains is 100.00000000000001 and failed
    the indicator_conventions test (rsi_14 outside 0..100) on a rising synthetic market (bench 9's
    generator). Closes rising by 0.01..0.19, 40 minutes; the oracle is the ta-lib wheel."""
    import numpy as np
    import talib

    closes = [f"{26.34 + 0.01 * sum(1 + (k * 7) % 19 for k in range(i)):.8f}" for i in range(40)]
    t0 = datetime(2024, 3, 1, tzinfo=UTC)
    candles = [Candle("binance", "UP/USDT", t0 + timedelta(minutes=i), c, c, c, c, "1", None, None, "synthetic")
               for i, c in enumerate(closes)]
    ref.load_minutes(pg_conn, candles, "rising", T0)
    dbt("run", "--select", "+indicators_1m")
    got = [r[0] for r in ref.fetch(pg_conn, "select rsi_14 from marts.indicators_1m order by open_time")]
    expected = talib.RSI(np.array([float(c) for c in closes]), timeperiod=14)
    assert got[:14] == [None] * 14 and all(np.isnan(expected[:14]))
    assert got[14:] == list(expected[14:]) == [100.0] * 26


def _split(candles: list[Candle], first_days: float) -> tuple[list[Candle], list[Candle]]:
    """The first `first_days` days of every market, and the rest."""
    start = {}
    for c in candles:
        start[c.exchange] = min(start.get(c.exchange, c.open_time), c.open_time)
    cut = {exchange: moment + timedelta(days=first_days) for exchange, moment in start.items()}
    return [c for c in candles if c.open_time < cut[c.exchange]], [c for c in candles if c.open_time >= cut[c.exchange]]


def test_incremental_runs_equal_a_full_rebuild(dbt: DbtRunner, pg_conn, sample_candles) -> None:
    """Day 1 first; then, in two incremental runs, the next half day plus a corrected candle in
    the middle of day 1, and the rest plus a late candle filling a hole in day 1 (which shifts
    every later candle_index). Then the same database fully rebuilt: identical tables."""
    conn = pg_conn
    hole = {("binance", datetime(2022, 8, 14, 20, 30, tzinfo=UTC)), ("okx", datetime(2025, 11, 24, 9, 0, tzinfo=UTC))}
    corrected = ("okx", datetime(2025, 11, 24, 6, 17, tzinfo=UTC))
    day1, rest = _split([c for c in sample_candles if (c.exchange, c.open_time) not in hole], 1)
    half, rest = _split(rest, 0.5)
    ref.load_minutes(conn, day1, "day1", T0)
    first = dbt("run", *ref.DBT_SELECT)

    # run 2: half a day more, and the exchange corrected a candle of day 1
    ref.load_minutes(conn, half, "half", T0 + timedelta(days=1))
    with conn.cursor() as cur:
        cur.execute(
            "update staging.ohlcv set close = low, ingested_at = %s where exchange = %s and open_time = %s",
            (T0 + timedelta(days=1), *corrected),
        )
    conn.commit()
    before = ref.row_versions(conn, "candles_1m")  # the stored 1m candles, with their indicators
    second = dbt("run", *ref.DBT_SELECT)
    after = ref.row_versions(conn, "candles_1m")  # the stored 1m candles, with their indicators
    # continued from the stored state: nothing before the corrected candle was rewritten
    rewritten = sorted(k for k, xmin in after.items() if before.get(k) != xmin)
    assert rewritten and min(k[2] for k in rewritten if k[0] == "okx") == corrected[1]
    assert not [k for k in rewritten if k[0] == "okx" and k[2] < corrected[1]]
    assert min(k[2] for k in rewritten if k[0] == "binance") == datetime(2022, 8, 15, tzinfo=UTC)

    # run 3: the rest, and the late candles that fill the holes of day 1
    ref.load_minutes(conn, rest, "rest", T0 + timedelta(days=2))
    by_key = {(c.exchange, c.open_time): c for c in sample_candles}
    ref.load_minutes(conn, [by_key[k] for k in sorted(hole)], "late", T0 + timedelta(days=2))
    third = dbt("run", *ref.DBT_SELECT)
    print(
        f"\ndbt run day 1: {first.seconds:.1f} s; incremental +12 h & 1 correction: {second.seconds:.1f} s;"
        f" incremental rest & 2 late candles: {third.seconds:.1f} s"
    )

    tables = ["ohlcv_1m", *ref.INDICATOR_MODELS, *ref.ROLLUPS]
    incremental = ref.table_checksums(conn, tables)
    with conn.cursor() as cur:
        cur.execute("create schema incremental_copy")
        for table in ref.INDICATOR_MODELS:
            cur.execute(f"create table incremental_copy.{table} as table marts.{table}")
    conn.commit()

    full = dbt("run", "--full-refresh", *ref.DBT_SELECT)
    print(f"dbt run --full-refresh of the same data: {full.seconds:.1f} s")
    assert ref.table_checksums(conn, tables) == incremental
    for table in ref.INDICATOR_MODELS:
        diff = ", ".join(f"max(abs(f.{c} - i.{c}))" for c in ref.FLOAT_INDICATORS)
        ((missing, differing, *largest),) = ref.fetch(
            conn,
            f"select count(*) filter (where f.open_time is null or i.open_time is null),"
            f" count(*) filter (where f::text is distinct from i::text), {diff}"
            f" from marts.{table} f full join incremental_copy.{table} i using (exchange, symbol, open_time)",
        )
        assert (missing, differing) == (0, 0), table
        assert all(d in (0, None) for d in largest), (table, largest)

    # and the incrementally built tables are the right numbers
    markets = read_sample_files()
    okx = markets[("okx", "BTC/USDT")]
    o, h, lo, _c, v, qv, tr = okx[_ms(corrected[1])]
    okx[_ms(corrected[1])] = (o, h, lo, lo, v, qv, tr)
    ref.assert_indicators_match(conn, ref.minutes_frame(markets), REL_TOLERANCE)


def test_an_install_from_before_candles_1m_upgrades_with_its_next_build(dbt: DbtRunner, loaded_warehouse) -> None:
    """An install built before storage stage 4 (marts.ohlcv_1m a month-partitioned table keyed by
    exchange and symbol, with the indicators on its rows; indicators_1m a view of it): its next plain
    `dbt build` builds candles_1m from staging and replaces the table by the view. ohlcv_1m and
    indicators_1m show the same rows as before, the rollups are not rewritten, and the next
    incremental run goes on from there."""
    conn = loaded_warehouse
    dbt("run", *ref.DBT_SELECT)
    rollups = ref.table_checksums(conn, ref.ROLLUPS)
    indicator_columns = ("candle_index", "inputs_complete", *(c for c in ref.FLOAT_INDICATORS if c != "macd_histogram"))
    with conn.cursor() as cur:
        cur.execute("create table public.previous_ohlcv_1m as table marts.ohlcv_1m")
        cur.execute("create table public.previous_indicators_1m as table marts.indicators_1m")
        # the previous release's ohlcv_1m: the candle columns, then the indicators, partitioned by month
        cur.execute("create table public.old_rows as select o.*, " + ", ".join(f"c.{x}" for x in indicator_columns)
                    + " from marts.ohlcv_1m as o join staging.market as m on m.timeframe = '1m' and"
                    " m.exchange = o.exchange and m.symbol = o.symbol"
                    " join marts.candles_1m as c on c.market_id = m.market_id and c.open_time = o.open_time")
        cur.execute("drop table marts.candles_1m cascade")  # and the views over it
        cur.execute("create table marts.ohlcv_1m (like public.old_rows) partition by range (open_time)")
        cur.execute("create table marts.ohlcv_1m_default partition of marts.ohlcv_1m default")
        cur.execute("select ops.ensure_month_partitions_like('marts.ohlcv_1m'::regclass, 'staging.candle'::regclass,"
                    " '-infinity'::timestamptz)")
        cur.execute("insert into marts.ohlcv_1m select * from public.old_rows order by exchange, symbol, open_time")
        cur.execute("create unique index on marts.ohlcv_1m (exchange, symbol, open_time desc)")
        cur.execute("create view marts.indicators_1m as select exchange, symbol, open_time, close, candle_index"
                    " from marts.ohlcv_1m")
    conn.commit()
    dbt("build", "--exclude-resource-type", "unit_test")
    kinds = dict(ref.fetch(conn, "select relname::text, relkind::text from pg_class"
                                 " where relnamespace = 'marts'::regnamespace"
                                 " and relname in ('ohlcv_1m', 'indicators_1m', 'candles_1m')"))
    assert kinds == {"ohlcv_1m": "v", "indicators_1m": "v", "candles_1m": "p"}
    for view in ("ohlcv_1m", "indicators_1m"):
        ((rows, differing),) = ref.fetch(
            conn, f"select count(*), count(*) filter (where n::text is distinct from o::text) from marts.{view} n"
                  f" full join public.previous_{view} o using (exchange, symbol, open_time)")
        assert rows == 5760 and differing == 0, view
    assert ref.table_checksums(conn, ref.ROLLUPS) == rollups
    assert not ref.fetch(conn, "select relname from pg_class where relname like 'ohlcv_1m_p%'")  # the old table's
    dbt("run", *ref.DBT_SELECT)  # and the next incremental run goes on from there
    assert ref.table_checksums(conn, ref.ROLLUPS) == rollups
