-- Session defaults of the pipeline's role in this database (the role that applies this DDL:
-- loaders, dbt models and dbt data tests all connect as it).
--
-- jit = off. PostgreSQL JIT-compiles any query whose estimated cost passes jit_above_cost; for
-- this workload (wide window/aggregate queries over 10^5..10^7 rows that run once) compiling takes
-- longer than it saves: measured on 432k candles, the 5m rollup reconciliation test ran 2.2 s with
-- JIT and 1.2 s without, and a whole `dbt build` spent ~3 s compiling. The dbt models already set
-- it off per transaction (pre_hook); data tests have no hook, so it is set here, per role and
-- database. A role may set its own defaults; new sessions pick it up.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1
        FROM pg_db_role_setting AS s
        JOIN pg_database AS d ON d.oid = s.setdatabase
        WHERE d.datname = current_database()
          AND s.setrole = (SELECT oid FROM pg_roles WHERE rolname = current_user)
          AND 'jit=off' = ANY (s.setconfig)
    ) THEN
        EXECUTE format('ALTER ROLE %I IN DATABASE %I SET jit = off', current_user, current_database());
    END IF;
END
$$;
