"""Baseline: the schema of the last release before migrations (include/sql/001..090, as released).

A database prepared by that release's checksum applier is stamped at this revision without
running it again (after its recorded checksums are checked against SQL_FILES: migrations/env.py).

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

from marketflow.migrations import run_sql_files

revision = "0001"
down_revision = None

SQL_FILES = {
    "001_schemas.sql": "2e55b262490fa82abf6528c9114356e8dae47b57ee4d660f4d07a698db5ab72a",
    "010_staging_ohlcv.sql": "bb1e8d115f496820a7694caf7cf42ee83179032768bb96f5116baa648b035561",
    "020_staging_ticker.sql": "4dbe48de7e333a16a4c427af83e0bdfec6a91e3f227a0bde1628c9a13bd06733",
    "030_quality_and_ops.sql": "24f388b5ff99feb8a9239ddad612fe0f282319d1e8deed908b7426940020b4e6",
    "040_roles.sql": "186cb05e94202592060f486b8c8279d21ecb8de61833030c52352a4a6b0b04c5",
    "050_rate_limits.sql": "924162c5d2aad3033bebb253092e24d91a9f9628cab6726552aceaaf8a837e81",
    "060_errors_and_alerts.sql": "1e29a643b44a6892ff3a406c90697a8b11870c6366ccd6050dce76d804f8df10",
    "070_market_lists.sql": "e02d16ce513e54ed18943fc452ffbd3646978108160502d43a53e358b4fa686c",
    "080_session_defaults.sql": "7ba73c9f1c5e42091ff3d38235f7d74bc02326e5f5a3f9e1a13f875d89bc159a",
    "090_market_state.sql": "85c6fb384338d03282a120ccc9a61ee2f49c1d95e6ec9240830b5578e696a3f4",
}


def upgrade() -> None:
    run_sql_files(SQL_FILES)


def downgrade() -> None:
    # Everything the pipeline keeps in this database goes: staging's candles, tickers and rejects,
    # ops' state, and the marts schema (dbt rebuilds it from staging, which is gone too). Raw
    # payloads in MongoDB are untouched: `market_backfill` with from_raw rebuilds staging from them.
    # Kept: the analyst role (roles belong to the whole server and may serve other databases; its
    # grants here went with the schemas), and the session defaults of 040/080 (the time zone and jit
    # settings may predate the pipeline; they are harmless).
    op.execute("DROP SCHEMA IF EXISTS marts CASCADE")
    op.execute("DROP SCHEMA IF EXISTS staging CASCADE")
    op.execute("DROP SCHEMA IF EXISTS ops CASCADE")
