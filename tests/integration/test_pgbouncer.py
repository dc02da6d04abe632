"""The pipeline's warehouse connections through PgBouncer in transaction pooling (issue 18), as
managed Postgres services put it in front: Debian's pgbouncer against the test Postgres.

Transaction pooling hands each transaction whichever server connection is free, so session state
does not carry from one transaction to the next: libpq's `options` are refused at connect, a session
SET or advisory lock stays behind on a server connection other clients then get."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator

import psycopg2
import pytest
from test_market_lists import MARKETS, _exchange_info_calls, _new_task_process_loads

from exchange_emulator.testing import EmulatorProcess
from marketflow.config import Timeouts, load_config
from marketflow.connections import session_options, warehouse_connection
from scripts import stack


@pytest.fixture
def pooler(pg_server, warehouse_dsn: str, test_root) -> Iterator[stack.PgBouncer]:
    database = warehouse_dsn.rsplit("/", 1)[1]
    # One server connection: whatever one client leaves on it, the next one meets.
    bouncer = stack.PgBouncer(test_root / f"pgbouncer-{database}", stack.free_port(), pg_server, (database,),
                              pool_size=1, session_options=session_options(Timeouts()))
    proc = bouncer.process(test_root / "run")
    proc.start()
    yield bouncer
    proc.stop(5)


def test_the_pipeline_connects_through_the_pooler_with_its_timeouts(pooler, warehouse_dsn, monkeypatch) -> None:
    database = warehouse_dsn.rsplit("/", 1)[1]
    with pytest.raises(psycopg2.OperationalError, match="unsupported startup parameter: options"):
        psycopg2.connect(pooler.dsn(database), options=session_options(Timeouts()))
    # The Airflow connection marked as a transaction pooler: no options; PgBouncer's connect_query sets
    # the same timeouts a direct connection gets from its options.
    monkeypatch.setenv("AIRFLOW_CONN_MARKETFLOW_POSTGRES", pooler.dsn(database) + "?pooler=transaction")
    direct = psycopg2.connect(warehouse_dsn, options=session_options(Timeouts()))
    pooled = warehouse_connection()
    try:
        query = ("SELECT current_setting('lock_timeout'), current_setting('statement_timeout'), "
                 "current_setting('idle_in_transaction_session_timeout'), inet_server_port()")
        with direct.cursor() as a, pooled.cursor() as b:
            a.execute(query)
            b.execute(query)
            assert b.fetchone()[:3] == a.fetchone()[:3]
    finally:
        direct.close()
        pooled.close()


def test_tasks_starting_together_through_the_pooler_fetch_the_market_list_once(pooler, warehouse_dsn, pg_conn,
                                                                                 tmp_path) -> None:
    """The market list's lock is a transaction lock: a session lock taken by one client of the single
    server connection would be re-entered by the next client there, and each would fetch the list."""
    with EmulatorProcess() as emulator:
        emulator.add_faults({"kind": "slow", "exchange": "binance", "path": "/api/v3/exchangeInfo", "ms": 2000})
        (tmp_path / "markets.yml").write_text(MARKETS.format(url=emulator.base_url))
        config = load_config(tmp_path / "markets.yml", env={}).exchange("binance")
        with multiprocessing.get_context("fork").Pool(4) as pool:
            loaded = pool.starmap(_new_task_process_loads,
                                  [(config, pooler.dsn(warehouse_dsn.rsplit("/", 1)[1]))] * 4)
        assert all(symbols == loaded[0] and "BTC/USDT" in symbols for symbols in loaded)
        assert _exchange_info_calls(emulator) == 1
    with pg_conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        assert cur.fetchone()[0] == 0  # nothing left held on the pooler's server connection
