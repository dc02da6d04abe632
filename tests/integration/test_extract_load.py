"""Extract with real ccxt from the emulator into MongoDB, load into Postgres: exact, lossless, idempotent."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.sample import sample_candles

from marketflow.config import load_config
from marketflow.pipeline import Attempt, extract_market, load_market, plan_window
from marketflow.raw_store import RawStore
from marketflow.timeframes import Window, to_ms
from scripts.warehouse_checks import LINEAGE_COLUMNS, table_checksum

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "include" / "config" / "markets.demo.yml"
SPAN = {"start": "2022-08-14T00:00:00Z", "end": "2025-11-25T16:00:00Z"}  # covers both recordings


@pytest.fixture
def demo_config(emulator_url: str):
    return load_config(DEMO_CONFIG, env={"MARKETFLOW_EXCHANGE_URL": emulator_url})


def run_pipeline(config, raw: RawStore, conn, run_id: str, conf: dict | None = None) -> list[dict]:
    window = plan_window("1m", None, None, conf or SPAN, config.overlap_minutes)
    results = []
    for i, market in enumerate(config.markets("1m")):
        extracted = extract_market(config, market, "1m", window, raw, Attempt("test", run_id, "extract", i))
        results.append(load_market(conn, raw, extracted, Attempt("test", run_id, "load", i)))
    return results


def staging_values(conn) -> dict[tuple[str, str], dict[int, tuple]]:
    out: dict[tuple[str, str], dict[int, tuple]] = {}
    with conn.cursor() as cur:
        cur.execute("SELECT exchange, symbol, open_time, open, high, low, close, volume, quote_volume, trades "
                    "FROM staging.ohlcv WHERE timeframe = '1m'")
        for ex, sym, ts, *values in cur.fetchall():
            out.setdefault((ex, sym), {})[to_ms(ts)] = tuple(values)
    return out


def test_sample_days_land_exactly(demo_config, mongo_db, pg_conn) -> None:
    raw = RawStore(mongo_db)
    results = run_pipeline(demo_config, raw, pg_conn, "run-1")
    assert sum(r["inserted"] for r in results) == 5760
    assert all(r["rejected"] == 0 for r in results)

    truth = sample_candles()
    landed = staging_values(pg_conn)
    assert set(landed) == set(truth)
    for market, candles in truth.items():
        assert landed[market].keys() == candles.keys(), market  # nothing lost, nothing invented
        for ts, values in candles.items():
            got = landed[market][ts]
            assert got[:6] == values[:6], (market, ts)  # numeric equality to the last decimal
            assert str(got[0]) == str(values[0])  # and the exchange's own scale is kept
            if values[6] is not None:
                assert got[6] == values[6]

    # Raw keeps the exchange's words: one document per response, bodies as received.
    docs = list(mongo_db.raw_market_payload.find({"kind": "ohlcv"}))
    assert len(docs) == 3 + 10  # binance 2880/1000 pages, okx 2880/300 pages
    assert all(d["http_status"] == 200 and d["body"].startswith(("[[", '{"code":"0"')) for d in docs)
    okx = next(d for d in docs if d["exchange"] == "okx")
    assert okx["request_params"]["instId"] == "BTC-USDT" and okx["endpoint"] == "/api/v5/market/history-candles"
    assert mongo_db.raw_ingestion_log.count_documents({"status": "success"}) == 4


def test_rerun_changes_nothing(demo_config, mongo_db, pg_conn) -> None:
    raw = RawStore(mongo_db)
    run_pipeline(demo_config, raw, pg_conn, "run-1")
    tables = {"staging.ohlcv": ["exchange", "symbol", "timeframe", "open_time"],
              "staging.ohlcv_rejects": ["raw_payload_id", "row_index"]}
    before = {t: table_checksum(pg_conn, t, k) for t, k in tables.items()}
    payloads_before = mongo_db.raw_market_payload.count_documents({})

    results = run_pipeline(demo_config, raw, pg_conn, "run-2")
    assert sum(r["inserted"] + r["updated"] for r in results) == 0
    assert sum(r["unchanged"] for r in results) == 5760
    assert {t: table_checksum(pg_conn, t, k) for t, k in tables.items()} == before
    # Identical answers are recognised, not stored twice.
    assert mongo_db.raw_market_payload.count_documents({}) == payloads_before
    assert mongo_db.raw_market_payload.count_documents({"fetch_count": 2}) == payloads_before


def test_market_history_bounds_the_window(demo_config, mongo_db, pg_conn) -> None:
    """A run window outside a market's recording fetches nothing (no false gap for the demo)."""
    raw = RawStore(mongo_db)
    results = run_pipeline(demo_config, raw, pg_conn, "run-1",
                           {"start": "2024-01-01T00:00:00Z", "end": "2024-01-02T00:00:00Z"})
    assert [r["inserted"] for r in results] == [0, 0]
    assert mongo_db.raw_market_payload.count_documents({}) == 0


def test_plan_window_rules() -> None:
    h = datetime(2024, 1, 1, 10, tzinfo=UTC)
    h1 = datetime(2024, 1, 1, 11, tzinfo=UTC)
    assert plan_window("1m", h, h1, None, 2) == Window(to_ms(h) - 120_000, to_ms(h1))
    # No logical date: the last closed minute before now, plus the overlap.
    now = datetime(2024, 1, 1, 10, 5, 30, tzinfo=UTC)
    assert plan_window("1m", None, None, {}, 2, now=now) == Window(to_ms(now.replace(minute=2, second=0)),
                                                                   to_ms(now.replace(second=0)))
    conf = {"start": "2024-01-01T00:00:30Z", "end": "2024-01-01T00:10:00Z"}
    assert plan_window("1m", h, h1, conf, 2) == Window(to_ms(datetime(2024, 1, 1, tzinfo=UTC)),
                                                       to_ms(datetime(2024, 1, 1, 0, 10, tzinfo=UTC)))
    with pytest.raises(ValueError, match="needs both 'start' and 'end'"):
        plan_window("1m", h, h1, {"start": "2024-01-01T00:00:00Z"}, 2)
    with pytest.raises(ValueError, match="not an ISO-8601 time"):
        plan_window("1m", h, h1, {"start": "soon", "end": "later"}, 2)


def test_failed_extract_is_classified_logged_and_its_response_kept(demo_config, emulator_url, mongo_db) -> None:
    import json
    import urllib.request

    def admin(method: str, body: object | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{emulator_url}/__admin/faults", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=10).read()

    raw = RawStore(mongo_db)
    market = demo_config.market("binance", "ETH/USDT")
    admin("POST", {"kind": "http_5xx", "status": 503, "exchange": "binance", "path": "/api/v3/klines", "count": 5})
    try:
        with pytest.raises(Exception, match="overloaded"):
            extract_market(demo_config, market, "1m", plan_window("1m", None, None, SPAN, 0), raw,
                           Attempt("test", "run-err", "extract", 0))
    finally:
        admin("DELETE")
    [entry] = list(mongo_db.raw_ingestion_log.find({"run_id": "run-err"}))
    assert entry["status"] == "failed" and entry["error_class"] == "exchange_unavailable"
    [kept] = list(mongo_db.raw_market_payload.find({"http_status": 503}))
    assert kept["_id"] in entry["payload_ids"] and "overloaded" in kept["body"] and entry["http_status"] == 503


def test_data_checksum_ignores_lineage_only(demo_config, mongo_db, pg_conn) -> None:
    """The demo's data checksums (what two stacks, e.g. the Local- and CeleryExecutor demos, compare): the
    same candles loaded again by another run give the same data checksum and another full one; one changed
    value changes both."""
    key = ["exchange", "symbol", "timeframe", "open_time"]
    run_pipeline(demo_config, RawStore(mongo_db), pg_conn, "run-1")
    full, data = table_checksum(pg_conn, "staging.ohlcv", key), \
        table_checksum(pg_conn, "staging.ohlcv", key, LINEAGE_COLUMNS)
    with pg_conn.cursor() as cur:
        cur.execute("TRUNCATE staging.candle")
    pg_conn.commit()
    mongo_db.raw_market_payload.delete_many({})
    run_pipeline(demo_config, RawStore(mongo_db), pg_conn, "run-elsewhere")
    assert table_checksum(pg_conn, "staging.ohlcv", key) != full
    assert table_checksum(pg_conn, "staging.ohlcv", key, LINEAGE_COLUMNS) == data and data[0] == 5760
    with pg_conn.cursor() as cur:
        cur.execute("UPDATE staging.ohlcv SET volume = volume + 1 WHERE exchange = 'okx' AND open_time = "
                    "(SELECT min(open_time) FROM staging.ohlcv WHERE exchange = 'okx')")
        assert cur.rowcount == 1
    pg_conn.commit()
    assert table_checksum(pg_conn, "staging.ohlcv", key, LINEAGE_COLUMNS) != data
