"""The analyst role reads the marts and nothing else."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest
from psycopg2 import errors

FORBIDDEN_READS = ["staging.ohlcv", "staging.ohlcv_rejects", "ops.backfill_tasks", "ops.market_config",
                   "dbt_staging.stg_ohlcv", "dbt_intermediate.int_markets"]
FORBIDDEN_WRITES = [
    "INSERT INTO marts.ohlcv_1m (exchange, symbol, open_time) VALUES ('x', 'X/Y', now())",
    "DELETE FROM marts.ohlcv_1m",
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
            for mart in ("ohlcv_1m", "latest_price", "markets"):
                cur.execute(f"SELECT count(*) FROM marts.{mart}")
                assert cur.fetchone()[0] > 0, mart
            for relation in FORBIDDEN_READS:
                with pytest.raises(errors.InsufficientPrivilege):
                    cur.execute(f"SELECT 1 FROM {relation} LIMIT 1")
            for statement in FORBIDDEN_WRITES:
                with pytest.raises(errors.InsufficientPrivilege):
                    cur.execute(statement)
    finally:
        conn.close()
