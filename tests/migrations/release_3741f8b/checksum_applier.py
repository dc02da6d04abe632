"""Apply the pipeline's DDL (include/sql/*.sql) idempotently.

Every file is written with IF NOT EXISTS, so re-applying is a no-op. A transaction-scoped
advisory lock keeps concurrent task attempts from racing on the catalog, and each file's
checksum is recorded in ops.schema_migrations so a changed file is visible.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from marketflow import PROJECT_ROOT

log = logging.getLogger(__name__)

SQL_DIR = Path(os.environ.get("MARKETFLOW_SQL_DIR", PROJECT_ROOT / "include" / "sql"))
_LOCK_KEY = 0x6D6B7466  # "mktf"


def ddl_files(sql_dir: Path = SQL_DIR) -> list[Path]:
    files = sorted(sql_dir.glob("*.sql"))
    if not files:
        raise FileNotFoundError(f"no DDL files in {sql_dir}; set MARKETFLOW_SQL_DIR to the include/sql directory")
    return files


def _checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def ddl_is_current(conn, sql_dir: Path = SQL_DIR) -> bool:
    """True when every DDL file was applied as it is now (ops.schema_migrations checksums): one
    SELECT, so the minute path can check it every run instead of re-running the DDL."""
    import psycopg2

    want = {path.name: _checksum(path.read_text()) for path in ddl_files(sql_dir)}
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT filename, checksum FROM ops.schema_migrations WHERE filename = ANY(%s)",
                        (list(want),))
            have = dict(cur.fetchall())
    except psycopg2.errors.UndefinedTable:
        have = {}
    conn.rollback()
    return have == want


def apply_ddl(conn, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply every DDL file in one transaction; returns the files whose checksum was new."""
    changed: list[str] = []
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        for path in ddl_files(sql_dir):
            text = path.read_text()
            cur.execute(text)
            checksum = _checksum(text)
            cur.execute(
                """
                INSERT INTO ops.schema_migrations (filename, checksum) VALUES (%s, %s)
                ON CONFLICT (filename) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now()
                WHERE ops.schema_migrations.checksum IS DISTINCT FROM EXCLUDED.checksum
                RETURNING filename
                """,
                (path.name, checksum),
            )
            if cur.fetchone():
                changed.append(path.name)
    conn.commit()
    if changed:
        log.info("Applied DDL; new or changed files: %s", ", ".join(changed))
    else:
        log.info("DDL already up to date (%d files)", len(ddl_files(sql_dir)))
    return changed
