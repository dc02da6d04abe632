"""market_backfill's building blocks: chunk planning, and rebuilding staging from raw without the exchange."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from marketflow.config import load_config
from marketflow.errors import MarketsFailed
from marketflow.pipeline import (
    Attempt,
    backfill_unit,
    extract_market,
    ingest_market,
    load_market,
    plan_backfill,
    plan_chunks,
    plan_window,
    reprocess_from_raw,
    window_coverage,
)
from marketflow.raw_store import RawStore
from marketflow.timeframes import Window, iso, to_ms
from scripts.warehouse_checks import table_checksum

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


def _many_markets(tmp_path, n: int):
    """A markets file with ``n`` binance markets (the emulator serves each from its synthetic series)."""
    symbols = "\n".join(f"      - symbol: C{i}/USDT" for i in range(n))
    (tmp_path / "many.yml").write_text(
        "defaults:\n  history_start: '2024-01-01T00:00:00Z'\nexchanges:\n  binance:\n    markets:\n" + symbols + "\n")
    return load_config(tmp_path / "many.yml")


YEAR = {"start": "2025-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z", "chunk_hours": 24}
YEAR_1M = 525_600  # candles of a year of 1m per market
LATER = 1_800_000_000_000  # "now" for planning: 2027, after the requested year


def _slices(units) -> dict[str, list[tuple[int, int]]]:
    """Each market's planned windows, in order."""
    out: dict[str, list[tuple[int, int]]] = {}
    for u in units:
        for m in u["markets"]:
            out.setdefault(m["symbol"], []).append((m["window_start_ms"], m["window_end_ms"]))
    return {s: sorted(w) for s, w in out.items()}


@pytest.mark.parametrize(("markets", "max_tasks", "tasks", "bound"), [
    (1000, 1024, 526, 1_000_000 + 1440),   # a year of 1,000 markets: ~1M candles a task (+ at most a chunk)
    (1000, 300, 300, YEAR_1M * 1000 // 300 + 1440),  # a lower max_map_length: fewer, larger tasks, never more
    # a year of 20 markets: slices of markets, not one task per market; 12 (not 11) so that the last of the
    # waves on the pool's 2 slots is full
    (20, 1024, 12, 1_000_000 + 1440),
])
def test_a_year_of_many_markets_plans_within_airflows_mapping_limit(tmp_path, markets, max_tasks, tasks,
                                                                     bound) -> None:
    """The plan the DAG's plan task hands to Airflow, for a year at 1m: at most max_map_length mapped
    tasks, none above its size bound, every market's year tiled exactly once (no overlap, no hole)."""
    config = _many_markets(tmp_path, markets)
    units = plan_backfill(config, "binance", YEAR, max_tasks, now_ms=LATER)
    assert len(units) == tasks <= max_tasks
    sizes = [u["candles"] for u in units]
    assert max(sizes) <= bound and sum(sizes) == markets * YEAR_1M
    # each unit's stated size is what its windows hold, counted minute by minute (60,000 ms a candle)
    assert all(u["candles"] == sum((m["window_end_ms"] - m["window_start_ms"]) // 60_000 for m in u["markets"])
               for u in units)
    year = (to_ms(datetime(2025, 1, 1, tzinfo=UTC)), to_ms(datetime(2026, 1, 1, tzinfo=UTC)))
    slices = _slices(units)
    assert sorted(slices) == sorted(f"C{i}/USDT" for i in range(markets))
    for symbol, windows in slices.items():
        assert windows[0][0] == year[0] and windows[-1][1] == year[1], symbol
        assert all(a[1] == b[0] for a, b in itertools.pairwise(windows)), symbol  # contiguous, no overlap
        # cut on the chunk grid (whole days here), so every page of a chunk is full
        assert all((w[0] - year[0]) % 86_400_000 == 0 for w in windows), symbol
    # the XCom a plan hands to Airflow stays small whatever the request
    assert len(json.dumps(units)) < 300 * markets + 300 * len(units)


def test_storage_preparation_makes_the_requests_months_so_no_row_lands_in_the_default(tmp_path, pg_conn) -> None:
    """The backfill's prepare_storage creates the month partitions of the request, clipped to the markets'
    history (2024-01-01 on, here), before the ingest loads: a candle of each requested month then goes to its
    own partition (Postgres's tableoid is the oracle), none to the DEFAULT, and no month outside the span
    was made."""
    from marketflow.housekeeping import ensure_month_partitions
    from marketflow.planning import request_span

    config = _many_markets(tmp_path, 3)
    params = {"start": "2023-11-15T00:00:00Z", "end": "2024-03-10T00:00:00Z", "symbols": ["C1/USDT"]}
    span = request_span(config, params, now_ms=LATER)
    assert span == (datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 3, 10, tzinfo=UTC))
    assert request_span(config, {**params, "symbols": ["NOPE/USDT"]}, now_ms=LATER) is None
    ensure_month_partitions(pg_conn, datetime(2026, 12, 4, tzinfo=UTC), tables=("staging.candle",), span=span)
    with pg_conn.cursor() as cur:
        cur.execute("SELECT to_char(from_time AT TIME ZONE 'UTC', 'YYYY-MM') FROM ops.month_partitions("
                    "'staging.candle'::regclass) WHERE from_time < '2026-01-01' ORDER BY 1")
        assert [r[0] for r in cur.fetchall()] == ["2024-01", "2024-02", "2024-03"]
        for day in ("2024-01-01", "2024-02-29", "2024-03-09"):
            # through staging.ohlcv, the writable view over staging.candle (the physical table)
            cur.execute("INSERT INTO staging.ohlcv (exchange, symbol, timeframe, open_time, open, high, low, close, "
                        "volume, raw_payload_id, run_id) VALUES ('binance', 'C1/USDT', '1m', %s, 1, 1, 1, 1, 1, "
                        "'p', 'r')", (f"{day}T23:59:00Z",))
            cur.execute("SELECT c.tableoid::regclass::text FROM staging.candle c JOIN staging.market m"
                        " USING (market_id) WHERE m.symbol = 'C1/USDT' AND c.open_time = %s",
                        (f"{day}T23:59:00Z",))
            assert cur.fetchone()[0] == f"staging.candle_p{day[:7].replace('-', '_')}"
    pg_conn.rollback()


def test_small_requests_fill_the_pool_and_tiny_ones_stay_one_task(tmp_path) -> None:
    """Brute force on a small plan: every minute of every market in exactly one unit."""
    config = _many_markets(tmp_path, 7)  # backfill_pool_slots 2
    params = {"start": "2025-01-01T00:00:00Z", "end": "2025-01-11T05:00:00Z", "chunk_hours": 7,
              "task_candles": 30_000}
    units = plan_backfill(config, "binance", params, 1024, now_ms=LATER)
    minutes: dict[tuple[str, int], int] = {}
    for u in units:
        for m in u["markets"]:
            for t in range(m["window_start_ms"], m["window_end_ms"], 60_000):
                minutes[(m["symbol"], t)] = minutes.get((m["symbol"], t), 0) + 1
    start = to_ms(datetime(2025, 1, 1, tzinfo=UTC))
    every = {(f"C{i}/USDT", start + k * 60_000) for i in range(7) for k in range(10 * 1440 + 300)}
    assert set(minutes) == every and set(minutes.values()) == {1}
    assert len(units) == 4 and max(u["candles"] for u in units) <= 30_000 + 7 * 60
    # a request worth splitting uses every backfill slot; a tiny one is a single task
    one_day = {**params, "end": "2025-01-02T00:00:00Z", "task_candles": 1_000_000}
    assert len(plan_backfill(config, "binance", one_day, 1024, now_ms=LATER)) == 1  # 10,080 candles
    many = _many_markets(tmp_path, 200)
    assert [u["candles"] for u in plan_backfill(many, "binance", one_day, 1024, now_ms=LATER)] == [144_000, 144_000]


def test_a_backfill_task_loads_its_other_markets_past_a_delisted_one_and_resumes(demo_config, tmp_path, mongo_db,
                                                                                 pg_conn, emulator_url) -> None:
    text = (REPO / "include/config/markets.demo.yml").read_text().replace(
        "      - symbol: ETH/USDT\n", "      - {symbol: LUNA/USDT, history_start: '2022-08-14T00:00:00Z'}\n"
        "      - symbol: ETH/USDT\n", 1)
    (tmp_path / "m.yml").write_text(text)
    config = load_config(tmp_path / "m.yml", env={"MARKETFLOW_EXCHANGE_URL": emulator_url})
    params = {"start": "2022-08-14T00:00:00Z", "end": "2022-08-14T06:00:00Z", "chunk_hours": 2}
    [unit] = plan_backfill(config, "binance", params, max_tasks=1)
    assert [m["symbol"] for m in unit["markets"]] == ["LUNA/USDT", "ETH/USDT"]
    raw = RawStore(mongo_db)
    with pytest.raises(MarketsFailed) as failed:
        backfill_unit(config, unit, raw, pg_conn, Attempt("market_backfill", "b1", "binance.ingest"))
    assert set(failed.value.failures) == {"LUNA/USDT"}
    assert window_coverage(pg_conn, "binance", "ETH/USDT", "1m", Window(unit["markets"][1]["window_start_ms"],
                                                                      unit["markets"][1]["window_end_ms"]))[
        "present"] == 360
    # The retried task skips the chunks already complete: no candle page is fetched again.
    pages = mongo_db.raw_market_payload.count_documents({})
    eth_only = {**unit, "markets": unit["markets"][1:]}
    [total] = backfill_unit(config, eth_only, raw, pg_conn, Attempt("market_backfill", "b1", "binance.ingest", -1, 2),
                            skip_complete=True)
    assert (total["chunks"], total["chunks_skipped"], total["present"], total["missing"]) == (3, 3, 360, 0)
    assert mongo_db.raw_market_payload.count_documents({}) == pages


def _emulator_klines(url: str, symbol: str, start_ms: int, end_ms: int) -> dict[int, tuple]:
    """The emulator's 1m candles from its Binance wire (urllib and json, no pipeline code)."""
    out: dict[int, tuple] = {}
    since = start_ms
    while since < end_ms:
        query = f"symbol={symbol.replace('/', '')}&interval=1m&startTime={since}&endTime={end_ms - 1}&limit=1000"
        with urllib.request.urlopen(f"{url}/api/v3/klines?{query}", timeout=30) as resp:
            rows = json.loads(resp.read())
        if not rows:
            break
        out.update({int(r[0]): tuple(Decimal(v) for v in r[1:6]) for r in rows if int(r[0]) < end_ms})
        since = int(rows[-1][0]) + 60_000
    return out


def three_binance_markets(tmp_path, emulator_url: str, symbols: list[str]):
    """A markets file of Binance on the emulator with these markets, loaded."""
    (tmp_path / "m.yml").write_text(
        "defaults:\n  history_start: '2025-01-01T00:00:00Z'\nexchanges:\n  binance:\n    api_base_url: "
        f"{emulator_url}\n    options: {{fetchMarkets: {{types: [spot]}}}}\n    markets:\n"
        + "".join(f"      - symbol: {s}\n" for s in symbols))
    return load_config(tmp_path / "m.yml")


def test_sliced_units_load_every_candle_once_as_the_emulator_serves_it(tmp_path, emulator_url, mongo_db,
                                                                         pg_conn) -> None:
    """Three markets x 2 days cut into units that split markets across tasks; the units run in any
    order, one of them twice (a retry), and staging then equals the emulator's candles: none lost,
    none twice, none outside the window."""
    symbols = ["BTC/USDT", "SOL/USDT", "XRP/USDT"]
    config = three_binance_markets(tmp_path, emulator_url, symbols)
    params = {"start": "2025-03-01T00:00:00Z", "end": "2025-03-03T00:00:00Z", "chunk_hours": 5,
              "task_candles": 2200}
    units = plan_backfill(config, "binance", params, 1024)
    assert len(units) == 4 and len({m["symbol"] for m in units[1]["markets"]}) == 2  # a unit holds two markets' ends
    assert sum(len(u["markets"]) for u in units) > 3  # and markets are split across units
    raw = RawStore(mongo_db)
    order = [3, 1, 0, 2, 1]  # any order; unit 1 runs twice
    totals: dict[str, int] = {}
    for i in order:
        for t in backfill_unit(config, units[i], raw, pg_conn, Attempt("market_backfill", "s1", "binance.ingest", i)):
            totals[t["symbol"]] = totals.get(t["symbol"], 0) + t["inserted"]
    start, end = to_ms(datetime(2025, 3, 1, tzinfo=UTC)), to_ms(datetime(2025, 3, 3, tzinfo=UTC))
    with pg_conn.cursor() as cur:
        cur.execute("SELECT symbol, (extract(epoch FROM open_time) * 1000)::bigint, open, high, low, close, volume "
                    "FROM staging.ohlcv WHERE exchange = 'binance' AND timeframe = '1m'")
        rows = cur.fetchall()
    for symbol in symbols:
        staged = {ms: tuple(v) for s, ms, *v in rows if s == symbol}
        truth = _emulator_klines(emulator_url, symbol, start, end)
        assert len(truth) == 2880 and staged == truth, symbol
        assert totals[symbol] == 2880  # inserted once; the repeated unit found its candles unchanged
    assert len(rows) == 3 * 2880


KILLED_CHUNK_LOOP = """
import json, os, signal, sys
import psycopg2, pymongo
from marketflow import pipeline
from marketflow.config import load_config
from marketflow.raw_store import RawStore

config_path, dsn, mongo_uri, db_name, unit, kill_at = sys.argv[1:]
load_market, loads = pipeline.load_market, []

def load_or_die(*args, **kwargs):
    loads.append(1)
    if len(loads) == int(kill_at):  # this chunk's page is in MongoDB; its staging load never starts
        os.kill(os.getpid(), signal.SIGKILL)
    return load_market(*args, **kwargs)

pipeline.load_market = load_or_die
pipeline.backfill_unit(load_config(config_path), json.loads(unit), RawStore(pymongo.MongoClient(mongo_uri)[db_name]),
                       psycopg2.connect(dsn), pipeline.Attempt("market_backfill", "k1", "binance.ingest", 0, 1))
"""


def test_a_killed_chunk_loop_rerun_loses_and_doubles_nothing(tmp_path, emulator_url, mongo_uri, mongo_db,
                                                              warehouse_dsn, pg_conn) -> None:
    """An ingest task's process is SIGKILLed in the middle of its chunk loop (the 7th of 12 chunks fetched
    into raw, not loaded); Airflow's retry (try 2: skip_complete) then finishes the unit. Staging equals
    the emulator's candles (none lost, none twice), the 6 chunks complete before the kill are not
    fetched again, and only the killed chunk's page is fetched twice."""
    symbols = ["BTC/USDT", "SOL/USDT", "XRP/USDT"]
    config = three_binance_markets(tmp_path, emulator_url, symbols)
    params = {"start": "2025-03-01T00:00:00Z", "end": "2025-03-02T00:00:00Z", "chunk_hours": 6}
    [unit] = plan_backfill(config, "binance", params, 1)  # one task: 3 markets x 4 chunks of 360 candles
    child = subprocess.run(
        [sys.executable, "-c", KILLED_CHUNK_LOOP, str(tmp_path / "m.yml"), warehouse_dsn, mongo_uri, mongo_db.name,
         json.dumps(unit), "7"], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True, text=True, timeout=300)
    assert child.returncode == -9, child.stderr[-2000:]
    start, end = to_ms(datetime(2025, 3, 1, tzinfo=UTC)), to_ms(datetime(2025, 3, 2, tzinfo=UTC))
    assert window_coverage(pg_conn, "binance", "SOL/USDT", "1m", Window(start, end))["present"] == 2 * 360
    assert mongo_db.raw_market_payload.count_documents({}) == 7  # a page per chunk fetched, the 7th not loaded
    totals = backfill_unit(config, unit, RawStore(mongo_db), pg_conn,
                           Attempt("market_backfill", "k1", "binance.ingest", 0, 2), skip_complete=True)
    assert [(t["symbol"], t["chunks_skipped"], t["inserted"], t["missing"]) for t in totals] == [
        ("BTC/USDT", 4, 0, 0), ("SOL/USDT", 2, 720, 0), ("XRP/USDT", 0, 1440, 0)]
    with pg_conn.cursor() as cur:
        cur.execute("SELECT symbol, (extract(epoch FROM open_time) * 1000)::bigint, open, high, low, close, volume "
                    "FROM staging.ohlcv WHERE exchange = 'binance' AND timeframe = '1m'")
        rows = cur.fetchall()
    assert len(rows) == 3 * 1440
    for symbol in symbols:
        assert {ms: tuple(v) for s, ms, *v in rows if s == symbol} == _emulator_klines(emulator_url, symbol, start,
                                                                                        end), symbol
    # raw: one document per chunk's page; fetched once each, the killed chunk's twice
    counts = sorted(d["fetch_count"] for d in mongo_db.raw_market_payload.find({}, {"fetch_count": 1}))
    assert counts == [1] * 11 + [2]
