"""ops.backfill_tasks: outcome beyond_exchange_history (a window older than the exchange's history depth).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

from marketflow.migrations import run_sql_files

revision = "0003"
down_revision = "0002"

SQL_FILES = {
    "110_backfill_outcome_beyond_history.sql": "1b208b475383e8f3e6a5f7833b4d6aa08d16b7fddc98620ef3d36054f12e83b4",
}


def upgrade() -> None:
    run_sql_files(SQL_FILES)


def downgrade() -> None:
    # The older release knows no such outcome: its nearest is confirmed_empty (completed, never re-queued,
    # the gap not reported open), which keeps it from re-fetching windows the exchange no longer serves.
    op.execute("UPDATE ops.backfill_tasks SET outcome = 'confirmed_empty' WHERE outcome = 'beyond_exchange_history'")
    op.execute("ALTER TABLE ops.backfill_tasks DROP CONSTRAINT backfill_tasks_outcome")
    op.execute("ALTER TABLE ops.backfill_tasks ADD CONSTRAINT backfill_tasks_outcome "
               "CHECK (outcome IS NULL OR outcome IN ('repaired', 'confirmed_empty'))")
    op.execute("COMMENT ON TABLE ops.backfill_tasks IS 'Windows to re-fetch. pending -> running -> completed (outcome "
               "repaired | confirmed_empty) or back to pending; failed = gave up with an error.'")
