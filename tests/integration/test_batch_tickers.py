"""The minute run's tickers: one batch call per exchange for all its markets (Binance, OKX, Bybit),
stored once in raw, one staging.ticker row per market.

The emulator here serves recorded markets (candles written by this test, different for every
market), so a ticker is the same at any instant: the rolling 24 h as of the end of the recording.
Oracles, both independent of marketflow and of ccxt: the emulator's request counters
(``/__admin/stats``) for the number of ticker calls, and the emulator's per-market ticker read
with plain HTTP and decoded with Decimal for the values."""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psycopg2
import pytest

from exchange_emulator.testing import EmulatorProcess
from marketflow.config import load_config
from marketflow.errors import MarketsFailed
from marketflow.exchanges import MAX_CALL_ATTEMPTS
from marketflow.pipeline import Attempt, reprocess_from_raw, run_exchange_markets
from marketflow.raw_store import RawStore
from marketflow.staging_load import load_ticker_payloads
from marketflow.timeframes import Window, floor_ms, to_ms

MINUTE = 60_000
SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT")
EXCHANGES = ("binance", "okx", "bybit")
BASE_PRICE = {"BTC": Decimal("61234.5"), "ETH": Decimal("3012.25"), "SOL": Decimal("151.375"), "XRP": Decimal("0.5125")}
EXCHANGE_SHIFT = {"binance": Decimal("0"), "okx": Decimal("0.0125"), "bybit": Decimal("0.025")}
# the ticker endpoint ccxt's fetch_tickers calls, per exchange
BATCH_PATH = {"binance": "/api/v3/ticker/24hr", "okx": "/api/v5/market/tickers", "bybit": "/v5/market/tickers"}
NOW_MS = floor_ms(int(time.time() * 1000), "1m")
RECORDED = Window(NOW_MS - 180 * MINUTE, NOW_MS - 30 * MINUTE)  # 150 closed minutes, ending half an hour ago
RUN = Window(RECORDED.end_ms - 5 * MINUTE, RECORDED.end_ms)  # the minute run's window: the last 5 of them


def write_recording(root: Path) -> None:
    """1m candles for every (exchange, market), as the emulator's JSON recordings, distinct per market."""
    for exchange in EXCHANGES:
        for symbol in SYMBOLS:
            base = symbol.split("/")[0]
            price = BASE_PRICE[base] * (1 + EXCHANGE_SHIFT[exchange])
            rows = []
            for i, ts in enumerate(range(RECORDED.start_ms, RECORDED.end_ms, MINUTE)):
                o = (price * (1 + Decimal(i % 7 - 3) / 1000)).quantize(Decimal("0.0001"))
                c = (price * (1 + Decimal(i % 5 - 2) / 1000)).quantize(Decimal("0.0001"))
                h, low = max(o, c) + Decimal("0.0005"), min(o, c) - Decimal("0.0005")
                rows.append([ts, str(o), str(h), str(low), str(c), str(Decimal(i % 11 + 1) / 8)])
            path = root / exchange / symbol.replace("/", "-") / "1m"
            path.mkdir(parents=True)
            (path / "candles.json").write_text(json.dumps(rows))


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> EmulatorProcess:
    data = tmp_path_factory.mktemp("recorded")
    write_recording(data)
    with EmulatorProcess(data, default_markets=False, binance_weight_limit=0) as emu:
        yield emu


@pytest.fixture
def config(tmp_path, emulator):
    markets = "\n".join(f"""
  {exchange}:
    api_base_url: {emulator.base_url}
    options: {{fetchMarkets: {{types: [spot]}}}}
    markets: [{", ".join(SYMBOLS)}]""" for exchange in EXCHANGES)
    path = tmp_path / "markets.yml"
    path.write_text(f"defaults:\n  timeframes: [1m]\n  history_start: '2020-01-01T00:00:00Z'\nexchanges:{markets}\n")
    return load_config(path, env={})


def get(emulator: EmulatorProcess, path: str):
    with urllib.request.urlopen(emulator.base_url + path, timeout=30) as resp:
        return json.loads(resp.read(), parse_float=Decimal)


def oracle(emulator: EmulatorProcess, exchange: str, symbol: str) -> tuple[int | None, tuple[Decimal, ...]]:
    """(ticker time or None, (last, bid, ask, bid_volume, ask_volume, base_volume, quote_volume)) as the
    emulator serves one market's ticker, read with plain HTTP."""
    base, quote = symbol.split("/")
    if exchange == "binance":
        t = get(emulator, f"/api/v3/ticker/24hr?symbol={base}{quote}")
        keys, ts = ("lastPrice", "bidPrice", "askPrice", "bidQty", "askQty", "volume", "quoteVolume"), t["closeTime"]
    elif exchange == "okx":
        [t] = get(emulator, f"/api/v5/market/ticker?instId={base}-{quote}")["data"]
        keys, ts = ("last", "bidPx", "askPx", "bidSz", "askSz", "vol24h", "volCcy24h"), int(t["ts"])
    else:
        [t] = get(emulator, f"/v5/market/tickers?category=spot&symbol={base}{quote}")["result"]["list"]
        keys, ts = ("lastPrice", "bid1Price", "ask1Price", "bid1Size", "ask1Size", "volume24h", "turnover24h"), None
    return ts, tuple(Decimal(t[k]) for k in keys)


def ticker_requests(emulator: EmulatorProcess, exchange: str) -> int:
    return int(emulator.stats()["requests"].get(exchange, {}).get(BATCH_PATH[exchange], 0))


def minute_run(config, exchange: str, dsn: str, mongo_db, run_id: str, try_number: int = 1) -> dict:
    return run_exchange_markets(config, exchange, "1m", RUN, {}, RawStore(mongo_db), lambda: psycopg2.connect(dsn),
                                Attempt("market_candles_1m", run_id, f"{exchange}.ingest", try_number=try_number),
                                live=True)


def rows(dsn: str, sql: str, params=()) -> list[tuple]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


TICKERS = ("SELECT symbol, ts, last, bid, ask, bid_volume, ask_volume, base_volume, quote_volume, raw_payload_id "
           "FROM staging.ticker WHERE exchange = %s ORDER BY symbol, ts")


@pytest.mark.parametrize("exchange", EXCHANGES)
def test_one_ticker_call_per_exchange_and_one_exact_row_per_market(exchange, config, emulator, warehouse_dsn,
                                                                   mongo_db) -> None:
    before = ticker_requests(emulator, exchange)
    started = datetime.now(UTC)
    result = minute_run(config, exchange, warehouse_dsn, mongo_db, "m1")
    finished = datetime.now(UTC)
    assert ticker_requests(emulator, exchange) - before == 1  # one call for all four markets
    assert result["markets"] == 4 and result["inserted"] == 4 * 5
    assert result["tickers"] == 4 and result["ticker_requests"] == 1

    landed = rows(warehouse_dsn, TICKERS, (exchange,))
    assert [r[0] for r in landed] == sorted(SYMBOLS)  # one row per configured market
    [doc] = list(mongo_db.raw_market_payload.find({"exchange": exchange, "kind": "ticker"}))
    for symbol, ts, *values, lineage in landed:
        want_ts, want = oracle(emulator, exchange, symbol)
        assert tuple(values) == want, (exchange, symbol)  # Decimal-exact, every column
        if want_ts is None:  # Bybit's tickers carry no time: dated when the answer arrived
            assert started <= ts <= finished
        else:
            assert to_ms(ts) == want_ts
        assert lineage == doc["_id"]  # every market's row points at the one stored answer
    # the answer stored once, untouched, with every market it covers
    assert sorted(doc["symbol"]) == sorted(SYMBOLS) and sorted(m["symbol"] for m in doc["markets"]) == sorted(SYMBOLS)
    assert mongo_db.raw_market_payload.count_documents({"kind": "ticker", "symbol": "SOL/USDT"}) == 1
    assert doc["endpoint"] == BATCH_PATH[exchange] and doc["http_status"] == 200


def test_the_same_run_twice_adds_nothing_and_replay_from_raw_still_works(config, emulator, warehouse_dsn,
                                                                          mongo_db) -> None:
    first = minute_run(config, "binance", warehouse_dsn, mongo_db, "m1")
    assert first["tickers"] == 4
    count = "SELECT (SELECT count(*) FROM staging.ticker), (SELECT count(*) FROM staging.ohlcv)"
    assert rows(warehouse_dsn, count) == [(4, 20)]
    before = ticker_requests(emulator, "binance")

    # The same task again (a clear, or a retry after a success): every market is settled, nothing is fetched.
    again = minute_run(config, "binance", warehouse_dsn, mongo_db, "m1", try_number=2)
    assert (again["inserted"], again["tickers"], again["ticker_requests"]) == (0, 0, 0)
    assert ticker_requests(emulator, "binance") == before
    # Another run over the same minutes: the exchange gave the same answer, so no new row anywhere and one
    # raw document, fetched twice.
    other = minute_run(config, "binance", warehouse_dsn, mongo_db, "m2")
    assert (other["inserted"], other["ticker_requests"]) == (0, 1)
    assert rows(warehouse_dsn, count) == [(4, 20)]
    [doc] = list(mongo_db.raw_market_payload.find({"kind": "ticker"}))
    assert doc["fetch_count"] == 2
    # Loading the stored answer again writes nothing new either.
    with psycopg2.connect(warehouse_dsn) as conn:
        load_ticker_payloads(conn, [doc], "reload")
    assert rows(warehouse_dsn, count) == [(4, 20)]

    # Replay from raw rebuilds the candles; the ticker documents in raw do not disturb it.
    with psycopg2.connect(warehouse_dsn) as conn:
        with conn.cursor() as cur:
            cur.execute("DELETE FROM staging.ohlcv")
        conn.commit()
        for symbol in SYMBOLS:
            reprocess_from_raw(conn, RawStore(mongo_db), {"exchange": "binance", "symbol": symbol, "timeframe": "1m",
                                                         "window_start_ms": RUN.start_ms, "window_end_ms": RUN.end_ms},
                               Attempt("marketflow_cli", "replay", "replay"))
    assert rows(warehouse_dsn, count) == [(4, 20)]


@pytest.mark.parametrize("exchange", EXCHANGES)
def test_a_failing_ticker_call_leaves_the_candles_loaded(exchange, config, emulator, warehouse_dsn,
                                                         mongo_db) -> None:
    before = ticker_requests(emulator, exchange)
    emulator.add_faults({"kind": "http_5xx", "status": 503, "exchange": exchange, "path": BATCH_PATH[exchange],
                         "count": MAX_CALL_ATTEMPTS})
    try:
        result = minute_run(config, exchange, warehouse_dsn, mongo_db, "m1")  # does not raise
    finally:
        emulator.clear_faults()
    assert ticker_requests(emulator, exchange) - before == MAX_CALL_ATTEMPTS  # retried, then given up
    assert result["markets"] == 4 and result["inserted"] == 20 and result["tickers"] == 0
    assert rows(warehouse_dsn, "SELECT symbol, count(*) FROM staging.ohlcv GROUP BY 1 ORDER BY 1") == [
        (s, 5) for s in sorted(SYMBOLS)]
    assert rows(warehouse_dsn, "SELECT count(*) FROM staging.ticker") == [(0,)]
    assert rows(warehouse_dsn, "SELECT outcome, count(*) FROM ops.market_task_outcomes GROUP BY 1") == [("success", 4)]
    # the failure is on record: each failed call in ops.api_errors, the answers in raw, the attempt in the log
    assert rows(warehouse_dsn, "SELECT endpoint, http_status, count(*) FROM ops.api_errors GROUP BY 1, 2") == [
        (BATCH_PATH[exchange], 503, MAX_CALL_ATTEMPTS)]
    assert mongo_db.raw_market_payload.count_documents({"kind": "ticker", "http_status": 503}) >= 1
    log = mongo_db.raw_ingestion_log.find_one({"task_id": f"{exchange}.ingest[tickers]"})
    assert log["status"] == "failed" and "503" in " ".join(log["ticker_problems"])

    # The next run takes its snapshot as usual.
    assert minute_run(config, exchange, warehouse_dsn, mongo_db, "m2")["tickers"] == 4


def test_without_batch_tickers_one_call_per_market(config, emulator, warehouse_dsn, mongo_db, monkeypatch) -> None:
    """An exchange whose ccxt has no fetchTickers (e.g. bitbank): one fetch_ticker per market, as before.
    The emulator's exchanges all have it, so this ccxt client is told it has not."""
    from marketflow import pipeline

    def without_fetch_tickers(*args, **kwargs):
        exchange = build_exchange(*args, **kwargs)
        exchange.has = {**exchange.has, "fetchTickers": False}
        return exchange

    build_exchange = pipeline.build_exchange
    monkeypatch.setattr(pipeline, "build_exchange", without_fetch_tickers)
    before = ticker_requests(emulator, "binance")
    result = minute_run(config, "binance", warehouse_dsn, mongo_db, "m1")
    assert ticker_requests(emulator, "binance") - before == 4 and result["ticker_requests"] == 4
    assert result["tickers"] == 4 and result["inserted"] == 20
    landed = rows(warehouse_dsn, TICKERS, ("binance",))
    assert [r[0] for r in landed] == sorted(SYMBOLS)
    for symbol, ts, *values, lineage in landed:
        want_ts, want = oracle(emulator, "binance", symbol)
        assert (to_ms(ts), tuple(values)) == (want_ts, want), symbol
        assert mongo_db.raw_market_payload.find_one({"_id": lineage})["symbol"] == symbol  # one answer each


def test_a_market_the_exchange_no_longer_lists_costs_only_its_own_ticker(tmp_path, config, emulator, warehouse_dsn,
                                                                       mongo_db) -> None:
    """LUNA/USDT is not in the exchange's market list: asked for in the batch it would fail the whole call
    (ccxt refuses an unknown symbol, Binance answers -1121 for the request). It is left out of it."""
    text = config.source.read_text().replace("XRP/USDT]", "XRP/USDT, LUNA/USDT]", 1)
    (tmp_path / "delisted.yml").write_text(text)
    cfg = load_config(tmp_path / "delisted.yml", env={})
    before = ticker_requests(emulator, "binance")
    with pytest.raises(MarketsFailed) as failed:
        minute_run(cfg, "binance", warehouse_dsn, mongo_db, "m1")
    assert list(failed.value.failures) == ["LUNA/USDT"]
    assert ticker_requests(emulator, "binance") - before == 1
    assert [r[0] for r in rows(warehouse_dsn, TICKERS, ("binance",))] == sorted(SYMBOLS)
    log = mongo_db.raw_ingestion_log.find_one({"task_id": "binance.ingest[tickers]"})
    assert log["status"] == "success" and "LUNA/USDT" in log["ticker_problems"][0]
