"""A deployment of the last release (checksum applier, frozen in release_3741f8b/) with data, upgraded
to head: every row intact, and the schema object for object what a fresh install of head has."""

from __future__ import annotations

import psycopg2
import pytest
from migration_support import RELEASE_SQL_DIR, query

from marketflow import schema
from marketflow.migrations import MigrationError, revision_files

# One or more rows in every table the release created, the numbers as the exchanges send them.
RELEASE_ROWS = """
INSERT INTO staging.ohlcv (exchange, symbol, timeframe, open_time, open, high, low, close, volume, quote_volume,
                           trades, raw_payload_id, run_id, ingested_at) VALUES
  ('binance', 'ETH/USDT', '1m', '2022-08-14 00:00+00', '1983.55000000', '1984.00000000', '1982.10000000',
   '1983.55000000', '412.78650000', '818823.78125650', 1201, 'p1', 'run-1', '2026-01-01 00:00:01+00'),
  ('okx', 'BTC/USDT', '1m', '2025-11-23 16:00+00', '86000.1', '86012.3', '85990', '86001.9',
   '0.000000012345678901234567890123', NULL, NULL, 'p2', 'run-1', '2026-01-01 00:00:02+00');
INSERT INTO staging.ohlcv_rejects (raw_payload_id, row_index, exchange, symbol, timeframe, open_time, raw_row,
                                   reason, run_id) VALUES
  ('p3', 4, 'binance', 'ETH/USDT', '1m', '2022-08-14 00:04+00', '[1660435440000,"1","0.5","1","1","1"]',
   'high below open/close', 'run-1'),
  ('p4', -1, 'okx', 'BTC/USDT', '1m', NULL, '{"code":"50011"}', 'unknown envelope', 'run-2');
INSERT INTO staging.ticker (exchange, symbol, ts, last, bid, ask, bid_volume, ask_volume, base_volume,
                            quote_volume, raw_payload_id, run_id) VALUES
  ('binance', 'ETH/USDT', '2022-08-15 23:59:59.123+00', '1900.01', '1900.00', '1900.02', '3.1', '0.0042',
   '512345.6789', '975000000.12', 'p5', 'run-2');
INSERT INTO staging.ohlcv_anomalies (raw_payload_id, kind, open_time, exchange, symbol, timeframe, detail, run_id)
VALUES ('p1', 'revised', '2022-08-14 00:00+00', 'binance', 'ETH/USDT', '1m', 'close 1983.54 -> 1983.55', 'run-1');
INSERT INTO ops.market_config (exchange, symbol, timeframe, ccxt_id, history_start, history_end, enabled) VALUES
  ('binance', 'ETH/USDT', '1m', 'binance', '2022-08-14+00', '2022-08-16+00', true),
  ('okx', 'BTC/USDT', '1m', 'okx', '2025-01-01+00', NULL, true);
INSERT INTO ops.backfill_tasks (exchange, symbol, timeframe, window_start, window_end, reason, priority, status,
                                outcome, attempts, candles_found) VALUES
  ('okx', 'BTC/USDT', '1m', '2025-11-23 10:00+00', '2025-11-23 11:00+00', 'gap', 5, 'completed', 'repaired', 1, 60),
  ('okx', 'BTC/USDT', '1m', '2025-11-23 11:00+00', '2025-11-23 12:00+00', 'gap', 4, 'pending', NULL, 0, NULL);
INSERT INTO ops.rate_limit_buckets (exchange, capacity, refill_per_second, tokens, paused_until, pause_reason) VALUES
  ('binance', '600', '90.000000000000000001', '12.5', '2026-01-01 00:01+00', '429 Retry-After 60');
INSERT INTO ops.rate_limit_metrics (exchange, minute, tokens_used, acquisitions, denied, wait_seconds, http_429,
                                    http_418, live_tokens_used, live_wait_seconds) VALUES
  ('binance', '2026-01-01 00:00+00', '5400.25', 300, 2, '1.75', 1, 0, '40', '0.25');
INSERT INTO ops.api_errors (exchange, symbol, endpoint, http_status, error_class, exception, message, attempt,
                            will_retry, dag_id, run_id, task_id, try_number) VALUES
  ('okx', 'BTC/USDT', 'GET /api/v5/market/candles', 503, 'exchange_unavailable', 'ExchangeNotAvailable',
   'HTTP 503', 1, true, 'market_candles_1m', 'run-3', 'okx.ingest', 1);
INSERT INTO ops.market_health (exchange, symbol, consecutive_failures, last_error_class, last_error, status,
                               consecutive_permanent_failures, suspended_at, suspended_reason) VALUES
  ('binance', 'LUNA/USDT', 3, 'bad_symbol', 'binance does not have market symbol LUNA/USDT', 'suspended', 3,
   '2026-01-01 00:00+00', '3 permanent failures in a row, last bad_symbol');
INSERT INTO ops.alerts (kind, subject, message, dag_id, run_id, delivered) VALUES
  ('market_suspended', 'binance LUNA/USDT', 'suspended after 3 permanent failures', 'market_candles_1m', 'run-3',
   true);
INSERT INTO ops.market_lists (exchange, api, loaded_at, markets, currencies) VALUES
  ('binance', 'https://api.binance.com', '2026-01-01 00:00+00', '{"ETH/USDT": {"precision": {"price": 0.01}}}',
   NULL);
INSERT INTO ops.market_task_outcomes (dag_id, run_id, task_id, exchange, symbol, try_number, outcome, error_class,
                                      error, candles, seconds) VALUES
  ('market_candles_1m', 'run-3', 'okx.ingest', 'okx', 'BTC/USDT', 1, 'failed_transient', 'exchange_unavailable',
   'HTTP 503', NULL, '0.731');
"""

DATA_TABLES = ["staging.ohlcv", "staging.ohlcv_rejects", "staging.ticker", "staging.ohlcv_anomalies",
               "ops.market_config", "ops.backfill_tasks", "ops.rate_limit_buckets", "ops.rate_limit_metrics",
               "ops.api_errors", "ops.market_health", "ops.alerts", "ops.market_lists", "ops.market_task_outcomes"]


def _release_database(dsn: str, release_applier, rows: bool = True) -> None:
    conn = psycopg2.connect(dsn)
    try:
        release_applier.apply_ddl(conn, RELEASE_SQL_DIR)
        if rows:
            with conn.cursor() as cur:
                cur.execute(RELEASE_ROWS)
            conn.commit()
    finally:
        conn.close()


# Columns later revisions added to a release's table, left out of the row-for-row comparison (each
# checked on its own): 0009's egress identity of a rate-limit bucket, 0011's live burst.
ADDED_COLUMNS = {"ops.rate_limit_buckets": ["egress_id", "live_until"]}


def _rows(dsn: str) -> dict[str, list[str]]:
    """Every row of every table, as PostgreSQL's own text of the row (numerics digit for digit; a table
    with columns added since the release as JSON without them, numerics still digit for digit)."""
    def row(table: str) -> str:
        added = ", ".join(f"'{c}'" for c in ADDED_COLUMNS.get(table, []))
        return f"(to_jsonb(t) - ARRAY[{added}]::text[])::text" if added else "t::text"
    return {table: [r[0] for r in query(dsn, f"SELECT {row(table)} FROM {table} AS t ORDER BY 1")]
            for table in DATA_TABLES}


def _tables(dsn: str) -> set[str]:
    """Tables (a partitioned table once, not its partitions)."""
    return {r[0] for r in query(dsn, "SELECT schemaname || '.' || tablename FROM pg_tables "
                                     "WHERE schemaname IN ('staging', 'ops', 'marts', 'marketflow_meta') "
                                     "AND NOT (schemaname || '.' || quote_ident(tablename))::regclass::oid IN "
                                     "(SELECT inhrelid FROM pg_inherits)")}


def test_a_release_deployment_with_data_upgrades_to_head(new_database, release_applier, schema_dump) -> None:
    old = new_database()
    _release_database(old, release_applier)
    assert _tables(old) == set(DATA_TABLES) | {"ops.schema_migrations"}  # every table of the release...
    before = _rows(old)
    assert all(before.values())  # ...with rows

    applied = schema.upgrade(old)

    every = [r.revision for r in revision_files()]
    assert every[0] == "0001" and applied == every[1:]  # adopted at the baseline 0001 without re-running it
    assert schema.current(old) == schema.head()
    assert _rows(old) == before
    assert query(old, "SELECT close::text, volume::text FROM staging.ohlcv ORDER BY exchange") == [
        ("1983.55000000", "412.78650000"), ("86001.9", "0.000000012345678901234567890123")]
    assert query(old, "SELECT refill_per_second::text FROM ops.rate_limit_buckets") == [("90.000000000000000001",)]
    # the release's one bucket per exchange became the default egress identity's
    assert query(old, "SELECT exchange, egress_id FROM ops.rate_limit_buckets") == [("binance", "default")]

    fresh = new_database()
    assert schema.upgrade(fresh) == every
    # 0004 gave the upgraded staging.ohlcv (0010: staging.candle) a partition for every month from its first
    # candle to its last; a fresh install gets them as candles of those months arrive
    query(fresh, "SELECT ops.ensure_month_partitions('staging.candle', '2022-08-01+00', '2025-11-01+00')")
    assert schema_dump(old) == schema_dump(fresh)
    # Tables added since the release: the version table, the retention floor (0004), the API's tokens (0005),
    # each market's latest ticker (0006), the narrow candles and their market and run keys (0010, which made
    # staging.ohlcv a view of them).
    assert _tables(old) == _tables(fresh) == set(DATA_TABLES) - {"staging.ohlcv"} | {
        "marketflow_meta.alembic_version", "ops.partition_retention", "ops.api_tokens", "staging.ticker_latest",
        "staging.candle", "staging.market", "ops.run"}


def test_the_baseline_revision_is_the_release(new_database, release_applier, schema_dump) -> None:
    """A fresh database at 0001 has exactly the release's objects, plus the version table."""
    old = new_database()
    _release_database(old, release_applier, rows=False)
    fresh = new_database()
    assert schema.upgrade(fresh, "0001") == ["0001"]
    version_table = [s for s in schema_dump(fresh) if "marketflow_meta" in s]
    assert len(version_table) == 5  # schema, owner, table, owner, primary key
    assert [s for s in schema_dump(fresh) if s not in version_table] == schema_dump(old)


def test_a_release_database_with_other_checksums_is_refused(new_database, release_applier) -> None:
    old = new_database()
    _release_database(old, release_applier)
    query(old, "UPDATE ops.schema_migrations SET checksum = 'edited' WHERE filename = '030_quality_and_ops.sql'")

    with pytest.raises(MigrationError, match=r"differs from the baseline revision 0001 in 030_quality_and_ops\.sql"):
        schema.upgrade(old)
    assert schema.current(old) is None  # nothing stamped, nothing run
    assert "ops.schema_migrations" in _tables(old)


def test_a_database_from_a_newer_release_is_refused_by_name(new_database) -> None:
    dsn = new_database()
    schema.upgrade(dsn)
    query(dsn, "UPDATE marketflow_meta.alembic_version SET version_num = '0042'")

    head = schema.head()
    with pytest.raises(MigrationError, match=rf"at revision '0042', which this marketflow release does not know "
                                             rf"\(its newest is '{head}'\).*downgrade {head}"):
        schema.upgrade(dsn)
    assert schema.current(dsn) == "0042"
