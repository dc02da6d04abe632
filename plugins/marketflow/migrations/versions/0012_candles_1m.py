"""The 1m candles are stored in marts.candles_1m (keyed by staging's market_id; marts.ohlcv_1m and
marts.indicators_1m become views of it, issue 16 item 4, docs/storage.md stage 4): the retention floor
recorded for marts.ohlcv_1m now belongs to marts.candles_1m.

dbt owns the tables: the next `dbt build` creates marts.candles_1m (partitioned by month, from staging,
from the recorded floor on, so months retention dropped stay dropped) and replaces the table
marts.ohlcv_1m by the view. Nothing else here touches them.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"

SQL_FILES: dict[str, str] = {}  # a row of ops.partition_retention changes name, and the table's comment

COMMENT = ("COMMENT ON TABLE ops.partition_retention IS 'Retention of the monthly-partitioned 1m layers{}: "
           "partitions before keep_from were dropped (market_maintenance).'")


def _move(old: str, new: str) -> None:
    # the floor follows the table whose months retention drops; a floor already recorded under the new
    # name (the maintenance DAG ran in between) is the later one: keep the later of the two
    op.execute(f"""
        INSERT INTO ops.partition_retention (relation, keep_from, applied_at)
        SELECT '{new}', keep_from, applied_at FROM ops.partition_retention WHERE relation = '{old}'
        ON CONFLICT (relation) DO UPDATE
            SET keep_from = greatest(ops.partition_retention.keep_from, excluded.keep_from),
                applied_at = greatest(ops.partition_retention.applied_at, excluded.applied_at)
    """)
    op.execute(f"DELETE FROM ops.partition_retention WHERE relation = '{old}'")


def upgrade() -> None:
    _move("marts.ohlcv_1m", "marts.candles_1m")
    op.execute(COMMENT.format(" (marts.candles_1m, the stored 1m candles; marts.ohlcv_1m is a view of it)"))


def downgrade() -> None:
    # The release before stores the 1m candles in the table marts.ohlcv_1m again (its dbt rebuilds it
    # from staging, from this floor on); marts.candles_1m is left to be dropped by hand.
    _move("marts.candles_1m", "marts.ohlcv_1m")
    op.execute(COMMENT.format(""))
