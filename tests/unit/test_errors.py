"""Failure classes from ccxt's exception hierarchy and the database drivers."""

from __future__ import annotations

import ccxt
import psycopg2
import pymongo.errors
import pytest

from marketflow.errors import ErrorClass, backoff, classify


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ccxt.RequestTimeout("binance GET /api/v3/klines"), ErrorClass.TIMEOUT),
        (ccxt.DDoSProtection("418 banned until ..."), ErrorClass.RATE_LIMIT),
        (ccxt.RateLimitExceeded("50011 too many requests"), ErrorClass.RATE_LIMIT),
        (ccxt.OnMaintenance("system maintenance"), ErrorClass.EXCHANGE_UNAVAILABLE),
        (ccxt.ExchangeNotAvailable("503"), ErrorClass.EXCHANGE_UNAVAILABLE),
        (ccxt.NetworkError("connection reset"), ErrorClass.NETWORK),
        (ccxt.BadSymbol("binance does not have market symbol FOO/BAR"), ErrorClass.BAD_SYMBOL),
        (ccxt.BadRequest("-1100 illegal characters"), ErrorClass.BAD_REQUEST),
        (ccxt.ExchangeError("-1000 unknown"), ErrorClass.BAD_REQUEST),
        (ccxt.AuthenticationError("invalid api key"), ErrorClass.AUTH),
        (ccxt.PermissionDenied("ip not whitelisted"), ErrorClass.AUTH),
        (ccxt.BadResponse("not json"), ErrorClass.DATA),
        (psycopg2.OperationalError("server closed the connection"), ErrorClass.DATABASE),
        (pymongo.errors.ServerSelectionTimeoutError("no servers"), ErrorClass.DATABASE),
        (ConnectionRefusedError(111, "refused"), ErrorClass.NETWORK),
        (TimeoutError(), ErrorClass.TIMEOUT),
        (ValueError("close 'abc' is not a number"), ErrorClass.DATA),
        (AttributeError("'timedelta' object has no attribute '_to_microseconds'"), ErrorClass.INTERNAL),
    ],
)
def test_classify(exc: BaseException, expected: ErrorClass) -> None:
    assert classify(exc) is expected


def test_http_status_wins_over_the_body_mapping() -> None:
    overloaded = ccxt.ExchangeError('binance {"code":-1008,"msg":"Server is currently overloaded"}')
    assert classify(overloaded) is ErrorClass.BAD_REQUEST
    assert classify(overloaded, 503) is ErrorClass.EXCHANGE_UNAVAILABLE
    assert classify(ccxt.ExchangeError("banned"), 418) is ErrorClass.RATE_LIMIT
    assert classify(ccxt.BadSymbol("invalid symbol"), 400) is ErrorClass.BAD_SYMBOL


def test_transient_and_permanent_classes() -> None:
    assert {c for c in ErrorClass if c.transient} == {ErrorClass.NETWORK, ErrorClass.TIMEOUT, ErrorClass.RATE_LIMIT,
                                                      ErrorClass.EXCHANGE_UNAVAILABLE, ErrorClass.DATABASE}
    assert all(c.advice for c in ErrorClass)


def test_backoff_is_jittered_exponential_and_capped() -> None:
    """After failed attempt n the wait is uniform in [0, min(cap, 2^n)]: 2, 4, 8 s for the in-task retries."""
    import tenacity

    wait = backoff(base=1, cap=8)
    state = tenacity.RetryCallState(tenacity.Retrying(), fn=None, args=(), kwargs={})
    for attempt in range(1, 7):
        state.attempt_number = attempt
        chunk = [wait(state) for _ in range(400)]
        ceiling = min(8, 2 ** attempt)
        assert min(chunk) >= 0 and max(chunk) <= ceiling
        assert max(chunk) > 0.9 * ceiling and min(chunk) < 0.1 * ceiling  # the whole window is used
        assert len(set(chunk)) > 350  # jittered, not a fixed schedule


def test_airflow_retry_policy_fails_permanent_errors_at_once() -> None:
    from airflow.sdk import RetryAction

    from marketflow.errors import retry_policy

    policy = retry_policy()
    assert policy.evaluate(ccxt.BadSymbol("binance does not have market symbol FOO/BAR"), 1, 4).action \
        == RetryAction.FAIL
    assert policy.evaluate(ccxt.AuthenticationError("invalid key"), 1, 4).action == RetryAction.FAIL
    assert policy.evaluate(ccxt.RequestTimeout("slow"), 1, 4).action == RetryAction.DEFAULT
    assert policy.evaluate(psycopg2.OperationalError("gone"), 1, 4).action == RetryAction.DEFAULT
