"""ops.rate_limit_buckets keyed by exchange and egress identity (MARKETFLOW_EGRESS_ID): workers behind
one IP share a budget per exchange, workers behind two IPs have two (issue 18, Celery queues per exchange).

Revision ID: 0009
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

from marketflow.migrations import run_sql_files

revision = "0009"
# 0007 and 0008 (storage) are on another branch: this becomes "0008" when both are merged.
down_revision = "0006"

SQL_FILES = {
    "190_rate_limit_egress.sql": "43ebd9230c6278765c4bddb97980b436d43f2defc3dd9753e52c39282b34e129",
}


def upgrade() -> None:
    run_sql_files(SQL_FILES)


def downgrade() -> None:
    # The older release has one bucket per exchange: the other identities' buckets go (they hold only
    # pacing state, rebuilt by ensure_bucket on the next call).
    op.execute("DELETE FROM ops.rate_limit_buckets WHERE egress_id <> 'default'")
    op.execute("ALTER TABLE ops.rate_limit_buckets DROP CONSTRAINT rate_limit_buckets_pkey")
    op.execute("ALTER TABLE ops.rate_limit_buckets DROP COLUMN egress_id")
    op.execute("ALTER TABLE ops.rate_limit_buckets ADD CONSTRAINT rate_limit_buckets_pkey PRIMARY KEY (exchange)")
    op.execute("COMMENT ON TABLE ops.rate_limit_buckets IS 'Shared request budget per exchange; paused_until is set "
               "by 429 Retry-After and 418 bans.'")
