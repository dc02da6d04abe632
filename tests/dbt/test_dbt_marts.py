"""`dbt build` on the real sample candles in a throwaway warehouse: exact values, incrementality,
corrections, full-refresh equivalence, and the data tests actually failing on bad data."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from support.dbt_helpers import Candle, DbtRunner, checksums, dec, query

INSERT_OHLCV = (
    "insert into staging.ohlcv (exchange, symbol, timeframe, open_time, open, high, low, close,"
    " volume, quote_volume, trades, raw_payload_id, run_id)"
)
# ohlcv_1m, a view over candles_1m since storage stage 4: the candle columns and types it had before the
# indicators moved onto the stored row (no lineage ids: ohlcv_1m_lineage joins them from staging by key)
OHLCV_1M_COLUMNS = [
    ("exchange", "text"), ("symbol", "text"), ("open_time", "timestamp with time zone"), ("open", "numeric"),
    ("high", "numeric"), ("low", "numeric"), ("close", "numeric"), ("volume", "numeric"),
    ("quote_volume", "numeric"), ("trades", "bigint"), ("close_time", "timestamp with time zone"),
    ("ingested_at", "timestamp with time zone"),
]  # fmt: skip
# candles_1m, the stored rows: 8-byte columns, then 4-byte, 1-byte, NUMERIC (no alignment padding)
CANDLES_1M_COLUMNS = [
    "open_time", "ingested_at", "trades", "candle_index", "sma_20", "sma_50", "sma_200", "ema_12", "ema_26",
    "ema_50", "rsi_14", "macd_line", "macd_signal", "rsi_avg_gain_14", "rsi_avg_loss_14", "macd_fast_ema",
    "market_id", "inputs_complete", "open", "high", "low", "close", "volume", "quote_volume",
]  # fmt: skip


def _last_by_market(candles: list[Candle]) -> dict[tuple[str, str], Candle]:
    last: dict[tuple[str, str], Candle] = {}
    for c in candles:
        key = (c.exchange, c.symbol)
        if key not in last or c.open_time > last[key].open_time:
            last[key] = c
    return last


def _ohlcv_row(conn, exchange: str, symbol: str, open_time: datetime) -> dict:
    with conn.cursor() as cur:
        cur.execute(
            "select * from marts.ohlcv_1m where exchange = %s and symbol = %s and open_time = %s",
            (exchange, symbol, open_time),
        )
        names = [d.name for d in cur.description]
        row = cur.fetchone()
    conn.commit()
    assert row is not None, (exchange, symbol, open_time)
    return dict(zip(names, row, strict=True))


def _lineage(conn, exchange: str, symbol: str, open_time: datetime) -> tuple:
    """(raw_payload_id, run_id, whether the mart row holds that staging row's values) from ohlcv_1m_lineage."""
    rows = query(conn, "select raw_payload_id, run_id, staged_ingested_at = ingested_at from marts.ohlcv_1m_lineage"
                       " where exchange = %s and symbol = %s and open_time = %s", (exchange, symbol, open_time))
    assert len(rows) == 1, (exchange, symbol, open_time, rows)
    return rows[0]


def _row_versions(conn) -> str:
    """md5 over every stored 1m row's physical version (candles_1m): changes if a run rewrites any row."""
    ((digest,),) = query(
        conn,
        "select md5(string_agg(ctid::text || ':' || xmin::text, ',' order by market_id, open_time))"
        " from marts.candles_1m",
    )
    return digest


def test_build_reproduces_the_exchange_numbers(dbt: DbtRunner, loaded_warehouse, sample_candles) -> None:
    conn = loaded_warehouse
    result = dbt("build")
    print(f"dbt build (5,760 candles, fresh database): {result.seconds:.1f} s")

    # ohlcv_1m: one row per candle, columns in the documented order, values == the CSV strings
    shape = "select column_name::text, data_type::text from information_schema.columns" \
            " where table_schema = 'marts' and table_name = %s order by ordinal_position"
    assert query(conn, shape, ("ohlcv_1m",)) == OHLCV_1M_COLUMNS
    assert [c for c, _ in query(conn, shape, ("candles_1m",))] == CANDLES_1M_COLUMNS
    # indicators_1m (a view) keeps the table's columns and types: the same as every other indicators_*
    shapes = {
        name: query(conn, "select column_name, data_type from information_schema.columns"
                          " where table_schema = 'marts' and table_name = %s order by ordinal_position", (name,))
        for name in ("indicators_1m", "indicators_5m")
    }
    assert shapes["indicators_1m"] == shapes["indicators_5m"] and len(shapes["indicators_1m"]) == 21
    rows = query(
        conn,
        "select exchange, symbol, open_time, open, high, low, close, volume, quote_volume, trades, close_time"
        " from marts.ohlcv_1m",
    )
    assert len(rows) == 5760
    by_key = {(r[0], r[1], r[2]): r for r in rows}
    assert len(by_key) == 5760
    for c in sample_candles:
        row = by_key[(c.exchange, c.symbol, c.open_time)]
        expected = (
            dec(c.open), dec(c.high), dec(c.low), dec(c.close), dec(c.volume), dec(c.quote_volume),
            int(c.trades) if c.trades else None,
        )  # fmt: skip
        assert row[3:10] == expected, (c, row)
        assert row[10] == c.open_time + timedelta(minutes=1)
    # exact decimals, not just equal values: the exchange's strings survive to the mart
    eth = next(c for c in sample_candles if c.exchange == "binance")
    ((open_text,),) = query(
        conn,
        "select open::text from marts.ohlcv_1m where exchange = 'binance' and open_time = %s",
        (eth.open_time,),
    )
    assert open_text == eth.open

    # markets
    markets = query(
        conn,
        "select exchange, symbol, base, quote, first_candle_at, last_candle_at, candle_count, has_ticker,"
        " is_active from marts.markets order by exchange, symbol",
    )
    assert markets == [
        (
            "binance", "ETH/USDT", "ETH", "USDT", datetime(2022, 8, 14, tzinfo=UTC),
            datetime(2022, 8, 15, 23, 59, tzinfo=UTC), 2880, False, False,
        ),
        (
            "okx", "BTC/USDT", "BTC", "USDT", datetime(2025, 11, 23, 16, tzinfo=UTC),
            datetime(2025, 11, 25, 15, 59, tzinfo=UTC), 2880, False, False,
        ),
    ]  # fmt: skip

    # latest_price: no tickers loaded, so the last close of each market
    latest = query(
        conn,
        "select exchange, symbol, candle_open_time, candle_close, price, price_source, as_of,"
        " staleness_seconds from marts.latest_price order by exchange, symbol",
    )
    last = _last_by_market(sample_candles)
    assert len(latest) == len(last) == 2
    for exchange, symbol, candle_open_time, candle_close, price, source, as_of, staleness in latest:
        expected = last[(exchange, symbol)]
        assert candle_open_time == expected.open_time
        assert candle_close == price == Decimal(expected.close)
        assert source == "candle"
        assert as_of == expected.open_time + timedelta(minutes=1)
        age = (datetime.now(UTC) - as_of).total_seconds()
        assert abs(float(staleness) - age) < 60

    # every built column is documented (the manifest of this very build)
    manifest = json.loads((dbt.env_path("DBT_TARGET_PATH") / "manifest.json").read_text())
    relations = {n["name"]: n for n in manifest["nodes"].values() if n["resource_type"] == "model"}
    for name, node in relations.items():
        built = {
            r[0]
            for r in query(
                conn,
                "select column_name from information_schema.columns"
                " where table_schema = %s and table_name = %s",
                (node["schema"], name),
            )
        }
        assert built, f"{node['schema']}.{name} was not built"
        assert built == set(node["columns"]), f"{name}: documented {set(node['columns'])} != built {built}"


def test_docs_generate(dbt: DbtRunner, loaded_warehouse) -> None:
    dbt("run")
    dbt("docs", "generate")
    catalog = json.loads((dbt.env_path("DBT_TARGET_PATH") / "catalog.json").read_text())
    names = {n["metadata"]["name"] for n in catalog["nodes"].values()}
    assert {"ohlcv_1m", "markets", "latest_price", "stg_ohlcv", "stg_ticker", "int_markets"} <= names
    assert {"candle", "ticker", "ohlcv_rejects"} <= {
        s["metadata"]["name"] for s in catalog["sources"].values()
    }
    assert not catalog.get("errors")


def test_second_build_is_a_no_op(dbt: DbtRunner, loaded_warehouse) -> None:
    conn = loaded_warehouse
    dbt("build")
    before, versions_before = checksums(conn), _row_versions(conn)
    result = dbt("build")
    print(f"incremental dbt build, nothing new: {result.seconds:.1f} s")
    assert checksums(conn) == before
    assert before["ohlcv_1m"][0] == 5760
    # not even rewritten with the same values: the merge had nothing to merge
    assert _row_versions(conn) == versions_before


def _max_ingested_at(conn) -> datetime:
    ((value,),) = query(conn, "select max(ingested_at) from marts.candles_1m")
    return value


def test_corrected_and_new_candles_flow_in_incrementally(dbt: DbtRunner, loaded_warehouse) -> None:
    conn = loaded_warehouse
    dbt("build")
    t0 = datetime(2022, 8, 14, 12, 0, tzinfo=UTC)
    late = datetime(2025, 11, 24, 1, 0, tzinfo=UTC)
    old = datetime(2025, 11, 24, 2, 0, tzinfo=UTC)
    newest = datetime(2022, 8, 16, tzinfo=UTC)
    watermark = _max_ingested_at(conn)
    with conn.cursor() as cur:
        # 1. the exchange corrected a candle: the loader rewrites values, raw id and ingested_at
        cur.execute(
            "update staging.ohlcv set high = 2000.00000000, close = 1999.99000000, raw_payload_id = 'fix',"
            " run_id = 'run-2', ingested_at = now()"
            " where exchange = 'binance' and symbol = 'ETH/USDT' and timeframe = '1m' and open_time = %s",
            (t0,),
        )
        # 2. a new minute
        cur.execute(
            INSERT_OHLCV
            + " values ('binance', 'ETH/USDT', '1m', %s, 1800.1, 1801, 1799.5, 1800.5, 12.5, 22506.25, 42,"
            " 'new', 'run-2')",
            (newest,),
        )
        # 3. a load transaction that committed late: ingested_at before dbt's watermark, within lookback
        cur.execute(
            "update staging.ohlcv set close = high, raw_payload_id = 'late', ingested_at = %s"
            " where exchange = 'okx' and timeframe = '1m' and open_time = %s",
            (watermark - timedelta(minutes=10), late),
        )
        # 4. a change stamped before the lookback window: invisible to incremental runs by design
        cur.execute(
            "update staging.ohlcv set close = high, raw_payload_id = 'too-old', ingested_at = %s"
            " where exchange = 'okx' and timeframe = '1m' and open_time = %s",
            (watermark - timedelta(hours=3), old),
        )
        # 5. other timeframes never reach ohlcv_1m
        cur.execute(
            INSERT_OHLCV
            + " values ('binance', 'ETH/USDT', '1h', %s, 1, 2, 1, 2, 3, null, null, 'h', 'run-2')",
            (newest,),
        )
    conn.commit()

    dbt("build")

    fixed = _ohlcv_row(conn, "binance", "ETH/USDT", t0)
    assert (fixed["high"], fixed["close"]) == (Decimal("2000"), Decimal("1999.99"))
    assert _lineage(conn, "binance", "ETH/USDT", t0) == ("fix", "run-2", True)
    new = _ohlcv_row(conn, "binance", "ETH/USDT", newest)
    assert (new["close"], new["trades"], new["close_time"]) == (
        Decimal("1800.5"), 42, newest + timedelta(minutes=1),
    )  # fmt: skip
    late_row = _ohlcv_row(conn, "okx", "BTC/USDT", late)
    assert late_row["close"] == late_row["high"]
    assert _lineage(conn, "okx", "BTC/USDT", late)[::2] == ("late", True)
    old_row = _ohlcv_row(conn, "okx", "BTC/USDT", old)
    assert old_row["close"] != old_row["high"]
    # the lineage view shows staging's revision, and that the mart row does not hold it (yet)
    assert _lineage(conn, "okx", "BTC/USDT", old)[::2] == ("too-old", False)
    assert query(conn, "select count(*) from marts.ohlcv_1m") == [(5761,)]

    # downstream marts follow
    assert query(
        conn,
        "select last_candle_at, candle_count from marts.markets where exchange = 'binance'",
    ) == [(newest, 2881)]
    assert query(conn, "select price, as_of from marts.latest_price where exchange = 'binance'") == [
        (Decimal("1800.5"), newest + timedelta(minutes=1))
    ]

    # a full refresh re-reads everything, including the change stamped outside the lookback
    dbt("build", "--full-refresh")
    old_row = _ohlcv_row(conn, "okx", "BTC/USDT", old)
    assert old_row["close"] == old_row["high"]
    assert _lineage(conn, "okx", "BTC/USDT", old)[::2] == ("too-old", True)


def test_full_refresh_equals_incremental(dbt: DbtRunner, loaded_warehouse) -> None:
    conn = loaded_warehouse
    with conn.cursor() as cur:  # a minute missing at the first build, loaded late into a counted day
        cur.execute("create table public.late_minute as select * from staging.ohlcv"
                    " where exchange = 'okx' and open_time = '2025-11-24 12:00+00'")
        cur.execute("delete from staging.ohlcv where exchange = 'okx' and open_time = '2025-11-24 12:00+00'")
    conn.commit()
    dbt("build")
    with conn.cursor() as cur:
        cur.execute("insert into staging.ohlcv select * from public.late_minute")
        cur.execute("update staging.ohlcv set ingested_at = now() where exchange = 'okx'"
                    " and open_time = '2025-11-24 12:00+00'")
        # corrections, new minutes for both markets, a new market, tickers (older and newer than candles)
        cur.execute(
            "update staging.ohlcv set low = low - 1, raw_payload_id = 'fix', ingested_at = now()"
            " where exchange = 'okx' and open_time < '2025-11-23 17:00+00'"
        )
        cur.execute(
            INSERT_OHLCV
            + " select exchange, symbol, '1m', open_time + interval '2 days', open, high, low, close, volume,"
            " quote_volume, trades, 'next', 'run-2' from staging.ohlcv where open_time::time < '01:00'"
        )
        cur.execute(
            INSERT_OHLCV + " values ('kraken', 'BTC/EUR', '1m', '2025-11-25 00:00+00', 80000, 80010,"
            " 79990, 80005, 0.5, null, null, 'k', 'run-2')"
        )
        cur.execute(
            "insert into staging.ticker (exchange, symbol, ts, last, bid, ask, raw_payload_id, run_id) values"
            " ('binance', 'ETH/USDT', '2022-08-18 00:00:30+00', 1850.5, 1850.4, 1850.6, 't1', 'run-2'),"
            " ('okx', 'BTC/USDT', '2025-11-20 00:00:00+00', 90000, 89999, 90001, 't2', 'run-2'),"
            " ('okx', 'ETH/USDT', '2025-11-25 00:00:00+00', 3000, 2999, 3001, 't3', 'run-2')"
        )
    conn.commit()
    dbt("build")
    incremental = checksums(conn)
    assert incremental["ohlcv_1m"][0] == 5760 + 4 * 60 + 1  # 4 sample days, first hour again
    # markets' coverage (int_markets sums the incremental per-day counts) is a count of every candle
    coverage = ("select exchange, symbol, first_candle_at, last_candle_at, candle_count from marts.markets"
                " where candle_count > 0 order by 1, 2")
    brute_force = ("select exchange, symbol, min(open_time), max(open_time), count(*) from staging.ohlcv"
                   " where timeframe = '1m' group by 1, 2 order by 1, 2")
    assert query(conn, coverage) == query(conn, brute_force)
    days = "select * from dbt_intermediate.int_ohlcv_1m_days order by exchange, symbol, day"
    incremental_days = query(conn, days)
    assert incremental["markets"][0] == 4  # binance ETH, okx BTC, kraken BTC/EUR, okx ETH (ticker only)
    dbt("build", "--full-refresh")
    assert checksums(conn) == incremental
    assert query(conn, days) == incremental_days
    prices = dict(
        ((e, s), (p, src))
        for e, s, p, src in query(
            conn, "select exchange, symbol, price, price_source from marts.latest_price"
        )
    )
    assert prices == {
        ("binance", "ETH/USDT"): (Decimal("1850.5"), "ticker"),
        ("okx", "BTC/USDT"): (query(conn, "select close from marts.ohlcv_1m where exchange = 'okx'"
                                   " order by open_time desc limit 1")[0][0], "candle"),
        ("kraken", "BTC/EUR"): (Decimal("80005"), "candle"),
        ("okx", "ETH/USDT"): (Decimal("3000"), "ticker"),
    }  # fmt: skip


def test_latest_price_sees_new_tickers_without_a_dbt_run(dbt: DbtRunner, loaded_warehouse) -> None:
    conn = loaded_warehouse
    dbt("build")
    with conn.cursor() as cur:
        cur.execute(
            "insert into staging.ticker (exchange, symbol, ts, last, bid, ask, raw_payload_id, run_id)"
            " values ('okx', 'BTC/USDT', now() - interval '5 seconds', 91000.5, 91000.4, 91000.6, 't', 'r')"
        )
    conn.commit()
    ((price, source, bid, ask, staleness),) = query(
        conn,
        "select price, price_source, ticker_bid, ticker_ask, staleness_seconds"
        " from marts.latest_price where exchange = 'okx'",
    )
    assert (price, source, bid, ask) == (Decimal("91000.5"), "ticker", Decimal("91000.4"), Decimal("91000.6"))
    assert 4 <= staleness < 60


BAD_CANDLES = {
    # label: (open, high, low, close, volume, expected violations)
    "high below close": (100, 101, 99, 102, 1, ["high < greatest(open, close)"]),
    "high below open": (103, 102, 99, 101, 1, ["high < greatest(open, close)"]),
    "low above open": (100, 105, 101, 102, 1, ["low > least(open, close)"]),
    "low above close": (102, 105, 101, 100, 1, ["low > least(open, close)"]),
    "high below low": (100, 100, 101, 100, 1, ["low > least(open, close)", "high < low"]),
    "negative volume": (100, 101, 99, 100, -1, ["negative volume"]),
    "negative prices": (-2, -1, -3, -2, 0, ["negative price"]),
}


def test_ohlcv_consistency_fails_on_bad_candles(dbt: DbtRunner, loaded_warehouse) -> None:
    conn = loaded_warehouse
    dbt("build")
    select = ("--select", "ohlcv_1m,test_name:ohlcv_consistency")
    assert "PASS=1" in dbt("test", *select).output
    # staging's CHECK constraints refuse such rows, so they go straight into the mart, one per minute
    start = datetime(2030, 1, 1, tzinfo=UTC)
    minute = {label: start + timedelta(minutes=i) for i, label in enumerate(BAD_CANDLES)}  # a bad candle's key
    with conn.cursor() as cur:
        for label, (o, h, lo, c, v, _) in BAD_CANDLES.items():
            cur.execute(
                "insert into marts.candles_1m (market_id, open_time, open, high, low, close, volume, ingested_at)"
                " values ((select market_id from marts.candles_1m_markets"
                "          where exchange = 'binance' and symbol = 'ETH/USDT'), %s, %s, %s, %s, %s, %s, now())",
                (minute[label], o, h, lo, c, v),
            )
    conn.commit()
    result = dbt("test", *select, "--store-failures", expect_success=False)
    assert f"Got {len(BAD_CANDLES)} results" in result.output, result.output
    failures = dict(
        query(
            conn,
            "select open_time, violations"
            " from dbt_test__audit.ohlcv_consistency_ohlcv_1m_quote_volume__trades",
        )
    )
    assert failures == {minute[label]: spec[-1] for label, spec in BAD_CANDLES.items()}

    # data tests on the big tables only look at rows written within data_test_window_hours (48);
    # a bad row merged long ago is found by the full check (window 0)
    with conn.cursor() as cur:
        cur.execute(
            "update marts.candles_1m set ingested_at = now() - interval '30 days'"
            " where open_time = %s",
            (minute["negative volume"],),
        )
    conn.commit()
    result = dbt("test", *select, expect_success=False)
    assert f"Got {len(BAD_CANDLES) - 1} results" in result.output, result.output
    result = dbt("test", *select, "--vars", "{data_test_window_hours: 0}", expect_success=False)
    assert f"Got {len(BAD_CANDLES)} results" in result.output, result.output

    # the hourly DAG narrows the window to the rows written since its last successful run (less an
    # hour: MARKETFLOW_DATA_TEST_SINCE); a bad row written 3 hours ago was tested by that run
    with conn.cursor() as cur:
        cur.execute(
            "update marts.candles_1m set ingested_at = now() - interval '3 hours'"
            " where open_time = %s",
            (minute["negative prices"],),
        )
    conn.commit()

    def since(hours_ago: float) -> DbtRunner:
        moment = datetime.now(UTC) - timedelta(hours=hours_ago)
        return DbtRunner({**dbt.env, "MARKETFLOW_DATA_TEST_SINCE": moment.isoformat()})

    result = since(2)("test", *select, expect_success=False)
    assert f"Got {len(BAD_CANDLES) - 2} results" in result.output, result.output
    # never wider than data_test_window_hours (a last success 60 days ago: the 48 hours)
    result = since(24 * 60)("test", *select, expect_success=False)
    assert f"Got {len(BAD_CANDLES) - 1} results" in result.output, result.output


def test_latest_price_reads_one_row_per_market(dbt: DbtRunner, loaded_warehouse) -> None:
    """latest_price reads the one-row-per-market tables (int_markets, int_latest_candle_1m,
    staging.ticker_latest): no node touches staging.ticker, and the fallback probe of ohlcv_1m's
    partitions (for a held candle that has not closed yet) is planned but never executed."""
    conn = loaded_warehouse
    with conn.cursor() as cur:
        cur.execute(
            "insert into staging.ticker (exchange, symbol, ts, last, raw_payload_id, run_id)"
            " select 'okx', 'BTC/USDT', t, 90000, 't', 'r'"
            " from generate_series(now() - interval '2 days', now(), interval '10 seconds') t"
        )
        cur.execute("analyze staging.ticker")
    conn.commit()
    dbt("run", "--select", "+latest_price")
    ((plan,),) = query(conn, "explain (analyze, format json) select * from marts.latest_price")

    def scans(node: dict):
        yield node["Node Type"], node.get("Relation Name"), node.get("Actual Loops", 0), node.get("Actual Rows", 0)
        for child in node.get("Plans", []):
            yield from scans(child)

    nodes = [n for n in scans(plan[0]["Plan"]) if n[1]]
    read = {rel for _, rel, loops, _ in nodes if loops}
    assert read == {"int_markets", "int_latest_candle_1m", "ticker_latest"}, nodes
    # candles_1m (ohlcv_1m's storage) is partitioned by month: the gated fallback's scans go into
    # candles_1m_pYYYY_MM, never run
    assert [n for n in nodes if n[1].startswith("candles_1m")], nodes
    assert not [n for n in nodes if n[1] == "ticker"], nodes


def _brute_force_latest(conn) -> dict[tuple[str, str], tuple]:
    """The oracle: each market's newest closed 1m candle and newest ticker, straight from staging by
    brute force (max(open_time) / max(ts) per market), and the price chosen from them as documented."""
    candles = {(e, s): (o, c) for e, s, o, c in query(
        conn,
        "select s.exchange, s.symbol, s.open_time, s.close from staging.ohlcv as s"
        " join (select exchange, symbol, max(open_time) as newest from staging.ohlcv"
        "       where timeframe = '1m' and open_time <= now() - interval '1 minute' group by 1, 2) as m"
        "   on m.exchange = s.exchange and m.symbol = s.symbol and m.newest = s.open_time"
        " where s.timeframe = '1m'")}
    tickers = {(e, s): (ts, last, bid) for e, s, ts, last, bid in query(
        conn,
        "select t.exchange, t.symbol, t.ts, t.last, t.bid from staging.ticker as t"
        " join (select exchange, symbol, max(ts) as newest from staging.ticker group by 1, 2) as m"
        "   on m.exchange = t.exchange and m.symbol = t.symbol and m.newest = t.ts")}
    out = {}
    for market in candles.keys() | tickers.keys():
        open_time, close = candles.get(market, (None, None))
        ts, last, bid = tickers.get(market, (None, None, None))
        close_time = open_time + timedelta(minutes=1) if open_time else None
        by_ticker = last is not None and (close_time is None or ts > close_time)
        out[market] = (open_time, close, ts, last, bid, last if by_ticker else close,
                       "ticker" if by_ticker else "candle")
    return out


def _latest_price(conn) -> dict[tuple[str, str], tuple]:
    return {(r[0], r[1]): r[2:] for r in query(
        conn,
        "select exchange, symbol, candle_open_time, candle_close, ticker_ts, ticker_last, ticker_bid, price,"
        " price_source from marts.latest_price")}


def test_latest_price_equals_brute_force_through_reruns_and_corrections(dbt: DbtRunner, loaded_warehouse) -> None:
    """latest_price (over int_latest_candle_1m and staging.ticker_latest) equals the newest candle and
    ticker per market found by brute force in staging: after the first build, after a re-run with
    nothing new (and the held rows unchanged), after a correction of the newest minute, a new
    minute, a backfill of old minutes and tickers loaded without a dbt run, and after a full refresh."""
    conn = loaded_warehouse
    with conn.cursor() as cur:
        cur.execute(
            "insert into staging.ticker (exchange, symbol, ts, last, bid, ask, raw_payload_id, run_id) values"
            " ('okx', 'BTC/USDT', '2025-11-20 00:00:00+00', 90000, 89999, 90001, 't1', 'r'),"
            " ('okx', 'BTC/USDT', '2025-11-19 00:00:00+00', 89000, 88999, 89001, 't0', 'r')"
        )
    conn.commit()
    select = ("--select", "+latest_price")
    dbt("run", *select)
    expected = _brute_force_latest(conn)
    assert len(expected) == 2 and _latest_price(conn) == expected
    held = "select * from dbt_intermediate.int_latest_candle_1m order by exchange, symbol"
    rows = query(conn, held)

    dbt("run", *select)  # nothing new: the same rows
    assert query(conn, held) == rows
    assert _latest_price(conn) == expected

    ((eth_newest,),) = query(conn, "select max(open_time) from staging.ohlcv where exchange = 'binance'")
    ((okx_newest,),) = query(conn, "select max(open_time) from staging.ohlcv where exchange = 'okx'")
    with conn.cursor() as cur:
        # the exchange corrected the newest minute: the loader rewrites values and ingested_at
        cur.execute(
            "update staging.ohlcv set close = close + 1, high = high + 1, raw_payload_id = 'fix', ingested_at = now()"
            " where exchange = 'binance' and timeframe = '1m' and open_time = %s", (eth_newest,))
        # a new minute for okx, and a backfill of an older binance minute (the newest must stay)
        cur.execute(
            INSERT_OHLCV + " values ('okx', 'BTC/USDT', '1m', %s, 87000, 87010, 86990, 87005.5, 1, null, null,"
            " 'new', 'run-2'), ('binance', 'ETH/USDT', '1m', '2022-08-13 23:59:00+00', 1980, 1981, 1979, 1980.5,"
            " 2, 3960, 7, 'old', 'run-2')", (okx_newest + timedelta(minutes=1),))
        # tickers: a batch with an older and a newer snapshot of one market, loaded without a dbt run
        cur.execute(
            "insert into staging.ticker (exchange, symbol, ts, last, bid, ask, raw_payload_id, run_id) values"
            " ('binance', 'ETH/USDT', %s, 1990.5, 1990.4, 1990.6, 't2', 'r'),"
            " ('binance', 'ETH/USDT', %s, 1991.5, 1991.4, 1991.6, 't3', 'r')",
            (eth_newest + timedelta(seconds=30), eth_newest + timedelta(minutes=2)))
    conn.commit()
    with_ticker = _latest_price(conn)
    assert with_ticker[("binance", "ETH/USDT")][3:] == (Decimal("1991.5"), Decimal("1991.4"), Decimal("1991.5"),
                                                        "ticker")
    dbt("run", *select)
    expected = _brute_force_latest(conn)
    assert _latest_price(conn) == expected
    assert expected[("okx", "BTC/USDT")][:2] == (okx_newest + timedelta(minutes=1), Decimal("87005.5"))
    assert query(conn, "select open_time, close from dbt_intermediate.int_latest_candle_1m"
                       " where exchange = 'binance'") == [(eth_newest, expected[("binance", "ETH/USDT")][1])]
    assert query(conn, "select raw_payload_id from staging.ohlcv where exchange = 'binance' and open_time = %s",
                 (eth_newest,)) == [("fix",)]
    # a ticker snapshot corrected in place (same ts) replaces the kept one
    with conn.cursor() as cur:
        cur.execute("update staging.ticker set bid = 1991.3 where exchange = 'binance' and ts = %s",
                    (eth_newest + timedelta(minutes=2),))
    conn.commit()
    assert _latest_price(conn) == _brute_force_latest(conn)

    rows = query(conn, held)
    dbt("run", *select, "--full-refresh")
    assert query(conn, held) == rows
    assert _latest_price(conn) == _brute_force_latest(conn)


def test_source_freshness(dbt: DbtRunner, loaded_warehouse) -> None:
    conn = loaded_warehouse
    with conn.cursor() as cur:
        cur.execute(
            "insert into staging.ticker (exchange, symbol, ts, last, raw_payload_id, run_id)"
            " values ('okx', 'BTC/USDT', now(), 91000, 't', 'r')"
        )
    conn.commit()
    dbt("source", "freshness")
    # the loader stopped three hours ago
    with conn.cursor() as cur:
        cur.execute("update staging.ohlcv set ingested_at = now() - interval '3 hours'")
    conn.commit()
    result = dbt("source", "freshness", expect_success=False)
    assert "ERROR STALE" in result.output and "staging.candle" in result.output, result.output


def _failing_tests(output: str) -> set[str]:
    return set(re.findall(r"FAIL \d+ (\w+) \.", output))  # "3 of 12 FAIL 1 <test> ....."


def test_reconciliation_tests_name_the_broken_link(dbt: DbtRunner, loaded_warehouse) -> None:
    """The rollup chain (5m from 1m ... 1w from 1d) and the indicator check fail on a corrupted row."""
    conn = loaded_warehouse
    dbt("build", "--exclude-resource-type", "unit_test")
    select = ("--select", "test_name:ohlcv_rollup_matches_finer test_name:indicator_matches_candles")
    assert _failing_tests(dbt("test", *select).output) == set()
    with conn.cursor() as cur:
        # a 1h bucket whose volume no longer adds up, and an indicator row out of sequence
        cur.execute("update marts.ohlcv_1h set volume = volume + 1"
                    " where (exchange, symbol, open_time) = (select exchange, symbol, min(open_time)"
                    " from marts.ohlcv_1h where exchange = 'okx' group by exchange, symbol)")
        assert cur.rowcount == 1
        cur.execute("update marts.candles_1m set candle_index = candle_index + 1"
                    " where (market_id, open_time) = (select market_id, max(open_time) from marts.candles_1m"
                    " where market_id = (select market_id from marts.candles_1m_markets where exchange = 'binance')"
                    " group by market_id)")
        assert cur.rowcount == 1
    conn.commit()
    failing = _failing_tests(dbt("test", *select, expect_success=False).output)
    # 1h against 15m, and 1d against the corrupted 1h: the chain points at the changed table
    # (dbt names a test after its model and arguments: ..._ohlcv_1h_1h, ..._indicators_1m_ref_...)
    assert {re.sub(r"_(1h|1d|ref_.*)$", "", t) for t in failing} == {
        "ohlcv_rollup_matches_finer_ohlcv_1h", "ohlcv_rollup_matches_finer_ohlcv_1d",
        "indicator_matches_candles_indicators_1m"}, failing


def _rows_read(conn, table: str) -> int:
    """Rows of marts.`table` read so far by sequential and index scans (the statistics views), its month
    partitions included (a partitioned table's reads are counted on its partitions)."""
    ((n,),) = query(conn, "select coalesce(sum(coalesce(s.seq_tup_read, 0) + coalesce(s.idx_tup_fetch, 0)), 0)"
                          " from pg_stat_user_tables as s where s.relid = %s::regclass or s.relid in"
                          " (select inhrelid from pg_inherits where inhparent = %s::regclass)",
                    (f"marts.{table}", f"marts.{table}"))
    return int(n)


def test_reconciliation_after_an_old_backfill_reads_the_window_not_the_history(
    dbt: DbtRunner, loaded_warehouse
) -> None:
    """An hour re-fetched two days back and the live hour are within the test window: the rollup and
    indicator reconciliations check both (a corrupted bucket in the old hour fails) and read those
    hours' minutes, not the ~2,700 minutes of the market's history between them."""
    conn = loaded_warehouse
    with conn.cursor() as cur:  # loaded days ago: outside the 48 h test window
        cur.execute("update staging.ohlcv set ingested_at = now() - interval '5 days'")
    conn.commit()
    dbt("build", "--exclude-resource-type", "unit_test")
    with conn.cursor() as cur:  # the backfilled hour and the live hour, written now
        cur.execute("update staging.ohlcv set ingested_at = now(), raw_payload_id = 'refetch' where exchange = 'okx'"
                    " and (open_time >= '2025-11-23 17:00+00' and open_time < '2025-11-23 18:00+00'"
                    "      or open_time >= '2025-11-25 15:00+00')")
        assert cur.rowcount == 120
    conn.commit()
    dbt("build", "--exclude-resource-type", "unit_test")
    # ohlcv_1m and indicators_1m are views of candles_1m's rows: the indicator check reads candles_1m on
    # both sides (indicator rows and candles), so up to twice the rows.
    # Planned as at production sizes: on these 12,000 rows a sequential scan of every partition is the
    # cheaper plan, and PostgreSQL takes it for the previous-row lookup through the views' name join
    # (12,002 rows read, on some runs and not others). The check is that the tests' SQL reads only the
    # window when the planner follows the indexes, as it does on a real history (bench figure 9).
    indexed = DbtRunner({**dbt.env, "PGOPTIONS": "-c enable_seqscan=off"})
    for test, table, most in (("ohlcv_5m,test_name:ohlcv_rollup_matches_finer", "candles_1m", 400),
                              ("indicators_1m,test_name:indicator_matches_candles", "candles_1m", 800)):
        before = _rows_read(conn, table)
        indexed("test", "--select", test)
        time.sleep(1)  # the dbt backend's statistics reach the shared counters when it exits
        read = _rows_read(conn, table) - before
        # the two hours (120 rows) via the ingested_at index and the islands' range scans, plus a
        # lookup row; the span from the old hour on was 2,820 rows of okx alone
        assert 120 <= read <= most, (test, read)
    with conn.cursor() as cur:
        cur.execute("update marts.ohlcv_5m set close = close + 1"
                    " where exchange = 'okx' and open_time = '2025-11-23 17:30+00'")
        assert cur.rowcount == 1
    conn.commit()
    failing = _failing_tests(dbt("test", "--select", "ohlcv_5m,test_name:ohlcv_rollup_matches_finer",
                                 expect_success=False).output)
    assert {re.sub(r"_5m$", "", t) for t in failing} == {"ohlcv_rollup_matches_finer_ohlcv_5m"}, failing


def test_unique_key_index_fails_without_the_unique_index(dbt: DbtRunner, loaded_warehouse) -> None:
    """The uniqueness check of the indexed marts reads the catalog: it fails as soon as the unique
    index is gone or no longer unique, and names the key and what it found."""
    conn = loaded_warehouse
    dbt("build", "--select", "+candles_1m", "--indirect-selection", "cautious", "--exclude-resource-type", "unit_test")
    select = ("--select", "candles_1m,test_name:unique_key_index")
    assert _failing_tests(dbt("test", *select).output) == set()
    with conn.cursor() as cur:
        cur.execute("select indexrelid::regclass::text from pg_index"
                    " where indrelid = 'marts.candles_1m'::regclass and indisunique")
        (unique_index,) = cur.fetchone()
        cur.execute(f"drop index {unique_index}")
        # the same columns, not unique: still a failure
        cur.execute("create index candles_1m_key_not_unique on marts.candles_1m (market_id, open_time)")
    conn.commit()
    result = dbt("test", *select, "--store-failures", expect_success=False)
    (failed,) = _failing_tests(result.output)
    assert failed.startswith("unique_key_index_candles_1m"), result.output
    assert query(conn, f'select relation, key_columns from dbt_test__audit."{failed}"') == [
        ("marts.candles_1m", "market_id, open_time")]


def test_not_null_columns_names_each_column_with_nulls(dbt: DbtRunner, loaded_warehouse) -> None:
    conn = loaded_warehouse
    dbt("build", "--select", "+candles_1m", "--indirect-selection", "cautious", "--exclude-resource-type", "unit_test")
    select = ("--select", "candles_1m,test_name:not_null_columns")
    with conn.cursor() as cur:
        cur.execute("update marts.candles_1m set volume = null, high = null"
                    " where open_time >= (select max(open_time) - interval '2 minutes' from marts.candles_1m)")
        changed = cur.rowcount
    conn.commit()
    assert changed >= 3
    result = dbt("test", *select, expect_success=False)
    assert "Got 2 results" in result.output, result.output  # one per column with NULLs
    (table,) = query(conn, "select table_name from information_schema.tables where table_schema = 'dbt_test__audit'"
                           " and table_name like 'not_null_columns_candles_1m%'")[0]
    assert dict(query(conn, f'select column_name, null_rows from dbt_test__audit."{table}"')) == {
        "volume": changed, "high": changed}
