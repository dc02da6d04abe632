"""Per-market health: consecutive failures, one alert per incident, suspension and resumption.

A market that fails never stops the others; what happens to it depends on the failure's class:

* transient (network, timeout, rate limit, exchange down, database): the market stays ``failing``
  and is retried (in the task, then by Airflow); after ``alert_after_failures`` failures in a row one
  ``consecutive_failures`` alert is raised.
* permanent for the market (bad symbol, auth, bad request, unusable data): after ``suspend_after_failures`` of them
  in a row the market is ``suspended`` with one ``market_suspended`` alert, and is no longer called
  until its configuration changes (the fingerprint below) or an operator resumes it
  (``python -m marketflow.cli markets resume <exchange> <symbol>``).

A success resets the counts and re-arms the alert. The state lives in ops.market_health (read by the
``markets`` mart); every change is one statement, so overlapping tasks cannot lose a count.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from marketflow.alerts import raise_alert
from marketflow.config import MarketConfig, MarketflowConfig
from marketflow.errors import ErrorClass
from marketflow.logs import get_logger

log = get_logger(__name__)

SUSPENDING = frozenset({ErrorClass.BAD_SYMBOL, ErrorClass.AUTH, ErrorClass.BAD_REQUEST, ErrorClass.DATA})


def fingerprint(config: MarketflowConfig, market: MarketConfig) -> str:
    """What a suspension is tied to: the market's entry and its exchange's connection settings.
    Editing any of them (a fixed symbol, new credentials, another URL) lifts the suspension."""
    ex = config.exchange(market.exchange)
    settings = {"ccxt_id": ex.ccxt_id, "api_base_url": ex.api_base_url, "options": ex.options,
                "credentials_conn_id": ex.credentials_conn_id, "symbol": market.symbol,
                "timeframes": list(market.timeframes), "history_start": market.history_start.isoformat(),
                "history_end": market.history_end.isoformat() if market.history_end else None}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class MarketState:
    exchange: str
    symbol: str
    status: str
    consecutive_failures: int
    consecutive_permanent_failures: int
    last_error_class: str | None
    last_error: str | None
    suspended_reason: str | None


def record_success(conn, exchange: str, symbol: str) -> None:
    with conn.cursor() as cur:
        cur.execute(
            """
            INSERT INTO ops.market_health AS h (exchange, symbol, consecutive_failures, last_success_at, status)
            VALUES (%s, %s, 0, now(), 'active')
            ON CONFLICT (exchange, symbol) DO UPDATE SET consecutive_failures = 0,
                consecutive_permanent_failures = 0, last_success_at = now(), alerted_at = NULL, status = 'active',
                updated_at = now()
            """, (exchange, symbol))
    conn.commit()


def record_successes(conn, markets: list[tuple[str, str]]) -> None:
    """``record_success`` for many (exchange, symbol) at once: one statement for a minute batch."""
    if not markets:
        return
    from psycopg2.extras import execute_values

    with conn.cursor() as cur:
        execute_values(
            cur,
            """
            INSERT INTO ops.market_health AS h (exchange, symbol, consecutive_failures, last_success_at, status)
            VALUES %s
            ON CONFLICT (exchange, symbol) DO UPDATE SET consecutive_failures = 0,
                consecutive_permanent_failures = 0, last_success_at = now(), alerted_at = NULL, status = 'active',
                updated_at = now()
            """, sorted(set(markets)), template="(%s, %s, 0, now(), 'active')", page_size=1000)
    conn.commit()


def record_failure(conn, config: MarketflowConfig, market: MarketConfig, error_class: ErrorClass, error: str,
                   dag_id: str | None = None, run_id: str | None = None) -> str:
    """Count one failed attempt of ``market``; returns its status afterwards (``failing`` or ``suspended``).

    Raises at most one alert per incident: ``market_suspended`` when the permanent failures in a row
    reach ``suspend_after_failures``, else ``consecutive_failures`` when all failures in a row reach
    ``alert_after_failures`` and the last one is transient (a permanent streak alerts when it suspends,
    a few runs later, instead of twice)."""
    # What the market itself cannot get past (the exchange refuses it or its data); a fault of marketflow
    # (internal) is not the market's and must not suspend every market it hits: it alerts instead.
    permanent = error_class in SUSPENDING
    with conn.cursor() as cur:
        cur.execute(
            """
            INSERT INTO ops.market_health AS h (exchange, symbol, consecutive_failures,
                                                consecutive_permanent_failures, last_error_class, last_error,
                                                last_failure_at, status)
            VALUES (%(ex)s, %(sym)s, 1, %(perm)s::int, %(cls)s, %(err)s, now(), 'failing')
            ON CONFLICT (exchange, symbol) DO UPDATE SET
                consecutive_failures = h.consecutive_failures + 1,
                consecutive_permanent_failures = h.consecutive_permanent_failures + %(perm)s::int,
                last_error_class = EXCLUDED.last_error_class, last_error = EXCLUDED.last_error,
                last_failure_at = now(), updated_at = now(),
                status = CASE WHEN h.status = 'suspended' THEN 'suspended' ELSE 'failing' END
            RETURNING consecutive_failures, consecutive_permanent_failures, alerted_at IS NOT NULL, status
            """, {"ex": market.exchange, "sym": market.symbol, "perm": permanent, "cls": error_class.value,
                  "err": error[:2000]})
        failures, permanent_failures, alerted, status = cur.fetchone()
        suspend = permanent and status != "suspended" and permanent_failures >= config.suspend_after_failures
        alert = not permanent and not alerted and failures >= config.alert_after_failures
        if suspend:
            reason = (f"{permanent_failures} permanent failures in a row, last {error_class.value}: {error[:500]}")
            cur.execute(
                "UPDATE ops.market_health SET status = 'suspended', suspended_at = now(), suspended_reason = %s, "
                "config_fingerprint = %s, alerted_at = now(), updated_at = now() WHERE exchange = %s AND symbol = %s",
                (reason, fingerprint(config, market), market.exchange, market.symbol))
            status = "suspended"
        elif alert:
            cur.execute("UPDATE ops.market_health SET alerted_at = now() WHERE exchange = %s AND symbol = %s",
                        (market.exchange, market.symbol))
    conn.commit()
    subject = f"{market.exchange} {market.symbol}"
    if suspend:
        raise_alert(conn, "market_suspended", subject,
                    f"suspended after {permanent_failures} permanent failures in a row (last: {error_class.value}: "
                    f"{error[:500]}); {error_class.advice}. It is not called again until its entry in the markets "
                    f"file changes or an operator runs: python -m marketflow.cli markets resume {market.exchange} "
                    f"{market.symbol}", dag_id, run_id)
    elif alert:
        raise_alert(conn, "consecutive_failures", subject,
                    f"{failures} attempts in a row failed; last: {error_class.value}: {error[:500]}", dag_id, run_id)
    elif permanent and status != "suspended":
        log.warning("%s: permanent failure %d of %d before it is suspended (%s)", subject, permanent_failures,
                    config.suspend_after_failures, error_class.value, exchange=market.exchange, symbol=market.symbol,
                    error_class=error_class.value, permanent_failures=permanent_failures)
    return status


def partition_suspended(conn, config: MarketflowConfig, markets: list[MarketConfig]
                        ) -> tuple[list[MarketConfig], list[MarketConfig]]:
    """Split ``markets`` into (to run, suspended). A suspended market whose configuration changed
    since it was suspended is resumed here and runs."""
    if not markets:
        return [], []
    with conn.cursor() as cur:
        cur.execute(
            "SELECT exchange, symbol, config_fingerprint FROM ops.market_health WHERE status = 'suspended' "
            "AND exchange = ANY(%s)", (sorted({m.exchange for m in markets}),))
        suspended = {(ex, sym): fp for ex, sym, fp in cur.fetchall()}
    conn.commit()
    run, skipped = [], []
    for market in markets:
        key = (market.exchange, market.symbol)
        if key not in suspended:
            run.append(market)
        elif suspended[key] != fingerprint(config, market):
            resume(conn, market.exchange, market.symbol, by="configuration change")
            run.append(market)
        else:
            skipped.append(market)
    return run, skipped


def resume(conn, exchange: str, symbol: str, by: str) -> bool:
    """Lift a suspension; the market is called again from its next run. False if it was not suspended."""
    with conn.cursor() as cur:
        cur.execute(
            """
            UPDATE ops.market_health SET status = 'active', consecutive_failures = 0,
                consecutive_permanent_failures = 0, alerted_at = NULL, suspended_at = NULL, suspended_reason = NULL,
                config_fingerprint = NULL, resumed_at = now(), resumed_by = %s, updated_at = now()
            WHERE exchange = %s AND symbol = %s AND status = 'suspended'
            """, (by, exchange, symbol))
        resumed = cur.rowcount == 1
    conn.commit()
    if resumed:
        log.warning("%s %s resumed (%s): it is called again from its next run", exchange, symbol, by,
                    exchange=exchange, symbol=symbol, by=by)
    return resumed


def suspend(conn, config: MarketflowConfig, exchange: str, symbol: str, reason: str) -> None:
    """Suspend a market by hand (e.g. a known delisting) until it is resumed or its config changes."""
    market = config.market(exchange, symbol)
    with conn.cursor() as cur:
        cur.execute(
            """
            INSERT INTO ops.market_health AS h (exchange, symbol, status, suspended_at, suspended_reason,
                                                config_fingerprint)
            VALUES (%s, %s, 'suspended', now(), %s, %s)
            ON CONFLICT (exchange, symbol) DO UPDATE SET status = 'suspended', suspended_at = now(),
                suspended_reason = EXCLUDED.suspended_reason, config_fingerprint = EXCLUDED.config_fingerprint,
                updated_at = now()
            """, (exchange, symbol, reason, fingerprint(config, market)))
    conn.commit()


def market_states(conn) -> list[MarketState]:
    with conn.cursor() as cur:
        cur.execute("SELECT exchange, symbol, status, consecutive_failures, consecutive_permanent_failures, "
                    "last_error_class, last_error, suspended_reason FROM ops.market_health ORDER BY 1, 2")
        rows = [MarketState(*row) for row in cur.fetchall()]
    conn.commit()
    return rows


def state_summary(states: list[MarketState]) -> dict[str, Any]:
    return {s: sum(1 for x in states if x.status == s) for s in ("active", "failing", "suspended")}


def record_task_outcomes(conn, dag_id: str, run_id: str, task_id: str, try_number: int,
                         rows: list[tuple[str, str, str, str | None, str | None, int | None, float | None]]) -> None:
    """Upsert what a multi-market task did per market: (exchange, symbol, outcome, error_class, error,
    candles, seconds). The row holds the latest try's outcome for that market."""
    if not rows:
        return
    from psycopg2.extras import execute_values

    with conn.cursor() as cur:
        execute_values(cur, """
            INSERT INTO ops.market_task_outcomes (dag_id, run_id, task_id, try_number, exchange, symbol, outcome,
                                                  error_class, error, candles, seconds)
            VALUES %s
            ON CONFLICT (dag_id, run_id, task_id, exchange, symbol) DO UPDATE SET
                try_number = EXCLUDED.try_number, outcome = EXCLUDED.outcome, error_class = EXCLUDED.error_class,
                error = EXCLUDED.error, candles = EXCLUDED.candles, seconds = EXCLUDED.seconds, finished_at = now()
            """, [(dag_id, run_id, task_id, try_number, *row) for row in rows])
    conn.commit()


def earlier_outcomes(conn, dag_id: str, run_id: str, task_id: str) -> dict[tuple[str, str], tuple[str, str | None,
                                                                                                     str | None]]:
    """(exchange, symbol) -> (outcome, error_class, error) recorded by earlier tries of this task."""
    with conn.cursor() as cur:
        cur.execute("SELECT exchange, symbol, outcome, error_class, error FROM ops.market_task_outcomes "
                    "WHERE dag_id = %s AND run_id = %s AND task_id = %s", (dag_id, run_id, task_id))
        rows = {(ex, sym): (outcome, cls, err) for ex, sym, outcome, cls, err in cur.fetchall()}
    conn.commit()
    return rows
