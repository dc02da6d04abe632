{#-
  Post-hook of an incremental model whose table grows with history: ANALYZE {{ this }} when its
  statistics are missing or its row count moved, not after every run.

  A plain `analyze {{ this }}` after every incremental run reads a sample of up to 300 x
  default_statistics_target rows, one page per sampled row: every page of the table until it
  reaches 30,000 pages (~1M rows of a rollup or indicator table). So the hourly run paid more for
  it the longer the history, for statistics that an hour's few thousand rows hardly change (bench
  figure 9: ANALYZE of indicators_15m 0.8 s at 1M candles of history, 1.6 s at 10M; fifteen
  tables had it).

  Now:
    * a full refresh, or a table without statistics (no pg_stats row: just created by the first
      build, whose CREATE INDEX already set reltuples): ANALYZE;
    * otherwise ANALYZE only when the table's row count, counting this run's own inserts and
      deletes (pg_stat_xact_user_tables), differs from the one the last ANALYZE or VACUUM recorded
      (pg_class.reltuples) by more than `analyze_modified_share` (var, default 0.1, autovacuum's
      own analyze_scale_factor) of it: after a backfill, a new market or a rebuild, in the same
      run, so the next model of the build plans with it; not after an hour of new candles
      (12,000 5m rows a run on 1,000 markets: every few runs at 1M candles of history, every ~50
      at 30M).
  Not pg_stat_user_tables.n_mod_since_analyze: changes made before an ANALYZE in the same
  transaction are added to it at commit, so every build would look changed to the next run.
  Updates are not counted: an incremental run updates rows it recomputed (a bucket that gained a
  minute, an indicator row after a correction), whose values the statistics already describe.
  Statistics a few thousand rows old do not change these models' plans: their reads are index
  probes by construction (LATERAL, scalar subqueries, constant watermarks), and a watermark past
  the histogram is estimated from the ingestion column's index (the planner reads its maximum).
-#}
{% macro analyze_when_changed() -%}
{%- set share = var('analyze_modified_share', 0.1) | float -%}
{%- if should_full_refresh() -%}
analyze {{ this }}
{%- else -%}
do $analyze_when_changed$
begin
    if exists (
        select 1
        from pg_class as c
        left join pg_stat_user_tables as s on s.relid = c.oid
        left join pg_stat_xact_user_tables as x on x.relid = c.oid
        where c.oid = '{{ this }}'::regclass
          and (c.reltuples < 0
               or not exists (select 1 from pg_stats
                              where schemaname = '{{ this.schema }}' and tablename = '{{ this.identifier }}')
               or abs(coalesce(s.n_live_tup, 0) + coalesce(x.n_tup_ins - x.n_tup_del, 0) - c.reltuples)
                  > {{ share }} * c.reltuples)
    ) then
        analyze {{ this }};
    end if;
end
$analyze_when_changed$
{%- endif -%}
{%- endmacro %}
