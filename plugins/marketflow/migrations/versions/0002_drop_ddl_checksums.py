"""Drop ops.schema_migrations, the checksum applier's bookkeeping: the Alembic revision replaces it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

from marketflow.migrations import run_sql_files

revision = "0002"
down_revision = "0001"

SQL_FILES = {
    "100_drop_ddl_checksums.sql": "b2017d35ebb2ee7f8f48ad2e26f83fd752643a0e051dcd5ec398dc8447a49c69",
}


def upgrade() -> None:
    run_sql_files(SQL_FILES)


def downgrade() -> None:
    # The table comes back empty: the release before migrations refills it on its first run.
    op.execute("""
        CREATE TABLE ops.schema_migrations (
            filename   text PRIMARY KEY,
            checksum   text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )
    """)
    op.execute("COMMENT ON SCHEMA ops IS "
               "'Pipeline bookkeeping (schema migrations, later: backfill tasks, rate-limit buckets).'")
