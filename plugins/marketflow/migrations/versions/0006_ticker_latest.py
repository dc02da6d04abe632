"""staging.ticker_latest: each market's newest ticker snapshot, kept by triggers on staging.ticker.

marts.latest_price reads it (one row per market) instead of probing staging.ticker per market.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

from marketflow.migrations import run_sql_files

revision = "0006"
down_revision = "0005"

SQL_FILES = {
    "140_ticker_latest.sql": "af9d60bd813c89e2889e4fc4ae116e02ca3b8ea931c07a6050dac8284a5b8620",
}


def upgrade() -> None:
    run_sql_files(SQL_FILES)


def downgrade() -> None:
    # Derived data only (staging.ticker keeps every snapshot): the older release probes staging.ticker.
    op.execute("DROP TRIGGER IF EXISTS ticker_latest_on_insert ON staging.ticker")
    op.execute("DROP TRIGGER IF EXISTS ticker_latest_on_update ON staging.ticker")
    op.execute("DROP FUNCTION IF EXISTS staging.ticker_latest_upsert()")
    op.execute("DROP TABLE IF EXISTS staging.ticker_latest")
