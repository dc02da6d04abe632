-- Re-fetch tasks (gap repairs), one row per (exchange, symbol, timeframe, window).
select
    task_id::bigint             as task_id,
    exchange::text              as exchange,
    symbol::text                as symbol,
    timeframe::text             as timeframe,
    window_start::timestamptz   as window_start,
    window_end::timestamptz     as window_end,
    reason::text                as reason,
    priority::bigint            as priority,
    status::text                as status,
    outcome::text               as outcome,
    attempts::integer           as attempts,
    max_attempts::integer       as max_attempts,
    candles_found::integer      as candles_found,
    last_error::text            as last_error,
    last_run_id::text           as last_run_id,
    created_at::timestamptz     as created_at,
    updated_at::timestamptz     as updated_at
from {{ source('ops', 'backfill_tasks') }}
