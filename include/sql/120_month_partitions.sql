-- Revision 0004. The 1m layers are partitioned by time: monthly RANGE partitions on open_time (UTC
-- months, [first instant, first instant of the next month)), plus a DEFAULT partition so that a
-- load into a month nobody created a partition for never fails. Tables: staging.ohlcv (here) and
-- the dbt marts marts.ohlcv_1m and marts.indicators_1m (dbt creates them partitioned, see
-- dbt/macros/month_partitions.sql; an install that already has them as plain tables gets them
-- converted below, every row kept). Why monthly: a market-day query prunes to one partition, a
-- partition holds ~43,200 candles per market (1,000 markets: ~43M rows, a few GB with indexes, still
-- one sequential month for a rebuild), and retention drops whole months (never DELETE).
--
-- The functions are the one implementation used by the migration, dbt's materialization, the hourly
-- storage preparation (partitions ahead of need) and the maintenance DAG (retention). Each runs with
-- TimeZone UTC (month arithmetic and the bound texts compared below do not depend on the session)
-- and an empty search_path (every name is qualified; a view definition read here is printed fully
-- qualified).

-- What retention has dropped: a model reads its source only from keep_from on, so an incremental run
-- or a full refresh never re-creates rows of a month retention removed (dbt macro retention_floor).
CREATE TABLE ops.partition_retention (
    relation    text        PRIMARY KEY,   -- schema.table
    keep_from   timestamptz NOT NULL,      -- first instant kept (the first day of a month, UTC)
    applied_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE ops.partition_retention IS
    'Retention of the monthly-partitioned 1m layers: partitions before keep_from were dropped (market_maintenance).';

-- The month partitions of a range-partitioned table: bounds parsed from the catalog (DEFAULT left out).
CREATE FUNCTION ops.month_partitions(parent regclass)
RETURNS TABLE (partition regclass, from_time timestamptz, to_time timestamptz)
LANGUAGE sql STABLE
SET timezone = 'UTC' SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.oid::regclass,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM 'FROM \(''([^'']+)''\)')::timestamptz,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz
    FROM pg_inherits AS i
    JOIN pg_class AS c ON c.oid = i.inhrelid
    WHERE i.inhparent = parent
      AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
    ORDER BY 2
$$;

-- Partitions for every month from from_time's to to_time's (both included) that has none yet; returns
-- how many it created. Idempotent and safe under concurrent callers (an advisory lock per table: the
-- second caller waits, then finds the months there). Rows of such a month already sitting in the
-- DEFAULT partition are moved into the new month's partition in the same transaction. Takes an ACCESS
-- EXCLUSIVE lock on the table for the moment it creates one: call it in its own short transaction
-- (ahead of need), never inside a load holding rows of the table.
CREATE FUNCTION ops.ensure_month_partitions(parent regclass, from_time timestamptz, to_time timestamptz)
RETURNS integer
LANGUAGE plpgsql
SET timezone = 'UTC' SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    key_column   name;
    parent_ns    name;
    parent_name  name;
    default_part regclass;
    month        timestamptz := date_trunc('month', from_time);
    next_month   timestamptz;
    child        name;
    has_rows     boolean;
    created      integer := 0;
BEGIN
    SELECT a.attname, n.nspname, c.relname INTO key_column, parent_ns, parent_name
    FROM pg_partitioned_table AS p
    JOIN pg_class AS c ON c.oid = p.partrelid
    JOIN pg_namespace AS n ON n.oid = c.relnamespace
    JOIN pg_attribute AS a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
    WHERE p.partrelid = parent AND p.partstrat = 'r' AND p.partnatts = 1;
    IF key_column IS NULL THEN
        RAISE EXCEPTION '% is not range-partitioned on one column, so it has no month partitions', parent
            USING HINT = 'upgrade the warehouse (marketflow db upgrade) and rebuild the model with dbt';
    END IF;
    IF from_time IS NULL OR to_time IS NULL OR to_time - from_time > interval '100 years' THEN
        RETURN 0;  -- an empty table's min/max, or nonsense: nothing to create
    END IF;
    PERFORM pg_advisory_xact_lock(1836348518, hashtext(parent::text));
    SELECT c.oid INTO default_part
    FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
    WHERE i.inhparent = parent AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT';

    WHILE month <= to_time LOOP
        next_month := month + interval '1 month';
        IF NOT EXISTS (SELECT 1 FROM ops.month_partitions(parent) AS m WHERE m.from_time = month) THEN
            child := left(parent_name, 54) || '_p' || to_char(month, 'YYYY_MM');
            has_rows := false;
            IF default_part IS NOT NULL THEN
                EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE %I >= $1 AND %I < $2)',
                               default_part, key_column, key_column)
                    INTO has_rows USING month, next_month;
            END IF;
            IF has_rows THEN
                -- (CREATE ... PARTITION OF would refuse: the default holds rows of the new range)
                EXECUTE format('CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                               parent_ns, child, parent);
                EXECUTE format('WITH moved AS (DELETE FROM %s WHERE %I >= $1 AND %I < $2 RETURNING *) '
                               'INSERT INTO %I.%I SELECT * FROM moved',
                               default_part, key_column, key_column, parent_ns, child) USING month, next_month;
                EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                               parent, parent_ns, child, month, next_month);
                RAISE NOTICE 'created %.% and moved the rows of % from %', parent_ns, child,
                             to_char(month, 'YYYY-MM'), default_part;
            ELSE
                EXECUTE format('CREATE TABLE %I.%I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
                               parent_ns, child, parent, month, next_month);
            END IF;
            created := created + 1;
        END IF;
        month := next_month;
    END LOOP;
    RETURN created;
END
$$;

-- A partition for every month that has rows in the DEFAULT partition (rows loaded before their
-- month's partition existed, e.g. an old backfill): afterwards the default is empty again.
CREATE FUNCTION ops.split_default_partition(parent regclass)
RETURNS integer
LANGUAGE plpgsql
SET timezone = 'UTC' SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    default_part regclass;
    key_column   name;
    month        timestamptz;
    created      integer := 0;
BEGIN
    SELECT c.oid INTO default_part
    FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
    WHERE i.inhparent = parent AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT';
    IF default_part IS NULL THEN
        RETURN 0;
    END IF;
    SELECT a.attname INTO key_column
    FROM pg_partitioned_table AS p JOIN pg_attribute AS a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
    WHERE p.partrelid = parent;
    FOR month IN EXECUTE format('SELECT DISTINCT date_trunc(''month'', %I) FROM %s WHERE %I IS NOT NULL',
                                key_column, default_part, key_column) LOOP
        created := created + ops.ensure_month_partitions(parent, month, month);
    END LOOP;
    RETURN created;
END
$$;

-- The month partitions of `template` (a partitioned table this one is built from, e.g. staging.ohlcv
-- for marts.ohlcv_1m) from floor_time on, created in `parent`, and a partition for each month with
-- rows in the template's DEFAULT partition: what a full rebuild needs before it writes its rows, so
-- they go straight into their months (never into the default and moved again).
CREATE FUNCTION ops.ensure_month_partitions_like(parent regclass, template regclass, floor_time timestamptz)
RETURNS integer
LANGUAGE plpgsql
SET timezone = 'UTC' SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    month        timestamptz;
    default_part regclass;
    key_column   name;
    created      integer := 0;
BEGIN
    FOR month IN SELECT m.from_time FROM ops.month_partitions(template) AS m
                 WHERE m.to_time > coalesce(floor_time, '-infinity') LOOP
        created := created + ops.ensure_month_partitions(parent, month, month);
    END LOOP;
    SELECT c.oid INTO default_part
    FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
    WHERE i.inhparent = template AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT';
    SELECT a.attname INTO key_column
    FROM pg_partitioned_table AS p JOIN pg_attribute AS a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
    WHERE p.partrelid = template;
    IF default_part IS NOT NULL THEN
        FOR month IN EXECUTE format('SELECT DISTINCT date_trunc(''month'', %I) FROM %s WHERE %I >= $1',
                                    key_column, default_part, key_column) USING coalesce(floor_time, '-infinity')
        LOOP
            created := created + ops.ensure_month_partitions(parent, month, month);
        END LOOP;
    END IF;
    RETURN created;
END
$$;

-- Partitions named after their table (<table>_pYYYY_MM, <table>_default): dbt's full refresh builds the
-- table under a temporary name and renames only the table, so its partitions are renamed here (after
-- the old table and its partitions are gone). A name already taken is left alone.
CREATE FUNCTION ops.rename_month_partitions(parent regclass)
RETURNS integer
LANGUAGE plpgsql
SET timezone = 'UTC' SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    part     record;
    renamed  integer := 0;
BEGIN
    FOR part IN
        SELECT c.oid::regclass AS child, c.relname, n.nspname,
               CASE WHEN pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT' THEN left(pc.relname, 55) || '_default'
                    ELSE left(pc.relname, 54) || '_p' || to_char(substring(pg_get_expr(c.relpartbound, c.oid)
                                                         FROM 'FROM \(''([^'']+)''\)')::timestamptz, 'YYYY_MM')
               END AS wanted
        FROM pg_inherits AS i
        JOIN pg_class AS c ON c.oid = i.inhrelid
        JOIN pg_class AS pc ON pc.oid = i.inhparent
        JOIN pg_namespace AS n ON n.oid = c.relnamespace
        WHERE i.inhparent = parent
    LOOP
        IF part.relname <> part.wanted
           AND NOT EXISTS (SELECT 1 FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
                           WHERE n.nspname = part.nspname AND c.relname = part.wanted) THEN
            EXECUTE format('ALTER TABLE %s RENAME TO %I', part.child, part.wanted);
            renamed := renamed + 1;
        END IF;
    END LOOP;
    RETURN renamed;
END
$$;

-- ANALYZE of the DEFAULT partition and the newest `months` month partitions only: what an incremental
-- build changed. ANALYZE of the whole table samples every partition (cost growing with history).
CREATE FUNCTION ops.analyze_recent_partitions(parent regclass, months integer)
RETURNS void
LANGUAGE plpgsql
SET timezone = 'UTC' SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    part regclass;
BEGIN
    FOR part IN
        (SELECT m.partition FROM ops.month_partitions(parent) AS m ORDER BY m.from_time DESC LIMIT months)
        UNION ALL
        (SELECT c.oid::regclass FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
         WHERE i.inhparent = parent AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT')
    LOOP
        EXECUTE format('ANALYZE %s', part);
    END LOOP;
END
$$;

-- Turns a plain table into a monthly-partitioned one of the same name (to_partitioned) or back
-- (not to_partitioned), every row kept: same columns, defaults, constraints, indexes (by name),
-- comments, owner and grants; views reading it are re-pointed at the new table. A partitioned table
-- gets a DEFAULT partition and a partition for each month its rows span. Does nothing when the
-- table is already in the asked form. Returns the rows copied.
CREATE FUNCTION ops.convert_month_partitioning(tbl regclass, key_column name, to_partitioned boolean)
RETURNS bigint
LANGUAGE plpgsql
SET timezone = 'UTC' SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ns       name;
    rel      name;
    owner    name;
    kind     "char";
    old_rel  name;
    old      regclass;
    fresh    regclass;
    comment  text;
    indexes  text[];
    cons     text[];
    views    text[];
    statement text;
    grant_row record;
    lo       timestamptz;
    hi       timestamptz;
    copied   bigint;
BEGIN
    SELECT n.nspname, c.relname, c.relkind, pg_get_userbyid(c.relowner), obj_description(c.oid, 'pg_class')
      INTO ns, rel, kind, owner, comment
    FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace WHERE c.oid = tbl;
    IF (kind = 'p') = to_partitioned THEN
        RETURN 0;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_depend AS d JOIN pg_rewrite AS r ON r.oid = d.objid
               JOIN pg_class AS v ON v.oid = r.ev_class
               WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = tbl AND v.oid <> tbl AND v.relkind <> 'v') THEN
        RAISE EXCEPTION 'a materialized view reads %; it cannot be re-pointed at the converted table', tbl
            USING HINT = 'drop the materialized view, upgrade, then create it again';
    END IF;
    -- Everything that names the table, read before it is renamed (so the texts name ns.rel).
    SELECT coalesce(array_agg(pg_get_indexdef(i.indexrelid) ORDER BY i.indexrelid), '{}') INTO indexes
    FROM pg_index AS i
    WHERE i.indrelid = tbl AND NOT EXISTS (SELECT 1 FROM pg_constraint AS k WHERE k.conindid = i.indexrelid
                                                                         AND k.conrelid = tbl);
    SELECT coalesce(array_agg(format('ALTER TABLE %I.%I ADD CONSTRAINT %I %s', ns, rel, k.conname,
                                     pg_get_constraintdef(k.oid)) ORDER BY k.oid), '{}') INTO cons
    FROM pg_constraint AS k WHERE k.conrelid = tbl AND k.contype IN ('p', 'u', 'x');
    SELECT coalesce(array_agg(DISTINCT format('CREATE OR REPLACE VIEW %s AS %s', v.oid::regclass,
                                              pg_get_viewdef(v.oid))), '{}') INTO views
    FROM pg_depend AS d JOIN pg_rewrite AS r ON r.oid = d.objid JOIN pg_class AS v ON v.oid = r.ev_class
    WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = tbl AND v.oid <> tbl;

    -- Free the names (index names are per schema) for the new table.
    old_rel := left(rel, 40) || '_before_' || tbl::oid;
    EXECUTE format('ALTER TABLE %s RENAME TO %I', tbl, old_rel);
    old := format('%I.%I', ns, old_rel)::regclass;
    FOR statement IN
        SELECT format('ALTER INDEX %I.%I RENAME TO %I', ns, ic.relname, 'mf_old_' || ic.oid)
        FROM pg_index AS i JOIN pg_class AS ic ON ic.oid = i.indexrelid WHERE i.indrelid = old
    LOOP
        EXECUTE statement;
    END LOOP;
    FOR statement IN
        SELECT format('ALTER TABLE %s RENAME CONSTRAINT %I TO %I', old, k.conname, 'mf_old_' || k.oid)
        FROM pg_constraint AS k WHERE k.conrelid = old AND k.contype IN ('p', 'u', 'x')
    LOOP
        EXECUTE statement;
    END LOOP;

    EXECUTE format('CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING COMMENTS '
                   'INCLUDING STORAGE INCLUDING STATISTICS INCLUDING GENERATED INCLUDING IDENTITY)%s',
                   ns, rel, old, CASE WHEN to_partitioned THEN format(' PARTITION BY RANGE (%I)', key_column) END);
    fresh := format('%I.%I', ns, rel)::regclass;
    FOREACH statement IN ARRAY cons || indexes LOOP
        EXECUTE statement;
    END LOOP;
    IF comment IS NOT NULL THEN
        EXECUTE format('COMMENT ON TABLE %s IS %L', fresh, comment);
    END IF;
    IF owner <> current_user THEN
        EXECUTE format('ALTER TABLE %s OWNER TO %I', fresh, owner);
    END IF;
    FOR grant_row IN
        SELECT a.privilege_type, a.grantee FROM pg_class AS c, aclexplode(c.relacl) AS a
        WHERE c.oid = old AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('GRANT %s ON %s TO %s', grant_row.privilege_type, fresh,
                       CASE WHEN grant_row.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(grant_row.grantee)) END);
    END LOOP;

    IF to_partitioned THEN
        EXECUTE format('CREATE TABLE %I.%I PARTITION OF %s DEFAULT', ns, left(rel, 55) || '_default', fresh);
        EXECUTE format('SELECT min(%I), max(%I) FROM %s', key_column, key_column, old) INTO lo, hi;
        PERFORM ops.ensure_month_partitions(fresh, lo, hi);
    END IF;
    -- In key order: each month's partition (or the plain table) is written sorted, as dbt's full
    -- refresh writes it, so a market's candles sit together.
    EXECUTE format('INSERT INTO %s SELECT * FROM %s ORDER BY %s', fresh, old,
                   coalesce((SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY x.n)
                             FROM (SELECT i.indkey FROM pg_index AS i WHERE i.indrelid = old AND i.indisunique
                                   ORDER BY i.indisprimary DESC, i.indexrelid LIMIT 1) AS k,
                                  unnest(k.indkey::int2[]) WITH ORDINALITY AS x(attnum, n), pg_attribute AS a
                             WHERE a.attrelid = old AND a.attnum = x.attnum),
                            quote_ident(key_column)));
    GET DIAGNOSTICS copied = ROW_COUNT;
    FOREACH statement IN ARRAY views LOOP
        EXECUTE statement;
    END LOOP;
    EXECUTE format('DROP TABLE %s', old);
    RETURN copied;
END
$$;

-- staging.ohlcv itself (empty on a new install; on an upgrade every candle is copied once, in key
-- order). Loads need no partition to exist: a month without one lands in the DEFAULT partition and
-- is moved out by the next storage preparation or maintenance run.
SELECT ops.convert_month_partitioning('staging.ohlcv', 'open_time', true);
