{#-
  The hours of each 1m series that an incremental data-quality model of hour rows recomputes
  (int_dq_hourly_1m, data_quality_summary): the CTEs `dq_ranges` (the series' expected ranges) and
  `dq_plan` (exchange, symbol, range_start, range_end, recompute_from), for a WITH list.
  `stored` is the model's own relation, `stored_filter` picks its hour rows of 1m series.

  A full build recomputes everything (recompute_from = -infinity). An incremental one recomputes a
  series from the earliest of
    - the last hour it holds: the range end moved since (build time), so that hour (cut by the old
      end) and the hours after it are new or changed; least() with the new end's hour covers a
      range that shrank (a market disabled, history_end set),
    - per symbol, the first hour of int_dq_candle_hours_1m changed since the model's newest
      max_ingested_at minus var dq_lookback_minutes (the same watermark as the candle hours; all
      exchanges of the symbol: their divergence reads each other's closes), counting only hours
      inside some range of the symbol (a row outside every range changes nothing here, and would
      otherwise be re-read until an in-range one is newer),
    - the first hour of loader anomalies recorded since that watermark;
  nothing when none of these applies (a finished series), and the whole series when its first
  stored hour or that hour's expected count differs from the range's (history_start changed, a
  series first seen). Hours outside the ranges are
  deleted by dq_delete_outside_ranges (post-hook). Cost: an index probe or two per series plus
  the changed rows, whatever the history. Deleted staging candles are not noticed (as for
  ohlcv_1m and int_dq_candle_hours_1m): `dbt build --full-refresh` after deletions.
-#}
{% macro dq_hourly_plan(stored, stored_filter='true') -%}
dq_ranges as (
    select exchange, symbol, range_start, range_end
    from {{ ref('int_dq_expected_ranges') }}
    where timeframe = '1m'
      and range_end > range_start
),

{% if is_incremental() and rebuild_slice() is not none -%}
{%- set slice = rebuild_slice() %}
-- `marketflow rebuild` (macros/rebuild_slice.sql): the slice's series from its first hour on
dq_plan as (
    select
        exchange,
        symbol,
        range_start,
        range_end,
        {{ "date_trunc('hour', " ~ rebuild_literal(slice['start']) ~ "::timestamptz, 'UTC')" if slice.get('start')
           else "'-infinity'::timestamptz" }} as recompute_from
    from dq_ranges
    where {{ rebuild_filter(none) }}
)
{% elif is_incremental() -%}
{%- set watermark = incremental_watermark('max_ingested_at', var('dq_lookback_minutes', 60)) %}
dq_changed_symbols as (
    select h.symbol, min(h.period_start) as changed_from
    from {{ ref('int_dq_candle_hours_1m') }} as h
    where h.max_ingested_at > {{ watermark }}
      and exists (
          select 1 from dq_ranges as r
          where r.symbol = h.symbol
            and h.period_start >= date_trunc('hour', r.range_start, 'UTC')
            and h.period_start < r.range_end
      )
    group by h.symbol
),

dq_changed_anomalies as (
    select exchange, symbol, date_trunc('hour', min(open_time), 'UTC') as changed_from
    from {{ ref('stg_ohlcv_anomalies') }}
    where timeframe = '1m'
      and recorded_at > {{ watermark }}
    group by exchange, symbol
),

dq_plan as (
    select
        r.exchange,
        r.symbol,
        r.range_start,
        r.range_end,
        case
            when first_row.period_start is distinct from date_trunc('hour', r.range_start, 'UTC')
              or first_row.expected is distinct from (extract(epoch from
                     least(date_trunc('hour', r.range_start, 'UTC') + interval '1 hour', r.range_end)
                     - r.range_start) / 60)::bigint
                then '-infinity'::timestamptz
            -- infinity: nothing to recompute
            else coalesce(least(
                case when last_row.period_start is distinct from date_trunc('hour', r.range_end - interval '1 minute', 'UTC')
                       or last_row.expected is distinct from (extract(epoch from
                              least(last_row.period_start + interval '1 hour', r.range_end)
                              - greatest(last_row.period_start, r.range_start)) / 60)::bigint
                    then least(last_row.period_start, date_trunc('hour', r.range_end - interval '1 minute', 'UTC'))
                end,
                changed_symbols.changed_from,
                changed_anomalies.changed_from
            ), 'infinity'::timestamptz)
        end as recompute_from
    from dq_ranges as r
    left join dq_changed_symbols as changed_symbols on changed_symbols.symbol = r.symbol
    left join dq_changed_anomalies as changed_anomalies
        on changed_anomalies.exchange = r.exchange and changed_anomalies.symbol = r.symbol
    -- index probes: the first and the last hour the model holds for the series
    left join lateral (
        select s.period_start, s.expected
        from {{ stored }} as s
        where s.exchange = r.exchange and s.symbol = r.symbol and {{ stored_filter }}
        order by s.period_start
        limit 1
    ) as first_row on true
    left join lateral (
        select s.period_start, s.expected
        from {{ stored }} as s
        where s.exchange = r.exchange and s.symbol = r.symbol and {{ stored_filter }}
        order by s.period_start desc
        limit 1
    ) as last_row on true
)
{%- else -%}
dq_plan as (
    select exchange, symbol, range_start, range_end, '-infinity'::timestamptz as recompute_from
    from dq_ranges
)
{%- endif %}
{%- endmacro %}


{#-
  Post-hook of the models that use dq_hourly_plan: delete their rows outside the current expected
  ranges (a series gone from the ranges, hours before a later range start or after an earlier
  end). `grain` ('hour' or 'day') floors range_start; `row_filter` picks the rows of that grain.
  Two index range scans per series held; nothing deleted when nothing is outside.
-#}
{% macro dq_delete_outside_ranges(grain='hour', row_filter='true') -%}
    {%- set held -%}
        (
            select m.exchange, m.symbol, r.range_start, r.range_end
            from {{ distinct_markets(this) }} as m
            left join {{ ref('int_dq_expected_ranges') }} as r
                on r.exchange = m.exchange and r.symbol = m.symbol and r.timeframe = '1m'
               and r.range_end > r.range_start
        )
    {%- endset -%}
    delete from {{ this }}
    where ctid = any(array(
        select x.ctid
        from {{ held }} as s
        cross join lateral (
            select t.ctid from {{ this }} as t
            where t.exchange = s.exchange and t.symbol = s.symbol and {{ row_filter }}
              and t.period_start < coalesce(date_trunc('{{ grain }}', s.range_start, 'UTC'), 'infinity'::timestamptz)
            offset 0  -- an index range scan per series (as a join: a scan of the whole table)
        ) as x
    ));
    delete from {{ this }}
    where ctid = any(array(
        select x.ctid
        from {{ held }} as s
        cross join lateral (
            select t.ctid from {{ this }} as t
            where t.exchange = s.exchange and t.symbol = s.symbol and {{ row_filter }}
              and t.period_start >= s.range_end
            offset 0
        ) as x
    ))
{%- endmacro %}


{#-
  Post-hook of int_dq_gap_holes: delete the rows of series no longer in the expected ranges (a
  market removed from the markets file without candles, a range now empty). Reads this table
  (one row per hole) and the ranges, never the candles.
-#}
{% macro dq_delete_gone_series() -%}
    delete from {{ this }} as h
    where not exists (
        select 1
        from {{ ref('int_dq_expected_ranges') }} as r
        where r.exchange = h.exchange and r.symbol = h.symbol and r.timeframe = h.timeframe
          and r.range_end > r.range_start
    )
{%- endmacro %}
