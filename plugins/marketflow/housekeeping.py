"""Housekeeping: prune what grows with every run, in short batches, and say in the log how far it got.

Run daily by the ``market_maintenance`` DAG, with the retentions of the markets file's
``housekeeping:`` section (config.HousekeepingConfig):

* **ops tables** (``ops_retention_days``): ``ops.api_errors``, ``ops.alerts``,
  ``ops.rate_limit_metrics``; ``ops.market_lists`` rows not refreshed for that long (an exchange or
  API address no longer used: live lists are refreshed hourly); ``ops.backfill_tasks`` rows of
  completed repairs (outcome ``repaired``). Rows of windows confirmed empty at the source, and failed
  or pending ones, stay: ``marts.data_quality_gaps`` derives a gap's status from them, and without
  its row a window confirmed empty would be re-fetched all over again. State tables (market_health,
  market_config, rate_limit_buckets) hold one row per thing, not history.
* **rejects** (``staging.ohlcv_rejects``): after ``rejects_body_retention_days`` a body over
  BODY_PRUNE_ABOVE bytes (a whole payload can be 1 MB) is cut to its first BODY_KEEP_CHARS characters
  plus a note of its size; the row, its reason and identity stay until ``rejects_retention_days``.
  The raw payload behind it in MongoDB expires after ``raw_retention_days`` (its TTL index), so
  with the defaults (30 and 30) the full body is gone from both at about the same time.
* **monthly partitions** (``retention: ohlcv_1m_months``): the 1m layers are partitioned by month of
  open_time (include/sql/120_month_partitions.sql). ``ensure_month_partitions`` creates this month's
  and the next month's partition of each ahead of need and moves rows that landed in a DEFAULT
  partition into their month's; ``drop_expired_partitions`` drops whole months of marts.candles_1m (the
  1m candles with their indicators; marts.ohlcv_1m and indicators_1m are views of it) before the
  retention (never a DELETE), after recording the floor in
  ops.partition_retention so dbt does not re-create them. Rollups and staging.candle keep everything.
* **Airflow's metadata** (``airflow_metadata_retention_days``): ``airflow db clean`` on the tables
  of AIRFLOW_TABLES, in batches, without archive tables. It keeps each DAG's latest scheduled run
  (so the schedule continues; manual runs are not kept), and never touches the ``dag`` and
  ``dag_version`` tables.

Each batch is one short transaction: at most ``batch_size`` rows, chosen with FOR UPDATE SKIP LOCKED
(rows another session holds are left for the next run), committed before the next batch. A backlog
of millions of rows never becomes one long transaction holding locks, a run that dies keeps what it
committed, and a second run over the same cut deletes nothing more.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from psycopg2 import sql

from marketflow.config import HousekeepingConfig, RetentionConfig
from marketflow.logs import get_logger

log = get_logger(__name__)

# Airflow 3 blocks task processes from the metadata database (their sql_alchemy_conn is replaced by
# "airflow-db-not-allowed:///"), so `airflow db clean` run from a task would fail. The deployment
# grants the maintenance DAG that access explicitly, through this connection.
AIRFLOW_DB_CONN_ID = "marketflow_airflow_db"

# Tables `airflow db clean` may prune here (Airflow 3.3 knows more: see `airflow db clean --help`).
# Rows of dag_run's dependants (task_instance, task_state_store, deadline) go with their runs.
# Left out on purpose: dag and dag_version (DAG definitions), trigger (a deferred task may still wait
# on an old trigger; the triggerer removes unused ones), import_error (current parse errors),
# session and connection_test_request (not ours).
AIRFLOW_TABLES = ("dag_run", "task_instance", "task_instance_history", "task_reschedule", "xcom", "log", "job",
                  "asset_event", "callback", "deadline", "revoked_token", "celery_taskmeta", "celery_tasksetmeta")

BODY_PRUNE_ABOVE = 1024  # bytes: a single bad candle row is ~100 bytes, a whole payload up to 1 MB
BODY_KEEP_CHARS = 200
# Each batch is a short statement; these turn a stuck one into a database error (and a retry)
# instead of a task that hangs until its execution_timeout.
STATEMENT_TIMEOUT_S = 300
LOCK_TIMEOUT_S = 30


@dataclass(frozen=True)
class PruneRule:
    """Rows of ``table`` whose ``time_column`` is older than the cut (and that match ``condition``)."""

    table: str  # schema.table
    key: tuple[str, ...]  # primary key: each batch deletes by it
    time_column: str
    condition: str = "true"  # trusted SQL from this module, never from config
    scan_in_key_order: bool = True  # the key grows with time: the primary key index finds old rows first


OPS_RULES = (
    PruneRule("ops.api_errors", ("error_id",), "occurred_at"),
    PruneRule("ops.alerts", ("alert_id",), "raised_at"),
    PruneRule("ops.rate_limit_metrics", ("exchange", "minute"), "minute"),
    PruneRule("ops.market_lists", ("exchange", "api"), "loaded_at"),
    PruneRule("ops.backfill_tasks", ("task_id",), "updated_at", "status = 'completed' AND outcome = 'repaired'"),
    PruneRule("ops.market_task_outcomes", ("dag_id", "run_id", "task_id", "exchange", "symbol"), "finished_at",
              scan_in_key_order=False),
)
# Ticker snapshots (one per live market and minute) after ticker_retention_days, except each market's
# latest: marts.latest_price shows it however old it is (with its staleness).
TICKER_RULE = PruneRule("staging.ticker", ("exchange", "symbol", "ts"), "ingested_at",
                        "ts < (SELECT max(l.ts) FROM staging.ticker AS l "
                        "WHERE l.exchange = ticker.exchange AND l.symbol = ticker.symbol)",
                        scan_in_key_order=False)
REJECTS_RULE = PruneRule("staging.ohlcv_rejects", ("raw_payload_id", "row_index"), "rejected_at",
                         scan_in_key_order=False)


@dataclass
class Pruned:
    """What one table's pruning did."""

    table: str
    action: str  # "deleted", or what was done to a column
    cut: datetime
    rows: int = 0
    batches: int = 0
    bytes_freed: int = 0
    seconds: float = 0.0

    def words(self) -> str:
        if not self.rows:
            return f"{self.table}: nothing older than {_when(self.cut)}"
        freed = f", {self.bytes_freed / 1e6:,.1f} MB of bodies freed" if self.bytes_freed else ""
        return (f"{self.table}: {self.action} {self.rows:,} rows older than {_when(self.cut)} in "
                f"{self.batches} batches ({self.seconds:.1f} s{freed})")


def _when(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%d %H:%M UTC")


def _bound_transaction(cur) -> None:
    """The housekeeping timeouts for the current transaction only (SET LOCAL): a session SET would,
    behind a transaction pooler (PgBouncer), land on one server connection and miss the next batch."""
    cur.execute(f"SET LOCAL statement_timeout = '{STATEMENT_TIMEOUT_S}s'; SET LOCAL lock_timeout = '{LOCK_TIMEOUT_S}s'")


def _batches(conn, pruned: Pruned, statement: sql.Composable, params: dict[str, Any], batch_size: int
             ) -> Pruned:
    """Run ``statement`` (it returns count, oldest, newest, bytes of one batch) until a batch is short."""
    started = time.monotonic()
    while True:
        with conn.cursor() as cur:
            _bound_transaction(cur)
            cur.execute(statement, {**params, "cut": pruned.cut, "limit": batch_size})
            count, oldest, newest, freed = cur.fetchone()
        conn.commit()  # each batch on its own: nothing long-running holds locks or bloats one transaction
        if count:
            pruned.rows += count
            pruned.batches += 1
            pruned.bytes_freed += int(freed or 0)
            log.info("%s: %s %s rows older than %s (batch %d: %s to %s; %s so far)", pruned.table, pruned.action,
                     f"{count:,}", _when(pruned.cut), pruned.batches, _when(oldest), _when(newest),
                     f"{pruned.rows:,}", table=pruned.table, rows=count, batch=pruned.batches)
        if count < batch_size:
            break
    pruned.seconds = time.monotonic() - started
    log.info("%s", pruned.words(), table=pruned.table, rows=pruned.rows, batches=pruned.batches,
             seconds=round(pruned.seconds, 3))
    return pruned


def _selection(rule: PruneRule, extra: str = "", columns: Sequence[str] = ()) -> sql.Composable:
    """SELECT a batch of keys to prune, locked, skipping rows another session holds."""
    return sql.SQL(
        "SELECT {cols} FROM {table} WHERE {time} < %(cut)s AND ({condition}){extra} {order} "
        "LIMIT %(limit)s FOR UPDATE SKIP LOCKED"
    ).format(
        cols=sql.SQL(", ").join([*map(sql.Identifier, rule.key), *map(sql.SQL, columns)]),
        table=sql.SQL(rule.table), time=sql.Identifier(rule.time_column), condition=sql.SQL(rule.condition),
        extra=sql.SQL(extra),
        order=sql.SQL("ORDER BY {}").format(sql.SQL(", ").join(map(sql.Identifier, rule.key)))
        if rule.scan_in_key_order else sql.SQL(""),
    )


def _key_match(rule: PruneRule, left: str, right: str) -> sql.Composable:
    return sql.SQL(" AND ").join(sql.SQL("{}.{} = {}.{}").format(sql.Identifier(left), sql.Identifier(k),
                                                                  sql.Identifier(right), sql.Identifier(k))
                                 for k in rule.key)


def prune_rule(conn, rule: PruneRule, cut: datetime, batch_size: int) -> Pruned:
    """Delete ``rule``'s rows older than ``cut``, ``batch_size`` rows per committed transaction."""
    statement = sql.SQL(
        "WITH batch AS ({select}), gone AS (DELETE FROM {table} AS t USING batch AS b WHERE {match} "
        "RETURNING t.{time} AS at) SELECT count(*), min(at), max(at), 0 FROM gone"
    ).format(select=_selection(rule), table=sql.SQL(rule.table), match=_key_match(rule, "t", "b"),
             time=sql.Identifier(rule.time_column))
    return _batches(conn, Pruned(rule.table, "deleted", cut), statement, {}, batch_size)


def cut_reject_bodies(conn, cut: datetime, batch_size: int) -> Pruned:
    """Cut the bodies of rejects older than ``cut`` to their first characters and a note of their size.
    Idempotent: a cut body is shorter than BODY_PRUNE_ABOVE, so it is never selected again."""
    rule = REJECTS_RULE
    statement = sql.SQL(
        "WITH batch AS ({select}), cut AS ("
        " UPDATE {table} AS t SET raw_row = left(t.raw_row, %(keep)s)"
        "   || format(' … [%%s bytes received; only the first %%s characters are kept]', b.bytes, %(keep)s)"
        " FROM batch AS b WHERE {match} RETURNING t.{time} AS at, b.bytes)"
        " SELECT count(*), min(at), max(at), coalesce(sum(bytes), 0) FROM cut"
    ).format(select=_selection(rule, " AND octet_length(raw_row) > %(above)s", ["octet_length(raw_row) AS bytes"]),
             table=sql.SQL(rule.table), match=_key_match(rule, "t", "b"), time=sql.Identifier(rule.time_column))
    return _batches(conn, Pruned(f"{rule.table}.raw_row", f"cut to its first {BODY_KEEP_CHARS} characters in",
                                 cut), statement,
                    {"keep": BODY_KEEP_CHARS, "above": BODY_PRUNE_ABOVE}, batch_size)


def prune_ops(conn, config: HousekeepingConfig, now: datetime) -> list[Pruned]:
    """Every ops table's rows older than ``ops_retention_days`` before ``now``, and ticker snapshots
    older than ``ticker_retention_days`` (each market's latest stays)."""
    cut = now - timedelta(days=config.ops_retention_days)
    pruned = [prune_rule(conn, rule, cut, config.batch_size) for rule in OPS_RULES]
    return [*pruned, prune_rule(conn, TICKER_RULE, now - timedelta(days=config.ticker_retention_days),
                                config.batch_size)]


def prune_rejects(conn, config: HousekeepingConfig, now: datetime) -> list[Pruned]:
    """Reject rows after ``rejects_retention_days``, then the bodies of the rest after
    ``rejects_body_retention_days`` (rows first: no body is cut only to be deleted)."""
    return [
        prune_rule(conn, REJECTS_RULE, now - timedelta(days=config.rejects_retention_days), config.batch_size),
        cut_reject_bodies(conn, now - timedelta(days=config.rejects_body_retention_days), config.batch_size),
    ]


# --------------------------------------------------------------------------------------------------
# Monthly partitions of the 1m layers
# --------------------------------------------------------------------------------------------------
# Every table partitioned by month (staging's by the migrations, the marts by dbt's materialization,
# macros/month_partitions.sql); the marts are absent until dbt first builds them. marts.candles_1m holds
# the 1m candles and their indicators; marts.ohlcv_1m and marts.indicators_1m are views of it since
# revision 0012 (docs/storage.md, stage 4): their months are candles_1m's.
# staging.candle holds staging's candles (staging.ohlcv is a view of it since revision 0010).
MONTH_PARTITIONED = ("staging.candle", "marts.candles_1m")
# What `retention: ohlcv_1m_months` drops: the 1m marts. Not staging.candle: the gap marts and repairs
# read it over each market's whole configured history, and would report dropped months as gaps to re-fetch.
RETAINED_BY_MONTHS = ("marts.candles_1m",)


@dataclass
class DroppedPartition:
    table: str
    partition: str
    month: str  # YYYY-MM
    rows: int  # exact count, read before the drop


def _month_start(ts: datetime, months_back: int = 0) -> datetime:
    index = ts.year * 12 + ts.month - 1 - months_back
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=ts.tzinfo)


def retention_floor(now: datetime, months: int) -> datetime:
    """The first instant kept by a retention of ``months``: the start of the month ``months - 1`` months
    before ``now``'s (24 months on 2026-12-04 keep 2025-01-01 onwards)."""
    return _month_start(now.astimezone(UTC), months - 1)


def _partitioned(cur, table: str) -> bool:
    cur.execute("SELECT c.relkind = 'p' FROM pg_class AS c WHERE c.oid = to_regclass(%s)", (table,))
    row = cur.fetchone()
    return bool(row and row[0])


def ensure_month_partitions(conn, now: datetime, tables: Sequence[str] = MONTH_PARTITIONED,
                            span: tuple[datetime, datetime] | None = None) -> dict[str, int]:
    """This month's and next month's partition of every monthly-partitioned table, and a partition for
    every month with rows in its DEFAULT partition (moved there). With ``span`` (start, exclusive end:
    a backfill's window), its months too, before the backfill writes: its rows then go straight to
    their month instead of into the DEFAULT partition, which the next storage preparation would have
    had to move row by row (40 s after a day of 1,000 markets, bench figure 11). One short transaction
    per table (the DDL locks the table for a moment); idempotent, concurrent callers serialise per table."""
    from psycopg2 import errors

    created: dict[str, int] = {}
    for table in tables:
        try:
            with conn.cursor() as cur:
                cur.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_S}s'")
                if not _partitioned(cur, table):
                    conn.rollback()
                    continue
                cur.execute("SELECT ops.split_default_partition(%s::regclass), "
                            "ops.ensure_month_partitions(%s::regclass, %s, %s)",
                            (table, table, _month_start(now), _month_start(now, -1)))
                moved, ahead = cur.fetchone()
                if span is not None and span[1] > span[0]:
                    cur.execute("SELECT ops.ensure_month_partitions(%s::regclass, %s, %s)",
                                (table, span[0], span[1] - timedelta(microseconds=1)))
                    ahead += cur.fetchone()[0]
            conn.commit()
        except errors.LockNotAvailable:
            # a long query holds the table: loads still work (the default partition takes the rows), the
            # next storage preparation (hourly) or maintenance run tries again
            conn.rollback()
            log.warning("%s: month partitions not created: the table stayed locked for %ss by another session; "
                        "loads go on into its default partition, the next run retries", table, LOCK_TIMEOUT_S)
            continue
        created[table] = moved + ahead
        if moved or ahead:
            log.info("%s: %d month partitions created (%d for rows that had landed in the default partition)",
                     table, moved + ahead, moved)
    return created


def drop_expired_partitions(conn, retention: RetentionConfig, now: datetime) -> list[DroppedPartition]:
    """Whole months of the 1m marts before the retention floor, dropped partition by partition (each its
    own transaction). The floor is recorded first (ops.partition_retention): from then on dbt reads
    nothing older from staging, so no run re-creates a dropped month. Rows of old months still in a
    DEFAULT partition get their month's partition first, and go with it: nothing is DELETEd."""
    months = retention.ohlcv_1m_months
    if months is None:
        log.info("retention: ohlcv_1m_months is not set, the 1m marts keep every month")
        return []
    floor = retention_floor(now, months)
    dropped: list[DroppedPartition] = []
    for table in RETAINED_BY_MONTHS:
        with conn.cursor() as cur:
            cur.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_S}s'")
            if not _partitioned(cur, table):
                conn.rollback()
                log.info("retention: %s is not there (or not partitioned) yet; nothing to drop", table)
                continue
            cur.execute("INSERT INTO ops.partition_retention (relation, keep_from) VALUES (%s, %s) "
                        "ON CONFLICT (relation) DO UPDATE SET keep_from = excluded.keep_from, applied_at = now()",
                        (table, floor))
            cur.execute("SELECT ops.split_default_partition(%s::regclass)", (table,))
            cur.execute("SELECT partition::text, to_char(from_time AT TIME ZONE 'UTC', 'YYYY-MM') "
                        "FROM ops.month_partitions(%s::regclass) WHERE to_time <= %s ORDER BY from_time",
                        (table, floor))
            expired = cur.fetchall()
        conn.commit()
        for partition, month in expired:
            with conn.cursor() as cur:
                cur.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_S}s'")
                cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.SQL(partition)))
                rows = cur.fetchone()[0]
                cur.execute(sql.SQL("DROP TABLE {}").format(sql.SQL(partition)))
            conn.commit()
            dropped.append(DroppedPartition(table, partition, month, rows))
            log.info("retention: %s: dropped %s (%s, %s rows; keeping %s months from %s on)", table, partition,
                     month, f"{rows:,}", months, _when(floor), table=table, partition=partition, rows=rows)
        if not expired:
            log.info("retention: %s: no month before %s", table, _when(floor))
    return dropped


# --------------------------------------------------------------------------------------------------
# Airflow's metadata: `airflow db clean`
# --------------------------------------------------------------------------------------------------
_SQLALCHEMY_SCHEMES = {"postgres": "postgresql+psycopg2", "postgresql": "postgresql+psycopg2",
                       "mysql": "mysql+mysqldb"}


class HousekeepingError(RuntimeError):
    pass


def airflow_db_url(conn_type: str, host: str | None, port: int | None, login: str | None, password: str | None,
                   schema: str | None) -> str:
    """The SQLAlchemy URL `airflow db clean` needs, from the parts of the metadata DB's Airflow connection."""
    scheme = _SQLALCHEMY_SCHEMES.get(conn_type)
    if scheme is None or not host or not schema:
        raise HousekeepingError(
            f"connection {AIRFLOW_DB_CONN_ID} must be a postgres or mysql connection with host and database "
            f"(got type {conn_type!r}, host {host!r}, database {schema!r}). Fix: e.g. "
            f"AIRFLOW_CONN_{AIRFLOW_DB_CONN_ID.upper()}=postgresql://airflow:<password>@postgres:5432/airflow")
    auth = f"{quote(login or '', safe='')}:{quote(password or '', safe='')}@" if login else ""
    return f"{scheme}://{auth}{host}{f':{port}' if port else ''}/{schema}"


def airflow_db_url_from_connection(conn_id: str = AIRFLOW_DB_CONN_ID) -> str:
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException as exc:
        raise HousekeepingError(
            f"Airflow connection {conn_id} is not defined ({exc}). Airflow 3 does not let task processes reach "
            f"its metadata database by themselves; give the maintenance DAG a connection to it. Fix: set "
            f"AIRFLOW_CONN_{conn_id.upper()}=postgresql://<user>:<password>@<host>:5432/<airflow database> "
            "(docker-compose.yaml and scripts/stack.py set it), or add it under Admin > Connections") from None
    return airflow_db_url(conn.conn_type, conn.host, conn.port, conn.login, conn.password, conn.schema)


_CHECKING = re.compile(r"^Checking table (\w+)")
_FOUND = re.compile(r"^Found (\d+) rows meeting deletion criteria")
_BATCH = re.compile(r"^Performing Delete \(batch (\d+), max (\d+) rows\)")


def clean_airflow_metadata(db_url: str, cut: datetime, batch_size: int, timeout_s: float,
                           tables: Iterable[str] = AIRFLOW_TABLES, airflow: Sequence[str] | None = None,
                           on_line: Callable[[str], None] | None = None) -> dict[str, int]:
    """Run `airflow db clean` on ``tables`` for rows older than ``cut``; returns rows found per table.

    In a subprocess, with the metadata DB's URL from ``db_url`` (the task's own sql_alchemy_conn is
    blocked by Airflow), ``--skip-archive`` (no copies left behind), ``--batch-size`` (one transaction
    per batch) and ``--error-on-cleanup-failure`` (a table it could not clean fails the task instead of
    a warning in a green run). Killed after ``timeout_s``.
    """
    command = [*(airflow or (sys.executable, "-m", "airflow")), "db", "clean",
               "--clean-before-timestamp", cut.isoformat(), "--tables", ",".join(tables),
               "--batch-size", str(batch_size), "--skip-archive", "--yes", "--error-on-cleanup-failure"]
    env = {k: v for k, v in os.environ.items()
           if not re.fullmatch(r"AIRFLOW__(DATABASE|CORE)__SQL_ALCHEMY_CONN(_CMD|_SECRET)?", k)}
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = db_url
    log.info("airflow db clean: rows older than %s in %s (batches of %s rows)", _when(cut), ", ".join(tables),
             f"{batch_size:,}")
    found: dict[str, int] = {}
    table, tail = None, []
    started = time.monotonic()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    timer = threading.Timer(timeout_s, _kill_group, (proc,))
    timer.start()
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            tail = [*tail[-39:], line]
            if on_line:
                on_line(line)
            if m := _CHECKING.match(line):
                table = m.group(1)
            elif (m := _FOUND.match(line)) and table:
                found[table] = int(m.group(1))
                log.info("airflow metadata: %s: %s rows older than %s%s", table, f"{found[table]:,}", _when(cut),
                         ", deleting" if found[table] else "")
            elif (m := _BATCH.match(line)) and table:
                log.info("airflow metadata: %s: deleting batch %s (at most %s rows)", table, m.group(1),
                         f"{int(m.group(2)):,}")
        code = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:  # the task itself timed out or was stopped: take the CLI with it
            _kill_group(proc)
            proc.wait()
    seconds = time.monotonic() - started
    if seconds >= timeout_s:
        raise HousekeepingError(f"airflow db clean did not finish within {timeout_s:.0f} s and was stopped; "
                                "what it committed stays deleted. Fix: a smaller batch_size, or run it again")
    if code != 0:
        output = "\n".join(tail)
        raise HousekeepingError(f"airflow db clean exited with code {code}; its last output:\n{output}")
    log.info("airflow metadata: %s rows older than %s deleted in %.1f s (%s; %d tables checked)",
             f"{sum(found.values()):,}", _when(cut), seconds,
             ", ".join(f"{t} {n:,}" for t, n in found.items() if n) or "nothing to delete", len(found))
    return found


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
