{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key=['exchange', 'symbol', 'timeframe'],
        on_schema_change='fail',
        post_hook=[
            "{{ dq_delete_gone_series() }}",
            "{{ analyze_when_changed() }}",
        ],
        indexes=[
            {'columns': ['exchange', 'symbol', 'timeframe', 'gap_start'], 'unique': true},
            {'columns': ['checked_at']},
        ],
    )
}}

{#-
  The missing intervals (holes) of every candle series inside its expected range
  (int_dq_expected_ranges), without repair state: the candle-reading half of data_quality_gaps.
  One row per hole, plus per series exactly one tail row (gap_kind 'trailing', or 'no_candles'
  for a series without a candle in its range) from the end of the last candle to range_end, kept
  even when empty (gap_start = gap_end): its gap_start is the series' watermark, the position up
  to which its holes are final.

  Incremental (delete+insert per series; the series' rows are small in number, a few per hole):
  per series it re-reads only
    - the tail [watermark, range_end): the candles loaded since the last build (the candle before
      them is the watermark's, so it is not read again),
    - each stored hole that a candle ingested since the last build (its checked_at, minus var
      dq_lookback_minutes: loads that commit late) falls into: a late or backfilled candle (only
      that hole's window is read: the candles in it are the new ones),
  and copies its other holes unchanged. A series is read whole when it has no rows yet, its
  range_start moved (history_start changed, an observed series backfilled) or its range_end moved
  before its watermark (history_end set, a market disabled). Cost: an index probe per series,
  the candles ingested since the watermark, and the rows of this table (one per hole), whatever
  the history. Deleted staging candles are not noticed (as for ohlcv_1m and
  int_dq_candle_hours_1m): `dbt build --full-refresh` after deletions.
-#}

with ranges as (
    select
        exchange,
        symbol,
        timeframe,
        range_start,
        range_end,
        {{ timeframe_to_interval('timeframe') }} as step
    from {{ ref('int_dq_expected_ranges') }}
    where range_end > range_start
),

{% if is_incremental() %}
tails as (
    select exchange, symbol, timeframe, range_start, gap_start as watermark
    from {{ this }}
    where gap_kind in ('trailing', 'no_candles')
),

plan as (
    select
        r.*,
        t.watermark,
        -- read the whole series: new, or its range moved under the rows held
        t.exchange is null
            or t.range_start <> r.range_start
            or r.range_end < t.watermark        as read_whole
    from ranges as r
    left join tails as t
        on t.exchange = r.exchange and t.symbol = r.symbol and t.timeframe = r.timeframe
),

-- candles ingested since the last build (minus the lookback: loads that commit late): one scan of
-- the BRIN on ingested_at (materialized: as a join, the planner probes each series' whole history)
recent as materialized (
    select c.exchange, c.symbol, c.timeframe, c.open_time
    from {{ ref('stg_ohlcv') }} as c
    where c.ingested_at > {{ incremental_watermark('checked_at', var('dq_lookback_minutes', 60)) }}
),

-- those before their series' watermark: each can only fall into a stored hole
late as (
    select r.exchange, r.symbol, r.timeframe, r.open_time
    from recent as r
    join plan as p
        on p.exchange = r.exchange and p.symbol = r.symbol and p.timeframe = r.timeframe
       and not p.read_whole
       and r.open_time >= p.range_start
       and r.open_time < p.watermark
),

late_spans as (
    select exchange, symbol, timeframe, min(open_time) as first_late, max(open_time) as last_late
    from late
    group by exchange, symbol, timeframe
),

-- the stored holes a late candle falls into (none when the candle was already there: a revised
-- one): per series an index range scan of its holes between its first and last late candle
hit_holes as (
    select distinct h.exchange, h.symbol, h.timeframe, h.gap_start, h.gap_end
    from late_spans as sp
    cross join lateral (
        select s.exchange, s.symbol, s.timeframe, s.gap_start, s.gap_end
        from {{ this }} as s
        where s.exchange = sp.exchange and s.symbol = sp.symbol and s.timeframe = sp.timeframe
          and s.gap_start <= sp.last_late
          and s.gap_end > sp.first_late
        offset 0
    ) as h
    join late as l
        on l.exchange = h.exchange and l.symbol = h.symbol and l.timeframe = h.timeframe
       and l.open_time >= h.gap_start
       and l.open_time < h.gap_end
),

windows as (
    -- a series read whole
    select exchange, symbol, timeframe, range_start, range_end, step,
           range_start as window_start, range_end as window_end, true as is_tail
    from plan
    where read_whole
    union all
    -- its tail: from the watermark (the end of the last candle) to the range end
    select exchange, symbol, timeframe, range_start, range_end, step,
           watermark, range_end, true
    from plan
    where not read_whole
    union all
    -- a stored hole a late candle fell into
    select p.exchange, p.symbol, p.timeframe, p.range_start, p.range_end, p.step,
           h.gap_start, h.gap_end, false
    from hit_holes as h
    join plan as p
        on p.exchange = h.exchange and p.symbol = h.symbol and p.timeframe = h.timeframe
),

kept as (
    -- the holes held before the watermark that no late candle fell into
    select s.exchange, s.symbol, s.timeframe, s.range_start, s.gap_start, s.gap_end, s.gap_kind, s.checked_at
    from {{ this }} as s
    join plan as p
        on p.exchange = s.exchange and p.symbol = s.symbol and p.timeframe = s.timeframe
       and not p.read_whole
       and s.gap_start < p.watermark
    where not exists (
        select 1
        from hit_holes as h
        where h.exchange = s.exchange and h.symbol = s.symbol and h.timeframe = s.timeframe
          and h.gap_start = s.gap_start
    )
),
{% else %}
windows as (
    select exchange, symbol, timeframe, range_start, range_end, step,
           range_start as window_start, range_end as window_end, true as is_tail
    from ranges
),
{% endif %}

-- per window, one ordered scan of staging.candle's (market_id, open_time) key over it, keeping the
-- candles with a hole before or after them (and the window's first and last); the window starts
-- right after a candle (or at the range start) and ends at a candle (or the range end)
edges as (
    select w.*, n.open_time, n.prev_open_time, n.next_open_time
    from windows as w
    left join lateral (
        select *
        from (
            select
                c.open_time,
                lag(c.open_time) over series  as prev_open_time,
                lead(c.open_time) over series as next_open_time
            from {{ ref('stg_ohlcv') }} as c
            where {{ stg_series_filter('c', 'w.exchange', 'w.symbol', 'w.timeframe') }}
              and c.open_time >= w.window_start
              and c.open_time < w.window_end
            window series as (order by c.open_time)
        ) as neighbours
        where neighbours.prev_open_time is null
           or neighbours.next_open_time is null
           or neighbours.next_open_time > neighbours.open_time + w.step
    ) as n on true
),

holes as (
    select e.exchange, e.symbol, e.timeframe, e.range_start, hole.gap_start, hole.gap_end, hole.gap_kind
    from edges as e
    cross join lateral (
        values
            -- a window without candles: all of it
            (case when e.open_time is null then e.window_start end,
             e.window_end,
             case
                 when e.is_tail and e.window_start = e.range_start then 'no_candles'
                 when e.is_tail then 'trailing'
                 when e.window_start = e.range_start then 'leading'
                 else 'interior'
             end),
            -- before the window's first candle
            (case when e.prev_open_time is null and e.open_time > e.window_start then e.window_start end,
             e.open_time,
             case when e.window_start = e.range_start then 'leading' else 'interior' end),
            -- after a candle: up to the next one, or after the last one to the window's end; a
            -- tail window's last candle always gives its row (the watermark), even empty
            (case when e.next_open_time > e.open_time + e.step
                    or (e.next_open_time is null and (e.is_tail or e.window_end > e.open_time + e.step))
                  then e.open_time + e.step end,
             coalesce(e.next_open_time, e.window_end),
             case when e.next_open_time is null and e.is_tail then 'trailing' else 'interior' end)
    ) as hole (gap_start, gap_end, gap_kind)
    where hole.gap_start is not null
)

select exchange, symbol, timeframe, range_start, gap_start, gap_end, gap_kind, now() as checked_at
from holes
{% if is_incremental() %}
union all
select exchange, symbol, timeframe, range_start, gap_start, gap_end, gap_kind, checked_at
from kept
{% endif %}
