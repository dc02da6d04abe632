{{
    config(
        post_hook="analyze {{ this }}",
        indexes=[{'columns': ['exchange', 'symbol', 'timeframe', 'gap_start', 'gap_end'], 'unique': true}],
    )
}}

{#-
  Missing candle intervals per (exchange, symbol, timeframe), with the repair state from
  ops.backfill_tasks. See data_quality_gaps.yml for the contract.

  The holes come from the incremental int_dq_gap_holes (which reads only the candles loaded since
  its per-series watermark, and the holes late candles fall into); this table joins them with the
  repair tasks: it is rebuilt every run from one row per hole and per task, never from the
  candles, so it costs the same at any history. The unique index on (exchange, symbol, timeframe,
  gap_start, gap_end) serves "a market's gaps over a period".
-#}

with missing as (
    select
        exchange,
        symbol,
        timeframe,
        {{ timeframe_to_interval('timeframe') }} as step,
        gap_start,
        gap_end,
        gap_kind
    from {{ ref('int_dq_gap_holes') }}
    -- the tail row of a series whose last candle ends at its range end is empty
    where gap_end > gap_start
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
