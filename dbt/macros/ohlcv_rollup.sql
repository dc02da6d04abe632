{#-
  Candle rollups (marts ohlcv_5m ... ohlcv_1w), all built the same way, each from the next finer
  candle table (5m from ohlcv_1m, 15m from ohlcv_5m, 1h from 15m, 1d from 1h, 1w from 1d).

  rollup_timeframes()        timeframe -> (bucket width as an interval literal, minutes per bucket)
  rollup_finer_timeframe(tf) the timeframe a rollup is aggregated from
  utc_bucket(column, tf)     the start of the UTC bucket `column` falls in
  ohlcv_rollup(tf)           the model SQL (full and incremental): the candles and their indicators
  rollup_indicators_view(tf) indicators_<tf>: a view of the indicator columns of ohlcv_<tf>'s rows

  Buckets are date_bin() on the absolute time line with a fixed UTC origin, Monday
  2000-01-03 00:00 UTC: date_bin on timestamptz never looks at the session time zone (unlike
  date_trunc without its third argument), days are 24 h, and 7-day buckets start on Mondays.
  Every width divides a week, so one origin serves them all.
-#}

{% macro rollup_timeframes() -%}
    {{ return({
        '5m': ('5 minutes', 5),
        '15m': ('15 minutes', 15),
        '1h': ('1 hour', 60),
        '1d': ('1 day', 1440),
        '1w': ('7 days', 10080),
    }) }}
{%- endmacro %}

{% macro rollup_timeframe(timeframe) -%}
    {%- set spec = rollup_timeframes().get(timeframe) -%}
    {%- if spec is none -%}
        {{ exceptions.raise_compiler_error("unknown rollup timeframe '" ~ timeframe ~ "', expected one of "
                                           ~ rollup_timeframes().keys() | list) }}
    {%- endif -%}
    {{ return(spec) }}
{%- endmacro %}

{% macro utc_bucket(column, timeframe) -%}
    date_bin(interval '{{ rollup_timeframe(timeframe)[0] }}', {{ column }}, timestamptz '2000-01-03 00:00:00+00')
{%- endmacro %}

{#-
  The finer candle table each rollup is built from: every width is a whole number of the finer
  one's and buckets share one origin, so each bucket is exactly the union of its finer buckets.
  Building 1w from 1d (7 rows a bucket) instead of from the minutes (10,080 a bucket) reads a
  fraction of the rows, and every column composes exactly (see ohlcv_rollup below).
-#}
{% macro rollup_finer_timeframe(timeframe) -%}
    {{ return({'5m': '1m', '15m': '5m', '1h': '15m', '1d': '1h', '1w': '1d'}[timeframe]) }}
{%- endmacro %}

{#- The finer table itself, and the column stamping when each of its rows was written (ohlcv_1m's
    ingested_at, a rollup's last_ingested_at): what the model and its reconciliation test read. -#}
{% macro rollup_finer(timeframe) -%}
    {%- set finer_timeframe = rollup_finer_timeframe(timeframe) -%}
    {{ return((ref('ohlcv_' ~ finer_timeframe), 'ingested_at' if finer_timeframe == '1m' else 'last_ingested_at')) }}
{%- endmacro %}

{#-
  One row per (exchange, symbol, bucket) that has at least one 1m candle, aggregated from the
  bucket's parts in the next finer table (rollup_finer_timeframe: 5m from ohlcv_1m, 15m from
  ohlcv_5m, ..., 1w from ohlcv_1d).

  Values are those of the bucket's 1m candles, and compose exactly through the chain: open = the
  open of the earliest part, close = the close of the latest (array_agg ... ORDER BY open_time),
  high/low = max/min, volume = sum (numeric sums of sums: the same value and scale).
  quote_volume and trades are the sum when EVERY part has them and NULL otherwise (a part's is
  NULL when one of its minutes lacks it, so this is "every minute has them": a partial sum would
  look like a complete one); quote_volume_missing_minutes counts the minutes without one, so a
  NULL says how much is missing. candle_count sums the parts' minute counts, first/last minute and
  last_ingested_at are the min/max of the parts'. Numerics stay numeric.

  Two flags, apart: is_complete = every minute of the bucket is present (candle_count = minutes
  per bucket); is_closed = the bucket's interval has ended (close_time <= the build time, dq_as_of()):
  false only for the bucket still forming, whose values will change. A closed incomplete bucket
  has a gap; an open one is simply not over yet.

  Incremental runs recompute the buckets touched by finer rows whose ingested_at (ohlcv_1m) or
  last_ingested_at (a rollup) is newer than the newest last_ingested_at already in this rollup
  minus ohlcv_lookback_minutes (the same watermark and lookback as ohlcv_1m; a rollup's newest
  last_ingested_at is the newest minute's ingested_at, so every table of the chain agrees on it
  and a late-committing load that ohlcv_1m merges is seen all the way up in the same run). A
  touched bucket is recomputed from ALL its parts (an index range scan per bucket), not only the
  new ones, then merged on (exchange, symbol, open_time).

  The indicators are on the same row (SMA / EMA / RSI / MACD of the bucket closes,
  macros/ohlcv_indicators.sql in its candle_columns mode, as ohlcv_1m has them; docs/storage.md):
  one tuple, one key and one key index per bucket instead of a second table. The recomputed
  buckets and, for the rest, the stored rows are the candle series the indicators run over; per
  market, every row from its first recomputed bucket on is recomputed from the stored state of
  the row before it (the indicator macro's resume), so the cost follows the touched buckets. A
  recomputed row identical (as text, candle and indicators, so even a numeric's scale counts) to
  the stored one is left out of the merge: a run without new data rewrites nothing. A bucket stored while it was still forming is
  recomputed once it has closed, even if no minute arrived since (is_closed flips): only a market's
  latest bucket can be forming (the loader stores closed minutes only), so that is one index probe
  per market (distinct_markets + its newest row), whatever the history. Both lookups are written so that they can only
  run as index probes (LATERAL, scalar subquery): the cost follows the number of touched buckets,
  whatever the planner estimates (with a join, an underestimate made it merge-join each market's
  buckets with all of its minutes: minutes instead of seconds).
-#}
{#- The candle columns of a rollup row, in the table's order between the key and last_ingested_at;
    the indicator columns follow last_ingested_at (macros/ohlcv_indicators.sql, candle_columns mode). -#}
{% macro rollup_candle_columns() -%}
    {{ return(['open', 'high', 'low', 'close', 'volume', 'quote_volume', 'trades', 'close_time', 'candle_count',
               'is_complete', 'is_closed', 'quote_volume_missing_minutes', 'first_minute_at', 'last_minute_at']) }}
{%- endmacro %}

{#- The rollup's candle columns, one row per (exchange, symbol, bucket) of `parts` (the finer rows, each
    with its bucket). -#}
{% macro rollup_aggregate(timeframe, parts) -%}
{%- set width, minutes = rollup_timeframe(timeframe) -%}
{%- set width = "interval '" ~ width ~ "'" -%}
{%- set finer_timeframe = rollup_finer_timeframe(timeframe) -%}
    select
        exchange,
        symbol,
        bucket                                                          as open_time,
        (array_agg(open order by open_time))[1]                         as open,
        max(high)                                                       as high,
        min(low)                                                        as low,
        (array_agg(close order by open_time desc))[1]                   as close,
        sum(volume)                                                     as volume,
        case when count(quote_volume) = count(*) then sum(quote_volume) end  as quote_volume,
        case when count(trades) = count(*) then sum(trades)::bigint end as trades,
        bucket + {{ width }}                                            as close_time,
        {%- if finer_timeframe == '1m' %}
        count(*)::integer                                               as candle_count,
        count(*) = {{ minutes }}                                        as is_complete,
        bucket + {{ width }} <= {{ dq_as_of() }}                        as is_closed,
        (count(*) - count(quote_volume))::integer                       as quote_volume_missing_minutes,
        min(open_time)                                                  as first_minute_at,
        max(open_time)                                                  as last_minute_at,
        max(ingested_at)                                                as last_ingested_at
        {%- else %}
        sum(candle_count)::integer                                      as candle_count,
        sum(candle_count) = {{ minutes }}                               as is_complete,
        bucket + {{ width }} <= {{ dq_as_of() }}                        as is_closed,
        sum(quote_volume_missing_minutes)::integer                      as quote_volume_missing_minutes,
        min(first_minute_at)                                            as first_minute_at,
        max(last_minute_at)                                             as last_minute_at,
        max(last_ingested_at)                                           as last_ingested_at
        {%- endif %}
    from {{ parts }}
    group by exchange, symbol, bucket
{%- endmacro %}

{#-
  The candles a run (re)computes, with the rollup's candle columns: on a full build every bucket of the
  finer table; on an incremental run the buckets touched by finer rows ingested since the watermark
  (minus the lookback), each recomputed from ALL its parts, and each market's newest stored bucket if
  it was forming at the last build and has closed since; in a `marketflow rebuild`, the buckets
  overlapping the slice.
-#}
{% macro rollup_new_candles_sql(timeframe) -%}
{%- set width, minutes = rollup_timeframe(timeframe) -%}
{%- set width = "interval '" ~ width ~ "'" -%}
{%- set finer_timeframe = rollup_finer_timeframe(timeframe) -%}
{%- set finer, finer_ingested = rollup_finer(timeframe) -%}
with
{%- if is_incremental() %}
rollup_touched as (
    select distinct exchange, symbol, bucket
    from (
        select
            exchange,
            symbol,
            {{ utc_bucket('open_time', timeframe) }} as bucket
        from {{ finer }}
        {%- if rebuild_slice() is not none %}
        -- `marketflow rebuild`: the buckets overlapping the slice (macros/rebuild_slice.sql)
        where {{ rebuild_filter('open_time', rebuild_width(finer_timeframe)) }}
        {%- else %}
        where {{ finer_ingested }} > {{ incremental_watermark('last_ingested_at', var('ohlcv_lookback_minutes', 60)) }}
        union all
        -- each market's newest stored bucket, if it was forming at the last build and has closed since
        select newest.exchange, newest.symbol, newest.open_time
        from {{ distinct_markets(this) }} as market
        cross join lateral (
            select stored.exchange, stored.symbol, stored.open_time, stored.close_time, stored.is_closed
            from {{ this }} as stored
            where stored.exchange = market.exchange
              and stored.symbol = market.symbol
            order by stored.open_time desc
            limit 1
        ) as newest
        where not newest.is_closed
          and newest.close_time <= {{ dq_as_of() }}
        {%- endif %}
    ) as candidates
),

rollup_parts as (
    -- one index range scan of the finer table per touched bucket (LATERAL: never a merge join on
    -- the market with a range filter, which the planner picks when it underestimates the buckets)
    select p.*, rollup_touched.bucket
    from rollup_touched
    cross join lateral (
        select *
        from {{ finer }} as part
        where part.exchange = rollup_touched.exchange
          and part.symbol = rollup_touched.symbol
          and part.open_time >= rollup_touched.bucket
          and part.open_time < rollup_touched.bucket + {{ width }}
        offset 0  -- keeps the subquery from being flattened into a join
    ) as p
)
{%- else %}
rollup_parts as (
    select p.*, {{ utc_bucket('p.open_time', timeframe) }} as bucket
    from {{ finer }} as p
)
{%- endif %}
{{ rollup_aggregate(timeframe, 'rollup_parts') }}
{%- endmacro %}

{#-
  Outside unit tests, a pre-hook (rollup_new_candles, same transaction, dropped at commit) writes those
  candles into a temporary table with an index on the key, and the model reads them from there: the
  indicator computation looks them up per market many times (the candle series from a time on, the
  stored rows not recomputed, the seeds' first candles), and on a CTE every lookup scans all of it
  (markets x rows: bench 9's hourly ohlcv_5m at 200 markets took 48 s instead of 8, 42,400 stored
  rows each scanning the 4,800 touched buckets; its full build 14 s instead of 4). On the indexed
  temporary table each is an index probe or range scan. Unit tests (no hooks) read a CTE.
-#}
{% macro rollup_new_candles_in_temp_table() -%}
    {{ return(execute and model.resource_type != 'unit_test') }}
{%- endmacro %}

{% macro rollup_new_candles(timeframe) -%}
{%- if rollup_new_candles_in_temp_table() -%}
create temporary table rollup_new_candles on commit drop as
{{ rollup_new_candles_sql(timeframe) }};
create index on rollup_new_candles (exchange, symbol, open_time);
analyze rollup_new_candles
{%- endif -%}
{%- endmacro %}

{% macro ohlcv_rollup(timeframe) -%}
{%- set candle_columns = rollup_candle_columns() -%}
{%- set columns = ['exchange', 'symbol', 'open_time'] + candle_columns + ['last_ingested_at'] -%}
{%- set new = 'rollup_new_candles' if rollup_new_candles_in_temp_table() else 'rolled' -%}
{{- require_columns(['is_closed', 'quote_volume_missing_minutes']) }}
{#- a rollup built before its indicators moved onto its rows: every rollup is rebuilt once (each is
    built from the next finer one; indicators_* become views of the new columns), or, where retention
    has dropped 1m months (a full refresh would lose their buckets), moved in place -#}
{{- require_columns(['candle_index', 'inputs_complete', 'macd_fast_ema'],
                    rebuild_select='ohlcv_5m+ (or, once retention has dropped months of ohlcv_1m, in place:'
                                   ~ ' dbt run-operation move_rollup_indicators_onto_rows, then dbt build -s ohlcv_5m+)') }}
{{- refuse_rollup_rebuild_after_retention() }}
with
{%- if new == 'rolled' %}
rolled as materialized (
{{ rollup_new_candles_sql(timeframe) }}
),
{%- endif %}

-- The candle series the indicators run over: the (re)computed buckets and, on an incremental run, the
-- stored rows not recomputed. NOT MATERIALIZED, so each read of it below (per market, from a time on)
-- is an index range scan of both, never the whole table.
rollup_candles as not materialized (
    select {% for c in columns %}new.{{ c }}{{ ', ' if not loop.last }}{% endfor %}
    from {{ new }} as new
    {%- if is_incremental() %}
    union all
    select {% for c in columns %}stored.{{ c }}{{ ', ' if not loop.last }}{% endfor %}
    from {{ this }} as stored
    where not exists (
        select 1
        from {{ new }} as recomputed
        where recomputed.exchange = stored.exchange
          and recomputed.symbol = stored.symbol
          and recomputed.open_time = stored.open_time
    )
    {%- endif %}
)

-- the candle and its indicators on one row (macros/ohlcv_indicators.sql, candle_columns mode; the
-- view indicators_{{ timeframe }} shows them as the table it was). Recomputed rows equal to the
-- stored ones (candle and indicators, as text) are left out: a run without new data writes nothing.
select *
from (
{{ ohlcv_indicators('rollup_candles', 'last_ingested_at', timeframe, candle_columns=candle_columns) }}
) as candle_with_indicators
{%- endmacro %}

{#- indicators_5m ... indicators_1w: the indicator columns of the rollup's rows (close and is_closed are the
    candle's; the columns, order and types in macros/indicator_view_columns.sql, shared with
    indicators_1m). A plain projection: filters on the key use the rollup's (exchange, symbol,
    open_time desc) index. -#}
{% macro rollup_indicators_view(timeframe) -%}
select
{{ indicator_view_columns() }}
from {{ ref('ohlcv_' ~ timeframe) }}
{%- endmacro %}

{#-
  A full refresh of a rollup after retention dropped months of ohlcv_1m (ops.partition_retention)
  would rebuild it from the months left and silently lose every older bucket: the rollups keep
  everything. Refused, with the way out, unless the var says the loss is meant.
-#}
{% macro refuse_rollup_rebuild_after_retention() -%}
  {%- if execute and model.resource_type != 'unit_test' and should_full_refresh()
        and not var('rebuild_rollups_after_retention', false) and load_relation(this) is not none -%}
    {%- set floor = run_query("select min(keep_from)::text from ops.partition_retention")
                        .columns[0].values()[0] -%}
    {%- if floor is not none -%}
      {{ exceptions.raise_compiler_error(
          this ~ ": a full refresh would rebuild it from ohlcv_1m, whose months before " ~ floor
          ~ " retention has dropped, and lose every older bucket (the rollups keep everything). Fix: leave the "
          ~ "rollups out of the full refresh (--exclude ohlcv_5m+), or pass --vars "
          ~ "'{rebuild_rollups_after_retention: true}' if losing them is meant") }}
    {%- endif -%}
  {%- endif -%}
{%- endmacro %}
