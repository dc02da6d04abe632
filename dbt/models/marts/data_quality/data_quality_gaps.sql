{{
    config(
        post_hook="analyze {{ this }}",
        indexes=[{'columns': ['exchange', 'symbol', 'timeframe', 'gap_start', 'gap_end'], 'unique': true}],
    )
}}

{#-
  Missing candle intervals per (exchange, symbol, timeframe), with the repair state from
  ops.backfill_tasks. See data_quality_gaps.yml for the contract.

  Gaps come from neighbouring present candles (lag/lead over each series' open times inside its
  expected range), never from a series of every expected open time: per series one ordered
  index-only scan of staging.ohlcv's primary key (no sort), linear in the number of candles.
  A series with no candle at all in its range is one gap over the whole range (an index probe per
  series). A table rebuilt every run: the expected range ends at build time. The unique index on
  (exchange, symbol, timeframe, gap_start, gap_end) serves "a market's gaps over a period".
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

-- per series, one ordered index-only scan of staging.ohlcv's primary key over its range; only
-- candles with a hole before them (the first one, after the range start) or after them are kept
edges as (
    select r.exchange, r.symbol, r.timeframe, r.range_start, r.range_end, r.step, n.*
    from ranges as r
    cross join lateral (
        select *
        from (
            select
                c.open_time,
                lag(c.open_time) over series  as prev_open_time,
                lead(c.open_time) over series as next_open_time
            from {{ ref('stg_ohlcv') }} as c
            where c.exchange = r.exchange
              and c.symbol = r.symbol
              and c.timeframe = r.timeframe
              and c.open_time >= r.range_start
              and c.open_time < r.range_end
            window series as (order by c.open_time)
        ) as neighbours
        where (neighbours.prev_open_time is null and neighbours.open_time > r.range_start)
           or coalesce(neighbours.next_open_time, r.range_end) > neighbours.open_time + r.step
    ) as n
),

missing as (
    select
        e.exchange,
        e.symbol,
        e.timeframe,
        e.step,
        hole.gap_start,
        hole.gap_end,
        hole.gap_kind
    from edges as e
    cross join lateral (
        values
            (case when e.prev_open_time is null and e.open_time > e.range_start then e.range_start end,
             e.open_time,
             'leading'),
            (case when coalesce(e.next_open_time, e.range_end) > e.open_time + e.step then e.open_time + e.step end,
             coalesce(e.next_open_time, e.range_end),
             case when e.next_open_time is null then 'trailing' else 'interior' end)
    ) as hole (gap_start, gap_end, gap_kind)
    where hole.gap_start is not null

    union all

    select
        r.exchange,
        r.symbol,
        r.timeframe,
        r.step,
        r.range_start   as gap_start,
        r.range_end     as gap_end,
        'no_candles'    as gap_kind
    from ranges as r
    where not exists (
        select 1
        from {{ ref('stg_ohlcv') }} as c
        where c.exchange = r.exchange
          and c.symbol = r.symbol
          and c.timeframe = r.timeframe
          and c.open_time >= r.range_start
          and c.open_time < r.range_end
    )
),

tasks as (
    select *
    from {{ ref('stg_backfill_tasks') }}
),

-- A long gap is repaired in chunks (ops.schedule_gap_repairs), so a gap's tasks are the ones whose
-- window overlaps it: one pending or running makes it repair_scheduled; windows the exchange cannot fill
-- (confirmed empty, or older than its history depth) that cover all of it make it
-- beyond_exchange_history when any of them is beyond the history, else confirmed_empty_at_source. The task shown is the active one, else the one
-- with exactly the gap's window, else the latest.
overlapping as (
    select
        m.exchange,
        m.symbol,
        m.timeframe,
        m.gap_start,
        m.gap_end,
        t.task_id,
        t.status,
        t.outcome,
        t.attempts,
        t.last_error,
        t.candles_found,
        t.updated_at,
        t.status in ('pending', 'running')                               as is_active,
        (t.window_start, t.window_end) = (m.gap_start, m.gap_end)          as is_exact,
        tstzrange(t.window_start, t.window_end)                            as task_window
    from missing as m
    join tasks as t
        on t.exchange = m.exchange
       and t.symbol = m.symbol
       and t.timeframe = m.timeframe
       and t.window_start < m.gap_end
       and t.window_end > m.gap_start
),

shown as (
    select distinct on (exchange, symbol, timeframe, gap_start) *
    from overlapping
    order by exchange, symbol, timeframe, gap_start, is_active desc, is_exact desc, updated_at desc, task_id desc
),

settled as (
    select
        exchange,
        symbol,
        timeframe,
        gap_start,
        bool_or(outcome = 'beyond_exchange_history') as beyond_history
    from overlapping
    where status = 'completed' and outcome in ('confirmed_empty', 'beyond_exchange_history')
    group by exchange, symbol, timeframe, gap_start, gap_end
    having range_agg(task_window) @> tstzrange(gap_start, gap_end)
),

gaps as (
    select
        m.exchange,
        m.symbol,
        m.timeframe,
        m.gap_start,
        m.gap_end,
        m.step,
        m.gap_kind,
        case
            when t.is_active then 'repair_scheduled'
            when e.beyond_history then 'beyond_exchange_history'
            when e.gap_start is not null then 'confirmed_empty_at_source'
            -- no task, failed ones, or ones that claim a repair while the window is still empty
            else 'open'
        end as status,
        t.task_id,
        t.status        as task_status,
        t.outcome       as task_outcome,
        t.attempts,
        t.last_error,
        t.candles_found,
        t.updated_at
    from missing as m
    left join shown as t
        on t.exchange = m.exchange and t.symbol = m.symbol and t.timeframe = m.timeframe
       and t.gap_start = m.gap_start
    left join settled as e
        on e.exchange = m.exchange and e.symbol = m.symbol and e.timeframe = m.timeframe
       and e.gap_start = m.gap_start
),

-- completed repairs whose window is not (any more) inside a gap: the record that it was filled
repaired as (
    select
        t.exchange,
        t.symbol,
        t.timeframe,
        t.window_start  as gap_start,
        t.window_end    as gap_end,
        {{ timeframe_to_interval('t.timeframe') }} as step,
        null::text      as gap_kind,
        'repaired'      as status,
        t.task_id,
        t.status        as task_status,
        t.outcome       as task_outcome,
        t.attempts,
        t.last_error,
        t.candles_found,
        t.updated_at
    from tasks as t
    where t.status = 'completed'
      and t.outcome = 'repaired'
      and not exists (
          select 1
          from missing as m
          where m.exchange = t.exchange
            and m.symbol = t.symbol
            and m.timeframe = t.timeframe
            and m.gap_start <= t.window_start
            and m.gap_end >= t.window_end
      )
),

all_rows as (
    select * from gaps
    union all
    select * from repaired
)

select
    exchange,
    symbol,
    timeframe,
    gap_start,
    gap_end,
    (extract(epoch from gap_end - gap_start) / extract(epoch from step))::bigint    as missing_candles,
    (extract(epoch from gap_end - gap_start) / 60)::bigint                          as missing_minutes,
    gap_kind,
    status,
    status <> 'repaired'                                                            as is_missing,
    task_id,
    task_status,
    task_outcome,
    attempts,
    last_error,
    candles_found,
    updated_at
from all_rows
