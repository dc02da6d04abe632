"""The ccxt behaviours marketflow relies on, pinned in one place: after a ccxt bump, this file fails
first and names what moved (exchanges.PipelineClient overrides these methods in a subclass)."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import ccxt
import pytest

from marketflow.config import load_config
from marketflow.exchanges import PipelineClient, build_exchange, ccxt_exchange_ids, client_class, parser_for

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "include" / "config" / "markets.demo.yml"


def test_installed_ccxt_is_the_pinned_one() -> None:
    pinned = re.search(r"^ccxt==(\S+)$", (REPO / "requirements.txt").read_text(), re.M)
    assert pinned, "requirements.txt must pin ccxt (ccxt==<version>)"
    assert ccxt.__version__ == pinned.group(1), (
        f"ccxt {ccxt.__version__} is installed but requirements.txt pins {pinned.group(1)}: "
        "install the pin, or bump it and run this file")


def test_exchange_list_names_ours() -> None:
    assert {"binance", "okx"} <= set(ccxt.exchanges)
    assert ccxt_exchange_ids() == frozenset(ccxt.exchanges)
    assert "nosuchexchange" not in ccxt_exchange_ids()


@pytest.mark.parametrize(("method", "params"), [
    ("on_rest_response", ["self", "code", "reason", "url", "method", "response_headers", "response_body",
                          "request_headers", "request_body"]),
    ("parse_json", ["self", "http_response"]),
    ("throttle", ["self", "cost"]),
])
def test_overridden_hooks_keep_their_signature(method: str, params: list[str]) -> None:
    assert list(inspect.signature(getattr(ccxt.Exchange, method)).parameters) == params
    for ccxt_id in ("binance", "okx"):  # our override must be the one ccxt reaches
        klass = client_class(ccxt_id)
        assert getattr(klass, method) is getattr(PipelineClient, method)
        assert issubclass(klass, getattr(ccxt, ccxt_id))


def test_features_give_the_page_limits() -> None:
    assert ccxt.binance().features["spot"]["fetchOHLCV"]["limit"] == 1000
    assert ccxt.okx().features["spot"]["fetchOHLCV"]["limit"] == 300


def test_number_str_keeps_decimal_strings() -> None:
    row = ["1660435200000", "1922.62000000", "1930.00000000", "1921.01000000", "1929.01000000", "10.00010000"]
    parsed = parser_for("okx").parse_ohlcv(row)
    assert parsed == [1660435200000, "1922.62000000", "1930.00000000", "1921.01000000", "1929.01000000",
                      "10.00010000"]


class _CostLog:
    """Stands in for the shared bucket: records the cost ccxt's throttle passes for each request."""

    def __init__(self) -> None:
        self.costs: list[float] = []

    def acquire(self, cost: float) -> None:
        self.costs.append(cost)


def test_hooks_see_every_request_over_http(emulator_url: str) -> None:
    """A real request through ccxt to the emulator: throttle gets ccxt's cost, the response is recorded
    as it came over the wire, and ccxt's decoding is noted; a request error is recorded too."""
    config = load_config(DEMO_CONFIG, env={"MARKETFLOW_EXCHANGE_URL": emulator_url})
    exchange = build_exchange(config.exchange("binance"))
    costs = _CostLog()
    exchange.shared_limiter = costs  # type: ignore[assignment]
    server_time = exchange.fetch_time()
    # GET /api/v3/time weighs 1 of Binance's 6,000 a minute; ccxt's unit is 5 weight (1,200 units a minute at
    # rateLimit 50 ms), the unit rate_limit.py's bucket counts in
    assert costs.costs == [0.2] and exchange.rateLimit == 50
    (response,) = exchange.recorder.take()
    assert response.endpoint == "/api/v3/time" and response.status == 200 and response.json_ok is True
    assert json.loads(response.body) == {"serverTime": server_time}
    assert response.url.startswith(emulator_url)

    with pytest.raises(ccxt.BadSymbol):
        exchange.publicGetKlines({"symbol": "NOSUCHPAIR", "interval": "1m"})
    (failed,) = exchange.recorder.take()
    assert failed.status == 400 and "NOSUCHPAIR" in failed.url and failed.json_ok is True
