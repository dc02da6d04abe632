-- Schemas owned by the pipeline. marts is created here too so grants can be set up
-- before dbt's first run; dbt builds the relations inside it.
CREATE SCHEMA IF NOT EXISTS staging;
CREATE SCHEMA IF NOT EXISTS ops;
CREATE SCHEMA IF NOT EXISTS marts;

COMMENT ON SCHEMA staging IS 'Typed rows parsed from MongoDB raw payloads; loaded by Airflow, read by dbt.';
COMMENT ON SCHEMA ops IS 'Pipeline bookkeeping (schema migrations, later: backfill tasks, rate-limit buckets).';
COMMENT ON SCHEMA marts IS 'Analyst-facing tables built by dbt.';

CREATE TABLE IF NOT EXISTS ops.schema_migrations (
    filename   text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
