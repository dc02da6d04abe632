"""The minute path at scale: a few hundred synthetic markets on Binance and OKX at once, both
exchanges' rate limits on (the emulator answers 429 past Binance's 6000 weight a minute and OKX's
40 candle calls per 2 s), each exchange's ingest in its own thread as two Airflow tasks would run.

Oracles, independent of marketflow and of ccxt: the emulator's own synthetic candles (its market
registry, built in this process with the same seed, read as decimal strings) for every value, a
brute-force count per market for "exactly once", and the emulator's response counters
(``/__admin/stats``) for 429s.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections import Counter
from datetime import UTC
from decimal import Decimal

import psycopg2
import pytest

from exchange_emulator.markets import Registry
from exchange_emulator.testing import EmulatorProcess
from exchange_emulator.timeframes import parse_ccxt_timeframe
from marketflow.config import load_config
from marketflow.errors import MarketsFailed
from marketflow.pipeline import Attempt, plan_window, run_exchange_markets
from marketflow.raw_store import RawStore
from marketflow.timeframes import to_ms

BINANCE = [f"B{i:03d}/USDT" for i in range(160)]
OKX = [f"O{i:03d}/USDT" for i in range(80)]
SPECS = [f"binance:{s}@2020-01-01" for s in BINANCE] + [f"okx:{s}@2020-01-01" for s in OKX]
SEED = 11
# configured but not listed by the exchange (delisted): fails alone, inside the batches of the others
GONE = "GONE/USDT"
MINUTE = 60_000


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> EmulatorProcess:
    empty = tmp_path_factory.mktemp("no-recordings")
    with EmulatorProcess(empty, seed=SEED, synthetic_markets=SPECS, default_markets=False,
                         binance_weight_limit=6000, okx_rate_limit_factor=1.0) as emu:
        # The emulator builds each synthetic market's 24 h of candles on its first ticker (~40 ms a market,
        # seconds for the batch): done here, so the runs' ticker calls see a warm exchange, as live ones do.
        for path in ("/api/v3/ticker/24hr", "/api/v5/market/tickers?instType=SPOT"):
            urllib.request.urlopen(emu.base_url + path, timeout=300).read()
        yield emu


@pytest.fixture
def config(tmp_path, emulator):
    blocks = "".join(f"""
  {exchange}:
    api_base_url: {emulator.base_url}
    options: {{fetchMarkets: {{types: [spot]}}}}
    markets: [{", ".join(symbols)}]""" for exchange, symbols in (("binance", [*BINANCE, GONE]), ("okx", OKX)))
    path = tmp_path / "markets.yml"
    path.write_text(f"defaults:\n  timeframes: [1m]\n  overlap_minutes: 2\nexchanges:{blocks}\n")
    return load_config(path, env={})


def responses_by_status(emulator: EmulatorProcess) -> Counter:
    with urllib.request.urlopen(emulator.base_url + "/__admin/stats", timeout=30) as resp:
        stats = json.loads(resp.read())
    return Counter({str(k): int(v) for k, v in stats["responses_by_status"].items()}
                   | {"429 sent": stats["http_429_sent"], "418 sent": stats["http_418_sent"]})


def run_both(config, dsn: str, mongo_db, run_id: str, window) -> dict[str, dict | MarketsFailed]:
    """Both exchanges' minute ingest at once, each in its own thread (two tasks of one DAG run); an
    exchange whose task failed some markets maps to its MarketsFailed."""
    results: dict[str, dict | MarketsFailed] = {}
    errors: list[BaseException] = []

    def one(exchange: str) -> None:
        try:
            results[exchange] = run_exchange_markets(
                config, exchange, "1m", window, {}, RawStore(mongo_db), lambda: psycopg2.connect(dsn),
                Attempt("market_candles_1m", run_id, f"{exchange}.ingest"), live=True)
        except MarketsFailed as exc:
            results[exchange] = exc
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(ex,)) for ex in ("binance", "okx")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def test_minute_of_240_markets_on_two_limited_exchanges_lands_exactly_once(config, emulator, warehouse_dsn,
                                                                           mongo_db) -> None:
    window = plan_window("1m", None, None, {}, config.overlap_minutes)  # the last closed minute + 2 overlap
    before = responses_by_status(emulator)
    started = time.monotonic()
    first = run_both(config, warehouse_dsn, mongo_db, "m1", window)
    took = time.monotonic() - started
    # the same run again (a retry, an overlapping run): nothing added, nothing changed
    again = run_both(config, warehouse_dsn, mongo_db, "m2", window)
    after = responses_by_status(emulator)

    # the delisted market failed alone, permanently (no retry), in both runs; every other market loaded
    for run in (first, again):
        assert isinstance(run["binance"], MarketsFailed), run
        assert set(run["binance"].failures) == {GONE} and not run["binance"].error_class.transient
    assert first["okx"]["markets"] == len(OKX) and first["okx"]["ticker_requests"] == 1  # one batch ticker call
    assert again["okx"]["inserted"] == 0, again  # the same run again adds nothing
    status = after - before
    assert not any(status.get(k, 0) for k in ("429", "418", "429 sent", "418 sent")), status
    # every market's klines/candles call answered (3 minutes fit one page): exactly one call a market a run
    assert status.get("200", 0) >= 2 * (len(BINANCE) + len(OKX)), status

    with psycopg2.connect(warehouse_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT exchange, symbol, open_time, open, high, low, close, volume FROM staging.ohlcv "
                    "WHERE timeframe = '1m'")
        stored = cur.fetchall()
        cur.execute("SELECT exchange, symbol, endpoint, http_status, error_class, message FROM ops.api_errors "
                    "WHERE symbol IS DISTINCT FROM %s", (GONE,))
        api_errors = cur.fetchall()
        cur.execute("SELECT count(*) FROM staging.ohlcv_rejects")
        rejects = cur.fetchone()[0]
        cur.execute("SELECT symbol, status FROM ops.market_health WHERE status <> 'active'")
        unhealthy = cur.fetchall()
    assert api_errors == [] and rejects == 0
    assert unhealthy == [(GONE, "failing")]

    # brute force: count every (market, minute) stored
    counts = Counter((ex, sym, to_ms(t)) for ex, sym, t, *_ in stored)
    minutes = list(range(window.start_ms, window.end_ms, MINUTE))
    expected_keys = {(ex, sym, m) for ex, syms in (("binance", BINANCE), ("okx", OKX)) for sym in syms
                     for m in minutes}
    assert set(counts) == expected_keys  # no market's minute missing, none extra
    assert set(counts.values()) == {1}  # exactly once

    # the emulator's own candles, from its registry with the same seed, as decimal strings
    registry = Registry(None, seed=SEED, synthetic=SPECS, default_synthetic=False)
    tf = parse_ccxt_timeframe("1m")
    now_ms = int(time.time() * 1000)
    want = {}
    for exchange in ("binance", "okx"):
        for market in registry.for_exchange(exchange):
            for c in market.candles(tf, window.start_ms, window.end_ms - 1, 10, False, now_ms):
                want[(exchange, market.symbol, c.ts)] = tuple(Decimal(v) for v in (c.open, c.high, c.low, c.close,
                                                                                    c.volume))
    got = {(ex, sym, to_ms(t)): tuple(vals) for ex, sym, t, *vals in stored}
    assert got == want

    # raw: one successful ingestion-log document per market and run, all done
    logs = list(mongo_db.raw_ingestion_log.find({"run_id": "m1", "stage": "load"}, {"status": 1, "symbol": 1}))
    assert len(logs) == len(BINANCE) + len(OKX) and {d["status"] for d in logs} == {"success"}
    [gone] = list(mongo_db.raw_ingestion_log.find({"run_id": "m1", "symbol": GONE}))
    assert gone["status"] == "failed" and gone["error_class"] == "bad_symbol"
    print(f"\n240 markets on two limited exchanges: first run {took:.1f} s")


def test_a_run_started_before_the_close_connects_first_then_fetches_at_the_close(config, emulator, warehouse_dsn,
                                                                                 mongo_db) -> None:
    """The minute run started ahead of its close (LeadingCronDataIntervalTimetable): the fetchers connect
    and load the market list at once, then no candle or ticker call is made before ``start_at``; a run
    of a past window (start_at None, the test above) fetches at once. Every market still lands exactly
    once with the emulator's values (brute force over the stored rows)."""
    window = plan_window("1m", None, None, {}, config.overlap_minutes)
    binance, okx = BINANCE[:12], OKX[:8]
    start_at = time.time() + 3.0  # "the close + settle", 3 s ahead
    results = {}
    for exchange, symbols in (("binance", binance), ("okx", okx)):
        results[exchange] = run_exchange_markets(
            config, exchange, "1m", window, {"symbols": symbols}, RawStore(mongo_db), lambda: psycopg2.connect(
                warehouse_dsn), Attempt("market_candles_1m", "early", f"{exchange}.ingest"), live=True,
            start_at=start_at if exchange == "binance" else time.time() + 1.0)
    phases = results["binance"]["phases"]
    assert 2.0 <= phases["waited_for_close_s"] <= 3.5, phases  # the start-up ran inside the wait
    assert phases["warm_up_s_summed_over_threads"] > 0, phases
    assert results["binance"]["markets"] == len(binance) and results["okx"]["markets"] == len(okx)
    assert results["binance"]["tickers"] == len(binance)

    calls = list(mongo_db.raw_market_payload.find({"run_id": "early", "exchange": "binance"},
                                                  {"fetched_at": 1, "kind": 1}))
    assert {d["kind"] for d in calls} >= {"ohlcv", "ticker"}
    first = min(d["fetched_at"] for d in calls).replace(tzinfo=UTC).timestamp()
    assert first >= start_at - 0.002, (first, start_at)  # Mongo keeps milliseconds

    with psycopg2.connect(warehouse_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT exchange, symbol, count(*), count(DISTINCT open_time) FROM staging.ohlcv "
                    "WHERE timeframe = '1m' GROUP BY 1, 2")
        counts = {(ex, sym): (n, d) for ex, sym, n, d in cur.fetchall()}
    minutes = (window.end_ms - window.start_ms) // MINUTE
    assert counts == {(ex, s): (minutes, minutes) for ex, syms in (("binance", binance), ("okx", okx)) for s in syms}
