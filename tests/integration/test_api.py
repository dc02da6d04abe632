"""The standalone market-data API, run for real: uvicorn in its own process, logged in to a real
warehouse as a member of marketflow_api, the marts built by dbt from the bundled real candles.
Candles are checked against the source CSV files (the independent oracle), CSV against the marts
row for row, and every route against anonymous and bad credentials."""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg2
import pytest
from support.dbt_helpers import Candle, DbtRunner, copy_candles, dbt_env_for, read_sample_candles

from marketflow.api.app import OHLCV_COLUMNS, json_fragment_sql, out, records
from marketflow.api.auth import new_token
from marketflow.schema import apply_ddl
from scripts import stack

ROOT = Path(__file__).resolve().parents[2]
ROW_CAP = 2000


@dataclass
class ApiStack:
    url: str
    token: str
    dsn: str
    candles: list[Candle]
    log: Path
    dbt: DbtRunner

    def get(self, path: str, token: str | None = "", **params: object) -> httpx.Response:
        token = self.token if token == "" else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(self.url + path, params=params, headers=headers, timeout=30)

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        with psycopg2.connect(self.dsn) as conn, conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description else []


@pytest.fixture(scope="module")
def api(pg_server: stack.PostgresServer, sample_data_dir: Path, tmp_path_factory) -> Iterator[ApiStack]:
    work = tmp_path_factory.mktemp("api")
    name = f"mf_api_{os.getpid()}"
    role = f"api_login_{os.getpid()}"
    pg_server.create_database(name)
    dsn = pg_server.dsn(name)
    candles = read_sample_candles(sample_data_dir)
    conn = psycopg2.connect(dsn)
    try:
        apply_ddl(conn)
        copy_candles(conn, candles)
        conn.commit()
    finally:
        conn.close()
    dbt = DbtRunner(dbt_env_for(dsn, work / "dbt"))
    dbt("build")
    token, digest = new_token()
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(f"DROP ROLE IF EXISTS {role}")
        cur.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'api' IN ROLE marketflow_api")
        cur.execute("INSERT INTO ops.api_tokens (name, token_sha256) VALUES ('tests', %s)", (digest,))
    parts = urlsplit(dsn)
    api_dsn = urlunsplit(parts._replace(netloc=f"{role}:api@{parts.hostname}:{parts.port}"))
    port = stack.free_port()
    log = work / "api.log"
    env = {**os.environ, "MARKETFLOW_API_DATABASE": api_dsn, "MARKETFLOW_API_METRICS_DATABASE": dsn,
           "MARKETFLOW_API_ROW_CAP": str(ROW_CAP)}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "marketflow.api.app:standalone_app",
                                 "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + "/health", timeout=2)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the API did not start:\n{log.read_text()}") from None
                time.sleep(0.2)
        yield ApiStack(url, token, dsn, candles, log, dbt)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        with psycopg2.connect(pg_server.dsn(name)) as conn, conn.cursor() as cur:
            cur.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA marts FROM {role}")
        pg_server.drop_database(name)
        with psycopg2.connect(pg_server.dsn("postgres")) as conn, conn.cursor() as cur:
            cur.execute(f"DROP ROLE IF EXISTS {role}")


def source_day(api: ApiStack) -> tuple[str, datetime, list[Candle]]:
    """The first symbol's first full UTC day in the source files."""
    first = api.candles[0]
    assert first.exchange == "binance"
    day = first.open_time.replace(hour=0, minute=0, second=0, microsecond=0)
    rows = [c for c in api.candles if (c.exchange, c.symbol) == (first.exchange, first.symbol)
            and day <= c.open_time < day + timedelta(days=1)]
    assert len(rows) == 1440
    return first.symbol, day, rows


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def test_every_route_refuses_anonymous_and_bad_credentials(api: ApiStack) -> None:
    spec = api.get("/openapi.json").json()
    routes = [*spec["paths"], "/openapi.json", "/docs", "/metrics"]
    assert {"/health", "/markets", "/latest", "/ohlcv", "/indicators", "/quality/summary", "/quality/gaps",
            "/ops/rate-limit", "/ops/errors", "/ops/runs"} <= set(spec["paths"])
    for path in routes:
        for token in (None, "not-a-token", "mf_" + "x" * 43):
            r = api.get(path, token=token, exchange="binance", symbol="ETH/USDT")
            assert r.status_code == 401, (path, token, r.status_code, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            assert "api-token create" in r.json()["error"]["fix"]


def test_a_revoked_token_is_refused(api: ApiStack) -> None:
    token, digest = new_token()
    api.sql("INSERT INTO ops.api_tokens (name, token_sha256) VALUES ('short-lived', %s)", (digest,))
    assert api.get("/latest", token=token).status_code == 200
    assert api.sql("SELECT last_used_at IS NOT NULL FROM ops.api_tokens WHERE name = 'short-lived'") == [(True,)]
    api.sql("UPDATE ops.api_tokens SET revoked_at = now() WHERE name = 'short-lived'")
    # Trusted for at most TOKEN_CACHE_SECONDS after its last check; a token never checked is refused at once.
    other, other_digest = new_token()
    api.sql("INSERT INTO ops.api_tokens (name, token_sha256, revoked_at) VALUES ('revoked', %s, now())",
            (other_digest,))
    assert api.get("/latest", token=other).status_code == 401


def test_a_day_of_1m_candles_equals_the_source_file(api: ApiStack) -> None:
    symbol, day, rows = source_day(api)
    r = api.get("/ohlcv", exchange="binance", symbol=symbol, timeframe="1m", start=iso(day),
                end=iso(day + timedelta(days=1)), limit=1440)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 1440 and body["next_cursor"] is None
    for got, want in zip(body["candles"], rows, strict=True):
        assert got["open_time"] == iso(want.open_time)
        for field in ("open", "high", "low", "close", "volume"):
            assert isinstance(got[field], str)  # exact decimals travel as strings
            assert Decimal(got[field]) == Decimal(getattr(want, field)), (want.open_time, field)
        assert got["is_complete"] is True and got["is_closed"] is True
    # Postgres writes the JSON page: every value as the API writes a mart value (exact text, ISO times in
    # UTC with their fractions), checked against the mart's rows rendered in Python.
    columns = ("open_time", "open", "high", "low", "close", "volume", "quote_volume", "trades", "close_time")
    want = api.sql(f"SELECT {', '.join(columns)} FROM marts.ohlcv_1m WHERE exchange = 'binance' AND symbol = %s "
                   "AND open_time >= %s AND open_time < %s ORDER BY open_time", (symbol, day, day + timedelta(days=1)))
    assert [{c: got[c] for c in columns} for got in body["candles"]] == records(columns, want)
    # ... and a time with fractions of a second, and a decimal so small Python would write it as 1E-8.
    for value in (datetime(2024, 2, 29, 23, 59, 59, 999000, UTC), datetime(2024, 1, 1, 0, 0, 0, 1, UTC),
                  datetime(2024, 1, 1, 0, 0, 0, 123456, UTC), datetime(2024, 1, 1, 0, 0, 1, 0, UTC), None):
        got = api.sql(f"SELECT {json_fragment_sql('open_time')} FROM (SELECT %s::timestamptz AS open_time) AS t",
                      (value,))[0][0]
        assert json.loads(got) == (None if value is None else out(value)), got
    assert json.loads(api.sql(f"SELECT {json_fragment_sql('close')} FROM (SELECT 0.00000001::numeric AS close) "
                              "AS t")[0][0]) == out(Decimal("0.00000001")) == "0.00000001"
    assert api.sql(f"SELECT {json_fragment_sql('quote_volume')}, {json_fragment_sql('trades')} "
                   "FROM (SELECT NULL::numeric AS quote_volume, NULL::bigint AS trades) AS t") == [("null", "null")]


def test_cursor_pages_cover_the_range_once(api: ApiStack) -> None:
    symbol, day, rows = source_day(api)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"exchange": "binance", "symbol": symbol, "start": iso(day), "end": iso(day + timedelta(days=1)),
                  "limit": 500, **({"cursor": cursor} if cursor else {})}
        body = api.get("/ohlcv", **params).json()
        seen += [c["open_time"] for c in body["candles"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == [iso(c.open_time) for c in rows]


def test_csv_equals_the_mart_row_for_row(api: ApiStack) -> None:
    symbol, day, _ = source_day(api)
    for timeframe in ("1m", "1h"):
        r = api.get("/ohlcv", exchange="binance", symbol=symbol, timeframe=timeframe, start=iso(day),
                    end=iso(day + timedelta(days=1)), limit=ROW_CAP, format="csv")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        got = list(csv.DictReader(io.StringIO(r.text)))
        table = f"marts.ohlcv_{timeframe}"
        want = api.sql(f"SELECT open_time, open, high, low, close, volume, quote_volume, trades FROM {table} "
                       "WHERE exchange = 'binance' AND symbol = %s AND open_time >= %s AND open_time < %s "
                       "ORDER BY open_time", (symbol, day, day + timedelta(days=1)))
        assert len(got) == len(want) == (1440 if timeframe == "1m" else 24)
        for g, (open_time, *values) in zip(got, want, strict=True):
            assert g["open_time"] == iso(open_time)
            assert [g[k] for k in ("open", "high", "low", "close", "volume", "quote_volume", "trades")] == [
                "" if v is None else str(v) for v in values]


def test_indicators_equal_the_mart(api: ApiStack) -> None:
    symbol, day, _ = source_day(api)
    body = api.get("/indicators", exchange="binance", symbol=symbol, timeframe="15m", start=iso(day),
                   end=iso(day + timedelta(days=1))).json()
    want = api.sql("SELECT open_time, sma_20, ema_12, rsi_14, macd_histogram FROM marts.indicators_15m "
                   "WHERE exchange = 'binance' AND symbol = %s AND open_time >= %s AND open_time < %s "
                   "ORDER BY open_time", (symbol, day, day + timedelta(days=1)))
    assert len(body["indicators"]) == len(want) == 96
    for got, (open_time, sma, ema, rsi, macd) in zip(body["indicators"], want, strict=True):
        # Indicators are double precision in the marts (TA-Lib's arithmetic): JSON numbers, round-tripped exactly.
        assert (got["open_time"], got["sma_20"], got["ema_12"], got["rsi_14"], got["macd_histogram"]) == (
            iso(open_time), sma, ema, rsi, macd)


def test_1m_indicators_equal_the_view(api: ApiStack) -> None:
    """The 1m indicators are read from candles_1m's rows (the page fingerprint needs a table's xmin); they
    equal marts.indicators_1m, the view analysts read, value for value, first page and the cached one."""
    symbol, day, _ = source_day(api)
    want = api.sql("SELECT open_time, close, sma_20, ema_12, rsi_14, macd_line, macd_histogram, is_closed,"
                   " inputs_complete FROM marts.indicators_1m WHERE exchange = 'binance' AND symbol = %s"
                   " AND open_time >= %s AND open_time < %s ORDER BY open_time",
                   (symbol, day, day + timedelta(hours=6)))
    assert len(want) == 360
    for _ in range(2):
        body = api.get("/indicators", exchange="binance", symbol=symbol, timeframe="1m", start=iso(day),
                       end=iso(day + timedelta(hours=6))).json()
        got = [(g["open_time"], g["close"], g["sma_20"], g["ema_12"], g["rsi_14"], g["macd_line"], g["macd_histogram"],
                g["is_closed"], g["inputs_complete"]) for g in body["indicators"]]
        assert got == [(iso(t), str(c), *rest) for t, c, *rest in want]


@pytest.mark.parametrize(("params", "status", "parameter", "hint"), [
    ({"timeframe": "2m"}, 400, "timeframe", "one of"),
    ({"symbol": "NOPE/USDT"}, 404, "symbol", "/markets"),
    ({"limit": ROW_CAP + 1}, 400, "limit", "next_cursor"),
    ({"limit": 0}, 400, "limit", ">= 1"),
    ({"cursor": "%%%"}, 400, "cursor", "next_cursor"),
    ({"start": "2022-08-15T00:00:00Z", "end": "2022-08-14T00:00:00Z"}, 400, "start", "earlier"),
    ({"start": "2022-08-14T00:00:00"}, 400, "start", "UTC"),
    ({"start": "yesterday"}, 400, "start", "ISO 8601"),
    ({"format": "xml"}, 400, "format", "one of"),
])
def test_bad_parameters_name_the_parameter_and_the_fix(api: ApiStack, params: dict, status: int, parameter: str,
                                                        hint: str) -> None:
    r = api.get("/ohlcv", **{"exchange": "binance", "symbol": "ETH/USDT", **params})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["parameter"] == parameter
    assert hint in error["fix"] + error["message"], error


def test_latest_markets_and_quality_read_the_marts(api: ApiStack) -> None:
    latest = api.get("/latest").json()
    want = api.sql("SELECT exchange, symbol, price FROM marts.latest_price ORDER BY 1, 2")
    assert [(p["exchange"], p["symbol"], p["price"]) for p in latest["prices"]] == [
        (e, s, str(p)) for e, s, p in want]
    markets = api.get("/markets").json()["markets"]
    pairs = sorted({(c.exchange, c.symbol) for c in api.candles})
    assert [(m["exchange"], m["symbol"]) for m in markets] == pairs
    assert [m["candle_count"] for m in markets] == [sum((c.exchange, c.symbol) == p for c in api.candles)
                                                    for p in pairs]
    symbol, day, _ = source_day(api)
    summary = api.get("/quality/summary", exchange="binance", symbol=symbol, grain="hour", start=iso(day),
                      end=iso(day + timedelta(days=1))).json()
    assert summary["count"] == 24
    assert all(p["present"] == 60 and p["missing"] == 0 for p in summary["periods"])


def test_ops_routes_show_runs_errors_and_rate_limit_use(api: ApiStack) -> None:
    api.sql("INSERT INTO ops.market_task_outcomes (dag_id, run_id, task_id, exchange, symbol, try_number, outcome, "
            "error_class, candles, seconds) VALUES "
            "('market_candles_1m', 'api-test-run', 'binance.ingest', 'binance', 'ETH/USDT', 1, 'success', NULL, 2, "
            "0.5),"
            "('market_candles_1m', 'api-test-run', 'binance.ingest', 'binance', 'BTC/USDT', 1, 'failed_transient', "
            "'network', NULL, 3)")
    api.sql("INSERT INTO ops.api_errors (exchange, symbol, error_class, exception, message, attempt, will_retry, "
            "run_id) VALUES ('binance', 'BTC/USDT', 'network', 'NetworkError', 'connection reset', 1, true, "
            "'api-test-run')")
    api.sql("INSERT INTO ops.rate_limit_buckets (exchange, capacity, refill_per_second, tokens) "
            "VALUES ('binance', 1200, 20, 1200) ON CONFLICT DO NOTHING")
    api.sql("INSERT INTO ops.rate_limit_metrics (exchange, minute, tokens_used, acquisitions) "
            "VALUES ('binance', date_trunc('minute', now()), 12, 30)")
    run = next(r for r in api.get("/ops/runs").json()["runs"] if r["run_id"] == "api-test-run")
    assert (run["markets"], run["succeeded"], run["failed"], run["candles"]) == (2, 1, 1, 2)
    assert run["failed_markets"] == "binance BTC/USDT: network"
    errors = api.get("/ops/errors", exchange="binance").json()
    assert [(e["error_class"], e["errors"]) for e in errors["by_class"]] == [("network", 1)]
    assert errors["latest"][0]["message"] == "connection reset"
    use = api.get("/ops/rate-limit", exchange="binance").json()["minutes"]
    assert [(m["tokens_used"], m["acquisitions"]) for m in use] == [("12", 30)]


def test_health_names_the_stale_markets_then_turns_ready(api: ApiStack) -> None:
    pairs = sorted({(c.exchange, c.symbol) for c in api.candles})
    for exchange, symbol in pairs:  # both markets configured live
        api.sql("INSERT INTO ops.market_config (exchange, symbol, timeframe, ccxt_id, history_start, enabled) "
                "VALUES (%s, %s, '1m', %s, '2022-08-14', true) ON CONFLICT DO NOTHING", (exchange, symbol, exchange))
    r = api.get("/health")  # the bundled candles are from 2022: every market is stale
    assert r.status_code == 503
    body = r.json()
    assert body["checks"]["warehouse"] == "ok"
    assert body["reasons"] == ["2 live market(s) without a price newer than 300 s"]
    assert len(body["checks"]["stale_markets"]) == 2
    # A fresh ticker per market (what the minute DAG writes) makes every market current.
    for exchange, symbol in pairs:
        api.sql("INSERT INTO staging.ticker (exchange, symbol, ts, last, raw_payload_id, run_id) "
                "VALUES (%s, %s, now(), 1, 'p', 'r')", (exchange, symbol))
    r = api.get("/health")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ok", "reasons": [], "checks": {"warehouse": "ok", "stale_markets": []}}


def test_metrics_are_served_with_a_token(api: ApiStack) -> None:
    r = api.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert not families["marketflow_metrics_query_errors"].samples  # every query worked (the marts exist)
    failing = {s.labels["test"]: s.value for s in families["marketflow_dbt_test_failing_rows"].samples}
    assert len(failing) > 20 and set(failing.values()) == {0.0}  # the dbt build's stored tests, all passing
    assert "marketflow_metrics_collect_seconds" in families


def test_the_log_is_json_lines_with_an_access_event_per_request(api: ApiStack) -> None:
    marker = f"log-check-{time.time_ns()}"
    assert api.get("/latest", exchange="binance", symbol=marker).status_code == 404
    assert api.get("/latest", token=None, exchange=marker).status_code == 401
    deadline = time.monotonic() + 10
    while True:
        lines = [line for line in api.log.read_text().splitlines() if line.strip()]
        events = [json.loads(line) for line in lines]  # every line, uvicorn's own included, is one JSON object
        access = [e for e in events if e.get("logger") == "marketflow.api.access" and marker in e.get("query", "")]
        if len(access) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert any(e["logger"] == "uvicorn.error" and "startup complete" in e["event"] for e in events)
    assert not any("color_message" in e for e in events)
    anonymous, unknown_market = sorted(access, key=lambda e: e["status"])
    assert (anonymous["status"], anonymous["caller"]) == (401, None)
    assert (unknown_market["status"], unknown_market["caller"]) == (404, "tests")  # the token's name
    for e in access:
        assert e["event"] == f"GET /latest {e['status']}"  # the words stay readable
        assert (e["level"], e["method"], e["path"]) == ("info", "GET", "/latest")
        assert 0 < e["duration_ms"] < 10_000 and e["client"].startswith("127.0.0.1:")
        assert datetime.fromisoformat(e["timestamp"]).tzinfo is not None


def test_the_demos_curl_example_returns_the_bundled_candles(api: ApiStack) -> None:
    """scripts/demo.py prints this command (against Airflow's /marketflow there; the same app here)."""
    from scripts.demo import api_curl

    symbol, day, rows = source_day(api)
    command = api_curl(api.url, api.token, "binance", symbol, day, day + timedelta(days=1))
    answer = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=60)
    assert answer.returncode == 0, (command, answer.stderr)
    candles = json.loads(answer.stdout)["candles"]
    assert [(c["open_time"], Decimal(c["close"]), Decimal(c["volume"])) for c in candles] == \
        [(iso(w.open_time), Decimal(w.close), Decimal(w.volume)) for w in rows]
    # the same command without the token: refused (curl -f exits 22 on an HTTP error)
    anonymous = shlex.split(command.replace(f"Authorization: Bearer {api.token}", "X-No-Token: 1"))
    refused = subprocess.run([*anonymous, "-o", "/dev/null", "-w", "%{http_code}"], capture_output=True, text=True,
                             timeout=60)
    assert refused.stdout == "401", refused


@pytest.mark.parametrize(("timeframe", "count"), [("1m", 120), ("15m", 8)])
def test_kept_candle_and_indicator_pages_of_one_window_stay_apart(api: ApiStack, timeframe: str, count: int) -> None:
    """/ohlcv and /indicators read the same table (the indicators are on the rows of candles_1m and of
    ohlcv_5m ... ohlcv_1w): each route keeps its own page, so asked again each returns its own rows (a shared
    key served the candle page to /indicators and broke the Markets page's second load of a day)."""
    start, end = datetime(2025, 11, 25, 6, tzinfo=UTC), datetime(2025, 11, 25, 8, tzinfo=UTC)
    params = {"exchange": "okx", "symbol": "BTC/USDT", "timeframe": timeframe, "start": iso(start), "end": iso(end),
              "limit": 120}
    want = {"candles": api.sql(f"SELECT open_time, close FROM marts.ohlcv_{timeframe} WHERE exchange = 'okx' AND "
                               "symbol = 'BTC/USDT' AND open_time >= %s AND open_time < %s ORDER BY 1", (start, end)),
            "indicators": api.sql(f"SELECT open_time, rsi_14 FROM marts.indicators_{timeframe} WHERE exchange = 'okx'"
                                  " AND symbol = 'BTC/USDT' AND open_time >= %s AND open_time < %s ORDER BY 1",
                                  (start, end))}
    assert len(want["candles"]) == len(want["indicators"]) == count
    served: dict[str, list[str]] = {"candles": [], "indicators": []}
    for _ in range(2):
        for route, key, column in (("/ohlcv", "candles", "close"), ("/indicators", "indicators", "rsi_14")):
            r = api.get(route, **params)
            assert r.status_code == 200, r.text
            served[key].append(r.headers["x-page-cache"])
            rows = r.json()[key]
            assert [(datetime.fromisoformat(row["open_time"].replace("Z", "+00:00")), row[column]) for row in rows] \
                == [(t, None if v is None else str(v) if key == "candles" else float(v)) for t, v in want[key]], route
    assert served == {"candles": ["stored", "hit"], "indicators": ["stored", "hit"]}


def test_kept_pages_are_served_fresh_after_a_correction_or_a_backfill(api: ApiStack) -> None:
    """A closed page is kept by the API (api/pages.py) and served again while its mart rows are unchanged; a
    candle corrected in one kept window and a missing candle backfilled into another, both merged into the
    mart by dbt as the pipeline does, make both pages fresh: equal to the mart, row for row."""
    columns = OHLCV_COLUMNS[:9]

    def mart(start: datetime, end: datetime) -> list[dict]:
        return records(columns, api.sql(f"SELECT {', '.join(columns)} FROM marts.ohlcv_1m WHERE exchange = 'okx' "
                                        "AND symbol = 'BTC/USDT' AND open_time >= %s AND open_time < %s "
                                        "ORDER BY open_time", (start, end)))

    def page(start: datetime, end: datetime) -> tuple[str, list[dict]]:
        r = api.get("/ohlcv", exchange="okx", symbol="BTC/USDT", start=iso(start), end=iso(end), limit=1440)
        assert r.status_code == 200, r.text
        return r.headers["x-page-cache"], [{c: got[c] for c in columns} for got in r.json()["candles"]]

    day = datetime(2025, 11, 24, tzinfo=UTC)  # a closed day no other test of this module reads
    corrected_window = (day + timedelta(hours=12), day + timedelta(hours=18))
    backfilled_window = (day, day + timedelta(hours=6))
    corrected, backfilled = day + timedelta(hours=15, minutes=7), day + timedelta(hours=2, minutes=30)
    missing = next(c for c in api.candles if (c.exchange, c.symbol, c.open_time) == ("okx", "BTC/USDT", backfilled))
    # the backfilled candle had not arrived yet: in neither staging nor the mart
    api.sql("DELETE FROM staging.ohlcv WHERE exchange = 'okx' AND symbol = 'BTC/USDT' AND open_time = %s",
            (backfilled,))
    api.sql("DELETE FROM marts.candles_1m WHERE market_id = (SELECT market_id FROM marts.candles_1m_markets"
            " WHERE exchange = 'okx' AND symbol = 'BTC/USDT') AND open_time = %s", (backfilled,))
    for window, rows in ((corrected_window, 360), (backfilled_window, 359)):
        first, second = page(*window), page(*window)
        assert first == ("stored", mart(*window)) and len(first[1]) == rows
        assert second == ("hit", first[1])  # kept: the mart did not change
    # The exchange corrects one candle (the loader writes the new values with a new ingested_at) and the
    # gap repair brings the missing one; the next dbt run merges both into the mart.
    assert api.sql("UPDATE staging.ohlcv SET close = low, ingested_at = now() WHERE exchange = 'okx' AND symbol = "
            "'BTC/USDT' AND open_time = %s AND close <> low RETURNING 1", (corrected,)) == [(1,)]
    conn = psycopg2.connect(api.dsn)
    try:
        copy_candles(conn, [missing], run_id="backfill")
    finally:
        conn.close()
    api.dbt("run", "--select", "candles_1m")
    low = next(c.low for c in api.candles if (c.exchange, c.symbol, c.open_time) == ("okx", "BTC/USDT", corrected))
    for window, rows in ((corrected_window, 360), (backfilled_window, 360)):
        fresh = page(*window)
        assert fresh == ("stored", mart(*window)) and len(fresh[1]) == rows
        assert page(*window) == ("hit", fresh[1])
    assert Decimal(next(c for c in page(*corrected_window)[1] if c["open_time"] == iso(corrected))["close"]) == \
        Decimal(low)
    assert iso(backfilled) in [c["open_time"] for c in page(*backfilled_window)[1]]
