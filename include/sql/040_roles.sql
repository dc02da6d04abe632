-- analyst: read-only access to the marts and nothing else (no staging, ops, dbt internals, writes).
-- A group role without login: grant it to people, e.g. CREATE ROLE alice LOGIN PASSWORD '...' IN ROLE analyst;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'analyst') THEN
        CREATE ROLE analyst NOLOGIN;
    END IF;
END
$$;
COMMENT ON ROLE analyst IS 'marketflow: SELECT on schema marts only.';

GRANT USAGE ON SCHEMA marts TO analyst;
GRANT SELECT ON ALL TABLES IN SCHEMA marts TO analyst;
-- dbt re-creates mart tables and views on every full build; new ones are readable at once.
-- (Views in marts run with their owner's rights, so analysts need nothing on the schemas behind them.)
ALTER DEFAULT PRIVILEGES IN SCHEMA marts GRANT SELECT ON TABLES TO analyst;

REVOKE ALL ON SCHEMA staging, ops FROM analyst;
REVOKE ALL ON ALL TABLES IN SCHEMA staging, ops FROM analyst;
REVOKE ALL ON SCHEMA staging, ops FROM PUBLIC;
