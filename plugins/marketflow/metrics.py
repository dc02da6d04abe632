"""Prometheus metrics of the pipeline, read from the warehouse (and Airflow's metadata) at scrape time.

Why a collector that queries, and not counters incremented in the tasks: every Airflow task is a
short-lived process (a counter in it dies with it), and the facts are already written where they
are durable: ``ops.rate_limit_metrics`` (per exchange and minute), ``ops.api_errors``,
``ops.market_task_outcomes``, ``ops.market_health``, the rejects table, the gaps mart. One scrape
reads them with a handful of indexed queries under a statement timeout; a query that fails is
counted in ``marketflow_metrics_query_errors`` and the other families are still exposed.

Activity (candles, calls, tokens, errors) is exposed as sums over a trailing window (the ``_15m``
families), not as counters: the ops tables are pruned by retention, and a "counter" recomputed from a
pruned table would go down, which Prometheus reads as a reset and turns into a false spike in
``increase()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from marketflow.logs import get_logger

log = get_logger(__name__)

WINDOW_MINUTES = 15
# A scrape must come back well inside Prometheus' default 10 s scrape timeout.
STATEMENT_TIMEOUT_MS = 4000

Connect = Callable[[], Any]


@dataclass(frozen=True)
class Family:
    """One metric family: its query returns rows of ``labels..., value``."""

    name: str
    help: str
    labels: tuple[str, ...]
    sql: str


W = f"interval '{WINDOW_MINUTES} minutes'"

WAREHOUSE_FAMILIES: tuple[Family, ...] = (
    Family(
        "marketflow_market_freshness_lag_seconds",
        "Seconds from the close of the newest 1m candle in staging to now, per live enabled market that is not "
        "suspended (from the start of its history when it has no candle yet).",
        ("exchange", "symbol"),
        # One index probe per market (staging.candle's key is (market_id, open_time); the market's id is a probe too).
        """
        SELECT c.exchange, c.symbol,
               extract(epoch FROM now() - coalesce(newest.open_time + interval '1 minute', c.history_start))
        FROM ops.market_config AS c
        LEFT JOIN ops.market_health AS h ON h.exchange = c.exchange AND h.symbol = c.symbol
        CROSS JOIN LATERAL (
            SELECT max(s.open_time) AS open_time FROM staging.candle AS s
            WHERE s.market_id = (SELECT m.market_id FROM staging.market AS m
                                 WHERE m.exchange = c.exchange AND m.symbol = c.symbol AND m.timeframe = '1m')
        ) AS newest
        WHERE c.timeframe = '1m' AND c.enabled AND c.history_end IS NULL
          AND coalesce(h.status, 'active') <> 'suspended'
        """,
    ),
    Family(
        "marketflow_markets",
        "Configured enabled markets by health status (active, failing, suspended).",
        ("exchange", "status"),
        """
        SELECT c.exchange, coalesce(h.status, 'active'), count(DISTINCT c.symbol)
        FROM ops.market_config AS c
        LEFT JOIN ops.market_health AS h ON h.exchange = c.exchange AND h.symbol = c.symbol
        WHERE c.enabled
        GROUP BY 1, 2
        """,
    ),
    Family(
        f"marketflow_candles_loaded_{WINDOW_MINUTES}m",
        f"Candles loaded into staging by market tasks that finished in the last {WINDOW_MINUTES} minutes.",
        ("exchange", "dag_id"),
        f"""
        SELECT exchange, dag_id, coalesce(sum(candles), 0) FROM ops.market_task_outcomes
        WHERE finished_at > now() - {W} AND outcome = 'success'
        GROUP BY 1, 2
        """,
    ),
    Family(
        f"marketflow_candles_rejected_{WINDOW_MINUTES}m",
        f"Rows written to staging.ohlcv_rejects in the last {WINDOW_MINUTES} minutes.",
        ("exchange",),
        f"SELECT exchange, count(*) FROM staging.ohlcv_rejects WHERE rejected_at > now() - {W} GROUP BY 1",
    ),
    Family(
        f"marketflow_api_calls_{WINDOW_MINUTES}m",
        f"Requests sent to the exchange (rate-limit acquisitions) in the last {WINDOW_MINUTES} minutes.",
        ("exchange",),
        f"SELECT exchange, sum(acquisitions) FROM ops.rate_limit_metrics WHERE minute > now() - {W} GROUP BY 1",
    ),
    Family(
        f"marketflow_api_errors_{WINDOW_MINUTES}m",
        f"Exchange API errors by class in the last {WINDOW_MINUTES} minutes (ops.api_errors).",
        ("exchange", "error_class"),
        f"SELECT exchange, error_class, count(*) FROM ops.api_errors WHERE occurred_at > now() - {W} GROUP BY 1, 2",
    ),
    Family(
        f"marketflow_rate_limit_tokens_used_{WINDOW_MINUTES}m",
        f"Request weight taken from the exchange's shared budget in the last {WINDOW_MINUTES} minutes.",
        ("exchange",),
        f"SELECT exchange, sum(tokens_used) FROM ops.rate_limit_metrics WHERE minute > now() - {W} GROUP BY 1",
    ),
    Family(
        f"marketflow_rate_limit_wait_seconds_{WINDOW_MINUTES}m",
        f"Seconds callers waited for the shared budget in the last {WINDOW_MINUTES} minutes.",
        ("exchange",),
        f"SELECT exchange, sum(wait_seconds) FROM ops.rate_limit_metrics WHERE minute > now() - {W} GROUP BY 1",
    ),
    Family(
        f"marketflow_rate_limit_denied_{WINDOW_MINUTES}m",
        f"Times the shared budget was empty when a caller asked (each then waited), last {WINDOW_MINUTES} minutes.",
        ("exchange",),
        f"SELECT exchange, sum(denied) FROM ops.rate_limit_metrics WHERE minute > now() - {W} GROUP BY 1",
    ),
    Family(
        f"marketflow_http_responses_{WINDOW_MINUTES}m",
        f"Rate-limit answers from the exchange (429 too many requests, 418 banned), last {WINDOW_MINUTES} minutes.",
        ("exchange", "status"),
        f"""
        SELECT exchange, '429', sum(http_429) FROM ops.rate_limit_metrics WHERE minute > now() - {W} GROUP BY 1
        UNION ALL
        SELECT exchange, '418', sum(http_418) FROM ops.rate_limit_metrics WHERE minute > now() - {W} GROUP BY 1
        """,
    ),
    Family(
        "marketflow_rate_limit_paused_seconds",
        "Seconds until the exchange's shared budget resumes after a 429 Retry-After or a 418 ban (0 = not paused); "
        "status: the HTTP status that paused it; egress: the workers' egress identity (MARKETFLOW_EGRESS_ID).",
        ("exchange", "status", "egress"),
        # The status, not the reason text: the reason names the request, a label value per request.
        """
        SELECT exchange, coalesce(substring(pause_reason FROM 'HTTP ([0-9]+)'), ''), egress_id,
               greatest(extract(epoch FROM coalesce(paused_until, now()) - clock_timestamp()), 0)
        FROM ops.rate_limit_buckets
        """,
    ),
    Family(
        "marketflow_open_gaps",
        "Gaps in the 1m candles still missing, by status (open, repair_scheduled, ...), from marts.data_quality_gaps.",
        ("exchange", "status"),
        "SELECT exchange, status, count(*) FROM marts.data_quality_gaps WHERE is_missing GROUP BY 1, 2",
    ),
    Family(
        "marketflow_open_gap_candles",
        "Candles missing in the gaps of marts.data_quality_gaps that are still missing, by status.",
        ("exchange", "status"),
        "SELECT exchange, status, sum(missing_candles) FROM marts.data_quality_gaps WHERE is_missing GROUP BY 1, 2",
    ),
)

# dbt's store_failures tables: one per data test, rebuilt by every run of the test, empty when it passes.
DBT_FAILURES_SCHEMA = "dbt_test__audit"

AIRFLOW_LAST_SUCCESS = Family(
    "marketflow_dag_last_success_age_seconds",
    "Seconds since the end of the newest successful run of each marketflow DAG (Airflow's dag_run).",
    ("dag_id",),
    """
    SELECT dag_id, extract(epoch FROM now() - max(end_date)) FROM dag_run
    WHERE state = 'success' AND dag_id IN ('market_candles_1m', 'market_candles_1h', 'market_maintenance',
                                           'market_backfill')
    GROUP BY 1
    """,
)


class PipelineCollector(Collector):
    """Collects the families above at every scrape, each from its own query.

    ``warehouse`` opens a connection to the warehouse (a role that can read ops, staging and marts);
    ``airflow`` optionally one to Airflow's metadata database, for the age of the last successful run.
    """

    def __init__(self, warehouse: Connect, airflow: Connect | None = None) -> None:
        self.warehouse = warehouse
        self.airflow = airflow

    def describe(self) -> Iterable[Metric]:
        # Registering must not query the database; an empty description keeps the registry from
        # calling collect() at registration.
        return []

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        errors = GaugeMetricFamily("marketflow_metrics_query_errors",
                                   "1 when the query behind a metric family failed at this scrape (see the log).",
                                   labels=["family"])
        yield from self._from(self.warehouse, WAREHOUSE_FAMILIES, errors, dbt_failures=True)
        if self.airflow is not None:
            yield from self._from(self.airflow, (AIRFLOW_LAST_SUCCESS,), errors)
        yield errors
        took = GaugeMetricFamily("marketflow_metrics_collect_seconds", "Seconds this scrape's queries took.")
        took.add_metric([], time.monotonic() - started)
        yield took

    def _from(self, connect: Connect, families: tuple[Family, ...], errors: GaugeMetricFamily, *,
              dbt_failures: bool = False) -> Iterator[Metric]:
        try:
            conn = connect()
        except Exception as exc:  # the endpoint must answer even with the database down
            log.warning("metrics: cannot connect for %s: %s", ", ".join(f.name for f in families), exc,
                        error=type(exc).__name__)
            for family in families:
                errors.add_metric([family.name], 1)
            return
        with closing(conn):
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
            for family in families:
                rows = self._rows(conn, family.name, family.sql)
                if rows is None:
                    errors.add_metric([family.name], 1)
                    continue
                metric = GaugeMetricFamily(family.name, family.help, labels=list(family.labels))
                for *labels, value in rows:
                    metric.add_metric([str(label) for label in labels], float(value or 0))
                yield metric
            if dbt_failures:
                metric = self._dbt_failures(conn)
                if metric is None:
                    errors.add_metric(["marketflow_dbt_test_failing_rows"], 1)
                else:
                    yield metric

    @staticmethod
    def _rows(conn: Any, name: str, sql: str, params: tuple[Any, ...] | None = None
              ) -> list[tuple[Any, ...]] | None:
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        except Exception as exc:
            log.warning("metrics: the query of %s failed: %s", name, str(exc).strip(), metric=name,
                        error=type(exc).__name__)
            return None

    def _dbt_failures(self, conn: Any) -> GaugeMetricFamily | None:
        tables = self._rows(conn, "dbt tests", "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1",
                            (DBT_FAILURES_SCHEMA,))
        if tables is None:
            return None
        metric = GaugeMetricFamily("marketflow_dbt_test_failing_rows",
                                   "Rows the latest run of each stored dbt data test found failing (0 = passing).",
                                   labels=["test"])
        if not tables:
            return metric
        # One statement for all tests: count(*) of each table (they hold failing rows only, so small).
        schema = _ident(DBT_FAILURES_SCHEMA)
        union = " UNION ALL ".join(f"SELECT {_literal(name)}, count(*) FROM {schema}.{_ident(name)}"
                                   for (name,) in tables)
        rows = self._rows(conn, "marketflow_dbt_test_failing_rows", union)
        if rows is None:
            return None
        for name, count in rows:
            metric.add_metric([name], float(count))
        return metric


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def pipeline_registry(warehouse: Connect, airflow: Connect | None = None) -> CollectorRegistry:
    """A registry holding only the pipeline's metrics (no process metrics of whichever server serves it)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(warehouse, airflow))
    return registry
