"""market_backfill's building blocks: chunk planning, and rebuilding staging from raw without the exchange."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from marketflow.config import load_config
from marketflow.pipeline import (
    Attempt,
    extract_market,
    ingest_market,
    load_market,
    plan_chunks,
    plan_window,
    reprocess_from_raw,
    window_coverage,
)
from marketflow.raw_store import RawStore
from marketflow.staging_load import table_checksum
from marketflow.timeframes import Window, iso

REPO = Path(__file__).resolve().parents[2]
KEY = ["exchange", "symbol", "timeframe", "open_time"]


@pytest.fixture
def demo_config(emulator_url: str):
    return load_config(REPO / "include/config/markets.demo.yml", env={"MARKETFLOW_EXCHANGE_URL": emulator_url})


def test_chunks_cover_the_request_clipped_to_history(demo_config) -> None:
    params = {"start": "2022-08-13T00:00:00Z", "end": "2030-01-01T00:00:00Z", "chunk_hours": 7}
    chunks = plan_chunks(demo_config, "binance", params)
    # Binance ETH/USDT history is 2022-08-14 .. 2022-08-16: 48 hours in 7-hour chunks.
    assert len(chunks) == 7 and [c["chunk"] for c in chunks] == list(range(1, 8))
    assert iso(chunks[0]["window_start_ms"]) == "2022-08-14T00:00:00Z"
    assert iso(chunks[-1]["window_end_ms"]) == "2022-08-16T00:00:00Z"
    assert all(a["window_end_ms"] == b["window_start_ms"] for a, b in itertools.pairwise(chunks))
    assert plan_chunks(demo_config, "binance", {**params, "symbols": ["BTC/USDT"]}) == []
    with pytest.raises(ValueError, match="needs 'start' and 'end'"):
        plan_chunks(demo_config, "binance", {"start": "2022-08-14T00:00:00Z"})


def test_reprocess_from_raw_rebuilds_staging_without_the_exchange(demo_config, mongo_db, pg_conn) -> None:
    raw = RawStore(mongo_db)
    market = demo_config.market("okx", "BTC/USDT")
    window = plan_window("1m", None, None, {"start": "2025-11-24T00:00:00Z", "end": "2025-11-24T12:00:00Z"}, 0)
    load_market(pg_conn, raw, extract_market(demo_config, market, "1m", window, raw, Attempt("t", "r1", "x")),
                Attempt("t", "r1", "l"))
    before = table_checksum(pg_conn, "staging.ohlcv", KEY)
    with pg_conn.cursor() as cur:
        cur.execute("DELETE FROM staging.ohlcv")
    pg_conn.commit()

    chunk = {"exchange": "okx", "symbol": "BTC/USDT", "timeframe": "1m", "window_start_ms": window.start_ms,
             "window_end_ms": window.end_ms}
    requests_before = mongo_db.raw_market_payload.count_documents({})
    result = reprocess_from_raw(pg_conn, raw, chunk, Attempt("t", "r2", "reprocess"))
    assert result["inserted"] == 720
    assert mongo_db.raw_market_payload.count_documents({}) == requests_before  # nothing new fetched
    count, _ = table_checksum(pg_conn, "staging.ohlcv", KEY)
    assert count == before[0]
    assert window_coverage(pg_conn, "okx", "BTC/USDT", "1m", Window(window.start_ms, window.end_ms)) == {
        "expected": 720, "present": 720, "missing": 0}


class _CountingFinds:
    """A payload collection that counts the reads (find) going to MongoDB."""

    def __init__(self, collection) -> None:
        self.collection, self.finds = collection, 0

    def find(self, *args, **kwargs):
        self.finds += 1
        return self.collection.find(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.collection, name)


def test_ingest_loads_what_it_stored_without_reading_it_back(demo_config, mongo_db, pg_conn) -> None:
    raw = RawStore(mongo_db)
    raw.payloads = counting = _CountingFinds(raw.payloads)
    market = demo_config.market("binance", "ETH/USDT")
    window = plan_window("1m", None, None, {"start": "2022-08-14T00:00:00Z", "end": "2022-08-14T06:00:00Z"}, 0)
    stable = ["ingested_at", "run_id"]

    first = ingest_market(demo_config, market, "1m", window, raw, pg_conn, Attempt("t", "i1", "ingest"))
    assert first["inserted"] == 360 and counting.finds == 0  # loaded from the documents it had just written
    ingested = table_checksum(pg_conn, "staging.ohlcv", KEY, exclude=stable)

    # The same rows, lineage included, as a load that reads every payload from MongoDB.
    with pg_conn.cursor() as cur:
        cur.execute("DELETE FROM staging.ohlcv")
    pg_conn.commit()
    chunk = {"exchange": "binance", "symbol": "ETH/USDT", "timeframe": "1m", "window_start_ms": window.start_ms,
             "window_end_ms": window.end_ms}
    assert reprocess_from_raw(pg_conn, raw, chunk, Attempt("t", "i2", "reprocess"))["inserted"] == 360
    assert counting.finds > 0
    assert table_checksum(pg_conn, "staging.ohlcv", KEY, exclude=stable) == ingested

    # Run again: the answers are already stored (same ids), so the load reads the stored documents
    # (their first fetch counts) and changes nothing.
    finds = counting.finds
    again = ingest_market(demo_config, market, "1m", window, raw, pg_conn, Attempt("t", "i3", "ingest"))
    assert again["inserted"] == 0 and again["unchanged"] == 360 and counting.finds > finds
    assert table_checksum(pg_conn, "staging.ohlcv", KEY, exclude=stable) == ingested


def test_kept_documents_are_what_mongodb_holds(demo_config, mongo_db) -> None:
    from datetime import UTC

    raw = RawStore(mongo_db)
    market = demo_config.market("okx", "BTC/USDT")
    window = plan_window("1m", None, None, {"start": "2025-11-24T00:00:00Z", "end": "2025-11-24T03:00:00Z"}, 0)
    written: dict = {}
    extracted = extract_market(demo_config, market, "1m", window, raw, Attempt("t", "k1", "x"), written=written)
    assert set(written) == set(extracted["payload_ids"]) and written

    def aware(value):  # MongoDB hands dates back naive (UTC)
        if isinstance(value, dict):
            return {k: aware(v) for k, v in value.items()}
        return value.replace(tzinfo=UTC) if hasattr(value, "tzinfo") and value.tzinfo is None else value

    for doc in mongo_db.raw_market_payload.find({"_id": {"$in": list(written)}}):
        assert aware(doc) == written[doc["_id"]]
