"""Storage stage 2 (issue 16): staging's candles in the narrow staging.candle (int market_id and run_key,
the payload id as bytes), staging.ohlcv a writable view with its former columns; every row moved.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

from marketflow.migrations import run_sql_files

revision = "0010"
down_revision = "0009"

SQL_FILES = {
    "200_staging_candle.sql": "e29c90213f5131e086ea17a8ba1b1aa831476dc39d4a6de9b7ae75a8268ad580",
}

# The table of 010_staging_ohlcv.sql as revision 0004 left it (month partitions, a DEFAULT partition).
_OHLCV_TABLE = """
CREATE TABLE staging.ohlcv (
    exchange        text        NOT NULL,
    symbol          text        NOT NULL,
    timeframe       text        NOT NULL,
    open_time       timestamptz NOT NULL,
    open            numeric     NOT NULL,
    high            numeric     NOT NULL,
    low             numeric     NOT NULL,
    close           numeric     NOT NULL,
    volume          numeric     NOT NULL,
    quote_volume    numeric,
    trades          bigint,
    raw_payload_id  text        NOT NULL,
    run_id          text        NOT NULL,
    ingested_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ohlcv_pk PRIMARY KEY (exchange, symbol, timeframe, open_time),
    CONSTRAINT ohlcv_non_negative CHECK (
        open >= 0 AND high >= 0 AND low >= 0 AND close >= 0 AND volume >= 0
        AND (quote_volume IS NULL OR quote_volume >= 0) AND (trades IS NULL OR trades >= 0)
    ),
    CONSTRAINT ohlcv_high_is_highest CHECK (high >= greatest(open, close)),
    CONSTRAINT ohlcv_low_is_lowest CHECK (low <= least(open, close))
) PARTITION BY RANGE (open_time);
CREATE TABLE staging.ohlcv_default PARTITION OF staging.ohlcv DEFAULT;
CREATE INDEX ohlcv_ingested_at_brin ON staging.ohlcv USING brin (ingested_at);
COMMENT ON TABLE staging.ohlcv IS
    'Closed candles parsed from raw payloads; upserted, values change only when the exchange corrects them.';
COMMENT ON COLUMN staging.ohlcv.raw_payload_id IS
    '_id of the MongoDB raw_market_payload document the current values came from.';
COMMENT ON COLUMN staging.ohlcv.run_id IS 'Airflow run that last changed the row.';
COMMENT ON COLUMN staging.ohlcv.ingested_at IS 'When the row was inserted or its values last changed.';
"""


def upgrade() -> None:
    run_sql_files(SQL_FILES)


def downgrade() -> None:
    # Every row back into the wide partitioned table, in key order. Views reading the view staging.ohlcv
    # are re-pointed at the table; views reading staging.candle itself (this release's dbt stg_ohlcv)
    # cannot be, and are dropped: the older release's next dbt run creates its own again.
    # (their definitions read before the rename, so they name staging.ohlcv)
    op.execute("""
        CREATE TEMP TABLE mf_0010_views ON COMMIT DROP AS
        SELECT DISTINCT format('CREATE OR REPLACE VIEW %s AS %s', v.oid::regclass, pg_get_viewdef(v.oid)) AS statement
        FROM pg_depend AS d JOIN pg_rewrite AS r ON r.oid = d.objid JOIN pg_class AS v ON v.oid = r.ev_class
        WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = 'staging.ohlcv'::regclass AND v.oid <> d.refobjid
    """)
    op.execute("ALTER VIEW staging.ohlcv RENAME TO ohlcv_view_0010")
    op.execute(_OHLCV_TABLE)
    op.execute("""
        SELECT ops.ensure_month_partitions('staging.ohlcv', m.from_time, m.from_time)
        FROM ops.month_partitions('staging.candle') AS m
    """)
    op.execute("""
        INSERT INTO staging.ohlcv SELECT * FROM staging.ohlcv_view_0010
        ORDER BY exchange, symbol, timeframe, open_time
    """)
    op.execute("""
        DO $$
        DECLARE
            statement text;
        BEGIN
            FOR statement IN SELECT v.statement FROM mf_0010_views AS v LOOP
                EXECUTE statement;
            END LOOP;
            FOR statement IN
                SELECT DISTINCT format('DROP VIEW IF EXISTS %s CASCADE', v.oid::regclass)
                FROM pg_depend AS d JOIN pg_rewrite AS r ON r.oid = d.objid JOIN pg_class AS v ON v.oid = r.ev_class
                WHERE d.classid = 'pg_rewrite'::regclass
                  AND d.refobjid IN ('staging.candle'::regclass, 'staging.market'::regclass, 'ops.run'::regclass)
                  AND v.oid <> 'staging.ohlcv_view_0010'::regclass
            LOOP
                RAISE NOTICE '%: it reads staging.candle, which this downgrade removes (dbt creates it again)',
                    statement;
                EXECUTE statement;
            END LOOP;
        END
        $$
    """)
    op.execute("DROP VIEW staging.ohlcv_view_0010")
    op.execute("DROP FUNCTION staging.ohlcv_view_insert()")
    op.execute("DROP FUNCTION staging.ohlcv_view_update()")
    op.execute("DROP FUNCTION staging.ohlcv_view_delete()")
    op.execute("DROP TABLE staging.candle")
    op.execute("DROP FUNCTION ops.run_key(text)")
    op.execute("DROP FUNCTION staging.market_key(text, text, text)")
    op.execute("DROP FUNCTION staging.payload_id_text(bytea)")
    op.execute("DROP FUNCTION staging.payload_id_bytes(text)")
    op.execute("DROP TABLE ops.run")
    op.execute("DROP TABLE staging.market")
    op.execute("ANALYZE staging.ohlcv")
