"""Monthly partitions of the 1m layers: staging.ohlcv, and marts.ohlcv_1m / marts.indicators_1m when present.

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
    "120_month_partitions.sql": "3eabb43f005aee2ee0a4d265b1602f0ffca11f9ffde8a56aa050de33e4cf4ce8",
}

# dbt owns these marts and creates them partitioned (dbt/macros/month_partitions.sql); an install whose
# dbt built them before this revision has them as plain tables, converted here with every row, so the
# next dbt run continues incrementally instead of needing a full rebuild.
DBT_MARTS = ("marts.ohlcv_1m", "marts.indicators_1m")


def _convert(table: str, partitioned: bool) -> None:
    op.execute(f"SELECT ops.convert_month_partitioning(to_regclass('{table}'), 'open_time', {partitioned}) "
               f"WHERE to_regclass('{table}') IS NOT NULL")


def upgrade() -> None:
    run_sql_files(SQL_FILES)
    for table in DBT_MARTS:
        _convert(table, True)


def downgrade() -> None:
    # Every row comes back into plain tables (the release before this one reads them as such); what
    # retention dropped stays dropped. The dbt marts are converted too: that release's dbt would
    # otherwise keep merging into partitioned tables and re-partition nothing after a full refresh.
    for table in (*DBT_MARTS, "staging.ohlcv"):
        _convert(table, False)
    op.execute("DROP FUNCTION ops.convert_month_partitioning(regclass, name, boolean)")
    op.execute("DROP FUNCTION ops.analyze_recent_partitions(regclass, integer)")
    op.execute("DROP FUNCTION ops.rename_month_partitions(regclass)")
    op.execute("DROP FUNCTION ops.ensure_month_partitions_like(regclass, regclass, timestamptz)")
    op.execute("DROP FUNCTION ops.split_default_partition(regclass)")
    op.execute("DROP FUNCTION ops.ensure_month_partitions(regclass, timestamptz, timestamptz)")
    op.execute("DROP FUNCTION ops.month_partitions(regclass)")
    op.execute("DROP TABLE ops.partition_retention")
