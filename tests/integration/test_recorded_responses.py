"""ccxt's own recorded responses and requests, which nobody here wrote, through the pipeline.

tests/data/ccxt_static holds, per exchange, the fetchOHLCV / fetchTicker / fetchTickers entries of
ccxt's static test fixtures (see its README): the exchange's raw answer beside what ccxt parsed
from it, and the URL ccxt built for a call. Every test runs once per fixture file present, so
adding an exchange is adding its fixture file (and its settings file: the request fixture's
options and skipKeys, and the markets the fixture names, as ccxt's own static tests load them).

Nothing leaves the machine: the pipeline's ccxt client (build_exchange) gets a transport that
answers every HTTP request with the recorded body and keeps the URL asked. Everything after
that is the pipeline's own path: the pager, the raw store on the MongoDB protocol, the staging
loader on Postgres. The oracle is ccxt's recorded ``parsedResponse``, read as Decimals.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from marketflow.config import ExchangeConfig
from marketflow.exchanges import (
    HttpExchange,
    PipelineClient,
    build_exchange,
    call_with_retries,
    fetch_ohlcv_pages,
    fetch_ticker_response,
    market_info,
)
from marketflow.parsing import kline_fields
from marketflow.raw_store import PayloadContext, RawStore
from marketflow.staging_load import load_candle_payloads, load_ticker_payloads
from marketflow.timeframes import Window, from_ms, timeframe_ms, to_ms, utc_ms

STATIC = Path(__file__).resolve().parents[1] / "data" / "ccxt_static"
FIXTURES = sorted(STATIC.glob("*.json"))
TICKER_FIELDS = {"last": "last", "bid": "bid", "ask": "ask", "bid_volume": "bidVolume", "ask_volume": "askVolume",
                 "base_volume": "baseVolume", "quote_volume": "quoteVolume"}


def test_the_fixtures_are_there() -> None:
    assert {p.stem for p in FIXTURES} >= {"bybit", "kucoin", "okx", "mexc"}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(), parse_float=Decimal)


def settings(exchange: str) -> dict[str, Any]:
    path = STATIC / "settings" / f"{exchange}.json"
    assert path.exists(), (f"{path} is missing. Fix: add the request fixture's file-level options and skipKeys and the "
                           f"markets the fixture names, from ccxt's ts/src/test/static (see {STATIC / 'README.md'})")
    return json.loads(path.read_text())


def dumps(value: Any) -> str:
    """JSON text with each number as recorded (a Decimal's own digits, never a float's)."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    return json.dumps(value)


class RecordedTransport(BaseAdapter):
    """A requests transport answering every request with one recorded body; keeps the URLs asked."""

    def __init__(self, body: str, headers: dict[str, str] | None = None) -> None:
        super().__init__()
        self.body, self.headers, self.urls = body, headers or {}, []

    def send(self, request, **kwargs):  # type: ignore[no-untyped-def]
        self.urls.append(request.url)
        response = requests.Response()
        response.status_code, response.reason, response.url, response.request = 200, "OK", request.url, request
        response.headers = CaseInsensitiveDict({"Content-Type": "application/json", **self.headers})
        response._content = self.body.encode()
        response.encoding = "utf-8"
        return response

    def close(self) -> None:
        pass


def pipeline_client(exchange: str, body: str, headers: dict[str, str] | None = None
                    ) -> tuple[PipelineClient, RecordedTransport]:
    """The pipeline's client for ``exchange`` with the fixture's options and markets, answered by ``body``."""
    fixed = settings(exchange)
    client = build_exchange(ExchangeConfig(name=exchange, ccxt_id=exchange, enabled=True, markets=(),
                                           options=fixed.get("options") or {}))
    client.set_markets(list(fixed["markets"].values()))  # as load_markets() does from ops.market_lists
    transport = RecordedTransport(body, headers)
    for prefix in ("https://", "http://"):
        client.session.mount(prefix, transport)
    return client, transport


def same_number(ours: Decimal | None, theirs: Any) -> bool:
    """Equal as decimals; ccxt's parsedResponse went through a double where the exchange sent more
    digits than one holds (KuCoin's "433203364.463489651" is recorded as 433203364.46348965):
    then equal as doubles."""
    if ours is None or theirs is None:
        return ours is None and theirs is None
    theirs = Decimal(str(theirs))
    if ours == theirs:
        return True
    return len(theirs.as_tuple().digits) >= 16 and float(ours) == float(theirs)


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_recorded_candles_load_as_ccxt_parsed_them(path: Path, mongo_db, pg_conn) -> None:
    fixture = load(path)
    exchange = fixture["exchange"]
    entries = fixture["methods"].get("fetchOHLCV", {}).get("responses", [])
    assert entries, f"{path.name} has no recorded fetchOHLCV response"
    raw = RawStore(mongo_db)
    for n, entry in enumerate(entries):
        symbol, timeframe = entry["input"][0], (entry["input"][1:2] or ["1m"])[0]
        expected = {int(row[0]): row[1:] for row in entry["parsedResponse"]}
        step = timeframe_ms(timeframe)
        window = Window(min(expected), max(expected) + step)
        client, transport = pipeline_client(exchange, dumps(entry["httpResponse"]))

        # the pipeline's extract: its pager asks ccxt for the window, ccxt's answer is recorded as received
        # judged at the recording's time: a capped history (Kraken 720 candles, Gate 10,000) still reaches it
        pages = list(fetch_ohlcv_pages(client, symbol, timeframe, window, now_ms=window.end_ms))
        responses = [r for page in pages for r in page.responses]
        assert len(responses) == len(transport.urls) >= 1
        ctx = PayloadContext(exchange, exchange, symbol, timeframe, "ohlcv", window, f"recorded-{n}", 1,
                             market_info(client, symbol))
        ids = raw.save_responses(ctx, responses, request=pages[0].request)
        docs = raw.get_payloads(ids)
        assert docs[0]["body"] == dumps(entry["httpResponse"])  # raw holds the recorded answer unchanged

        # the pipeline's load, from what raw holds
        result = load_candle_payloads(pg_conn, docs, exchange, symbol, timeframe, f"recorded-{n}", window)
        assert (result.rejected, result.payloads_rejected, result.still_open, result.out_of_order) == (0, 0, 0, 0), \
            result.first_reject
        assert result.inserted == len(expected), result.summary()
        with pg_conn.cursor() as cur:
            cur.execute("SELECT open_time, open, high, low, close, volume, quote_volume, trades FROM staging.ohlcv "
                        "WHERE exchange = %s AND symbol = %s AND timeframe = %s ORDER BY open_time",
                        (exchange, symbol, timeframe))
            landed = {to_ms(ts): values for ts, *values in cur.fetchall()}
        assert landed.keys() == expected.keys()  # nothing lost, nothing invented
        for ts, values in landed.items():
            assert all(same_number(ours, theirs) for ours, theirs in zip(values[:5], expected[ts], strict=True)), \
                (exchange, from_ms(ts), values[:5], expected[ts])
            # the fields ccxt's OHLCV leaves out: present exactly where marketflow says the exchange sends them
            fields = kline_fields(exchange)
            assert (values[5] is not None, values[6] is not None) == (fields.quote_volume, fields.trades), values


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_recorded_tickers_load_as_ccxt_parsed_them(path: Path, mongo_db, pg_conn) -> None:
    fixture = load(path)
    exchange = fixture["exchange"]
    raw = RawStore(mongo_db)
    checked = 0
    for method in ("fetchTicker", "fetchTickers"):
        for n, entry in enumerate(fixture["methods"].get(method, {}).get("responses", [])):
            symbol = entry["input"][0] if method == "fetchTicker" else entry["input"][0][0]
            expected = entry["parsedResponse"] if method == "fetchTicker" else entry["parsedResponse"][symbol]
            client, _ = pipeline_client(exchange, dumps(entry["httpResponse"]))
            if method == "fetchTicker":
                _, responses = fetch_ticker_response(client, symbol)
            else:
                _, responses = call_with_retries(client, lambda c=client, s=symbol: c.fetch_tickers([s]), "tickers")
            ctx = PayloadContext(exchange, exchange, symbol, None, "ticker", None, f"{method}-{n}", 1,
                                 market_info(client, symbol))
            docs = raw.get_payloads(raw.save_responses(ctx, responses, request={"method": method}))
            written, problems = load_ticker_payloads(pg_conn, docs, f"{method}-{n}")
            assert (written, problems) == (1, [])
            with pg_conn.cursor() as cur:
                cur.execute(f"SELECT ts, {', '.join(TICKER_FIELDS)} FROM staging.ticker WHERE raw_payload_id = %s",
                            (docs[0]["_id"],))
                ts, *values = cur.fetchone()
            for (column, key), ours in zip(TICKER_FIELDS.items(), values, strict=True):
                assert same_number(ours, expected[key]), (exchange, method, column, ours, expected[key])
            # no timestamp in the answer: the snapshot is dated when it was received
            assert to_ms(ts) == (expected["timestamp"] or utc_ms(docs[0]["fetched_at"]))
            checked += 1
    assert checked or not any(fixture["methods"].get(m, {}).get("responses") for m in ("fetchTicker", "fetchTickers"))


def _hosts(client: PipelineClient, urls: Any) -> set[str]:
    if isinstance(urls, dict):
        return set().union(*(_hosts(client, v) for v in urls.values())) if urls else set()
    return {urlsplit(client.implode_hostname(urls)).hostname} if isinstance(urls, str) and "://" in urls else set()


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_recorded_requests_are_what_the_pipeline_client_builds(path: Path) -> None:
    """The URL the pipeline's client sends for each recorded input equals ccxt's recorded URL: same path,
    same query parameters (a multiset); a key the fixture lists in skipKeys holds the clock at the call
    (KuCoin's endAt without `since`), checked as that."""
    fixture = load(path)
    exchange = fixture["exchange"]
    clock_keys = set(settings(exchange).get("skipKeys") or [])
    checked = 0
    for method, group in fixture["methods"].items():
        recorded_answers = group.get("responses") or []
        for entry in group.get("requests") or []:
            body = dumps(recorded_answers[0]["httpResponse"]) if recorded_answers else "{}"
            client, transport = pipeline_client(exchange, body)
            args = [float(a) if isinstance(a, Decimal) else a for a in entry["input"]]
            before = time.time()
            try:
                getattr(client, method)(*args)
            except Exception:  # the request is what is checked: an answer meant for another call may not parse
                if not transport.urls:
                    raise
            after = time.time()
            assert len(transport.urls) == 1, (entry["description"], transport.urls)
            ours, theirs = urlsplit(transport.urls[0]), urlsplit(entry["url"])
            where = f"{exchange} {method} {entry['description']!r}"
            assert ours.path == theirs.path, where
            # live or testnet, the recorded host is one of ccxt's own for the exchange
            hosts = _hosts(client, client.urls.get("api")) | _hosts(client, client.urls.get("test"))
            assert theirs.hostname in hosts, where
            our_params, their_params = Counter(parse_qsl(ours.query)), Counter(parse_qsl(theirs.query))
            for key in clock_keys & {k for k, _ in their_params} - {k for k, _ in our_params & their_params}:
                [(_, value)] = [kv for kv in our_params if kv[0] == key]
                assert before - 1 <= int(value) / (1000 if len(value) > 10 else 1) <= after + 1, (where, key, value)
                our_params = Counter({kv: c for kv, c in our_params.items() if kv[0] != key})
                their_params = Counter({kv: c for kv, c in their_params.items() if kv[0] != key})
            assert our_params == their_params, where
            checked += 1
    assert checked, f"{path.name} records no request"


def test_every_exchanges_rate_limit_headers_are_kept(mongo_db) -> None:
    """Raw keeps the rate-limit state whatever the exchange calls it, and drops the rest."""
    raw = RawStore(mongo_db)
    kept = {"X-MBX-USED-WEIGHT-1M": "12", "X-Bapi-Limit-Status": "599", "X-Bapi-Limit": "600",
            "X-Bapi-Limit-Reset-Timestamp": "1706803708087", "gw-ratelimit-remaining": "1997",
            "gw-ratelimit-limit": "2000", "X-Gate-RateLimit-Requests-Remain": "199", "RateLimit-Remaining": "9",
            "x-ratelimit-remaining": "9", "Retry-After": "3", "X-Request-Id": "abc", "Content-Type": "application/json"}
    dropped = {"Set-Cookie": "session=secret", "Server": "nginx", "Via": "1.1 cloudfront"}
    ctx = PayloadContext("bybit", "bybit", "BTC/USDT", "1m", "ohlcv", Window(0, 60_000), "run-h", 1, {"id": "BTCUSDT"})
    [pid] = raw.save_responses(ctx, [HttpExchange("GET", "https://api.bybit.com/v5/market/kline?symbol=BTCUSDT", 200,
                                                  {**kept, **dropped}, "{}", int(time.time() * 1000))])
    assert raw.get_payloads([pid])[0]["headers"] == kept
