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

-- Analysts see times in UTC (candles are UTC buckets: a daily candle opens at 00:00+00, not at a
-- local offset). PostgreSQL picks a session's time zone from, lowest priority first: the server's
-- postgresql.conf (initdb writes the machine's zone there), the database's default, the login
-- role's default, the login role's default in this database, and what the client asks for
-- (PGTZ, a JDBC driver's TimeZone, SET timezone). Settings of a group role are NOT inherited by
-- its members, so ALTER ROLE analyst SET timezone would do nothing for alice. Therefore:
--   1. this database's default is UTC (every session that does not choose otherwise), unless an
--      administrator already set one;
--   2. every login member of analyst (directly or through other roles) without a time zone of its
--      own in this database gets UTC in this database, which beats its role-wide default. Re-run
--      by every apply of this file (each hourly run), so new members get it within the hour; an
--      explicit `ALTER ROLE alice IN DATABASE ... SET timezone` by an administrator is left alone.
-- A client that asks for a zone gets it: PostgreSQL gives the connection request the last word.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1
        FROM pg_db_role_setting AS s
        JOIN pg_database AS d ON d.oid = s.setdatabase
        CROSS JOIN LATERAL unnest(s.setconfig) AS c (setting)
        WHERE d.datname = current_database()
          AND s.setrole = 0
          AND lower(c.setting) LIKE 'timezone=%'
    ) THEN
        EXECUTE format('ALTER DATABASE %I SET timezone TO %L', current_database(), 'UTC');
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING 'marketflow: % may not set the time zone default of database %; analysts may see local '
                  'times. Fix: as its owner, ALTER DATABASE % SET timezone = ''UTC''',
                  current_user, current_database(), quote_ident(current_database());
END
$$;

DO $$
DECLARE
    member_name name;
BEGIN
    FOR member_name IN
        WITH RECURSIVE members (oid) AS (
            SELECT m.member
            FROM pg_auth_members AS m
            JOIN pg_roles AS g ON g.oid = m.roleid
            WHERE g.rolname = 'analyst'
            UNION
            SELECT m.member
            FROM pg_auth_members AS m
            JOIN members ON m.roleid = members.oid
        )
        SELECT r.rolname
        FROM members
        JOIN pg_roles AS r ON r.oid = members.oid
        WHERE r.rolcanlogin
          AND NOT r.rolsuper
          AND NOT EXISTS (
              SELECT 1
              FROM pg_db_role_setting AS s
              JOIN pg_database AS d ON d.oid = s.setdatabase
              CROSS JOIN LATERAL unnest(s.setconfig) AS c (setting)
              WHERE d.datname = current_database()
                AND s.setrole = r.oid
                AND lower(c.setting) LIKE 'timezone=%'
          )
    LOOP
        BEGIN
            EXECUTE format('ALTER ROLE %I IN DATABASE %I SET timezone TO %L', member_name, current_database(), 'UTC');
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'marketflow: % may not set the time zone of analyst %; its sessions may show local '
                          'times. Fix: ALTER ROLE % IN DATABASE % SET timezone = ''UTC''',
                          current_user, member_name, quote_ident(member_name), quote_ident(current_database());
        END;
    END LOOP;
END
$$;
