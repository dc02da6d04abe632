"""One bad market never stops the others: loud data errors, per-market state, suspension, per-market retries.

Real PostgreSQL, MongoDB protocol, ccxt over HTTP to the exchange emulator. The emulator lists only
its recorded and synthetic markets, so a configured symbol it does not list is a delisted market:
ccxt raises BadSymbol for it, as it does for a market an exchange has delisted.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import psycopg2
import pytest
from support.payloads import MIN, T0, kline, store

from marketflow import cli, exchanges, market_health
from marketflow.config import load_config
from marketflow.errors import ErrorClass, MarketsFailed, UnusableDataError, classify
from marketflow.pipeline import Attempt, load_market, plan_window, run_exchange_markets
from marketflow.raw_store import RawStore

REPO = Path(__file__).resolve().parents[2]
WINDOW = {"start": "2022-08-14T00:00:00Z", "end": "2022-08-14T01:00:00Z"}

MARKETS = """
defaults:
  timeframes: [1m]
  overlap_minutes: 0
  alert_after_failures: 2
  suspend_after_failures: 2
exchanges:
  binance:
    api_base_url: ${MARKETFLOW_EXCHANGE_URL}
    options: {fetchMarkets: {types: [spot]}}
    pool_slots: 3
    markets:
      - {symbol: ETH/USDT, history_start: "2022-08-14T00:00:00Z", history_end: "2022-08-16T00:00:00Z"}
      - {symbol: BTC/USDT, history_start: "2022-08-14T00:00:00Z", history_end: "2022-08-16T00:00:00Z"}
      - {symbol: LUNA/USDT, history_start: "LUNA_START", history_end: "2022-08-16T00:00:00Z"}
      - {symbol: SOL/USDT, history_start: "2022-08-14T00:00:00Z", history_end: "2022-08-16T00:00:00Z"}
"""


def faults(emulator_url: str, method: str, body: object | None = None) -> None:
    req = urllib.request.Request(f"{emulator_url}/__admin/faults", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()


def stats(emulator_url: str) -> dict:
    with urllib.request.urlopen(f"{emulator_url}/__admin/stats", timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture
def config(tmp_path, emulator_url):
    def load(luna_start: str = "2022-08-14T00:00:00Z"):
        path = tmp_path / "markets.yml"
        path.write_text(MARKETS.replace("LUNA_START", luna_start))
        return load_config(path, env={"MARKETFLOW_EXCHANGE_URL": emulator_url})
    return load


def rows(dsn: str, sql: str, params=()) -> list[tuple]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def run(cfg, dsn, mongo_db, run_id: str, try_number: int = 1) -> dict:
    window = plan_window("1m", None, None, WINDOW, 0)
    return run_exchange_markets(cfg, "binance", "1m", window, WINDOW, RawStore(mongo_db),
                                lambda: psycopg2.connect(dsn), Attempt("market_candles_1h", run_id,
                                                                       "binance.reconcile", -1, try_number),
                                live=False)


def test_a_delisted_market_never_stops_the_others_and_is_suspended_then_resumed(
        config, warehouse_dsn, mongo_db, monkeypatch) -> None:
    cfg = config()
    # Hour 1: three markets load, the delisted one fails permanently; the task reports it (no retry).
    with pytest.raises(MarketsFailed) as failed:
        run(cfg, warehouse_dsn, mongo_db, "h1")
    assert list(failed.value.failures) == ["LUNA/USDT"]
    assert failed.value.failures["LUNA/USDT"][0] is ErrorClass.BAD_SYMBOL
    assert not classify(failed.value).transient  # Airflow's retry policy fails it at once
    loaded = dict(rows(warehouse_dsn, "SELECT symbol, count(*) FROM staging.ohlcv GROUP BY 1"))
    assert loaded == {"ETH/USDT": 60, "BTC/USDT": 60, "SOL/USDT": 60}
    assert rows(warehouse_dsn, "SELECT status, consecutive_permanent_failures FROM ops.market_health "
                               "WHERE symbol = 'LUNA/USDT'") == [("failing", 1)]
    assert rows(warehouse_dsn, "SELECT count(*) FROM ops.alerts") == [(0,)]

    # Hour 2: second permanent failure in a row -> suspended, with exactly one alert.
    with pytest.raises(MarketsFailed):
        run(cfg, warehouse_dsn, mongo_db, "h2")
    assert rows(warehouse_dsn, "SELECT status FROM ops.market_health WHERE symbol = 'LUNA/USDT'") == [("suspended",)]
    [(kind, subject, message)] = rows(warehouse_dsn, "SELECT kind, subject, message FROM ops.alerts")
    assert (kind, subject) == ("market_suspended", "binance LUNA/USDT")
    assert "markets resume binance LUNA/USDT" in message

    # Hour 3: the suspended market is not called at all; the task succeeds for the other three.
    result = run(cfg, warehouse_dsn, mongo_db, "h3")
    assert result.pop("phases")["candles_s"] > 0  # where the time went, for the bench
    assert result == {"exchange": "binance", "markets": 3, "suspended": 1, "inserted": 0, "tickers": 0,
                      "ticker_requests": 0}
    # no attempt at all (an extract logs one before its first call)
    assert mongo_db.raw_ingestion_log.count_documents({"run_id": "h3", "symbol": "LUNA/USDT"}) == 0
    assert mongo_db.raw_ingestion_log.count_documents({"run_id": "h3"}) == 3  # one per market attempt
    assert rows(warehouse_dsn, "SELECT outcome FROM ops.market_task_outcomes WHERE run_id = 'h3' "
                               "AND symbol = 'LUNA/USDT'") == [("suspended",)]
    assert rows(warehouse_dsn, "SELECT count(*) FROM ops.alerts") == [(1,)]

    # The operator resumes it from the CLI: it is called again (and fails again, counting from 1).
    monkeypatch.setenv("AIRFLOW_CONN_MARKETFLOW_POSTGRES", warehouse_dsn)
    monkeypatch.setenv("MARKETFLOW_CONFIG", str(cfg.source))
    monkeypatch.setenv("MARKETFLOW_EXCHANGE_URL", cfg.exchange("binance").api_base_url)
    assert cli.main(["markets", "resume", "binance", "LUNA/USDT"]) == 0
    with pytest.raises(MarketsFailed):
        run(cfg, warehouse_dsn, mongo_db, "h4")
    assert rows(warehouse_dsn, "SELECT status, consecutive_permanent_failures, resumed_by FROM ops.market_health "
                               "WHERE symbol = 'LUNA/USDT'") == [("failing", 1, "cli")]

    # Suspended again; changing its entry in the markets file lifts the suspension by itself.
    with pytest.raises(MarketsFailed):
        run(cfg, warehouse_dsn, mongo_db, "h5")
    assert rows(warehouse_dsn, "SELECT status FROM ops.market_health WHERE symbol = 'LUNA/USDT'") == [("suspended",)]
    edited = config(luna_start="2022-08-14T00:30:00Z")
    with pytest.raises(MarketsFailed):
        run(edited, warehouse_dsn, mongo_db, "h6")
    assert rows(warehouse_dsn, "SELECT status, resumed_by FROM ops.market_health WHERE symbol = 'LUNA/USDT'") == [
        ("failing", "configuration change")]


def test_retries_are_per_market_and_transient_failures_alert_once(config, warehouse_dsn, mongo_db, emulator_url,
                                                                  monkeypatch) -> None:
    """A market whose candles fail transiently (HTTP 502 on every call) fails the task as transient;
    the retry (same task, try 2) re-fetches only that market. Two such runs in a row raise one
    consecutive_failures alert, and a success resets the count."""
    monkeypatch.setattr(exchanges, "MAX_CALL_ATTEMPTS", 1)
    cfg = config()
    faults(emulator_url, "POST", {"kind": "http_5xx", "status": 502, "exchange": "binance", "path": "/api/v3/klines",
                                  "symbol": "SOL/USDT", "probability": 1})
    try:
        with pytest.raises(MarketsFailed) as failed:
            run(cfg, warehouse_dsn, mongo_db, "r1", try_number=1)
        assert set(failed.value.failures) == {"SOL/USDT", "LUNA/USDT"}
        assert classify(failed.value) is ErrorClass.EXCHANGE_UNAVAILABLE  # transient: Airflow retries
        klines_before = stats(emulator_url)
        with pytest.raises(MarketsFailed):
            run(cfg, warehouse_dsn, mongo_db, "r1", try_number=2)
        # try 2 asked the exchange for SOL/USDT's candles only (ETH, BTC settled; LUNA failed for good)
        assert klines_calls(stats(emulator_url)) - klines_calls(klines_before) == 1
        assert rows(warehouse_dsn, "SELECT symbol, try_number, outcome FROM ops.market_task_outcomes "
                                   "WHERE run_id = 'r1' ORDER BY symbol") == [
            ("BTC/USDT", 1, "success"), ("ETH/USDT", 1, "success"), ("LUNA/USDT", 1, "failed_permanent"),
            ("SOL/USDT", 2, "failed_transient")]
        assert rows(warehouse_dsn, "SELECT consecutive_failures, status FROM ops.market_health "
                                   "WHERE symbol = 'SOL/USDT'") == [(2, "failing")]
        assert rows(warehouse_dsn, "SELECT kind, subject FROM ops.alerts") == [
            ("consecutive_failures", "binance SOL/USDT")]
    finally:
        faults(emulator_url, "DELETE")
    with pytest.raises(MarketsFailed) as failed:  # try 3: SOL/USDT loads now; LUNA is still reported
        run(cfg, warehouse_dsn, mongo_db, "r1", try_number=3)
    assert set(failed.value.failures) == {"LUNA/USDT"} and not classify(failed.value).transient
    assert rows(warehouse_dsn, "SELECT consecutive_failures, status, alerted_at FROM ops.market_health "
                               "WHERE symbol = 'SOL/USDT'") == [(0, "active", None)]
    assert rows(warehouse_dsn, "SELECT count(*) FROM staging.ohlcv WHERE symbol = 'SOL/USDT'") == [(60,)]


def klines_calls(s: dict) -> int:
    return int((s.get("requests") or {}).get("binance", {}).get("/api/v3/klines", 0))


BYBIT_KLINES = json.dumps({"retCode": 0, "retMsg": "OK", "result": {"category": "spot", "symbol": "ETHUSDT",
                           "list": [["1660435200000", "1983.5", "1984", "1980", "1982", "10.5", "20811.5"]]},
                           "retExtInfo": {}, "time": 1660435260000})


@pytest.mark.parametrize(("body", "problem"), [
    (BYBIT_KLINES, "payload(s) rejected whole"),  # an envelope the parser does not know
    (json.dumps([kline(T0, h="8.0"), kline(T0 + MIN, v="-1")]), "all 2 row(s) failed validation"),
])
def test_an_answer_that_yields_no_candle_is_a_loud_data_error(mongo_db, pg_conn, body, problem) -> None:
    raw = RawStore(mongo_db)
    doc = store(raw, body)
    extracted = {"exchange": "binance", "symbol": "ETH/USDT", "timeframe": "1m", "window_start_ms": T0,
                 "window_end_ms": T0 + 60 * MIN, "payload_ids": [doc["_id"]]}
    with pytest.raises(UnusableDataError, match=re.escape(problem)) as err:
        load_market(pg_conn, raw, extracted, Attempt("d", "r", "t"))
    assert classify(err.value) is ErrorClass.DATA and not classify(err.value).transient
    # nothing is lost: the rejects are committed, the raw document is kept, the attempt says failed
    with pg_conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM staging.ohlcv_rejects")
        assert cur.fetchone()[0] >= 1
    log = mongo_db.raw_ingestion_log.find_one({"_id": Attempt("d", "r", "t").attempt_id})
    assert (log["status"], log["error_class"]) == ("failed", "data")


@pytest.mark.parametrize("body", [
    "[]",  # nothing traded / nothing there: an empty answer is not an error
    json.dumps([kline(T0), kline(T0 + MIN, h="8.0")]),  # one bad row among good ones: a reject, not a failure
])
def test_empty_answers_and_partial_rejects_are_not_failures(mongo_db, pg_conn, body) -> None:
    raw = RawStore(mongo_db)
    doc = store(raw, body)
    extracted = {"exchange": "binance", "symbol": "ETH/USDT", "timeframe": "1m", "window_start_ms": T0,
                 "window_end_ms": T0 + 60 * MIN, "payload_ids": [doc["_id"]]}
    load_market(pg_conn, raw, extracted, Attempt("d", "r", "t"))


def test_market_states_listed_by_the_cli(config, warehouse_dsn, monkeypatch, capsys) -> None:
    cfg = config()
    conn = psycopg2.connect(warehouse_dsn)
    try:
        market_health.suspend(conn, cfg, "binance", "LUNA/USDT", "delisted on 2022-05-13")
    finally:
        conn.close()
    monkeypatch.setenv("AIRFLOW_CONN_MARKETFLOW_POSTGRES", warehouse_dsn)
    monkeypatch.setenv("MARKETFLOW_CONFIG", str(cfg.source))
    monkeypatch.setenv("MARKETFLOW_EXCHANGE_URL", cfg.exchange("binance").api_base_url)
    assert cli.main(["markets", "status"]) == 0
    out = capsys.readouterr().out
    assert "binance LUNA/USDT" in out and "suspended" in out and "delisted on 2022-05-13" in out
    assert cli.main(["markets", "resume", "binance", "ETH/USDT"]) == 1  # not suspended: says so, exits 1


def test_a_fault_of_marketflow_itself_alerts_but_never_suspends_markets(config, warehouse_dsn) -> None:
    """A bug in the pipeline fails every market it touches; suspending them all would turn one fix
    into resuming every market by hand. It raises the consecutive-failures alert instead."""
    cfg = config()
    conn = psycopg2.connect(warehouse_dsn)
    try:
        for _ in range(cfg.suspend_after_failures + 2):
            status = market_health.record_failure(conn, cfg, cfg.market("binance", "ETH/USDT"), ErrorClass.INTERNAL,
                                                  "AttributeError: 'timedelta' object has no attribute 'x'")
            assert status == "failing"
    finally:
        conn.close()
    assert rows(warehouse_dsn, "SELECT kind FROM ops.alerts") == [("consecutive_failures",)]
