"""Revision 0004 on a deployment of the last release (frozen in release_3741f8b/) holding months of 1m
history in staging.ohlcv and in the dbt marts ohlcv_1m and indicators_1m (plain tables, as that
release's dbt built them): upgraded, every row is kept (count and checksum of each table), each table
is partitioned by month, views reading it still work, and a downgrade gives back the plain tables
object for object with the same rows."""

from __future__ import annotations

import psycopg2
from migration_support import RELEASE_SQL_DIR, query

from marketflow import schema

# Two markets, 2025-09-15 to 2026-01-20, a candle every 7 minutes (~26,000 each): five months, the
# first and last partial. Prices with varying scales (numerics must keep their digits).
HISTORY = """
INSERT INTO staging.ohlcv (exchange, symbol, timeframe, open_time, open, high, low, close, volume, quote_volume,
                           trades, raw_payload_id, run_id, ingested_at)
SELECT m.exchange, m.symbol, '1m', t,
       (1000 + i % 97)::numeric / 10 ^ (i % 4), (1001 + i % 97)::numeric / 10 ^ (i % 4),
       (999 + i % 97)::numeric / 10 ^ (i % 4), (1000 + i % 97 + (i % 3 - 1) * 0.5)::numeric / 10 ^ (i % 4),
       ('0.' || lpad((i * 7919 % 100000)::text, 5, '0'))::numeric, CASE WHEN m.exchange = 'binance' THEN i * 3 END,
       CASE WHEN m.exchange = 'binance' THEN i % 50 END, 'payload-' || i / 1000, 'run-' || i / 500,
       t + interval '90 seconds'
FROM (VALUES ('binance', 'ETH/USDT'), ('okx', 'BTC/USDT')) AS m(exchange, symbol),
     generate_series(timestamptz '2025-09-15 00:00+00', '2026-01-20 00:00+00', interval '7 minutes')
         WITH ORDINALITY AS g(t, i);
-- marts as the release's dbt created them: CREATE TABLE AS, then its indexes (dbt's md5 names)

CREATE TABLE marts.ohlcv_1m AS
SELECT exchange, symbol, open_time, open, high, low, close, volume, quote_volume, trades,
       open_time + interval '1 minute' AS close_time, raw_payload_id, run_id, ingested_at
FROM staging.ohlcv ORDER BY exchange, symbol, open_time;
CREATE UNIQUE INDEX "9c1a5c0e1bd7c5e0b2b3c4b6c1f2a3d4" ON marts.ohlcv_1m (exchange, symbol, open_time desc);
CREATE INDEX IF NOT EXISTS "0b3e1c6f5a2d4e8f9a1b2c3d4e5f6a7b" ON marts.ohlcv_1m (ingested_at);
COMMENT ON TABLE marts.ohlcv_1m IS '1-minute candles, one row per (exchange, symbol, open_time).';
COMMENT ON COLUMN marts.ohlcv_1m.close IS 'Close price as the exchange sent it.';
CREATE TABLE marts.indicators_1m AS
SELECT exchange, symbol, open_time, close, row_number() OVER w AS candle_index, true AS is_closed,
       row_number() OVER w >= 200 AS inputs_complete,
       avg(close) OVER (w ROWS 19 PRECEDING)::double precision AS sma_20, close::double precision / 3 AS ema_12,
       ingested_at AS last_ingested_at
FROM marts.ohlcv_1m WINDOW w AS (PARTITION BY exchange, symbol ORDER BY open_time);
CREATE UNIQUE INDEX "5d41402abc4b2a76b9719d911017c592"
    ON marts.indicators_1m (exchange, symbol, open_time desc);
CREATE INDEX IF NOT EXISTS "7d793037a0760186574b0282f2f435e7" ON marts.indicators_1m (last_ingested_at);
GRANT USAGE ON SCHEMA marts TO analyst;
GRANT SELECT ON ALL TABLES IN SCHEMA marts TO analyst;
-- dbt's staging view reads staging.ohlcv (a view depends on the table itself, not on its name)
CREATE SCHEMA dbt_staging;
CREATE VIEW dbt_staging.stg_ohlcv AS SELECT exchange, symbol, open_time, close FROM staging.ohlcv;
"""

TABLES = ("staging.ohlcv", "marts.ohlcv_1m", "marts.indicators_1m")
MONTHS = ["2025-09", "2025-10", "2025-11", "2025-12", "2026-01"]


def _release_with_history(dsn: str, release_applier) -> None:
    conn = psycopg2.connect(dsn)
    try:
        release_applier.apply_ddl(conn, RELEASE_SQL_DIR)
        with conn.cursor() as cur:
            cur.execute(HISTORY)
        conn.commit()
    finally:
        conn.close()


def _fingerprint(dsn: str) -> dict[str, tuple[int, str]]:
    """Rows and an md5 over every row's text (numerics digit for digit), per table; and the view's count."""
    found = {table: tuple(query(dsn, f"SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) "
                                     f"FROM {table} AS t")[0]) for table in TABLES}
    found["dbt_staging.stg_ohlcv"] = tuple(query(dsn, "SELECT count(*), '' FROM dbt_staging.stg_ohlcv")[0])
    return found


def _layout(dsn: str, table: str) -> tuple[str, list[str]]:
    """relkind of ``table`` and its partitions' months (``default`` for the DEFAULT one)."""
    kind = query(dsn, f"SELECT relkind::text FROM pg_class WHERE oid = '{table}'::regclass")[0][0]
    months = [r[0] for r in query(dsn, f"""
        SELECT CASE WHEN pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT' THEN 'default'
               ELSE to_char(substring(pg_get_expr(c.relpartbound, c.oid) FROM '''([^'']+)''')::timestamptz
                            AT TIME ZONE 'UTC', 'YYYY-MM') END
        FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
        WHERE i.inhparent = '{table}'::regclass ORDER BY 1""")]
    return kind, months


def test_months_of_history_upgrade_into_partitions_and_back(new_database, release_applier, schema_dump) -> None:
    old = new_database()
    _release_with_history(old, release_applier)
    schema.upgrade(old, "0003")
    before = _fingerprint(old)
    assert before["staging.ohlcv"][0] == before["marts.ohlcv_1m"][0] == before["marts.indicators_1m"][0] > 50_000
    plain_dump = schema_dump(old)

    assert schema.upgrade(old, "0004") == ["0004"]
    assert _fingerprint(old) == before
    for table in TABLES:
        assert _layout(old, table) == ("p", [*MONTHS, "default"]), table
        assert query(old, f"SELECT count(*) FROM ONLY {table}") == [(0,)]  # rows live in the partitions
        # the default partition is empty; every month's rows are in its own partition
        assert query(old, f"SELECT count(*) FROM {table}_default") == [(0,)]
        assert query(old, f"SELECT count(*) FROM {table}_p2025_12 WHERE open_time < '2025-12-01+00' "
                          "OR open_time >= '2026-01-01+00'") == [(0,)]
    assert query(old, "SELECT has_table_privilege('analyst', 'marts.ohlcv_1m', 'SELECT'), "
                      "obj_description('marts.ohlcv_1m'::regclass, 'pg_class'), "
                      "col_description('marts.ohlcv_1m'::regclass, 7)") == [
        (True, "1-minute candles, one row per (exchange, symbol, open_time).", "Close price as the exchange sent it.")]
    # the indexes keep their names on the parent and exist on every partition
    assert query(old, "SELECT count(*) FROM pg_indexes WHERE schemaname = 'marts' AND indexname IN "
                      "('9c1a5c0e1bd7c5e0b2b3c4b6c1f2a3d4', '0b3e1c6f5a2d4e8f9a1b2c3d4e5f6a7b')") == [(2,)]
    assert query(old, "SELECT count(*) FROM pg_indexes WHERE tablename LIKE 'ohlcv_1m_p%'") == [(2 * len(MONTHS),)]
    # pruning: a market-day query reads one partition
    plan = "\n".join(r[0] for r in query(old, "EXPLAIN SELECT * FROM marts.ohlcv_1m WHERE exchange = 'okx' "
                                              "AND symbol = 'BTC/USDT' AND open_time >= '2025-11-03+00' "
                                              "AND open_time < '2025-11-04+00'"))
    assert "ohlcv_1m_p2025_11" in plan and "p2025_10" not in plan and "_default" not in plan, plan

    # the pipeline's schemas equal a fresh install that has partitions for the same months
    fresh = new_database()
    schema.upgrade(fresh, "0004")
    query(fresh, "SELECT ops.ensure_month_partitions('staging.ohlcv', '2025-09-01+00', '2026-01-01+00')")
    ours = [s for s in schema_dump(old) if "marts" not in s and "dbt_staging" not in s]
    # (sorted: the view reading staging.ohlcv makes pg_dump print the table earlier)
    assert sorted(ours) == sorted(s for s in schema_dump(fresh) if "marts" not in s)

    # downgrade: plain tables again, object for object, every row
    assert schema.downgrade(old, "0003") == ["-0004"]
    assert _fingerprint(old) == before
    assert schema_dump(old) == plain_dump
    # and up again
    assert schema.upgrade(old, "0004") == ["0004"]
    assert _fingerprint(old) == before
    assert _layout(old, "marts.indicators_1m") == ("p", [*MONTHS, "default"])
