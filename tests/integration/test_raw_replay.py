"""A rebuild from raw ends where live loading ended, also after a correction that was taken back.

The emulator answers A, then B (one candle revised), then A again for the same window. The third
answer is byte-identical to the first, so raw deduplicates it onto the first document and only
bumps its ``last_fetched_at``. Live loading ended on A; the replay must too.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import pytest

from marketflow.config import load_config
from marketflow.pipeline import Attempt, extract_market, load_market, reprocess_from_raw
from marketflow.raw_store import RawStore
from marketflow.schema import apply_ddl
from marketflow.timeframes import Window

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "include" / "config" / "markets.demo.yml"
WINDOW = Window(int(datetime(2022, 8, 15, 10, tzinfo=UTC).timestamp() * 1000),
                int(datetime(2022, 8, 15, 10, 30, tzinfo=UTC).timestamp() * 1000))
REVISED = WINDOW.start_ms + 7 * 60_000  # the candle the exchange corrects, then takes back


def faults(emulator_url: str, method: str, body: object | None = None) -> None:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{emulator_url}/__admin/faults", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()


@pytest.fixture
def fresh_staging(pg_server) -> Iterator[psycopg2.extensions.connection]:
    """A second, empty warehouse to rebuild into."""
    name = f"mf_replay_{os.getpid()}"
    pg_server.drop_database(name)
    pg_server.create_database(name)
    conn = psycopg2.connect(pg_server.dsn(name))
    apply_ddl(conn)
    yield conn
    conn.close()
    pg_server.drop_database(name)


def staging_rows(conn) -> dict:
    """Every candle with its values and lineage (not run_id / ingested_at, which a rebuild renews)."""
    with conn.cursor() as cur:
        cur.execute("SELECT open_time, open, high, low, close, volume, quote_volume, trades, raw_payload_id "
                    "FROM staging.ohlcv WHERE exchange = 'binance' AND symbol = 'ETH/USDT' AND timeframe = '1m'")
        return {row[0]: row[1:] for row in cur.fetchall()}


def test_replay_after_a_taken_back_correction_ends_like_live(emulator_url, mongo_db, pg_conn, fresh_staging) -> None:
    config = load_config(DEMO_CONFIG, env={"MARKETFLOW_EXCHANGE_URL": emulator_url})
    market = config.market("binance", "ETH/USDT")
    raw = RawStore(mongo_db)

    def live_run(run_id: str) -> list[str]:
        extracted = extract_market(config, market, "1m", WINDOW, raw, Attempt("test", run_id, "extract", 0))
        load_market(pg_conn, raw, extracted, Attempt("test", run_id, "load", 0))
        return extracted["payload_ids"]

    [a] = live_run("run-A")
    answer_a = staging_rows(pg_conn)
    faults(emulator_url, "DELETE")
    faults(emulator_url, "POST", {"kind": "price_spike", "exchange": "binance", "open_times": [REVISED],
                                  "factor": 1.01, "count": 1})
    try:
        [b] = live_run("run-B")
    finally:
        faults(emulator_url, "DELETE")
    answer_b = staging_rows(pg_conn)
    assert b != a and answer_b[_ts(REVISED)] != answer_a[_ts(REVISED)]  # B really corrected the candle
    assert [a] == live_run("run-A-again")  # the same answer as the first: deduplicated onto it
    live = staging_rows(pg_conn)
    assert live == answer_a and len(live) == 30
    assert mongo_db.raw_market_payload.find_one({"_id": a})["fetch_count"] == 2

    chunk = {"exchange": "binance", "symbol": "ETH/USDT", "timeframe": "1m",
             "window_start_ms": WINDOW.start_ms, "window_end_ms": WINDOW.end_ms}
    assert raw.find_payload_ids("binance", "ETH/USDT", "1m", WINDOW) == [b, a]  # A was fetched last
    reprocess_from_raw(fresh_staging, raw, chunk, Attempt("test", "replay", "ingest", 0))
    assert staging_rows(fresh_staging) == live


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)
