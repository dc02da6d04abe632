"""exchanges.call_with_retries' decisions on calls that fail without touching the network."""

from __future__ import annotations

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
