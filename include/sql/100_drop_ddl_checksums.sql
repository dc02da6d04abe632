-- Revision 0002. The checksum applier's bookkeeping goes: since migrations, the schema's version is
-- the Alembic revision in marketflow_meta.alembic_version (plugins/marketflow/migrations/), and a
-- table of file checksums nobody updates would only mislead whoever reads it.
DROP TABLE ops.schema_migrations;

COMMENT ON SCHEMA ops IS
    'Pipeline bookkeeping: markets and their state, repair queue, rate-limit buckets, errors and alerts.';
