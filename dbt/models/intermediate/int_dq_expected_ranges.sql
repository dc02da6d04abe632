{{ config(post_hook="analyze {{ this }}") }}

{#-
  The open times each candle series is expected to have: [range_start, range_end), one row per
  (exchange, symbol, timeframe) that is configured (ops.market_config) or has candles.

  configured  range_start = history_start floored to the timeframe's grid (the extract fetches the
              candle containing history_start); range_end = the earliest of
                - the in-progress candle's open time at (build time dq_as_of() minus var
                  dq_expected_delay_minutes, default 2): every candle that closed at least that
                  long ago is expected (a healthy minute DAG lands a minute within seconds of
                  its close; the one being loaded right now is not missing),
                - history_end ceiled to the grid (candles opening before history_end are fetched),
                - for a disabled market, the end of its last candle (no new data is expected once a
                  market stops being extracted; holes before that still count).
  observed    a series with candles but no market_config row (e.g. loaded before the first sync):
              [first candle, end of the last candle), so only holes between candles count.

  Not incremental: it depends on the build time. A handful of rows; the series and their first/last
  candles are found with index probes (dq_distinct_series + min/max per series).
-#}

with config as (
    select exchange, symbol, timeframe, history_start, history_end, enabled
    from {{ ref('stg_market_config') }}
),

series as (
    select
        s.exchange,
        s.symbol,
        s.timeframe,
        bounds.first_candle_at,
        bounds.last_candle_at
    from {{ dq_distinct_series(ref('stg_ohlcv')) }} as s
    -- the first and the last candle: two probes of staging's (market_id, open_time) key
    cross join lateral (
        select
            (
                select c.open_time
                from {{ ref('stg_ohlcv') }} as c
                where {{ stg_series_filter('c', 's.exchange', 's.symbol', 's.timeframe') }}
                order by c.open_time
                limit 1
            ) as first_candle_at,
            (
                select c.open_time
                from {{ ref('stg_ohlcv') }} as c
                where {{ stg_series_filter('c', 's.exchange', 's.symbol', 's.timeframe') }}
                order by c.open_time desc
                limit 1
            ) as last_candle_at
    ) as bounds
),

combined as (
    select
        coalesce(config.exchange, series.exchange)              as exchange,
        coalesce(config.symbol, series.symbol)                  as symbol,
        coalesce(config.timeframe, series.timeframe)            as timeframe,
        case when config.exchange is null then 'observed' else 'config' end as range_source,
        coalesce(config.enabled, true)                          as enabled,
        config.history_start,
        config.history_end,
        series.first_candle_at,
        series.last_candle_at
    from config
    full outer join series
        on config.exchange = series.exchange
       and config.symbol = series.symbol
       and config.timeframe = series.timeframe
),

bounded as (
    select
        *,
        {{ timeframe_to_interval('timeframe') }} as step,
        case
            when range_source = 'observed' then first_candle_at
            else {{ dq_floor_time('history_start', 'timeframe') }}
        end as range_start,
        case
            when range_source = 'observed' then last_candle_at + {{ timeframe_to_interval('timeframe') }}
            -- least() ignores NULLs: no history_end = live, an enabled market has no candle bound
            else least(
                {{ dq_floor_time(dq_as_of() ~ " - interval '" ~ (var('dq_expected_delay_minutes', 2) | int) ~ " minutes'", 'timeframe') }},
                {{ dq_ceil_time('history_end', 'timeframe') }},
                case when not enabled
                    then coalesce(last_candle_at + {{ timeframe_to_interval('timeframe') }}, '-infinity'::timestamptz)
                end
            )
        end as unclipped_end
    from combined
)

select
    exchange,
    symbol,
    timeframe,
    range_source,
    enabled,
    history_start,
    history_end,
    first_candle_at,
    last_candle_at,
    range_start,
    greatest(range_start, unclipped_end)                                    as range_end,
    (extract(epoch from greatest(range_start, unclipped_end) - range_start)
        / extract(epoch from step))::bigint                                 as expected_candles,
    {{ dq_as_of() }}                                                        as as_of
from bounded
-- a timeframe string that is not a ccxt timeframe has no grid (stg_ohlcv's tests report it)
where step is not null
