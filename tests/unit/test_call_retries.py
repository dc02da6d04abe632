"""exchanges.call_with_retries' decisions on calls that fail without touching the network."""

from __future__ import annotations

import json

import ccxt
import pytest

from marketflow.exchanges import call_with_retries, client_class


class TaskTimeout(BaseException):
    """Like Airflow's AirflowTaskTimeout: a BaseException raised into the running call."""


def _client():
    exchange = client_class("binance")({})
    reported: list[dict] = []
    exchange.error_sink = reported.append
    return exchange, reported


def _calls(*outcomes):
    made: list[int] = []

    def call():
        made.append(1)
        outcome = outcomes[len(made) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return call, made


def test_transient_failure_is_retried_and_reported() -> None:
    exchange, reported = _client()
    call, made = _calls(ccxt.NetworkError("connection reset"), "ok")
    assert call_with_retries(exchange, call, "probe") == ("ok", [])
    assert len(made) == 2
    assert [(r["error_class"], r["attempt"], r["will_retry"]) for r in reported] == [("network", 1, True)]


def test_permanent_failure_is_not_retried() -> None:
    exchange, reported = _client()
    call, made = _calls(ccxt.BadSymbol("binance does not have market symbol FOO/BAR"))
    with pytest.raises(ccxt.BadSymbol) as info:
        call_with_retries(exchange, call, "probe")
    assert len(made) == 1 and info.value.responses == []
    assert [(r["error_class"], r["will_retry"]) for r in reported] == [("bad_symbol", False)]


def test_a_task_timeout_ends_the_call_at_once() -> None:
    """execution_timeout raises a BaseException into the call: never retried, even after a transient failure."""
    exchange, reported = _client()
    call, made = _calls(TaskTimeout("execution_timeout"))
    with pytest.raises(TaskTimeout):
        call_with_retries(exchange, call, "probe")
    assert len(made) == 1 and reported == []

    exchange, reported = _client()
    call, made = _calls(ccxt.RequestTimeout("slow"), TaskTimeout("execution_timeout"))
    with pytest.raises(TaskTimeout):
        call_with_retries(exchange, call, "probe")
    assert len(made) == 2
    assert [(r["error_class"], r["will_retry"]) for r in reported] == [("timeout", True)]


def _bybit_10006(server_ms: int, reset_ms: int):
    from marketflow.exchanges import HttpExchange

    body = json.dumps({"retCode": 10006, "retMsg": "Too many visits!", "result": {}, "retExtInfo": {},
                       "time": server_ms})
    return HttpExchange("GET", "https://api.bybit.com/v5/market/kline", 200,
                        {"X-Bapi-Limit-Reset-Timestamp": str(reset_ms)}, body, server_ms)


@pytest.mark.parametrize("skew_s", [-40.0, 0.0, 40.0])
def test_bybit_reset_is_waited_for_on_the_exchanges_clock(skew_s: float) -> None:
    """The reset 600 ms after the exchange's stated time means ~0.65 s whatever our clock says: with the
    exchange's clock 40 s behind ours the reset looked past (we retried at once, 4 times in 0.2 s, and
    met 10006 each time: the fault suite's weight_budget_429 under some start times), 40 s ahead it
    looked 40 s away."""
    from marketflow.exchanges import retry_after_seconds

    ours = 1_796_000_000.0
    server_ms = int((ours + skew_s) * 1000)
    wait = retry_after_seconds(_bybit_10006(server_ms, server_ms + 600), default=10.0, now=ours)
    assert wait == pytest.approx(0.65, abs=1e-6)


def test_a_reset_without_the_exchanges_time_is_measured_on_ours() -> None:
    from marketflow.exchanges import HttpExchange, retry_after_seconds

    ours = 1_796_000_000.0
    reset = {"X-Bapi-Limit-Reset-Timestamp": str(int(ours * 1000) + 2000)}
    response = HttpExchange("GET", "https://x/kline", 429, reset, "not json", int(ours * 1000))
    assert retry_after_seconds(response, default=10.0, now=ours) == pytest.approx(2.05, abs=1e-6)
