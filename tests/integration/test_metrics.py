"""The pipeline's Prometheus metrics, read from a real warehouse and parsed from the real exposition
format; the expected values are counted here from the rows the test wrote (brute force)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from marketflow.metrics import WAREHOUSE_FAMILIES, WINDOW_MINUTES, pipeline_registry

ROOT = Path(__file__).resolve().parents[2]


def scrape(dsn: str, airflow_dsn: str | None = None) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    registry = pipeline_registry(lambda: psycopg2.connect(dsn),
                                 (lambda: psycopg2.connect(airflow_dsn)) if airflow_dsn else None)
    text = generate_latest(registry).decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def one(values: dict[tuple[tuple[str, str], ...], float], **labels: str) -> float:
    return values[tuple(sorted(labels.items()))]


@pytest.fixture
def now(pg_conn) -> datetime:
    with pg_conn.cursor() as cur:
        cur.execute("SELECT now()")
        return cur.fetchone()[0]


def test_every_family_is_read_from_the_rows_written(pg_conn, warehouse_dsn: str, now: datetime) -> None:
    minute = now.replace(second=0, microsecond=0)
    markets = {("binance", "BTC/USDT"): 3, ("binance", "ETH/USDT"): 7, ("okx", "BTC/USDT"): None,
               ("okx", "SOL/USDT"): 1}
    suspended = ("okx", "SOL/USDT")
    with pg_conn, pg_conn.cursor() as cur:
        for (exchange, symbol), age in markets.items():
            cur.execute("INSERT INTO ops.market_config (exchange, symbol, timeframe, ccxt_id, history_start, "
                        "enabled) VALUES (%s, %s, '1m', %s, %s, true)",
                        (exchange, symbol, exchange, minute - timedelta(hours=2)))
            if age is None:
                continue
            for back in range(age, age + 5):  # five candles, the newest `age` minutes old
                cur.execute("INSERT INTO staging.ohlcv (exchange, symbol, timeframe, open_time, open, high, low, "
                            "close, volume, raw_payload_id, run_id) VALUES (%s, %s, '1m', %s, 1, 1, 1, 1, 1, 'p', 'r')",
                            (exchange, symbol, minute - timedelta(minutes=back)))
        # A disabled and a finished (history_end) market are not live: no freshness series.
        cur.execute("INSERT INTO ops.market_config VALUES ('binance', 'OLD/USDT', '1m', 'binance', %s, %s, true), "
                    "('binance', 'OFF/USDT', '1m', 'binance', %s, NULL, false)",
                    (minute - timedelta(days=9), minute - timedelta(days=8), minute - timedelta(days=9)))
        cur.execute("INSERT INTO ops.market_health (exchange, symbol, status) VALUES (%s, %s, 'suspended'), "
                    "('binance', 'ETH/USDT', 'failing')", suspended)
        # Rate-limit minutes: two inside the window, one outside (not counted).
        for back, used, denied, r429, r418 in ((1, 10, 2, 1, 0), (5, 20, 3, 0, 1), (WINDOW_MINUTES + 5, 99, 99, 9, 9)):
            cur.execute("INSERT INTO ops.rate_limit_metrics (exchange, minute, tokens_used, acquisitions, denied, "
                        "wait_seconds, http_429, http_418) VALUES ('binance', %s, %s, %s, %s, 1.5, %s, %s)",
                        (minute - timedelta(minutes=back), used, used // 2, denied, r429, r418))
        cur.execute("INSERT INTO ops.rate_limit_buckets (exchange, capacity, refill_per_second, tokens, paused_until, "
                    "pause_reason) VALUES ('binance', 6000, 100, 0, now() + interval '120 seconds', "
                    "'HTTP 418 on fetch_ohlcv BTC/USDT'), "
                    "('okx', 20, 10, 20, NULL, NULL)")
        errors = [("binance", "RateLimitExceeded", 1), ("binance", "RateLimitExceeded", 2),
                  ("binance", "NetworkError", 3), ("okx", "ExchangeNotAvailable", 4),
                  ("okx", "NetworkError", WINDOW_MINUTES + 10)]
        for exchange, error_class, back in errors:
            cur.execute("INSERT INTO ops.api_errors (occurred_at, exchange, error_class, exception, message, attempt, "
                        "will_retry) VALUES (now() - %s * interval '1 minute', %s, %s, 'E', 'm', 1, true)",
                        (back, exchange, error_class))
        outcomes = [("market_candles_1m", "binance", "BTC/USDT", "success", 2, 1), ("market_candles_1m", "okx",
                    "BTC/USDT", "success", 2, 2), ("market_candles_1h", "binance", "BTC/USDT", "success", 60, 3),
                    ("market_candles_1m", "binance", "ETH/USDT", "failed_transient", None, 1),
                    ("market_candles_1h", "okx", "BTC/USDT", "success", 60, WINDOW_MINUTES + 30)]
        for i, (dag, exchange, symbol, outcome, candles, back) in enumerate(outcomes):
            cur.execute("INSERT INTO ops.market_task_outcomes (dag_id, run_id, task_id, exchange, symbol, try_number, "
                        "outcome, candles, finished_at) VALUES (%s, %s, 't', %s, %s, 1, %s, %s, "
                        "now() - %s * interval '1 minute')", (dag, f"r{i}", exchange, symbol, outcome, candles, back))
        for i, back in enumerate((1, 2, WINDOW_MINUTES + 1)):
            cur.execute("INSERT INTO staging.ohlcv_rejects (raw_payload_id, row_index, exchange, symbol, timeframe, "
                        "raw_row, reason, run_id, rejected_at) VALUES ('p', %s, 'okx', 'BTC/USDT', '1m', '[]', 'bad', "
                        "'r', now() - %s * interval '1 minute')", (i, back))
        # The gaps mart (built by dbt; here the columns the metric reads, as its contract names them) and a
        # stored failing dbt test.
        cur.execute("CREATE TABLE marts.data_quality_gaps (exchange text, status text, is_missing boolean, "
                    "missing_candles bigint)")
        cur.execute("INSERT INTO marts.data_quality_gaps VALUES ('binance', 'open', true, 5), "
                    "('binance', 'open', true, 7), ('binance', 'repair_scheduled', true, 1), "
                    "('binance', 'repaired', false, 50), ('okx', 'confirmed_empty_at_source', true, 3)")
        cur.execute("CREATE SCHEMA dbt_test__audit")
        cur.execute("CREATE TABLE dbt_test__audit.unique_ohlcv_1m_key AS SELECT 1 AS n FROM generate_series(1, 4)")
        cur.execute("CREATE TABLE dbt_test__audit.not_null_ohlcv_1m_close (n int)")

    m = scrape(warehouse_dsn)
    assert m.get("marketflow_metrics_query_errors") is None  # no family failed

    lag = m["marketflow_market_freshness_lag_seconds"]
    # Live, enabled, not suspended: the two Binance markets and OKX BTC (no candle: lag from history_start).
    assert set(lag) == {(("exchange", "binance"), ("symbol", "BTC/USDT")), (("exchange", "binance"),
                        ("symbol", "ETH/USDT")), (("exchange", "okx"), ("symbol", "BTC/USDT"))}
    seconds_into_minute = (now - minute).total_seconds()
    for (exchange, symbol), age in markets.items():
        if (exchange, symbol) == suspended:
            continue
        expected = (age - 1) * 60 + seconds_into_minute if age is not None else 7200 + seconds_into_minute
        # The scrape's now() is a little after the fixture's: the lag may only be larger, by that much.
        assert 0 <= one(lag, exchange=exchange, symbol=symbol) - expected < 5, (exchange, symbol)

    statuses = Counter()
    for exchange, symbol in [*markets, ("binance", "OLD/USDT")]:
        status = {suspended: "suspended", ("binance", "ETH/USDT"): "failing"}.get((exchange, symbol), "active")
        statuses[(exchange, status)] += 1
    assert m["marketflow_markets"] == {(("exchange", e), ("status", s)): float(n) for (e, s), n in statuses.items()}

    window = f"{WINDOW_MINUTES}m"
    assert one(m[f"marketflow_rate_limit_tokens_used_{window}"], exchange="binance") == 30
    assert one(m[f"marketflow_api_calls_{window}"], exchange="binance") == 5 + 10
    assert one(m[f"marketflow_rate_limit_denied_{window}"], exchange="binance") == 5
    assert one(m[f"marketflow_rate_limit_wait_seconds_{window}"], exchange="binance") == 3.0
    assert one(m[f"marketflow_http_responses_{window}"], exchange="binance", status="429") == 1
    assert one(m[f"marketflow_http_responses_{window}"], exchange="binance", status="418") == 1
    paused = m["marketflow_rate_limit_paused_seconds"]
    assert 100 < one(paused, exchange="binance", status="418", egress="default") <= 120
    assert one(paused, exchange="okx", status="", egress="default") == 0

    recent = Counter((e, c) for e, c, back in errors if back < WINDOW_MINUTES)
    assert m[f"marketflow_api_errors_{window}"] == {
        (("error_class", c), ("exchange", e)): float(n) for (e, c), n in recent.items()}
    loaded = Counter()
    for dag, exchange, _, outcome, candles, back in outcomes:
        if outcome == "success" and back < WINDOW_MINUTES:
            loaded[(exchange, dag)] += candles
    assert m[f"marketflow_candles_loaded_{window}"] == {
        (("dag_id", d), ("exchange", e)): float(n) for (e, d), n in loaded.items()}
    assert m[f"marketflow_candles_rejected_{window}"] == {(("exchange", "okx"),): 2.0}

    assert m["marketflow_open_gaps"] == {(("exchange", "binance"), ("status", "open")): 2.0,
                                         (("exchange", "binance"), ("status", "repair_scheduled")): 1.0,
                                         (("exchange", "okx"), ("status", "confirmed_empty_at_source")): 1.0}
    assert m["marketflow_open_gap_candles"] == {(("exchange", "binance"), ("status", "open")): 12.0,
                                                (("exchange", "binance"), ("status", "repair_scheduled")): 1.0,
                                                (("exchange", "okx"), ("status", "confirmed_empty_at_source")): 3.0}
    assert m["marketflow_dbt_test_failing_rows"] == {(("test", "not_null_ohlcv_1m_close"),): 0.0,
                                                     (("test", "unique_ohlcv_1m_key"),): 4.0}


def test_a_missing_mart_or_database_is_reported_not_fatal(warehouse_dsn: str) -> None:
    m = scrape(warehouse_dsn)  # no dbt build yet: the gaps mart does not exist
    assert m["marketflow_metrics_query_errors"] == {(("family", "marketflow_open_gaps"),): 1.0,
                                                    (("family", "marketflow_open_gap_candles"),): 1.0}
    assert "marketflow_markets" not in m  # no markets configured: a family without samples

    dead = pipeline_registry(lambda: psycopg2.connect("host=127.0.0.1 port=1 connect_timeout=2"))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(dead).decode())}
    failed = {s.labels["family"] for s in families["marketflow_metrics_query_errors"].samples if s.value == 1}
    assert failed == {f.name for f in WAREHOUSE_FAMILIES}


def test_the_last_successful_run_per_dag_is_read_from_airflows_dag_run(pg_server, warehouse_dsn: str) -> None:
    # Airflow's dag_run columns the metric reads, in a database of their own (as Airflow's metadata DB is).
    name = f"mf_airflow_{datetime.now(UTC).strftime('%H%M%S%f')}"
    pg_server.create_database(name)
    try:
        dsn = pg_server.dsn(name)
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE dag_run (dag_id text, state text, end_date timestamptz)")
            cur.execute("INSERT INTO dag_run VALUES ('market_candles_1m', 'success', now() - interval '90 seconds'), "
                        "('market_candles_1m', 'success', now() - interval '1 hour'), "
                        "('market_candles_1m', 'failed', now()), "
                        "('market_candles_1h', 'success', now() - interval '3 hours'), "
                        "('someone_elses_dag', 'success', now())")
        m = scrape(warehouse_dsn, dsn)
        ages = m["marketflow_dag_last_success_age_seconds"]
        assert set(ages) == {(("dag_id", "market_candles_1m"),), (("dag_id", "market_candles_1h"),)}
        assert one(ages, dag_id="market_candles_1m") == pytest.approx(90, abs=5)
        assert one(ages, dag_id="market_candles_1h") == pytest.approx(3 * 3600, abs=5)
    finally:
        pg_server.drop_database(name)


def test_the_gaps_mart_contract_has_the_columns_the_metrics_read() -> None:
    spec = yaml.safe_load((ROOT / "dbt/models/marts/data_quality/data_quality_gaps.yml").read_text())
    model = next(m for m in spec["models"] if m["name"] == "data_quality_gaps")
    columns = {c["name"] for c in model["columns"]}
    assert {"exchange", "status", "is_missing", "missing_candles"} <= columns
