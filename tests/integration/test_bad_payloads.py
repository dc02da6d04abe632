"""Malformed payloads and candles: each is rejected with a reason, raw is kept, nothing is half-written."""

from __future__ import annotations

import json
import time

import pytest
from support.payloads import MIN, T0, kline, store

from marketflow import staging_load
from marketflow.raw_store import RawStore
from marketflow.staging_load import load_candle_payloads
from scripts.warehouse_checks import table_checksum


def rejects(conn) -> list[tuple[int, str]]:
    with conn.cursor() as cur:
        cur.execute("SELECT row_index, reason FROM staging.ohlcv_rejects ORDER BY raw_payload_id, row_index")
        return cur.fetchall()


def ohlcv_count(conn) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM staging.ohlcv")
        return cur.fetchone()[0]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("", "empty response body"),
        ("<html>502 Bad Gateway</html>", "not valid JSON"),
        (json.dumps([kline(T0)])[:40], "not valid JSON"),  # truncated
        ('{"code":"51001","msg":"Instrument ID does not exist","data":[]}',
         'answered with an error (ExchangeError): binance {"code":"51001"'),  # ccxt's binance error check
        ('{"unexpected": true}', "expected a list of kline rows"),
        ('"just a string"', "expected a list of kline rows"),
    ],
)
def test_unusable_payload_is_rejected_whole(mongo_db, pg_conn, body: str, reason: str) -> None:
    raw = RawStore(mongo_db)
    doc = store(raw, body)
    result = load_candle_payloads(pg_conn, [doc], "binance", "ETH/USDT", "1m", "run-1")
    assert result.payloads_rejected == 1 and result.inserted == 0
    [(row_index, why)] = rejects(pg_conn)
    assert row_index == -1 and reason in why
    assert mongo_db.raw_market_payload.find_one({"_id": doc["_id"]})["body"] == body  # raw kept as received


BAD_ROWS = [
    (kline(T0 + MIN, h="8.0"), "high 8.0 is below low 9.0"),
    (kline(T0 + 2 * MIN, h="10.2"), "high 10.2 is below open/close"),
    (kline(T0 + 3 * MIN, low="10.4"), "low 10.4 is above open/close"),
    (kline(T0 + 4 * MIN, v="-1"), "volume is negative"),
    (kline(T0 + 5 * MIN, c="NaN"), "close is not a finite number"),
    (kline(T0 + 6 * MIN, o="Infinity", h="Infinity"), "open is not a finite number"),
    (kline(T0 + 7 * MIN + 30_000), "not aligned to the 1m timeframe"),
    (kline(T0 + 8 * MIN, o="ten"), "unparseable row"),
    ([T0 + 9 * MIN, "1", "2"], "unparseable row"),
    (kline(T0 + 10 * MIN, v=None), "unparseable row"),
    (kline(int(time.time() * 1000) // MIN * MIN + 1440 * MIN), "closes after the response was received"),
    (kline(T0 + 11 * MIN, h="1e25", c="1e25"), "too large"),
    ("not a row", "unparseable row"),
]


def test_bad_rows_rejected_good_rows_loaded(mongo_db, pg_conn) -> None:
    raw = RawStore(mongo_db)
    good = [kline(T0), kline(T0 + 20 * MIN)]
    rows = [good[0], *(r for r, _ in BAD_ROWS), good[1]]
    doc = store(raw, json.dumps(rows))
    result = load_candle_payloads(pg_conn, [doc], "binance", "ETH/USDT", "1m", "run-1")
    assert (result.inserted, result.rejected) == (2, len(BAD_ROWS))
    got = rejects(pg_conn)
    assert [i for i, _ in got] == list(range(1, len(BAD_ROWS) + 1))
    for (_, reason), (_, expected) in zip(got, BAD_ROWS, strict=True):
        assert expected in reason
    # Re-loading the same payload records nothing new.
    before = table_checksum(pg_conn, "staging.ohlcv_rejects", ["raw_payload_id", "row_index"])
    again = load_candle_payloads(pg_conn, [doc], "binance", "ETH/USDT", "1m", "run-2")
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 2)
    assert table_checksum(pg_conn, "staging.ohlcv_rejects", ["raw_payload_id", "row_index"]) == before


def test_payload_for_another_market_is_rejected(mongo_db, pg_conn) -> None:
    raw = RawStore(mongo_db)
    doc = store(raw, json.dumps([kline(T0)]), params={"symbol": "BTCUSDT", "interval": "1m"})
    result = load_candle_payloads(pg_conn, [doc], "binance", "ETH/USDT", "1m", "run-1")
    assert result.payloads_rejected == 1 and ohlcv_count(pg_conn) == 0
    assert "request /api/v3/klines {'symbol': 'BTCUSDT', 'interval': '1m'} does not name market ETHUSDT" in \
        rejects(pg_conn)[0][1]
    other = store(raw, json.dumps([kline(T0 + MIN)]))
    result = load_candle_payloads(pg_conn, [other], "binance", "BTC/USDT", "1m", "run-1")
    assert result.payloads_rejected == 1 and ohlcv_count(pg_conn) == 0
    with pg_conn.cursor() as cur:
        cur.execute("SELECT reason FROM staging.ohlcv_rejects WHERE raw_payload_id = %s", (other["_id"],))
        assert "payload is for binance ETH/USDT 1m, expected binance BTC/USDT 1m" in cur.fetchone()[0]


def test_error_responses_are_evidence_not_data(mongo_db, pg_conn) -> None:
    raw = RawStore(mongo_db)
    doc = store(raw, '{"code":-1003,"msg":"Too much request weight used"}', status=429)
    result = load_candle_payloads(pg_conn, [doc], "binance", "ETH/USDT", "1m", "run-1")
    assert (result.payloads_skipped, result.inserted, result.rejected) == (1, 0, 0)


def test_open_candles_wait_and_duplicates_collapse(mongo_db, pg_conn) -> None:
    raw = RawStore(mongo_db)
    now = int(time.time() * 1000) // MIN * MIN
    okx_rows = [  # newest first, all strings, confirm flag last, like OKX
        [str(now), "10", "11", "9", "10.5", "1", "10", "10", "0"],
        [str(now - MIN), "10", "11", "9", "10.5", "1", "10", "10", "1"],
        [str(now - MIN), "10", "11", "9", "10.5", "1", "10", "10", "1"],
    ]
    doc = store(raw, json.dumps({"code": "0", "msg": "", "data": okx_rows}), exchange="okx", symbol="BTC/USDT",
                params={"instId": "BTC-USDT", "bar": "1m"})
    result = load_candle_payloads(pg_conn, [doc], "okx", "BTC/USDT", "1m", "run-1")
    assert (result.still_open, result.duplicates_in_batch, result.inserted, result.rejected) == (1, 1, 1, 0)


def test_corrected_candle_updates_row_and_lineage(mongo_db, pg_conn) -> None:
    raw = RawStore(mongo_db)
    first = store(raw, json.dumps([kline(T0), kline(T0 + MIN)]))
    load_candle_payloads(pg_conn, [first], "binance", "ETH/USDT", "1m", "run-1")
    corrected = store(raw, json.dumps([kline(T0), kline(T0 + MIN, c="10.75")]))
    result = load_candle_payloads(pg_conn, [corrected], "binance", "ETH/USDT", "1m", "run-2")
    assert (result.inserted, result.updated, result.unchanged) == (0, 1, 1)
    with pg_conn.cursor() as cur:
        cur.execute("SELECT open_time, close::text, raw_payload_id, run_id FROM staging.ohlcv ORDER BY open_time")
        (_, c0, p0, r0), (_, c1, p1, r1) = cur.fetchall()
    assert (c0, p0, r0) == ("10.5", first["_id"], "run-1")  # untouched row keeps its lineage
    assert (c1, p1, r1) == ("10.75", corrected["_id"], "run-2")


def test_failure_mid_load_leaves_nothing_half_written(mongo_db, pg_conn, monkeypatch) -> None:
    raw = RawStore(mongo_db)
    doc = store(raw, json.dumps([kline(T0), kline(T0 + MIN, h="1")]))

    def broken(*args, **kwargs):
        raise ConnectionError("database went away after the upsert")

    monkeypatch.setattr(staging_load, "insert_rejects", broken)
    with pytest.raises(ConnectionError):
        load_candle_payloads(pg_conn, [doc], "binance", "ETH/USDT", "1m", "run-1")
    assert ohlcv_count(pg_conn) == 0  # the upserted candle was rolled back with the rest
    monkeypatch.undo()
    result = load_candle_payloads(pg_conn, [doc], "binance", "ETH/USDT", "1m", "run-1")
    assert (result.inserted, result.rejected) == (1, 1)


def anomalies(conn) -> list[tuple[str, int]]:
    with conn.cursor() as cur:
        cur.execute("SELECT kind, (extract(epoch from open_time) * 1000)::bigint FROM staging.ohlcv_anomalies "
                    "ORDER BY kind, open_time")
        return [(k, int(t)) for k, t in cur.fetchall()]


def test_duplicates_revisions_and_disorder_are_recorded_once(mongo_db, pg_conn) -> None:
    raw = RawStore(mongo_db)
    rows = [kline(T0), kline(T0 + 2 * MIN), kline(T0 + MIN),  # T0+MIN arrives after T0+2m: out of order
            kline(T0 + 3 * MIN), kline(T0 + 3 * MIN),  # identical duplicate
            kline(T0 + 4 * MIN), kline(T0 + 4 * MIN, c="10.9")]  # conflicting duplicate: the later row wins
    doc = store(raw, json.dumps(rows))
    result = load_candle_payloads(pg_conn, [doc], "binance", "ETH/USDT", "1m", "run-1")
    assert (result.inserted, result.out_of_order, result.duplicates_in_batch) == (5, 1, 2)
    assert anomalies(pg_conn) == [("duplicate_conflict", T0 + 4 * MIN), ("duplicate_identical", T0 + 3 * MIN),
                                  ("out_of_order", T0 + MIN)]
    with pg_conn.cursor() as cur:
        cur.execute("SELECT close::text FROM staging.ohlcv WHERE open_time = to_timestamp(%s / 1000.0)",
                    (T0 + 4 * MIN,))
        assert cur.fetchone()[0] == "10.9"

    # The exchange corrects a candle later: a revision, recorded against the new payload.
    fix = store(raw, json.dumps([kline(T0, c="10.25")]))
    result = load_candle_payloads(pg_conn, [fix], "binance", "ETH/USDT", "1m", "run-2")
    assert (result.updated, result.revised) == (1, 1)
    assert ("revised", T0) in anomalies(pg_conn)
    before = anomalies(pg_conn)
    load_candle_payloads(pg_conn, [doc, fix], "binance", "ETH/USDT", "1m", "run-3")  # reprocess: no new facts
    assert anomalies(pg_conn) == before


def test_okx_newest_first_is_in_order(mongo_db, pg_conn) -> None:
    raw = RawStore(mongo_db)
    okx = [[str(T0 + i * MIN), "10", "11", "9", "10.5", "1", "10", "10", "1"] for i in (3, 2, 1, 0)]
    okx[1], okx[2] = okx[2], okx[1]  # one swap: one row breaks the newest-first order
    doc = store(raw, json.dumps({"code": "0", "msg": "", "data": okx}), exchange="okx", symbol="BTC/USDT",
                params={"instId": "BTC-USDT", "bar": "1m"})
    result = load_candle_payloads(pg_conn, [doc], "okx", "BTC/USDT", "1m", "run-1")
    assert (result.inserted, result.out_of_order) == (4, 1)
    assert anomalies(pg_conn) == [("out_of_order", T0 + 2 * MIN)]


# Where each exchange's request names the market (ccxt builds them so): a query parameter under the
# exchange's own key, or a path segment (Coinbase's product id).
MARKET_IN_REQUEST = [
    ("kucoin", "BTC/USDT", "BTC-USDT", "https://api.kucoin.com/api/v1/market/candles?symbol={id}&type=1min",
     "ETH-USDT"),
    ("kraken", "ETH/BTC", "XETHXXBT", "https://api.kraken.com/0/public/OHLC?pair={id}&interval=1", "XXBTZUSD"),
    ("gate", "BTC/USDT", "BTC_USDT", "https://api.gateio.ws/api/v4/spot/candlesticks?currency_pair={id}&interval=1m",
     "ETH_USDT"),
    ("coinbase", "BTC/USD", "BTC-USD",
     "https://api.coinbase.com/api/v3/brokerage/market/products/{id}/candles?granularity=ONE_MINUTE", "ETH-USD"),
    ("bybit", "BTC/USDT", "BTCUSDT", "https://api.bybit.com/v5/market/kline?symbol={id}&interval=1&category=spot",
     "ETHUSDT"),
]


@pytest.mark.parametrize(("exchange", "symbol", "market_id", "url", "other"), MARKET_IN_REQUEST,
                         ids=[m[0] for m in MARKET_IN_REQUEST])
def test_request_check_finds_the_market_whatever_the_exchange_calls_it(mongo_db, pg_conn, exchange, symbol,
                                                                        market_id, url, other) -> None:
    """The answer to a request for another market is refused; the answer to ours is not refused for it."""
    from marketflow.exchanges import HttpExchange
    from marketflow.raw_store import PayloadContext
    from marketflow.timeframes import Window

    raw = RawStore(mongo_db)
    market = {"id": market_id, "symbol": symbol, "type": "spot", "spot": True}
    ctx = PayloadContext(exchange, exchange, symbol, "1m", "ohlcv", Window(T0, T0 + 60 * MIN), "run-1", 1, market)
    ids = raw.save_responses(ctx, [HttpExchange("GET", url.format(id=asked), 200, {}, "[]", int(time.time() * 1000))
                                   for asked in (market_id, other)])
    ours, theirs = raw.get_payloads(ids)
    result = load_candle_payloads(pg_conn, [ours], exchange, symbol, "1m", "run-1")
    assert (result.payloads_rejected, result.rejected) == (0, 0)  # an empty answer for our market: no error
    result = load_candle_payloads(pg_conn, [theirs], exchange, symbol, "1m", "run-1")
    assert result.payloads_rejected == 1
    assert f"does not name market {market_id} ({symbol})" in rejects(pg_conn)[0][1]
