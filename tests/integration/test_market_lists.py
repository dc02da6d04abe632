"""The market list is fetched once for all task processes (ops.market_lists), and again when old."""

from __future__ import annotations

import multiprocessing

import psycopg2
import pytest

from exchange_emulator.testing import EmulatorProcess
from marketflow import exchanges
from marketflow.config import load_config
from marketflow.exchanges import build_exchange, load_markets

MARKETS = """
exchanges:
  binance:
    api_base_url: {url}
    options: {{fetchMarkets: {{types: [spot]}}}}
    markets:
      - {{symbol: BTC/USDT, history_start: '2025-06-01T00:00:00Z'}}
"""


@pytest.fixture
def emulator():
    with EmulatorProcess() as emulator:
        yield emulator


@pytest.fixture
def exchange_config(tmp_path, emulator):
    path = tmp_path / "markets.yml"
    path.write_text(MARKETS.format(url=emulator.base_url))
    return load_config(path, env={}).exchange("binance")


def _new_task_process_loads(exchange_config, dsn: str) -> list[str]:
    """What a fresh task process does: nothing cached in it, a client, its market list."""
    exchanges._markets_cache.clear()
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        exchange = build_exchange(exchange_config, conn)
        load_markets(exchange, conn)
        return sorted(exchange.symbols)
    finally:
        conn.close()


def _exchange_info_calls(emulator) -> int:
    return emulator.stats()["requests"]["binance"].get("/api/v3/exchangeInfo", 0)


def test_one_fetch_serves_every_task_process_until_it_is_old(exchange_config, emulator, warehouse_dsn,
                                                             pg_conn) -> None:
    first = _new_task_process_loads(exchange_config, warehouse_dsn)
    second = _new_task_process_loads(exchange_config, warehouse_dsn)
    assert "BTC/USDT" in first and second == first
    assert _exchange_info_calls(emulator) == 1
    with pg_conn.cursor() as cur:
        cur.execute("SELECT exchange, json_typeof(markets) FROM ops.market_lists")
        assert cur.fetchall() == [("binance", "object")]
        # an hour later the list is fetched again, once
        cur.execute("UPDATE ops.market_lists SET loaded_at = loaded_at - interval '61 minutes'")
    pg_conn.commit()
    assert _new_task_process_loads(exchange_config, warehouse_dsn) == first
    assert _new_task_process_loads(exchange_config, warehouse_dsn) == first
    assert _exchange_info_calls(emulator) == 2


def test_tasks_starting_together_fetch_the_list_once(exchange_config, emulator, warehouse_dsn) -> None:
    # a slow answer, so the other three ask while the first is still waiting for it
    emulator.add_faults({"kind": "slow", "exchange": "binance", "path": "/api/v3/exchangeInfo", "ms": 2000})
    with multiprocessing.get_context("fork").Pool(4) as pool:
        loaded = pool.starmap(_new_task_process_loads, [(exchange_config, warehouse_dsn)] * 4)
    assert all(symbols == loaded[0] and "BTC/USDT" in symbols for symbols in loaded)
    assert _exchange_info_calls(emulator) == 1
