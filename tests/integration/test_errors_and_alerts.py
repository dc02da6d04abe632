"""Failed calls land in ops.api_errors; alerts are rows, log lines and webhooks (per-market health and its
alerts: tests/integration/test_failure_isolation.py)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import psycopg2
import pytest
from support.webhook import Webhook

from marketflow import exchanges
from marketflow.alerts import raise_alert
from marketflow.config import load_config
from marketflow.pipeline import Attempt, extract_market, plan_window
from marketflow.raw_store import RawStore

REPO = Path(__file__).resolve().parents[2]
WINDOW = {"start": "2022-08-14T00:00:00Z", "end": "2022-08-14T01:00:00Z"}


def faults(emulator_url: str, method: str, body: object | None = None) -> None:
    req = urllib.request.Request(f"{emulator_url}/__admin/faults", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()


@pytest.fixture
def ops_conn(warehouse_dsn: str):
    conn = psycopg2.connect(warehouse_dsn)
    conn.autocommit = True
    yield conn
    conn.close()


def test_every_failed_call_is_recorded_with_its_class(tmp_path, emulator_url, mongo_db, ops_conn,
                                                      monkeypatch) -> None:
    monkeypatch.setattr(exchanges, "MAX_CALL_ATTEMPTS", 2)
    text = (REPO / "include/config/markets.demo.yml").read_text().replace(
        "  overlap_minutes: 2", "  overlap_minutes: 2\n  alert_after_failures: 2")
    (tmp_path / "m.yml").write_text(text)
    config = load_config(tmp_path / "m.yml", env={"MARKETFLOW_EXCHANGE_URL": emulator_url})
    market, raw = config.market("binance", "ETH/USDT"), RawStore(mongo_db)
    window = plan_window("1m", None, None, WINDOW, 0)

    faults(emulator_url, "POST", {"kind": "http_5xx", "status": 502, "exchange": "binance",
                                  "path": "/api/v3/klines", "count": 4})
    try:
        for run in ("r1", "r2"):
            with pytest.raises(Exception, match="Internal error"):
                extract_market(config, market, "1m", window, raw, Attempt("t", run, "extract"), ops_conn=ops_conn)
    finally:
        faults(emulator_url, "DELETE")
    with ops_conn.cursor() as cur:
        cur.execute("SELECT http_status, error_class, attempt, will_retry FROM ops.api_errors ORDER BY error_id")
        assert cur.fetchall() == [(502, "exchange_unavailable", 1, True), (502, "exchange_unavailable", 2, False)] * 2
        cur.execute("SELECT run_id, try_number, dag_id FROM ops.api_errors ORDER BY error_id")
        assert [r[0] for r in cur.fetchall()] == ["r1", "r1", "r2", "r2"]


def test_alert_webhook_delivery_and_failure_are_recorded(ops_conn) -> None:
    webhook = Webhook()
    try:
        raise_alert(ops_conn, "deadline_missed", "market_candles_1m", "run not done in 5 min", "market_candles_1m",
                    "run-1", webhook=webhook.url)
    finally:
        webhook.close()
    received = webhook.received
    raise_alert(ops_conn, "deadline_missed", "market_candles_1h", "late", webhook="http://127.0.0.1:9/nothing")
    assert received == [{"kind": "deadline_missed", "subject": "market_candles_1m", "message": "run not done in 5 min",
                         "dag_id": "market_candles_1m", "run_id": "run-1"}]
    with ops_conn.cursor() as cur:
        cur.execute("SELECT subject, delivered, delivery_error IS NOT NULL FROM ops.alerts ORDER BY alert_id")
        assert cur.fetchall() == [("market_candles_1m", True, False), ("market_candles_1h", False, True)]


def test_deadline_callback_records_an_alert(warehouse_dsn: str, ops_conn, monkeypatch) -> None:
    from marketflow.alerts import deadline_missed

    monkeypatch.setenv("AIRFLOW_CONN_MARKETFLOW_POSTGRES", warehouse_dsn)
    monkeypatch.delenv("MARKETFLOW_ALERT_WEBHOOK", raising=False)
    context = {"dag_run": {"dag_run_id": "scheduled__2026-11-20T10:00:00+00:00", "state": "running",
                           "queued_at": "2026-11-20T11:00:05Z"}, "deadline": {"id": "x"}}
    deadline_missed("market_candles_1h", "45 minutes", context=context)
    with ops_conn.cursor() as cur:
        cur.execute("SELECT kind, subject, run_id, message FROM ops.alerts")
        [(kind, subject, run_id, message)] = cur.fetchall()
    assert (kind, subject, run_id) == ("deadline_missed", "market_candles_1h", "scheduled__2026-11-20T10:00:00+00:00")
    assert "not finished 45 minutes after it was queued" in message
