"""ops.api_tokens and the marketflow_api role: bearer tokens of the standalone market-data API.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

from marketflow.migrations import run_sql_files

revision = "0004"
down_revision = "0003"

SQL_FILES = {
    "120_api_tokens.sql": "35bced02104797289015aa931930684bd4d710db5f5be2cbdaca17072d804819",
}


def upgrade() -> None:
    run_sql_files(SQL_FILES)


def downgrade() -> None:
    # The tokens go with the table: an older release has no API to use them.
    op.execute("DROP FUNCTION IF EXISTS ops.api_token_owner(text)")
    op.execute("DROP TABLE IF EXISTS ops.api_tokens")
    op.execute("""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'marketflow_api') THEN
                REVOKE USAGE ON SCHEMA ops FROM marketflow_api;
            END IF;
        END
        $$
    """)
