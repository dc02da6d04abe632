"""Every failure gets one class, from ccxt's exception hierarchy and the database drivers.

Transient classes are worth retrying (with backoff); permanent ones fail the task at once with
a message that says what to fix. The class is what raw_ingestion_log and ops.api_errors record.
"""

from __future__ import annotations

import socket
from enum import StrEnum
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tenacity


class ErrorClass(StrEnum):
    NETWORK = "network"
    TIMEOUT = "timeout"
    RATE_LIMIT = "rate_limit"
    EXCHANGE_UNAVAILABLE = "exchange_unavailable"
    BAD_REQUEST = "bad_request"
    BAD_SYMBOL = "bad_symbol"
    AUTH = "auth"
    DATA = "data"
    DATABASE = "database"
    INTERNAL = "internal"

    @property
    def transient(self) -> bool:
        return self in TRANSIENT

    @property
    def advice(self) -> str:
        return ADVICE[self]


TRANSIENT = frozenset({ErrorClass.NETWORK, ErrorClass.TIMEOUT, ErrorClass.RATE_LIMIT,
                       ErrorClass.EXCHANGE_UNAVAILABLE, ErrorClass.DATABASE})

ADVICE = {
    ErrorClass.NETWORK: "the exchange could not be reached; retried with backoff",
    ErrorClass.TIMEOUT: "the exchange did not answer in time; retried with backoff (timeout_ms in the markets file)",
    ErrorClass.RATE_LIMIT: "the exchange asked us to slow down; calls pause for its Retry-After, then retry",
    ErrorClass.EXCHANGE_UNAVAILABLE: "the exchange is down or in maintenance; retried with backoff",
    ErrorClass.BAD_REQUEST: "the exchange rejected the request; check the market and timeframe in the markets file",
    ErrorClass.BAD_SYMBOL: "the exchange does not list this symbol; fix or remove it in the markets file",
    ErrorClass.AUTH: "the exchange refused our credentials; check the Airflow connection's API key",
    ErrorClass.DATA: "the exchange's answer could not be used; it is kept in raw and rejected with a reason",
    ErrorClass.DATABASE: "Postgres or MongoDB was unavailable, or a wait there ran out (another session held a "
                         "lock past db_lock, a statement ran past db_statement; see pg_stat_activity); retried "
                         "with backoff",
    ErrorClass.INTERNAL: "a fault in marketflow itself, not in the exchange's data; the traceback is in the task "
                         "log: fix or report it, then clear the task",
}

@cache
def _ccxt_classes() -> tuple[tuple[type[BaseException], ErrorClass], ...]:
    """ccxt's exceptions mapped to classes. ccxt is imported here, not with the module: every DAG
    file imports this module (the retry policy) and importing ccxt costs seconds per parse."""
    import ccxt

    # Order matters: the first matching base class wins (subclasses before their parents).
    return (
        (ccxt.RequestTimeout, ErrorClass.TIMEOUT),
        (ccxt.RateLimitExceeded, ErrorClass.RATE_LIMIT),  # OKX 50011
        (ccxt.DDoSProtection, ErrorClass.RATE_LIMIT),  # Binance 429 and 418
        (ccxt.ExchangeNotAvailable, ErrorClass.EXCHANGE_UNAVAILABLE),  # includes OnMaintenance, HTTP 5xx
        (ccxt.NetworkError, ErrorClass.NETWORK),
        (ccxt.BadSymbol, ErrorClass.BAD_SYMBOL),
        (ccxt.AuthenticationError, ErrorClass.AUTH),  # includes PermissionDenied, AccountSuspended
        (ccxt.BadResponse, ErrorClass.DATA),  # includes NullResponse
        (ccxt.ExchangeError, ErrorClass.BAD_REQUEST),
        (ccxt.OperationFailed, ErrorClass.NETWORK),
    )


def classify(exc: BaseException, http_status: int | None = None) -> ErrorClass:
    """The failure's class. The HTTP status, when there was a response, wins over ccxt's mapping of
    the body: e.g. Binance answers an overload with HTTP 503 and code -1008, which ccxt raises as a
    plain ExchangeError."""
    own = getattr(exc, "error_class", None)
    if isinstance(own, ErrorClass):  # marketflow's own errors say what they are
        return own
    if type(exc).__name__ == "AirflowTaskTimeout":  # execution_timeout: a stuck call, worth a retry
        return ErrorClass.TIMEOUT
    if http_status is not None:
        if http_status in (418, 429):
            return ErrorClass.RATE_LIMIT
        if http_status >= 500:
            return ErrorClass.EXCHANGE_UNAVAILABLE
    for klass, error_class in _ccxt_classes():
        if isinstance(exc, klass):
            return error_class
    module = type(exc).__module__.split(".")[0]
    if module in ("psycopg2", "psycopg", "pymongo", "bson", "sqlalchemy"):
        return ErrorClass.DATABASE
    if isinstance(exc, TimeoutError | socket.timeout):
        return ErrorClass.TIMEOUT
    if isinstance(exc, ConnectionError | OSError):
        return ErrorClass.NETWORK
    # Faults of the code itself: calling them "the exchange's data" would send an operator to the wrong place.
    if isinstance(exc, AttributeError | NameError | ImportError | AssertionError | NotImplementedError
                  | RecursionError):
        return ErrorClass.INTERNAL
    # Anything else (ValueError, KeyError, a parser surprise) is about the data we were given.
    return ErrorClass.DATA


def backoff(base: float = 1.0, cap: float = 60.0) -> tenacity.wait.wait_base:
    """Exponential backoff with full jitter, as a tenacity wait: after failed attempt n (1, 2, ...),
    uniform in [0, min(cap, base * 2^n)]."""
    import tenacity  # here, not with the module: every DAG file imports this one

    # tenacity's window after attempt n is multiplier * 2^(n-1)
    return tenacity.wait_random_exponential(multiplier=2 * base, max=cap)


class PermanentError(RuntimeError):
    """A failure retrying cannot fix; the message says what to change."""

    def __init__(self, error_class: ErrorClass, message: str) -> None:
        self.error_class = error_class
        super().__init__(f"{error_class}: {message} ({error_class.advice})")


class UnusableDataError(PermanentError):
    """The exchange answered, but nothing in the answer could be loaded (a whole payload rejected, or
    rows that all failed validation). The rejects are stored first; the market's run then fails
    loudly instead of ending green with 0 rows."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorClass.DATA, message)


class MarketsFailed(RuntimeError):
    """Some markets of a multi-market task failed; the others were loaded.

    ``error_class`` is transient when any failure is (Airflow retries the task, which re-runs only the
    markets that failed transiently), else the first permanent class (the task fails without a retry)."""

    def __init__(self, task: str, failures: dict[str, tuple[ErrorClass, str]]) -> None:
        self.failures = failures
        transient = [c for c, _ in failures.values() if c.transient]
        self.error_class = transient[0] if transient else next(iter(failures.values()))[0]
        listed = "; ".join(f"{market}: {c.value}: {m[:200]}" for market, (c, m) in failures.items())
        retry = ("retrying the markets that failed transiently" if transient
                 else "every failure is permanent, so no retry")
        super().__init__(f"{task}: {len(failures)} market(s) failed ({retry}): {listed}")


def retry_policy():
    """Airflow retry policy for pipeline tasks: permanent classes fail at once, the rest retry."""
    from airflow.sdk import RetryDecision, RetryPolicy

    class PipelineRetryPolicy(RetryPolicy):
        def evaluate(self, exception: BaseException, try_number: int, max_tries: int, context=None) -> RetryDecision:
            responses = getattr(exception, "responses", None) or []
            error_class = classify(exception, responses[-1].status if responses else None)
            if error_class.transient:
                return RetryDecision.default()
            return RetryDecision.fail(reason=f"{error_class} is permanent: {error_class.advice}")

        def serialize(self) -> dict:
            return {"__type": "PipelineRetryPolicy"}

    return PipelineRetryPolicy()
