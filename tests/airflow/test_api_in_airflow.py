"""The market-data API mounted in Airflow's own API server by the marketflow plugin: every route refuses
a caller without Airflow's login (Airflow does not protect plugin apps itself), and answers one with a
JWT from Airflow's POST /auth/token, reading the warehouse as configured."""

from __future__ import annotations

import json
import os
import subprocess

import httpx
import pytest

from scripts import stack
from scripts.stack import VENV_BIN

ROUTES = ["/health", "/markets", "/latest", "/ohlcv?exchange=binance&symbol=BTC/USDT", "/indicators?exchange=binance"
          "&symbol=BTC/USDT", "/quality/summary", "/quality/gaps", "/ops/rate-limit", "/ops/errors", "/ops/runs",
          "/openapi.json", "/docs"]


@pytest.mark.airflow
def test_the_api_in_airflows_api_server_needs_airflows_login(pg_server, warehouse_dsn, test_root) -> None:
    metadata_db = f"mf_api_airflow_{stack.free_port()}"
    pg_server.create_database(metadata_db)
    home, run_dir = test_root / "api_in_airflow" / "airflow", test_root / "api_in_airflow" / "run"
    for path in (home, run_dir):
        path.mkdir(parents=True, exist_ok=True)
    (home / "passwords.json").write_text(json.dumps({"admin": "x9-not-a-word"}))
    port = stack.free_port()
    env = stack.airflow_env(home, pg_server, port, metadata_db) | {"MARKETFLOW_API_DATABASE": warehouse_dsn}
    subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], env={**os.environ, **env}, check=True,
                   capture_output=True, timeout=600)
    server = stack.ManagedProcess("airflow-api", run_dir, [str(VENV_BIN / "airflow"), "api-server", "--port",
                                                           str(port)], port, env=env, ready_timeout=300)
    server.start()
    base = f"http://127.0.0.1:{port}"
    try:
        # Anonymous, and with a forged bearer token: refused on every route of the mounted app.
        for route in ROUTES:
            for headers in ({}, {"Authorization": "Bearer not.a.jwt"}):
                r = httpx.get(f"{base}/marketflow{route}", headers=headers, timeout=30)
                assert r.status_code == 401, (route, headers, r.status_code, r.text[:300])
                assert "Airflow" in r.json()["error"]["message"] + r.json()["error"]["fix"]
        # Airflow's own login gives a JWT; with it the app answers from the warehouse.
        token = httpx.post(f"{base}/auth/token", json={"username": "admin", "password": "x9-not-a-word"},
                           timeout=30).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        spec = httpx.get(f"{base}/marketflow/openapi.json", headers=auth, timeout=30)
        assert spec.status_code == 200 and "/ohlcv" in spec.json()["paths"]
        health = httpx.get(f"{base}/marketflow/health", headers=auth, timeout=30)
        # No dbt build in this warehouse: the API reaches it and says what is missing, as a 503 with reasons.
        assert health.status_code == 503, health.text
        assert health.json()["checks"]["warehouse"] == "ok"
        assert any("marts.markets" in reason for reason in health.json()["reasons"]), health.json()
    finally:
        server.stop()
        pg_server.drop_database(metadata_db)
