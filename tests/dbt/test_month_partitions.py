"""The 1m marts partitioned by month (dbt/macros/month_partitions.sql) and the retention that drops
their old months whole (marketflow.housekeeping), against brute-force counts from staging."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from support.dbt_helpers import DbtRunner, query

from marketflow.config import RetentionConfig
from marketflow.housekeeping import drop_expired_partitions, ensure_month_partitions, retention_floor

ONE_MINUTE = ("marts.ohlcv_1m", "marts.indicators_1m")
# the one partitioned 1m mart: ohlcv_1m and indicators_1m are views of candles_1m's rows (storage stage 4)
PARTITIONED = ("marts.candles_1m",)
ROLLUPS = ("ohlcv_5m", "ohlcv_15m", "ohlcv_1h", "ohlcv_1d", "ohlcv_1w")
MODELS = ["+indicators_1m", "ohlcv_1m", *ROLLUPS]  # ohlcv_1m: the view the rollups read (over candles_1m)
NOW = datetime(2025, 11, 26, 12, tzinfo=UTC)  # the maintenance run's logical date

# Six hours of minutes of one more market in each of 2025-08 .. 2025-11 (beside the sample days of
# 2022-08 and 2025-11): months to keep and months to drop.
SYNTHETIC = """
insert into staging.ohlcv (exchange, symbol, timeframe, open_time, open, high, low, close, volume,
                           raw_payload_id, run_id)
select 'binance', 'SYN/USDT', '1m', t, 10 + i % 7, 11 + i % 7, 9 + i % 7, 10.5 + i % 7, '1.25', 'syn', 'run-syn'
from generate_series(0, 3) as m(n),
     generate_series(timestamptz '2025-08-10 00:00+00' + m.n * interval '1 month',
                     timestamptz '2025-08-10 05:59+00' + m.n * interval '1 month', interval '1 minute')
         with ordinality as g(t, i)
"""


def _execute(conn, sql: str) -> None:
    with conn.cursor() as cur:
        cur.execute(sql)
    conn.commit()


def _months(conn, table: str) -> list[str]:
    return [r[0] for r in query(conn, "select to_char(from_time at time zone 'UTC', 'YYYY-MM') "
                                      "from ops.month_partitions(%s::regclass) order by 1", (table,))]


def _rows(conn, table: str, where: str = "true") -> list[str]:
    return [r[0] for r in query(conn, f"select t::text from {table} as t where {where} order by 1")]


def _scans(conn, table: str) -> int:
    """Sequential plus index scans of ``table`` so far, every session's included (this session's own
    pending counts flushed first; other sessions flush theirs when they end, as dbt's do)."""
    query(conn, "select pg_stat_force_next_flush()")
    time.sleep(1.5)
    query(conn, "select pg_stat_clear_snapshot()")
    return query(conn, "select coalesce(seq_scan, 0) + coalesce(idx_scan, 0) from pg_stat_user_tables "
                       "where relid = %s::regclass", (table,))[0][0]


def test_the_1m_marts_stay_partitioned_and_retention_drops_whole_months(dbt: DbtRunner, loaded_warehouse) -> None:
    conn = loaded_warehouse
    _execute(conn, SYNTHETIC)
    # the sample rows were COPYed before any month partition existed: storage preparation moves them out
    ensure_month_partitions(conn, NOW)
    assert query(conn, "select count(*) from staging.candle_default") == [(0,)]
    staging_months = ["2022-08", "2025-08", "2025-09", "2025-10", "2025-11", "2025-12"]
    assert _months(conn, "staging.candle") == staging_months

    dbt("run", "-s", *MODELS)
    for view in ONE_MINUTE:
        assert query(conn, "select relkind::text from pg_class where oid = %s::regclass", (view,)) == [("v",)]
    for table in PARTITIONED:
        assert query(conn, "select relkind::text from pg_class where oid = %s::regclass", (table,)) == [("p",)]
        assert _months(conn, table) == staging_months, table
        assert query(conn, f"select count(*) from {table}_default") == [(0,)]
    # a full refresh builds under a temporary name and swaps: still partitioned, partitions renamed back
    dbt("run", "-s", "candles_1m", "ohlcv_1m", "indicators_1m", "--full-refresh")
    for table in PARTITIONED:
        assert _months(conn, table) == staging_months, table
        names = [r[0] for r in query(conn, "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid"
                                           " where i.inhparent = %s::regclass order by 1", (table,))]
        short = table.split(".")[1]
        assert names == sorted([f"{short}_default", *(f"{short}_p{m.replace('-', '_')}" for m in staging_months)])
    all_1m = {table: _rows(conn, table) for table in ONE_MINUTE}
    rollups = {name: _rows(conn, f"marts.{name}") for name in ROLLUPS}
    staged = query(conn, "select count(*) from staging.ohlcv where timeframe = '1m'")[0][0]
    assert len(all_1m["marts.ohlcv_1m"]) == len(all_1m["marts.indicators_1m"]) == staged == 5760 + 4 * 360

    # retention of 2 months on 2025-11-26: 2025-10 and 2025-11 stay
    floor = retention_floor(NOW, 2)
    assert floor == datetime(2025, 10, 1, tzinfo=UTC)
    dropped = drop_expired_partitions(conn, RetentionConfig(ohlcv_1m_months=2), NOW)
    assert {(d.table, d.month) for d in dropped} == {(t, m) for t in PARTITIONED for m in ("2022-08", "2025-08",
                                                                                          "2025-09")}
    old = "open_time < '2025-10-01+00'"
    expected_gone = query(conn, f"select count(*) from staging.ohlcv where timeframe = '1m' and {old}")[0][0]
    assert expected_gone == 2880 + 2 * 360
    for table in PARTITIONED:
        assert sum(d.rows for d in dropped if d.table == table) == expected_gone
        assert _months(conn, table) == ["2025-10", "2025-11", "2025-12"]
    for table in ONE_MINUTE:
        # brute force: exactly the snapshot's rows from the floor on are left, unchanged
        assert _rows(conn, table) == _snapshot_rows(conn, all_1m[table], table, "open_time >= '2025-10-01+00'")
    assert {name: _rows(conn, f"marts.{name}") for name in ROLLUPS} == rollups  # rollups keep everything
    assert drop_expired_partitions(conn, RetentionConfig(ohlcv_1m_months=2), NOW) == []  # idempotent

    # a late correction of a dropped month's candle and a new minute: the incremental run reads
    # neither staging's dropped months nor brings them back; the new minute flows through
    _execute(conn, "update staging.ohlcv set close = close + 0.5, high = high + 0.5, ingested_at = now() "
                "where symbol = 'SYN/USDT' and open_time = '2025-08-10 01:00+00'")
    _execute(conn, "insert into staging.ohlcv (exchange, symbol, timeframe, open_time, open, high, low, close, volume,"
                " raw_payload_id, run_id) values ('binance', 'SYN/USDT', '1m', '2025-11-10 06:00+00', 10, 11, 9,"
                " 10.5, '1.25', 'syn', 'run-syn-2')")
    old_scans = {p: _scans(conn, p) for p in ("staging.candle_p2025_08", "staging.candle_p2022_08")}
    new_scans = _scans(conn, "staging.candle_p2025_11")
    dbt("run", "-s", *MODELS)
    for table in ONE_MINUTE:
        assert query(conn, f"select count(*) from {table} where {old}") == [(0,)]
        assert query(conn, f"select count(*) from {table} where symbol = 'SYN/USDT' "
                           "and open_time = '2025-11-10 06:00+00'") == [(1,)]
    assert {p: _scans(conn, p) for p in old_scans} == old_scans  # not read at all (pruned at plan time)
    assert _scans(conn, "staging.candle_p2025_11") > new_scans
    for name in ROLLUPS:  # the rollups' old buckets are as they were (the correction is not applied)
        old_buckets = _snapshot_rows(conn, rollups[name], f"marts.{name}", old)
        assert old_buckets and _rows(conn, f"marts.{name}", old) == old_buckets, name

    # a full refresh after retention does not re-create the dropped months either
    dbt("run", "-s", "candles_1m", "--full-refresh")  # (drops the views over it until the next run)
    assert _months(conn, "marts.candles_1m") == ["2025-10", "2025-11", "2025-12"]
    assert query(conn, f"select count(*) from marts.candles_1m where {old}") == [(0,)]
    # and a rollup's full refresh, which would lose its old buckets, is refused by name
    refused = dbt("run", "-s", "ohlcv_5m", "--full-refresh", expect_success=False)
    assert "retention has dropped, and lose every older bucket" in refused.output
    assert _snapshot_rows(conn, rollups["ohlcv_5m"], "marts.ohlcv_5m", old) == _rows(conn, "marts.ohlcv_5m", old)


def _snapshot_rows(conn, rows: list[str], table: str, where: str) -> list[str]:
    """The rows of the snapshot ``rows`` (row texts of ``table``) that match ``where``, read back by PostgreSQL."""
    return [r[0] for r in query(conn, f"select t::text from (select (r::{table}).* from unnest(%s::text[]) as r) as t"
                                      f" where {where} order by 1", (rows,))]
