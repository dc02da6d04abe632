"""`marketflow rebuild`: one market and/or one time range of the marts rebuilt from staging, every
other row left as it was.

Real PostgreSQL, the real dbt project, the bundled real candles (include/sample_data). The marts are
built in full first; that build is the oracle (with the recorded files for the 1m candles): after
corrupting and deleting rows of one slice in every kind of incremental relation and running the
command, every relation equals the full build's result row for row, and every row outside the slice
is the very tuple the full build wrote (same xmin: not rewritten, not even with equal values).
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from support.dbt_helpers import DbtRunner, query
from support.sample import sample_candles

# relation -> (its key columns, time column, width of a row's period)
RELATIONS: dict[str, tuple[str, str, timedelta]] = {
    # ohlcv_1m's storage, keyed by market_id (ohlcv_1m and indicators_1m are views of it: checked as its rows);
    # indicators_5m ... indicators_1w are views of the indicator columns on the rollup rows: checked as those
    "marts.candles_1m": ("m.exchange, m.symbol, t.open_time", "t.open_time", timedelta(minutes=1)),
    **{f"marts.ohlcv_{tf}": ("exchange, symbol, open_time", "open_time", width)
       for tf, width in (("5m", timedelta(minutes=5)), ("15m", timedelta(minutes=15)), ("1h", timedelta(hours=1)),
                         ("1d", timedelta(days=1)), ("1w", timedelta(days=7)))},
    "dbt_intermediate.int_ohlcv_1m_days": ("exchange, symbol, day", "day", timedelta(days=1)),
    "dbt_intermediate.int_dq_candle_hours_1m": ("exchange, symbol, period_start", "period_start", timedelta(hours=1)),
    "dbt_intermediate.int_dq_hourly_1m": ("exchange, symbol, period_start", "period_start", timedelta(hours=1)),
    "marts.data_quality_summary": ("exchange, symbol, grain, period_start", "period_start", timedelta(hours=1)),
}


# the market's names of a relation keyed by market_id
NAMES = {"marts.candles_1m": " join staging.market as m on m.market_id = t.market_id"}
# the 1m series of the market %(e)s, %(s)s (candles_1m's rows)
MARKET_ID = ("market_id = (select market_id from staging.market"
             " where exchange = %(e)s and symbol = %(s)s and timeframe = '1m')")


def snapshot(conn) -> dict[str, dict[tuple, tuple[str, str, datetime]]]:
    """relation -> key -> (the row as text, xmin, period start)."""
    out = {}
    for relation, (key, column, _) in RELATIONS.items():
        rows = query(conn, f"select {key}, t::text, t.xmin::text, {column}"
                           f" from {relation} as t{NAMES.get(relation, '')}")
        out[relation] = {r[:-3]: r[-3:] for r in rows}
    return out


def in_slice(relation: str, key: tuple, start_at: datetime, market: tuple[str, str],
             start: datetime | None, end: datetime | None) -> bool:
    """The row's market is the slice's and its period overlaps [start, end)."""
    width = RELATIONS[relation][2]
    if relation == "marts.data_quality_summary" and key[2] == "day":
        width = timedelta(days=1)
    overlaps = (start is None or start_at + width > start) and (end is None or start_at < end)
    return (key[0], key[1]) == market and overlaps


def rebuild(warehouse_dsn: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AIRFLOW_CONN_MARKETFLOW_POSTGRES": warehouse_dsn,
           "MARKETFLOW_REBUILD_DIR": str(tmp_path / "rebuild")}
    # the module, not the console script: the script of the shared virtualenv imports another checkout
    return subprocess.run([sys.executable, "-m", "marketflow.cli", "rebuild", *args], env=env,
                          capture_output=True, text=True, timeout=600)


def corrupt(conn, market: tuple[str, str], start: datetime, end: datetime) -> None:
    """Damage every kind of relation inside the slice: wrong values, missing rows, a row that should not be."""
    exchange, symbol = market
    inside = "exchange = %(e)s and symbol = %(s)s and {col} >= %(lo)s and {col} < %(hi)s"
    inside_1m = MARKET_ID + " and open_time >= %(lo)s and open_time < %(hi)s"
    p = {"e": exchange, "s": symbol, "lo": start, "hi": end}
    with conn.cursor() as cur:
        cur.execute("update marts.candles_1m set close = close * 2, high = high * 2 where "
                    + inside_1m + " and extract(minute from open_time)::int %% 7 = 0", p)
        assert cur.rowcount > 10
        cur.execute("delete from marts.candles_1m where " + inside_1m
                    + " and extract(minute from open_time)::int %% 11 = 3", p)
        assert cur.rowcount > 10
        cur.execute("update marts.candles_1m set rsi_14 = -1 where " + inside_1m
                    + " and extract(minute from open_time)::int %% 5 = 1", p)
        cur.execute("update marts.ohlcv_5m set volume = 0 where " + inside.format(col="open_time"), p)
        cur.execute("delete from marts.ohlcv_15m where " + inside.format(col="open_time"), p)
        # the hour that holds start (partly outside the range) and one inside
        cur.execute("update marts.ohlcv_1h set close = -1 where exchange = %(e)s and symbol = %(s)s"
                    " and open_time = date_trunc('hour', %(lo)s::timestamptz)", p)
        # through the view: the indicator columns of ohlcv_1h's rows
        cur.execute("update marts.indicators_1h set rsi_14 = 99 where " + inside.format(col="open_time"), p)
        assert cur.rowcount > 0
        cur.execute("update dbt_intermediate.int_dq_candle_hours_1m set present = 0 where "
                    + inside.format(col="period_start"), p)
        cur.execute("delete from dbt_intermediate.int_dq_hourly_1m where " + inside.format(col="period_start"), p)
        cur.execute("update marts.data_quality_summary set quality_score = 0 where "
                    + inside.format(col="period_start"), p)
        cur.execute("update dbt_intermediate.int_ohlcv_1m_days set candles = 0 where exchange = %(e)s"
                    " and symbol = %(s)s and day = date_trunc('day', %(lo)s::timestamptz, 'UTC')", p)
        # a candle in the range that staging does not have (a row from a bad manual insert)
        cur.execute("insert into marts.candles_1m (market_id, open_time, open, high, low, close, volume, quote_volume,"
                    " trades, ingested_at, candle_index, inputs_complete) select market_id,"
                    " open_time + interval '30 seconds', open, high, low, close, volume, quote_volume, trades,"
                    " ingested_at, candle_index, inputs_complete from marts.candles_1m where "
                    + MARKET_ID + " and open_time = %(lo)s", p)
    conn.commit()


def check_rebuilt(conn, before: dict, market: tuple[str, str], start: datetime | None, end: datetime | None) -> int:
    """Every relation equals the full build's; rows outside the slice keep their xmin. Returns the
    number of rows rewritten."""
    after = snapshot(conn)
    rewritten = 0
    for relation, rows in before.items():
        got = after[relation]
        assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in rows.items()}, (
            f"{relation} differs from the full build after the rebuild")
        for key, (_, xmin, start_at) in rows.items():
            if got[key][1] != xmin:
                assert in_slice(relation, key, start_at, market, start, end), (
                    f"{relation} {key}: a row outside the slice was rewritten")
                rewritten += 1
    return rewritten


def test_rebuild_of_one_market_and_range_equals_the_full_build_and_leaves_the_rest(
        dbt: DbtRunner, loaded_warehouse, warehouse_dsn: str, tmp_path: Path) -> None:
    conn = loaded_warehouse
    full = dbt("run")
    before = snapshot(conn)
    market = ("binance", "ETH/USDT")
    # not aligned to the hour at either end: the hours, 15m buckets and the day around the edges are
    # partly inside, so they are recomputed whole, and the rows around them must stay as they are
    start, end = datetime(2022, 8, 15, 6, 30, tzinfo=UTC), datetime(2022, 8, 15, 13, 10, tzinfo=UTC)
    corrupt(conn, market, start, end)
    assert snapshot(conn) != before

    res = rebuild(warehouse_dsn, tmp_path, "--exchange", "binance", "--symbol", "ETH/USDT",
                  "--start", "2022-08-15T06:30:00Z", "--end", "2022-08-15T13:10:00Z")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "rebuilt binance ETH/USDT" in res.stdout
    rewritten = check_rebuilt(conn, before, market, start, end)
    assert rewritten >= 400  # the range's 400 candles at least: it really was rebuilt
    # and the range's candles are the recorded files' (the oracle that is not a build)
    files = sample_candles()[market]
    rows = query(conn, "select open_time, open, high, low, close, volume, quote_volume, trades from marts.ohlcv_1m"
                       " where exchange = %s and symbol = %s and open_time >= %s and open_time < %s order by 1",
                 (*market, start, end))
    assert len(rows) == 400
    for open_time, *values in rows:
        assert tuple(values) == files[int(open_time.timestamp() * 1000)], open_time
    print(f"full build {full.seconds:.1f} s; rebuild of 400 minutes of one market: {res.stdout.strip()}")


def test_rebuild_of_one_whole_market_and_of_a_range_of_all_markets(
        dbt: DbtRunner, loaded_warehouse, warehouse_dsn: str, tmp_path: Path) -> None:
    conn = loaded_warehouse
    dbt("run")
    before = snapshot(conn)
    market = ("okx", "BTC/USDT")
    corrupt(conn, market, datetime(2025, 11, 24, tzinfo=UTC), datetime(2025, 11, 25, tzinfo=UTC))
    res = rebuild(warehouse_dsn, tmp_path, "--exchange", "okx", "--symbol", "BTC/USDT")
    assert res.returncode == 0, res.stdout + res.stderr
    assert check_rebuilt(conn, before, market, None, None) >= 2880

    # a range only, every market: okx's two hours are rebuilt (binance has no candle in 2025)
    before = snapshot(conn)
    res = rebuild(warehouse_dsn, tmp_path, "--start", "2025-11-25T00:00:00Z", "--end", "2025-11-25T02:00:00Z")
    assert res.returncode == 0, res.stdout + res.stderr
    assert check_rebuilt(conn, before, market, datetime(2025, 11, 25, tzinfo=UTC),
                         datetime(2025, 11, 25, 2, tzinfo=UTC)) >= 120


def test_rebuild_refuses_what_it_cannot_do(warehouse_dsn: str, tmp_path: Path) -> None:
    res = rebuild(warehouse_dsn, tmp_path)
    assert res.returncode == 2 and "dbt build --full-refresh" in res.stderr
    res = rebuild(warehouse_dsn, tmp_path, "--start", "2025-11-25T02:00:00Z", "--end", "2025-11-25T00:00:00Z")
    assert res.returncode == 2 and "is not before --end" in res.stderr
    res = rebuild(warehouse_dsn, tmp_path, "--symbol", "BTC/USDT", "--start", "yesterday")
    assert res.returncode == 2 and "not an ISO-8601 time" in res.stderr

