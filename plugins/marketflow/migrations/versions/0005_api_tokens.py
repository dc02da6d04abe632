"""ops.api_tokens and the marketflow_api role: bearer tokens of the standalone market-data API.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

from marketflow.migrations import run_sql_files

revision = "0005"
down_revision = "0004"

SQL_FILES = {
    "130_api_tokens.sql": "acf2baa6498a3fbc3e2e958d40aa8756680224fb78a60804dc01da0395c4a55d",
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
