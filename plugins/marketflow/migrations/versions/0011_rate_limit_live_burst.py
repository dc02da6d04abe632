"""ops.rate_limit_buckets.live_until: the live path's burst, which history acquisitions wait out, so the
minute feed is served first in the seconds after a minute close (issue 16, backfills beside the feed).

Revision ID: 0011
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

from marketflow.migrations import run_sql_files

revision = "0011"
down_revision = "0010"

SQL_FILES = {
    "210_rate_limit_live_burst.sql": "fc7f66fa388b31633cce8b7e357a14995b97d8c4412fd114bb61e1392b929a3c",
}


def upgrade() -> None:
    run_sql_files(SQL_FILES)


def downgrade() -> None:
    # The older release has no live burst: history then takes tokens down to the live reserve at once.
    op.execute("ALTER TABLE ops.rate_limit_buckets DROP COLUMN IF EXISTS live_until")
