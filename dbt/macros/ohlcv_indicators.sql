{#-
  Technical indicators of one candle table (ohlcv_1m or a rollup), one row per candle, computed
  over the market's PRESENT candles in open_time order (a gap is not filled: the row before a gap
  is simply the previous row). The values equal TA-Lib's (SMA, EMA, RSI, MACD with its default
  compatibility, tested against the `ta-lib` wheel on the real sample days) on the series of
  closes. Conventions, n = the period, k = the candle's 1-based position in its market's series
  (column candle_index):

    sma_n          mean of the last n closes; NULL while k < n. The sum is exact (difference of
                   a numeric running sum, at scale 30 so the result does not depend on where the
                   running sum started), divided in numeric (>= 30 decimals), then double.
    ema_n          seeded at k = n with sma_n (same value as the SMA above), then
                   ema := (close - ema) * (2 / (n + 1)) + ema in double precision; NULL while k < n.
    rsi_14         Wilder: change = close - previous close (exact, then double); at k = 15 the
                   averages are the means of the first 14 gains / losses (exact, then double),
                   then avg := (avg * 13 + x) / 14; rsi = 100 * (avg_gain / (avg_gain + avg_loss)),
                   0 when both averages are 0 (no movement: TA-Lib's value); NULL while k < 15.
    macd_fast_ema  MACD's own EMA(12), seeded where TA-Lib's MACD seeds it: at k = 26 (where the
                   slow EMA starts) with the mean of closes 15..26, then the EMA step. Not ema_12
                   (seeded at k = 12): the two converge but are not equal.
    macd_line      macd_fast_ema - ema_26, shown from k = 34 like TA-Lib's output (the values at
                   26..33 only seed the signal).
    macd_signal    EMA(9) of the MACD line, seeded with the (double) mean of its first 9 values
                   (k = 26..34): from k = 34.
    macd_histogram macd_line - macd_signal.

  Flags: is_closed = the candle's interval has ended (the rollup's is_closed; always true for 1m),
  false for the bucket still forming, whose values will change. inputs_complete = is_closed and
  the last 200 candles up to this one (fewer at the start of the series: every candle since) are
  all complete (every minute present, closed) with no missing candle between them: 200 is the
  longest window (sma_200); beyond it the EMA / Wilder weights are below (1 - 2/51)^200 ~ 4e-4.
  False = some value of the row comes from partial data.

  EMA and Wilder averages and the MACD signal run through one running-state aggregate of
  indicator_functions.sql (indicator_state: all seven states in one call per row), as a window
  function over ROWS UNBOUNDED PRECEDING (one pass, O(n)). The whole computation is two window
  passes over one sort (running counts, sums and lags; then the SMAs and the states): each window
  pass stores and re-reads every row, and a plpgsql call per state and row cost more than the
  arithmetic (five window passes and seven aggregate calls a row before).

  Incremental runs. The watermark is the newest last_ingested_at already in {{ this }} minus
  ohlcv_lookback_minutes (as for ohlcv_1m and the rollups); candles of the source written since
  (ingested_at / last_ingested_at) are "touched", and so is a market's newest stored row if it
  was stored from a forming candle that the source now has closed (is_closed flips with no new
  minute: one index probe per market). Per market with touched candles:
    * from_time = its earliest touched candle; every row from there on is recomputed (a changed or
      inserted candle changes all later EMA/RSI values and candle_index);
    * the stored row right before from_time is the anchor: its ema_*, rsi_avg_*_14,
      macd_fast_ema and macd_signal ARE the aggregates' state, so they are passed as seeds and the
      recomputation continues exactly where a full build would be at that row; candle_index
      continues from the anchor's;
    * the 199 source candles before from_time are read as context for sma_200, inputs_complete
      and the first change (they are not rewritten);
    * no anchor, or an anchor with candle_index < 50 (a state still in warm-up): the market is
      recomputed from its first candle.
  Recomputed rows identical (as text) to the stored ones are not merged, so a run without new
  candles rewrites nothing. Values are double precision, and an incremental run performs the
  same floating-point operations on the same inputs as a full build, so the two are identical.
-#}
{% macro ohlcv_indicators(candles, ingested_column, timeframe, candle_columns=none, dropped_columns=[],
                          series=['exchange', 'symbol'], output_columns=none) -%}
{#- candle_columns: ohlcv_1m's mode, the candle row and its indicators as one row (docs/storage.md).
    `candles` is then a parenthesised subquery of the 1m candles (staging), these columns of it are
    carried into the output, which has the candle's columns first, its ingested_column (the watermark:
    ohlcv_1m's ingested_at, a rollup's last_ingested_at) under that name, and no close copy, is_closed
    (a rollup's is one of its candle_columns) or macd_histogram (the indicators_* views derive them). dropped_columns: columns an older build of the table has and this one no longer
    writes (ohlcv_1m's lineage copies): an incremental run into such a table stops with the fix.
    series: the columns naming a market (candles_1m: ['market_id']). output_columns: the output's columns
    in this order (candles_1m's physical order, no alignment padding); {{ this }} has the same order. -#}
{%- set merged = candle_columns is not none -%}
{%- set out_ingested = ingested_column if merged else 'last_ingested_at' -%}  {#- the candle row's own name for it #}
{%- set indicator_state = indicator_function('indicator_state') -%}
{%- set continue_from_index = 50 -%}
{%- set input_window = 200 -%}
{%- set width_seconds = {'1m': 60, '5m': 300, '15m': 900, '1h': 3600, '1d': 86400, '1w': 604800}[timeframe] -%}
{%- set has_flags = timeframe != '1m' -%}  {#- ohlcv_1m holds closed minutes only; rollups carry the flags #}
{%- set state_columns = ['ema_12', 'ema_26', 'ema_50', 'rsi_avg_gain_14', 'rsi_avg_loss_14', 'macd_fast_ema',
                         'macd_signal'] -%}
{#- the elements of indicator_state's array, in order -#}
{%- set aggregate_states = indicator_state_columns() | map(attribute=0) | list + ['macd_signal'] -%}
{#- ohlcv_1m built before the indicators moved onto its rows: rebuilt alone (its candles, and so what
    is built from them, do not change; a rollup's full refresh would lose months retention dropped) #}
{%- if merged %}
{{- require_columns(['candle_index', 'inputs_complete', 'macd_fast_ema'],
                    rebuild_select=this.identifier ~ ' indicators_' ~ timeframe, dropped=dropped_columns) }}
{%- else %}
{{- require_columns(['is_closed', 'inputs_complete', 'macd_fast_ema']) }}
{%- endif %}
with
{%- if is_incremental() %}
touched as (
    select {{ series | join(', ') }}, min(from_time) as from_time
    from (
        select {{ series_columns('src.', series) }}, min(src.open_time) as from_time
        from {{ candles }} as src
        {%- if rebuild_slice() is not none %}
        -- `marketflow rebuild`: from the slice's first candle on (macros/rebuild_slice.sql)
        where {{ rebuild_filter('open_time', rebuild_width(timeframe), 'src.', by_market_id=series == ['market_id']) }}
        {%- else %}
        where src.{{ ingested_column }} > {{ incremental_watermark(out_ingested, var('ohlcv_lookback_minutes', 60)) }}
        {%- endif %}
        group by {{ series_columns('src.', series) }}
        {%- if has_flags and rebuild_slice() is none %}
        union all
        -- the newest stored row, computed from a forming candle that has closed since
        select newest.exchange, newest.symbol, newest.open_time
        from {{ distinct_markets(this) }} as market
        cross join lateral (
            select stored.exchange, stored.symbol, stored.open_time, stored.is_closed
            from {{ this }} as stored
            where stored.exchange = market.exchange
              and stored.symbol = market.symbol
            order by stored.open_time desc
            limit 1
        ) as newest
        where not newest.is_closed
          and exists (
              select 1
              from {{ candles }} as candle
              where candle.exchange = newest.exchange
                and candle.symbol = newest.symbol
                and candle.open_time = newest.open_time
                and candle.is_closed
          )
        {%- endif %}
    ) as starts
    group by {{ series | join(', ') }}
),

resume as (
    -- continue from the stored row before the first touched candle if its state is complete
    select
        {{ series_columns('touched.', series) }},
        case when anchor.candle_index is not null then touched.from_time end   as from_time,
        coalesce(anchor.candle_index, 0)                                        as anchor_index,
        {%- for column in state_columns %}
        anchor.{{ column }}                                                     as seed_{{ column }}{{ ',' if not loop.last }}
        {%- endfor %}
    from touched
    left join lateral (
        select stored.candle_index, {{ state_columns | join(', ') }}
        from {{ this }} as stored
        where {{ series_match('stored', 'touched', series) }}
          and stored.open_time < touched.from_time
        order by stored.open_time desc
        limit 1
    ) as anchor on anchor.candle_index >= {{ continue_from_index }}
),

scope as (
    -- read from the 199th candle before from_time (sma_200's window), or from the first one.
    -- ohlcv_1m's mode looks it up in {{ this }}: every candle before from_time is a stored row
    -- (a candle staged since the watermark is touched, so it is at or after from_time), and the
    -- merged series (staged UNION stored rows not staged anew) cannot be read backwards through
    -- an index: PostgreSQL sorted each market's whole history for this LIMIT (bench 9: ohlcv_1m's
    -- hourly run 19 s at 1M candles of history, 49 s at 30M; 3,000 rows read per market at 3M)
    select resume.*, coalesce(context.open_time, '-infinity'::timestamptz) as read_from
    from resume
    left join lateral (
        select c.open_time
        from {{ this if merged else candles }} as c
        where {{ series_match('c', 'resume', series) }}
          and c.open_time < resume.from_time
        order by c.open_time desc
        offset 198 limit 1
    ) as context on true
),

candles as (
    select
        {{ series_columns('c.', series) }},
        c.open_time,
        c.close,
        {%- for column in candle_columns or [] if column != 'close' %}
        c.{{ column }},
        {%- endfor %}
        c.{{ ingested_column }} as last_ingested_at,
        {{ 'c.is_closed' if has_flags else 'true' }} as candle_is_closed,
        {{ 'c.is_complete and c.is_closed' if has_flags else 'true' }} as candle_is_final,
        scope.from_time,
        scope.anchor_index,
        {%- for column in state_columns %}
        scope.seed_{{ column }}{{ ',' if not loop.last }}
        {%- endfor %}
    from scope
    cross join lateral (
        -- an index range scan per market, whatever the planner estimates
        select *
        from {{ candles }} as candle
        where {{ series_match('candle', 'scope', series) }}
          and candle.open_time >= scope.read_from
        offset 0  -- keeps the subquery from being flattened into a join
    ) as c
),
{%- else %}
candles as (
    select
        {{ series_columns('c.', series) }},
        c.open_time,
        c.close,
        {%- for column in candle_columns or [] if column != 'close' %}
        c.{{ column }},
        {%- endfor %}
        c.{{ ingested_column }} as last_ingested_at,
        {{ 'c.is_closed' if has_flags else 'true' }} as candle_is_closed,
        {{ 'c.is_complete and c.is_closed' if has_flags else 'true' }} as candle_is_final,
        null::timestamptz       as from_time,
        0::bigint               as anchor_index,
        {%- for column in state_columns %}
        null::double precision  as seed_{{ column }}{{ ',' if not loop.last }}
        {%- endfor %}
    from {{ candles }} as c
),
{%- endif %}

numbered as (
    -- one window pass (one sort, one WindowAgg): every function here is over the same window
    select
        candles.*,
        -- position among the market's candles, continuing from the anchor's (rows before
        -- from_time are only context for the windows below and get the anchor's index)
        anchor_index + count(*) filter (where from_time is null or open_time >= from_time)
            over running                                                    as candle_index,
        close - lag(close) over running                                     as change,
        -- running sum of the closes read: the sum of the last n closes is a difference of two
        sum(close) over running                                             as close_sum,
        -- the row's inputs: this candle and up to {{ input_window - 1 }} before it, from running
        -- counts (differenced with lag() in the next pass) and the open time {{ input_window - 1 }} rows back,
        -- or the first one read: min(), not first_value(), which keeps the market's whole partition in the
        -- window's tuplestore (past work_mem, a temp-file read per row: 2.5 us a row, bench 4b)
        count(*) over running                                               as rows_read,
        count(*) filter (where not candle_is_final) over running            as partial_read,
        coalesce(lag(open_time, {{ input_window - 1 }}) over running, min(open_time) over running)
                                                                            as first_input_at
    from candles
    window running as (partition by {{ series | join(', ') }} order by open_time rows unbounded preceding)
),

smoothed as (
    -- the second (and last) window pass, over the same window: the SMAs from the running sums,
    -- the input counts, and the EMA / Wilder / MACD signal states (one aggregate call per row,
    -- indicator_functions.sql), aggregated over the rows being (re)computed only: the context rows
    -- before from_time feed the windows, not the states
    select
        numbered.*,
        {%- for n in [20, 50, 200] %}
        -- exact sum of the last n closes, at a fixed scale (so the division does not depend on how
        -- far back the running sum started), divided in numeric, then rounded to double
        case when candle_index >= {{ n }} then
            (round(close_sum - lag(close_sum, {{ n }}, 0::numeric) over running, 30) / {{ n }})::double precision
        end                                                                 as sma_{{ n }},
        {%- endfor %}
        partial_read - lag(partial_read, {{ input_window }}, 0::bigint) over running as partial_inputs,
        least(rows_read, {{ input_window }})                                as input_candles,
        -- seeds: ema_12, ema_26, ema_50 with the SMA at k = n, MACD's fast EMA with the mean of
        -- closes 15..26 at k = 26 (where TA-Lib seeds it), Wilder's averages with the means of the
        -- first 14 gains / losses at k = 15, the signal line (EMA(9) of macd_fast_ema - ema_26)
        -- with the mean of its first 9 values at k = 34 (inside the aggregate); an incremental run
        -- passes the anchor's stored states instead
        {{ indicator_state }}(
            close::double precision,
            greatest(change, 0)::double precision,
            greatest(-change, 0)::double precision,
            candle_index,
            case when candle_index = 12 then {{ opening_mean(candles, 1, 12, series) }} end,
            case when candle_index = 26 then {{ opening_mean(candles, 1, 26, series) }} end,
            case when candle_index = 50 then {{ opening_mean(candles, 1, 50, series) }} end,
            case when candle_index = 26 then {{ opening_mean(candles, 15, 26, series) }} end,
            {%- for side, sign in [('gain', ''), ('loss', '-')] %}
            -- the mean of the market's first 14 {{ side }}s (the changes at candle_index 2..15)
            case when candle_index = 15 then (
                select avg(greatest({{ sign }}first_15.change, 0))::double precision
                from (
                    select opening.close - lag(opening.close) over (order by opening.open_time) as change
                    from {{ candles }} as opening
                    where {{ series_match('opening', 'numbered', series) }}
                    order by opening.open_time
                    limit 15
                ) as first_15
                where first_15.change is not null  -- greatest() would turn the first row's NULL into a 0
            ) end,
            {%- endfor %}
            {%- for column in aggregate_states %}
            seed_{{ column }}{{ ',' if not loop.last }}
            {%- endfor %}
        ) filter (where from_time is null or open_time >= from_time) over running as state
    from numbered
    window running as (partition by {{ series | join(', ') }} order by open_time rows unbounded preceding)
),

signaled as (
    -- only the rows being (re)computed: the context rows before from_time fed the windows above
    select
        smoothed.*,
        candle_is_closed
            and partial_inputs = 0
            and extract(epoch from open_time - first_input_at) = (input_candles - 1) * {{ width_seconds }}
                                                                            as inputs_complete,
        {%- for column in aggregate_states %}
        state[{{ loop.index }}]                                             as {{ column }},
        {%- endfor %}
        state[{{ aggregate_states.index('macd_fast_ema') + 1 }}] - state[{{ aggregate_states.index('ema_26') + 1 }}]
                                                                            as macd_line
    from smoothed
    where from_time is null or open_time >= from_time
),

final as (
    select
        {{ series | join(', ') }},
        open_time,
        {%- if merged %}
        {%- for column in candle_columns %}
        {{ column }},
        {%- endfor %}
        last_ingested_at                                                    as {{ out_ingested }},
        {%- else %}
        close,
        {%- endif %}
        candle_index,
        {%- if not merged %}
        candle_is_closed                                                    as is_closed,
        {%- endif %}
        inputs_complete,
        sma_20,
        sma_50,
        sma_200,
        ema_12,
        ema_26,
        ema_50,
        case
            when rsi_avg_gain_14 + rsi_avg_loss_14 = 0 then 0::double precision
            -- TA-Lib's order: the share first, then * 100 (100 * g / g can be 100.00000000000001)
            else 100 * (rsi_avg_gain_14 / (rsi_avg_gain_14 + rsi_avg_loss_14))
        end                                                                 as rsi_14,
        case when candle_index >= 34 then macd_line end                     as macd_line,
        macd_signal,
        {%- if not merged %}
        macd_line - macd_signal                                             as macd_histogram,
        {%- endif %}
        rsi_avg_gain_14,
        rsi_avg_loss_14,
        macd_fast_ema{{ ',' if not merged }}
        {%- if not merged %}
        last_ingested_at
        {%- endif %}
    from signaled
)

{%- if output_columns %},

ordered as (
    select {{ output_columns | join(', ') }}
    from final
)
{%- endif %}

select *
from {{ 'ordered as final' if output_columns else 'final' }}
{%- if is_incremental() %}
-- leave out rows equal to the stored ones: one index probe per row (a scalar subquery, never a
-- join whose plan depends on row estimates)
where (
    select stored::text
    from {{ this }} as stored
    where {{ series_match('stored', 'final', series) }}
      and stored.open_time = final.open_time
) is distinct from final::text
{%- elif merged %}
-- a full build writes the rows in key order: a market's candles physically together (ohlcv_1m.sql)
order by {{ series | join(', ') }}, open_time
{%- endif %}
{%- endmacro %}

{#- The exact mean of a market's closes at positions first..last (1-based, in open_time order): read
    only at the one row that takes it as a seed (a row that exists only when the market is
    computed from its first candle), so the window pass below does not depend on another
    window's output. Same value as a difference of the running sums: a numeric sum is exact. -#}
{% macro opening_mean(candles, first, last, series=['exchange', 'symbol']) -%}
(
            select (round(sum(opening.close), 30) / {{ last - first + 1 }})::double precision
            from (
                select c.close
                from {{ candles }} as c
                where {{ series_match('c', 'numbered', series) }}
                order by c.open_time
                offset {{ first - 1 }} limit {{ last - first + 1 }}
            ) as opening
        )
{%- endmacro %}

{#- The columns naming a market, each with `prefix`; and "left's market is right's" (aliases). -#}
{% macro series_columns(prefix, series) -%}
{%- for column in series %}{{ prefix }}{{ column }}{{ ', ' if not loop.last }}{% endfor -%}
{%- endmacro %}

{% macro series_match(left, right, series) -%}
{%- for column in series %}{{ left }}.{{ column }} = {{ right }}.{{ column }}{{ ' and ' if not loop.last }}{% endfor -%}
{%- endmacro %}
