"""Debian's real Prometheus scrapes the standalone API's /metrics while the minute ingest runs against
the exchange emulator; when the emulator stops serving one market, the stalled-ingestion alert fires
for that market and for no other.

The rules are the shipped file with the stalled alert's threshold and `for` shortened (5 minutes
would make a 10-minute test); the shipped thresholds themselves are covered by `promtool test rules`
(tests/unit/test_alert_rules.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psycopg2
import pytest
import yaml

from exchange_emulator.testing import EmulatorProcess
from marketflow.api.auth import new_token
from marketflow.config import load_config
from marketflow.errors import MarketsFailed
from marketflow.ops import sync_market_config
from marketflow.pipeline import Attempt, run_exchange_markets
from marketflow.raw_store import RawStore
from marketflow.timeframes import Window, floor_ms
from scripts import stack

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "include/prometheus/marketflow-alerts.yml"
HEALTHY, STOPPED = "ETH/USDT", "BTC/USDT"
MINUTE = 60_000
LAG_THRESHOLD_S = 90  # a healthy market here is at most ~65 s behind: the minute plus one ingest round


def shortened_rules(tmp_path: Path) -> Path:
    text = RULES.read_text()
    shipped = ("expr: marketflow_market_freshness_lag_seconds > 300\n        for: 5m")
    assert shipped in text, "the stalled-ingestion rule changed: update this test's shortened copy"
    path = tmp_path / "rules.yml"
    path.write_text(text.replace(shipped, f"expr: marketflow_market_freshness_lag_seconds > {LAG_THRESHOLD_S}\n"
                                          "        for: 6s"))
    return path


def wait_http(url: str, proc: subprocess.Popen, log: Path, what: str, headers: dict | None = None) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url, headers=headers, timeout=2)
            return
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.3)


def diagnosis(prometheus: str, dsn: str) -> str:
    """What Prometheus scraped and what the warehouse holds, for a failure message."""
    targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
    names = httpx.get(f"{prometheus}/api/v1/label/__name__/values", timeout=5).json()["data"]
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT exchange, symbol, status, suspended_reason FROM ops.market_health")
        health = cur.fetchall()
    return f"targets {[(t['health'], t['lastError']) for t in targets]}; series {names}; market health {health}"


def alerts(prometheus: str, name: str) -> list[dict]:
    body = httpx.get(f"{prometheus}/api/v1/alerts", timeout=5).json()
    return [a for a in body["data"]["alerts"] if a["labels"]["alertname"] == name]


@pytest.fixture
def emulator() -> EmulatorProcess:
    with EmulatorProcess(synthetic_markets=[f"binance:{s}@2026-01-01" for s in (HEALTHY, STOPPED)],
                         default_markets=False) as emu:
        yield emu


def test_a_market_the_exchange_stops_serving_raises_the_stalled_alert(tmp_path: Path, emulator: EmulatorProcess,
                                                                     warehouse_dsn: str, mongo_db) -> None:
    prometheus_exe = shutil.which("prometheus")
    assert prometheus_exe, "prometheus is missing: `make install` installs it (scripts/system_packages.sh)"
    config_path = tmp_path / "markets.yml"
    config_path.write_text(f"defaults:\n  timeframes: [1m]\n  history_start: '2026-01-01T00:00:00Z'\nexchanges:\n"
                           f"  binance:\n    api_base_url: {emulator.base_url}\n"
                           f"    options: {{fetchMarkets: {{types: [spot]}}}}\n"
                           f"    markets: [{HEALTHY}, {STOPPED}]\n")
    config = load_config(config_path, env={})
    with psycopg2.connect(warehouse_dsn) as conn:
        sync_market_config(conn, config)
    token, digest = new_token()
    with psycopg2.connect(warehouse_dsn) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO ops.api_tokens (name, token_sha256) VALUES ('prometheus', %s)", (digest,))

    # The minute ingest, every 5 s, for the last three closed minutes (as the minute DAG's overlap does).
    stop = threading.Event()
    rounds: list[str] = []

    def ingest() -> None:
        i = 0
        while not stop.is_set():
            now = floor_ms(int(time.time() * 1000), "1m")
            attempt = Attempt("market_candles_1m", f"prom-{i}", "binance.ingest", try_number=1)
            try:
                run_exchange_markets(config, "binance", "1m", Window(now - 3 * MINUTE, now), {}, RawStore(mongo_db),
                                     lambda: psycopg2.connect(warehouse_dsn), attempt, live=True)
                rounds.append("ok")
            except MarketsFailed as exc:
                rounds.append(f"failed: {exc}")
            i += 1
            stop.wait(5)

    worker = threading.Thread(target=ingest, daemon=True)
    worker.start()
    procs: list[subprocess.Popen] = []
    try:
        api_port, prom_port = stack.free_port(), stack.free_port()
        api_log = tmp_path / "api.log"
        env = {**os.environ, "MARKETFLOW_API_DATABASE": warehouse_dsn, "MARKETFLOW_API_METRICS_DATABASE": warehouse_dsn}
        with api_log.open("w") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory",
                                           "marketflow.api.app:standalone_app", "--host", "127.0.0.1", "--port",
                                           str(api_port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        wait_http(f"http://127.0.0.1:{api_port}/health", procs[-1], api_log, "the API")

        prom_config = tmp_path / "prometheus.yml"
        prom_config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
            "rule_files": [str(shortened_rules(tmp_path))],
            "scrape_configs": [{"job_name": "marketflow", "authorization": {"type": "Bearer", "credentials": token},
                                "static_configs": [{"targets": [f"127.0.0.1:{api_port}"]}]}]}))
        prom_log = tmp_path / "prometheus.log"
        with prom_log.open("w") as out:
            procs.append(subprocess.Popen([prometheus_exe, f"--config.file={prom_config}",
                                           f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                           f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True))
        prometheus = f"http://127.0.0.1:{prom_port}"
        wait_http(f"{prometheus}/-/ready", procs[-1], prom_log, "Prometheus")

        # Both markets current: Prometheus scrapes them with the token (the target is up) and nothing fires.
        deadline = time.monotonic() + 90
        while True:
            lags = httpx.get(f"{prometheus}/api/v1/query", params={"query": "marketflow_market_freshness_lag_seconds"},
                             timeout=5).json()["data"]["result"]
            if len(lags) == 2 and all(float(r["value"][1]) < LAG_THRESHOLD_S for r in lags):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the markets' lag never reached Prometheus: {lags}; "
                            f"{diagnosis(prometheus, warehouse_dsn)}; ingest {rounds[-3:]}")
            time.sleep(2)
        up = httpx.get(f"{prometheus}/api/v1/query", params={"query": 'up{job="marketflow"}'}, timeout=5).json()
        assert [r["value"][1] for r in up["data"]["result"]] == ["1"]
        assert alerts(prometheus, "MarketflowIngestionStalled") == []

        # The exchange stops serving one market's candles.
        emulator.add_faults([{"kind": "http_5xx", "exchange": "binance", "symbol": STOPPED, "status": 503,
                              "probability": 1}])
        deadline = time.monotonic() + 60 + LAG_THRESHOLD_S + 90
        while True:
            firing = [a for a in alerts(prometheus, "MarketflowIngestionStalled") if a["state"] == "firing"]
            if firing:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"no stalled alert: {diagnosis(prometheus, warehouse_dsn)}; ingest {rounds[-3:]}")
            time.sleep(2)
        assert [(a["labels"]["exchange"], a["labels"]["symbol"], a["labels"]["severity"]) for a in firing] == [
            ("binance", STOPPED, "critical")]
        assert firing[0]["annotations"]["runbook"] == "docs/operations.md#ingestion-stalled"
        # The other market kept loading all along.
        assert all(a["labels"]["symbol"] != HEALTHY for a in alerts(prometheus, "MarketflowIngestionStalled"))
        assert any(r.startswith("failed") and STOPPED in r for r in rounds)
    finally:
        stop.set()
        worker.join(timeout=60)
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
