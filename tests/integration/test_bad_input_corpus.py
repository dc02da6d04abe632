"""A corpus of malformed payloads and candles: each is rejected with its reason, the raw payload is kept,
and the good rows beside it still land (nothing half-written)."""

from __future__ import annotations

import json

import pytest
from support.payloads import BAD_ROWS as ROWS
from support.payloads import MIN, T0, kline, store

from marketflow.raw_store import RawStore
from marketflow.staging_load import load_candle_payloads

PAYLOADS = [  # (case, body, reason fragment) — the whole payload is unusable
    ("empty body", "", "empty response body"),
    ("whitespace body", "   \n", "empty response body"),
    ("html error page", "<html>502 Bad Gateway</html>", "not valid JSON"),
    ("truncated JSON", json.dumps([kline(T0)] * 3)[:70], "not valid JSON"),
    ("binary garbage", "\x00\x01\x02\xff", "not valid JSON"),
    ("huge non-JSON", "x" * 3_000_000, "not valid JSON"),
    ("JSON null", "null", "expected a list of kline rows"),
    ("JSON string", '"just a string"', "expected a list of kline rows"),
    ("JSON number", "42", "expected a list of kline rows"),
    ("object without rows", '{"unexpected": true}', "expected a list of kline rows"),
    ("OKX error envelope", '{"code":"51001","msg":"Instrument ID does not exist","data":[]}',
     'answered with an error (ExchangeError): binance {"code":"51001"'),
    ("Binance error object", '{"code":-1121,"msg":"Invalid symbol."}', 'answered with an error (BadSymbol)'),
    ("data not a list", '{"code":"0","msg":"","data":"rows"}', "expected a list of kline rows"),
]


def test_corpus_is_large_enough() -> None:
    assert len(ROWS) + len(PAYLOADS) + 1 >= 30  # +1: the wrong-market payload below


@pytest.mark.parametrize(("case", "row", "reason"), ROWS, ids=[c for c, _, _ in ROWS])
def test_bad_row_rejected_with_reason(mongo_db, pg_conn, case, row, reason) -> None:
    body = json.dumps([kline(T0), row, kline(T0 + 2 * MIN)])
    doc = store(RawStore(mongo_db), body)
    result = load_candle_payloads(pg_conn, [doc], "binance", "ETH/USDT", "1m", "run-1")
    assert (result.inserted, result.rejected) == (2, 1), case
    with pg_conn.cursor() as cur:
        cur.execute("SELECT row_index, reason, raw_payload_id FROM staging.ohlcv_rejects")
        [(row_index, why, payload)] = cur.fetchall()
    assert row_index == 1 and reason in why and payload == doc["_id"], why
    assert mongo_db.raw_market_payload.find_one({"_id": doc["_id"]})["body"] == body


@pytest.mark.parametrize(("case", "body", "reason"), PAYLOADS, ids=[c for c, _, _ in PAYLOADS])
def test_bad_payload_rejected_whole(mongo_db, pg_conn, case, body, reason) -> None:
    doc = store(RawStore(mongo_db), body)
    result = load_candle_payloads(pg_conn, [doc], "binance", "ETH/USDT", "1m", "run-1")
    assert (result.payloads_rejected, result.inserted) == (1, 0), case
    with pg_conn.cursor() as cur:
        cur.execute("SELECT row_index, reason, length(raw_row) FROM staging.ohlcv_rejects")
        [(row_index, why, kept)] = cur.fetchall()
    assert row_index == -1 and reason in why, why
    # The body as received, capped in the rejects table (NUL, which Postgres text cannot hold, spelled \u0000).
    assert kept == len(body[:1_000_000].replace("\x00", "\\u0000"))
    assert mongo_db.raw_market_payload.find_one({"_id": doc["_id"]})["body"] == body  # raw keeps all of it


def test_wrong_market_payload_rejected(mongo_db, pg_conn) -> None:
    doc = store(RawStore(mongo_db), json.dumps([kline(T0)]), params={"symbol": "BTCUSDT", "interval": "1m"})
    result = load_candle_payloads(pg_conn, [doc], "binance", "ETH/USDT", "1m", "run-1")
    assert (result.payloads_rejected, result.inserted) == (1, 0)
