"""The warehouse schema the pipeline owns (staging, ops, the analyst role), migrated with Alembic.

``upgrade`` brings a database to the newest revision (plugins/marketflow/migrations/), ``downgrade``
back to an older one, ``current`` says where it is. The SQL lives in include/sql/; each revision
applies its own released files (README, "Upgrades"). Storage preparation calls ``apply_ddl`` on
every run: already at head, that costs two catalog reads and no lock.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from marketflow.logs import get_logger
from marketflow.migrations import (
    LOCK_KEY,
    MIGRATIONS_DIR,
    REAPPLIED_EACH_PREPARE,
    SQL_DIR,
    VERSION_SCHEMA,
    VERSION_TABLE,
    MigrationError,
    head_revision,
    read_released_sql,
    revision_files,
)

__all__ = ["SQL_DIR", "MigrationError", "apply_ddl", "current", "ddl_files", "ddl_is_current", "downgrade", "head",
           "upgrade"]

log = get_logger(__name__)


def head() -> str:
    """The newest revision this release knows."""
    return head_revision()


def ddl_files(sql_dir: Path = SQL_DIR) -> list[Path]:
    """The include/sql files (every one belongs to exactly one revision)."""
    files = sorted(sql_dir.glob("*.sql"))
    if not files:
        raise FileNotFoundError(f"no DDL files in {sql_dir}; set MARKETFLOW_SQL_DIR to the include/sql directory")
    return files


def _is_connection(dsn_or_conn: Any) -> bool:
    return not isinstance(dsn_or_conn, str)


def _driver(conn: Any) -> str:
    module = type(conn).__module__
    if module.startswith("psycopg2"):
        return "psycopg2"
    if module.startswith("psycopg"):
        return "psycopg"
    raise TypeError(f"expected a DSN or a psycopg2 / psycopg connection, got {type(conn).__name__}")


@contextmanager
def _dbapi(dsn_or_conn: Any) -> Iterator[Any]:
    """The caller's connection as it is, or a psycopg2 connection to the DSN, closed afterwards."""
    if _is_connection(dsn_or_conn):
        yield dsn_or_conn
        return
    import psycopg2

    conn = psycopg2.connect(dsn_or_conn)
    try:
        yield conn
    finally:
        conn.close()


def _version(conn: Any) -> tuple[str, ...]:
    """The revisions in the version table (none for a new database or one from before migrations).
    Two catalog reads; the connection is left as it was found (idle)."""
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT to_regclass('{VERSION_SCHEMA}.{VERSION_TABLE}') IS NOT NULL")
            if not cur.fetchone()[0]:
                return ()
            cur.execute(f"SELECT version_num FROM {VERSION_SCHEMA}.{VERSION_TABLE} ORDER BY 1")
            return tuple(row[0] for row in cur.fetchall())
    finally:
        conn.rollback()


def current(dsn_or_conn: Any) -> str | None:
    """The revision the warehouse is at: None before the first upgrade (a new database, or one
    prepared by the release before migrations, which the next upgrade adopts)."""
    with _dbapi(dsn_or_conn) as conn:
        versions = _version(conn)
    return versions[0] if versions else None


def _run_alembic(conn: Any, command_name: str, revision: str) -> list[str]:
    """Run an Alembic command on ``conn`` (migrations/env.py: one transaction under the advisory
    lock). Returns the revisions applied or undone, in order."""
    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config

    steps: list[str] = []

    def record(*, ctx: Any, step: Any, heads: Any, run_args: Any) -> None:
        steps.append(step.up_revision_id if step.is_upgrade else "-" + step.up_revision_id)

    autocommit = conn.autocommit
    conn.autocommit = False  # the lock and the revisions must share one transaction
    # SQLAlchemy drives the caller's connection (psycopg2: it registers uuid values as uuid.UUID on
    # it; the warehouse has no uuid column). The engine is never disposed: that would close it.
    driver = _driver(conn)
    hstore = {"use_native_hstore": False} if driver == "psycopg2" else {}
    engine = sa.create_engine(f"postgresql+{driver}://", creator=lambda: conn, poolclass=sa.pool.StaticPool,
                              **hstore)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["on_version_apply"] = [record]
    try:
        with engine.connect() as sa_conn:
            config.attributes["connection"] = sa_conn
            getattr(command, command_name)(config, revision)
    finally:
        conn.rollback()
        conn.autocommit = autocommit
    if config.attributes.get("adopted_legacy"):
        log.info("Adopted a database prepared by the checksum applier of the release before migrations: "
                 "its include/sql checksums match the baseline, stamped at revision 0001")
    return steps


def upgrade(dsn_or_conn: Any, revision: str = "head") -> list[str]:
    """Migrate the warehouse schema (staging, ops, roles) up to ``revision`` (default: the newest).

    ``dsn_or_conn``: a libpq DSN / URL, or an open psycopg2 (or psycopg 3) connection with no
    transaction in progress; it stays open and is left idle.

    At head already, this is two catalog reads and returns at once (every storage preparation calls
    it). Otherwise the revisions run in one transaction under a Postgres advisory lock, so two task
    processes preparing storage at once never both migrate: the second waits and finds nothing to do.
    A database prepared by the checksum applier of the release before migrations is adopted at the
    baseline revision (after checking its recorded checksums), then upgraded. A database at a
    revision this release does not know (a newer release upgraded it) raises MigrationError naming it.

    Returns the revisions applied, oldest first (empty when there was nothing to do).
    """
    with _dbapi(dsn_or_conn) as conn:
        started = time.monotonic()
        at = _version(conn)
        if revision == "head" and at == (head(),):
            log.debug("Warehouse schema at head %s (checked in %.1f ms)", at[0], (time.monotonic() - started) * 1000)
            return []
        applied = _run_alembic(conn, "upgrade", revision)
    if applied:
        log.info("Warehouse schema upgraded from %s to %s: applied %s", at[0] if at else "nothing",
                 applied[-1], ", ".join(applied))
    else:
        log.info("Warehouse schema already at %s", revision)
    return applied


def downgrade(dsn_or_conn: Any, revision: str) -> list[str]:
    """Migrate the warehouse schema down to ``revision`` (an id, ``-1`` for one step, or ``base`` for
    nothing at all: that drops staging, ops and marts with their data). Same connection rules and
    lock as ``upgrade``. Returns the revisions undone, newest first, each prefixed with '-'."""
    with _dbapi(dsn_or_conn) as conn:
        undone = _run_alembic(conn, "downgrade", revision)
    log.info("Warehouse schema downgraded to %s: undid %s", revision, ", ".join(undone) or "nothing")
    return undone


def ddl_is_current(conn: Any) -> bool:
    """True when the warehouse is at the newest revision: two catalog reads, so the minute path can
    check it every run instead of preparing storage."""
    return _version(conn) == (head(),)


def reapply_idempotent_files(conn: Any) -> None:
    """Re-run the released files that reconcile state outside the schema (REAPPLIED_EACH_PREPARE:
    UTC for analyst members added since, the pipeline role's jit default, SELECT on mart tables),
    under the migrations' advisory lock."""
    files = {s.revision: s.sql_files for s in revision_files()}
    checksums = {name: sums[name] for sums in files.values() for name in sums}
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT pg_advisory_xact_lock({LOCK_KEY})")
            for name in REAPPLIED_EACH_PREPARE:
                cur.execute(read_released_sql(name, checksums[name]))
        conn.commit()
    except BaseException:
        conn.rollback()
        raise


def apply_ddl(conn: Any) -> list[str]:
    """Storage preparation's schema step: ``upgrade`` to head, then ``reapply_idempotent_files``.
    Returns the revisions applied (empty when the database was at head)."""
    applied = upgrade(conn)
    reapply_idempotent_files(conn)
    return applied
