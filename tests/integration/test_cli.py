"""The `marketflow` console command (make install's entry point), run as an operator runs it: a
subprocess reaching the warehouse and MongoDB through the same Airflow connections as the DAGs."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from support.sample import sample_candles

from marketflow import schema
from marketflow.config import load_config
from marketflow.pipeline import Attempt, extract_market, load_market
from marketflow.raw_store import RawStore
from marketflow.timeframes import Window, to_ms

REPO = Path(__file__).resolve().parents[2]
MARKETFLOW = Path(sys.executable).parent / "marketflow"
DEMO_CONFIG = REPO / "include" / "config" / "markets.demo.yml"
START, END = datetime(2022, 8, 15, 10, tzinfo=UTC), datetime(2022, 8, 15, 11, 30, tzinfo=UTC)


def marketflow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MARKETFLOW), *args], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=300)


def connections(warehouse_dsn: str, mongo_uri: str = "mongodb://127.0.0.1:1", mongo_db: str = "unused"
                ) -> dict[str, str]:
    return {"AIRFLOW_CONN_MARKETFLOW_POSTGRES": warehouse_dsn,
            "AIRFLOW_CONN_MARKETFLOW_MONGO": f"mongo://{urlsplit(mongo_uri).netloc}/{mongo_db}",
            "MARKETFLOW_CONFIG": str(DEMO_CONFIG),
            # No exchange answers at this address: whatever a command loads, it did not fetch.
            "MARKETFLOW_EXCHANGE_URL": "http://127.0.0.1:9"}


def test_console_command_and_module_share_one_parser() -> None:
    for argv in ([str(MARKETFLOW), "--help"], [sys.executable, "-m", "marketflow.cli", "--help"]):
        res = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd="/")
        assert res.returncode == 0, res.stderr
        for command in ("check-config", "pools", "markets", "gaps", "replay", "db"):
            assert command in res.stdout
    res = subprocess.run([str(MARKETFLOW), "db"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "upgrade" in res.stderr


def test_replay_rebuilds_staging_from_raw_without_an_exchange(emulator_url, mongo_uri, mongo_db, pg_conn,
                                                              warehouse_dsn) -> None:
    config = load_config(DEMO_CONFIG, env={"MARKETFLOW_EXCHANGE_URL": emulator_url})
    raw = RawStore(mongo_db)
    window = Window(to_ms(START), to_ms(END))
    extracted = extract_market(config, config.market("binance", "ETH/USDT"), "1m", window, raw,
                               Attempt("test", "live", "extract"))
    load_market(pg_conn, raw, extracted, Attempt("test", "live", "load"))
    with pg_conn.cursor() as cur:
        cur.execute("DELETE FROM staging.ohlcv")
    pg_conn.commit()

    env = connections(warehouse_dsn, mongo_uri, mongo_db.name)
    res = marketflow(env, "replay", "--start", "2022-08-15T10:00:00Z", "--end", "2022-08-15T11:30:00Z",
                     "--exchange", "binance", "--symbol", "ETH/USDT", "--chunk-hours", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "binance ETH/USDT: 2 chunk(s) replayed from raw, 90 inserted" in res.stdout
    assert "90 of 90 candles present" in res.stdout

    # The independent truth: the recorded exchange file, value for value.
    recorded = sample_candles()[("binance", "ETH/USDT")]
    want = {ts: values[:5] for ts, values in recorded.items() if window.start_ms <= ts < window.end_ms}
    with pg_conn.cursor() as cur:
        cur.execute("SELECT open_time, open, high, low, close, volume FROM staging.ohlcv "
                    "WHERE exchange = 'binance' AND symbol = 'ETH/USDT' AND timeframe = '1m'")
        got = {to_ms(row[0]): tuple(row[1:]) for row in cur.fetchall()}
    assert len(want) == 90 and got == want


def test_replay_names_an_unknown_exchange(warehouse_dsn) -> None:
    res = marketflow(connections(warehouse_dsn), "replay", "--start", "2022-08-15T10:00:00Z",
                     "--end", "2022-08-15T11:00:00Z", "--exchange", "kraken")
    assert res.returncode == 2 and "no exchange kraken in" in res.stderr


def test_db_upgrade_brings_an_empty_database_to_head(pg_server) -> None:
    name = f"mf_cli_db_{os.getpid()}"
    pg_server.drop_database(name)
    pg_server.create_database(name)
    try:
        env = connections(pg_server.dsn(name))
        before = marketflow(env, "db", "current")
        assert before.returncode == 0 and before.stdout.startswith("none"), before.stdout + before.stderr
        first = marketflow(env, "db", "upgrade")
        assert first.returncode == 0 and "upgraded through" in first.stdout, first.stdout + first.stderr
        after = marketflow(env, "db", "current")
        assert after.stdout.split(";")[0] == schema.head()
        again = marketflow(env, "db", "upgrade")
        assert again.returncode == 0 and "already at head" in again.stdout
    finally:
        pg_server.drop_database(name)


def test_gaps_without_the_mart_says_how_to_build_it(warehouse_dsn) -> None:
    res = marketflow(connections(warehouse_dsn), "gaps", "--all")
    assert res.returncode == 2
    assert "marts.data_quality_gaps does not exist yet" in res.stderr and "dbt build" in res.stderr


def test_check_config_refuses_what_an_exchange_cannot_do(tmp_path) -> None:
    """An exchange without fetchOHLCV and a timeframe the exchange lacks: exit 2, every one named with its key
    and fix (ccxt, read here, is the oracle of what each class offers)."""
    import ccxt

    assert not ccxt.coincheck().has.get("fetchOHLCV") and "3m" not in ccxt.kraken().timeframes
    path = tmp_path / "markets.yml"
    path.write_text("exchanges:\n  coincheck:\n    markets: [BTC/JPY]\n  kraken:\n    markets:\n"
                    "      - {symbol: BTC/USD, timeframes: [1m, 3m]}\n")
    res = marketflow({"MARKETFLOW_CONFIG": str(path)}, "check-config")
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.splitlines() == [
        f"configuration error: {path}: exchanges.coincheck: coincheck cannot fetch candles (ccxt's has['fetchOHLCV'] "
        "is false). Fix: remove the exchange or set enabled: false",
        f"{path}: exchanges.kraken.markets[0].timeframes: timeframe '3m' is not offered by kraken. Fix: use one of "
        "1m, 5m, 15m, 30m, 1h, 4h, 1d, 1w"]


def test_check_config_warns_what_an_exchange_cannot_give(tmp_path) -> None:
    """A valid file with exchanges that cannot give everything: exit 0, the facts per exchange, one warning
    per thing missing (a capped history, no batch tickers, no quote volume or trade count)."""
    path = tmp_path / "markets.yml"
    path.write_text("exchanges:\n  kraken:\n    markets: [BTC/USD]\n  bitbank:\n    markets: [BTC/JPY]\n"
                    "  binance:\n    markets: [BTC/USDT]\n")
    res = marketflow({"MARKETFLOW_CONFIG": str(path)}, "check-config")
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"{path}: OK, 5 warning(s)"
    # what a Celery worker serving every exchange listens on
    assert any(line.startswith("  Celery queues: default,exchange_binance,exchange_bitbank,exchange_kraken ")
               for line in lines), lines
    assert ("    candles: 720 candles a page (forward paging), history the newest 720 candles, oldest first, "
            "1.2 x 1000 ms a page (/0/public/OHLC)") in lines
    assert ("    candles: 1000 candles a page (until paging), history back to the listing, oldest first, "
            "0.4 x 50 ms a page (/api/v3/klines)") in lines
    assert [line for line in lines if line.startswith("warning: ")] == [f"warning: {path}: {w}" for w in (
        "exchanges.kraken: kraken serves only its newest 720 candles of each timeframe: older windows are reported "
        "beyond_exchange_history, not fetched",
        "exchanges.kraken: no quote volume: kraken does not send it; the column stays NULL",
        "exchanges.bitbank: bitbank has no batch tickers (ccxt's has['fetchTickers'] is false): one ticker request "
        "per market",
        "exchanges.bitbank: no quote volume: marketflow has no field map for bitbank (add it to "
        "parsing.KLINE_LAYOUTS); the column stays NULL",
        "exchanges.bitbank: no trade count: marketflow has no field map for bitbank (add it to "
        "parsing.KLINE_LAYOUTS); the column stays NULL")]
    # the shipped demo file: Binance and OKX, no refusal, and OKX's missing trade count named
    demo = marketflow({"MARKETFLOW_CONFIG": str(DEMO_CONFIG), "MARKETFLOW_EXCHANGE_URL": "http://127.0.0.1:9"},
                      "check-config")
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert f"warning: {DEMO_CONFIG}: exchanges.okx: no trade count: okx does not send it; the column stays NULL" \
        in demo.stdout.splitlines()
