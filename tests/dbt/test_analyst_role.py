"""The analyst role reads the marts and nothing else, the data-quality drill-down included, and its
members' sessions show times in UTC."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from unittest import mock
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest
from psycopg2 import errors

from marketflow.schema import apply_ddl

FORBIDDEN_READS = ["staging.ohlcv", "staging.candle", "staging.market", "ops.run", "staging.ohlcv_rejects",
                   "ops.backfill_tasks", "ops.market_config",
                   "dbt_staging.stg_ohlcv", "dbt_intermediate.int_markets"]
FORBIDDEN_WRITES = [
    "INSERT INTO marts.candles_1m (market_id, open_time) VALUES (1, now())",
    "DELETE FROM marts.candles_1m",
    "CREATE TABLE marts.scratch (x int)",
    "CREATE TABLE public.scratch (x int)",
    "DROP VIEW marts.latest_price",
]


@pytest.fixture
def analyst_dsn(warehouse_dsn: str, pg_conn, loaded_warehouse, dbt) -> str:
    dbt("build")
    with pg_conn.cursor() as cur:
        cur.execute("DROP ROLE IF EXISTS analyst_test_login")
        cur.execute("CREATE ROLE analyst_test_login LOGIN PASSWORD 'analyst' IN ROLE analyst")
    pg_conn.commit()
    parts = urlsplit(warehouse_dsn)
    yield urlunsplit(parts._replace(netloc=f"analyst_test_login:analyst@{parts.hostname}:{parts.port}"))
    with pg_conn.cursor() as cur:
        cur.execute("DROP ROLE IF EXISTS analyst_test_login")
    pg_conn.commit()


def test_analyst_reads_marts_only(analyst_dsn: str) -> None:
    conn = psycopg2.connect(analyst_dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for mart in ("ohlcv_1m", "indicators_1m", "candles_1m", "candles_1m_markets", "latest_price", "markets",
                         "data_quality_summary", "data_quality_flagged_candles"):  # fmt: skip
                cur.execute(f"SELECT count(*) FROM marts.{mart}")
                assert cur.fetchone()[0] > 0, mart
            # the candles' lineage: staging's ids, through the view (staging itself stays forbidden)
            cur.execute("SELECT count(*), count(raw_payload_id),"
                        " count(*) FILTER (WHERE staged_ingested_at = ingested_at) FROM marts.ohlcv_1m_lineage")
            assert cur.fetchone() == (5760, 5760, 5760)
            # the drill-down the summary points to: the sample's one volume anomaly, with its candle
            cur.execute("SELECT exchange, open_time, is_volume_anomaly, volume FROM marts.data_quality_flagged_candles")
            assert cur.fetchall() == [("binance", datetime(2022, 8, 14, 13, 16, tzinfo=UTC), True, mock.ANY)]
            for relation in FORBIDDEN_READS:
                with pytest.raises(errors.InsufficientPrivilege):
                    cur.execute(f"SELECT 1 FROM {relation} LIMIT 1")
            for statement in FORBIDDEN_WRITES:
                with pytest.raises(errors.InsufficientPrivilege):
                    cur.execute(statement)
    finally:
        conn.close()


@contextmanager
def _session(dsn: str, **env: str) -> Iterator:
    """A connection opened with extra libpq environment (e.g. PGTZ), as a client would."""
    with mock.patch.dict(os.environ, env):
        conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


def test_analyst_sessions_are_in_utc(analyst_dsn: str, warehouse_dsn: str, pg_conn) -> None:
    """A member login role whose own default is another zone sees UTC once the DDL has run (the
    hourly prepare_storage applies it); daily candles open at 00:00+00. A member without a zone
    of its own gets the database's UTC default. Only a client that asks for a zone gets it."""
    with pg_conn.cursor() as cur:
        cur.execute("ALTER ROLE analyst_test_login SET timezone = 'Asia/Kathmandu'")  # the member's own default
    pg_conn.commit()
    day = "SELECT open_time::text FROM marts.ohlcv_1d WHERE exchange = 'okx' ORDER BY open_time LIMIT 1"
    with _session(analyst_dsn) as cur:
        cur.execute(day)
        assert cur.fetchone() == ("2025-11-23 05:45:00+05:45",)  # before: the candle at a local offset

    apply_ddl(pg_conn)
    with _session(analyst_dsn) as cur:
        cur.execute("SHOW timezone")
        assert cur.fetchone() == ("UTC",)
        cur.execute(day)
        assert cur.fetchone() == ("2025-11-23 00:00:00+00",)

    # a member that joined after the DDL ran, with no zone of its own: the database's default
    with pg_conn.cursor() as cur:
        cur.execute("DROP ROLE IF EXISTS analyst_test_late")
        cur.execute("CREATE ROLE analyst_test_late LOGIN PASSWORD 'late' IN ROLE analyst")
    pg_conn.commit()
    try:
        parts = urlsplit(warehouse_dsn)
        late = urlunsplit(parts._replace(netloc=f"analyst_test_late:late@{parts.hostname}:{parts.port}"))
        with _session(late) as cur:
            cur.execute("SHOW timezone")
            assert cur.fetchone() == ("UTC",)
    finally:
        with pg_conn.cursor() as cur:
            cur.execute("DROP ROLE IF EXISTS analyst_test_late")
        pg_conn.commit()

    # the client's own request wins (documented in include/sql/040_roles.sql and the README)
    with _session(analyst_dsn, PGTZ="America/New_York") as cur:
        cur.execute("SHOW timezone")
        assert cur.fetchone() == ("America/New_York",)
