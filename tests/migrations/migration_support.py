"""Helpers of the migration tests (tests/migrations/conftest.py holds the fixtures)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import psycopg2

RELEASE_DIR = Path(__file__).resolve().parent / "release_3741f8b"
RELEASE_SQL_DIR = RELEASE_DIR / "sql"

# What pg_dump prints that is not the schema: comments with OIDs and timestamps, session settings,
# psql's per-dump \restrict key.
_NOISE = re.compile(r"^(--.*|SET .*|SELECT pg_catalog\.set_config.*|\\(un)?restrict .*|)$")


def schema_statements(pg_dump: str, dsn: str) -> list[str]:
    """pg_dump --schema-only of a database, one entry per statement, minus the noise: every schema,
    table, column, type, default, constraint, index, comment, owner and grant of the database."""
    out = subprocess.run([pg_dump, "--schema-only", "--no-tablespaces", "-d", dsn],
                         check=True, capture_output=True, text=True).stdout
    text = "\n".join(line for line in out.splitlines() if not _NOISE.match(line))
    return [statement.strip().rstrip(";") for statement in text.split(";\n") if statement.strip()]


def query(dsn: str, sql: str) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            rows = cur.fetchall() if cur.description else []
        conn.commit()
        return rows
    finally:
        conn.close()
