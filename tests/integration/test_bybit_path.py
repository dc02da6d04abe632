"""A third exchange end to end: a Bybit market (synthetic candles served by the emulator in Bybit's v5
shapes: newest first, 1000 a page, the open candle first) through the minute run, the hourly
reconcile and a backfill, via the pipeline's own task bodies. The oracle is the emulator's kline
endpoint read here with plain HTTP, page by page, independently of ccxt and of marketflow's parser."""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg2
import pytest

from marketflow.config import load_config
from marketflow.pipeline import Attempt, backfill_unit, plan_backfill, plan_window, run_exchange_markets
from marketflow.raw_store import RawStore
from marketflow.timeframes import to_ms

MINUTE = 60_000
SYMBOL, SYMBOL_ID = "BTC/USDT", "BTCUSDT"
MARKETS = """
defaults:
  timeframes: [1m]
  overlap_minutes: 2
exchanges:
  bybit:
    api_base_url: ${MARKETFLOW_EXCHANGE_URL}
    options:
      fetchMarkets: {types: [spot]}
    markets:
      - symbol: BTC/USDT
        history_start: "2025-11-20T00:00:00Z"
"""
HOUR = {"start": "2025-11-24T10:00:00Z", "end": "2025-11-24T11:00:00Z"}
BACKFILL = {"start": "2025-11-24T00:00:00Z", "end": "2025-11-26T00:00:00Z", "chunk_hours": 24}


@pytest.fixture
def config(tmp_path, emulator_url):
    path = tmp_path / "markets.yml"
    path.write_text(MARKETS)
    return load_config(path, env={"MARKETFLOW_EXCHANGE_URL": emulator_url})


def bybit_candles(base_url: str, start_ms: int, end_ms: int) -> dict[int, tuple[Decimal, ...]]:
    """The emulator's closed 1m candles with start_ms <= open < end_ms, from its wire: pages of 1000
    walked forward by `start`, each page newest first."""
    out: dict[int, tuple[Decimal, ...]] = {}
    start = start_ms
    while start < end_ms:
        url = (f"{base_url}/v5/market/kline?category=spot&symbol={SYMBOL_ID}&interval=1&start={start}"
               f"&end={end_ms - 1}&limit=1000")
        with urllib.request.urlopen(url, timeout=30) as resp:
            body = json.loads(resp.read())
        assert body["retCode"] == 0, body
        rows = body["result"]["list"]
        if not rows:
            break
        for ts, *values in rows:
            out[int(ts)] = tuple(Decimal(v) for v in values)
        start = int(rows[0][0]) + MINUTE  # newest first: the first row is the page's last candle
    return out


def staging(dsn: str) -> dict[int, tuple]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT open_time, open, high, low, close, volume, quote_volume, trades FROM staging.ohlcv "
                    "WHERE exchange = 'bybit' AND symbol = %s AND timeframe = '1m'", (SYMBOL,))
        return {to_ms(ts): tuple(values) for ts, *values in cur.fetchall()}


def assert_exact(landed: dict[int, tuple], truth: dict[int, tuple[Decimal, ...]]) -> None:
    assert sorted(landed) == sorted(truth), "nothing lost, nothing invented"
    for ts, (o, h, low, c, v, turnover) in truth.items():
        # NUMERIC to the last decimal; Bybit's turnover is the quote volume; Bybit sends no trade count
        assert landed[ts] == (o, h, low, c, v, turnover, None), ts


def reconcile(config, dsn, mongo_db, conf: dict, run_id: str, live: bool, window=None) -> dict:
    window = window or plan_window("1m", None, None, conf, config.overlap_minutes)
    return run_exchange_markets(config, "bybit", "1m", window, conf, RawStore(mongo_db),
                                lambda: psycopg2.connect(dsn),
                                Attempt("market_candles_1h", run_id, "bybit.reconcile"), live=live)


def test_minute_run_lands_the_closed_minutes_never_the_open_one(config, emulator_url, warehouse_dsn, mongo_db):
    now = datetime.now(UTC)
    end = now.replace(second=0, microsecond=0)
    window = plan_window("1m", end - timedelta(minutes=1), end, None, config.overlap_minutes)
    assert window.candles("1m") == 3  # the minute and its 2-minute overlap
    result = run_exchange_markets(config, "bybit", "1m", window, {}, RawStore(mongo_db),
                                  lambda: psycopg2.connect(warehouse_dsn),
                                  Attempt("market_candles_1m", "m1", "bybit.ingest"), live=True)
    assert result["markets"] == 1 and result["inserted"] == 3
    assert_exact(staging(warehouse_dsn), bybit_candles(emulator_url, window.start_ms, window.end_ms))
    # the page held the open candle as its first row (newest first): it was not loaded
    doc = mongo_db.raw_market_payload.find_one({"exchange": "bybit", "kind": "ohlcv"})
    first = json.loads(doc["body"])["result"]["list"][0]
    assert int(first[0]) >= window.end_ms - MINUTE and max(staging(warehouse_dsn)) < window.end_ms


def test_hourly_reconcile_is_exact_and_idempotent(config, emulator_url, warehouse_dsn, mongo_db):
    result = reconcile(config, warehouse_dsn, mongo_db, HOUR, "h1", live=False)
    assert result["inserted"] == 60
    truth = bybit_candles(emulator_url, to_ms(datetime.fromisoformat(HOUR["start"])),
                          to_ms(datetime.fromisoformat(HOUR["end"])))
    assert len(truth) == 60
    assert_exact(staging(warehouse_dsn), truth)
    again = reconcile(config, warehouse_dsn, mongo_db, HOUR, "h2", live=False)
    assert again["inserted"] == 0
    assert_exact(staging(warehouse_dsn), truth)
    with psycopg2.connect(warehouse_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM staging.ohlcv_rejects")
        assert cur.fetchone()[0] == 0


def test_backfill_of_two_days_in_pages_of_1000(config, emulator_url, warehouse_dsn, mongo_db):
    units = plan_backfill(config, "bybit", BACKFILL, max_tasks=4)
    assert len(units) == 1 and units[0]["markets"][0]["symbol"] == SYMBOL
    started = time.monotonic()
    with psycopg2.connect(warehouse_dsn) as conn:
        totals = backfill_unit(config, units[0], RawStore(mongo_db), conn,
                               Attempt("market_backfill", "b1", "bybit.backfill", 0))
    assert totals[0]["expected"] == totals[0]["present"] == totals[0]["inserted"] == 2880
    assert totals[0]["missing"] == 0 and totals[0]["rejected"] == 0
    truth = bybit_candles(emulator_url, to_ms(datetime.fromisoformat(BACKFILL["start"])),
                          to_ms(datetime.fromisoformat(BACKFILL["end"])))
    assert_exact(staging(warehouse_dsn), truth)
    # Bybit's page is 1000 candles: two requests per 24-hour chunk, 1000 and the 440 left
    pages = list(mongo_db.raw_market_payload.find({"exchange": "bybit", "kind": "ohlcv"}))
    limits = sorted(int(p["request_params"]["limit"]) for p in pages)
    assert limits == [440, 440, 1000, 1000], f"{limits} in {time.monotonic() - started:.1f} s"
    for page in pages:
        times = [int(r[0]) for r in json.loads(page["body"])["result"]["list"]]
        assert times == sorted(times, reverse=True)  # stored as Bybit sent it: newest first
