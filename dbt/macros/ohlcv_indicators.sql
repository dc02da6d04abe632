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
                   then avg := (avg * 13 + x) / 14; rsi = 100 * avg_gain / (avg_gain + avg_loss),
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

  EMA and Wilder averages run through the running-state aggregates of indicator_functions.sql,
  as window functions over ROWS UNBOUNDED PRECEDING (one pass, O(n)).

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
{% macro ohlcv_indicators(candles, ingested_column, timeframe, candle_columns=none) -%}
{#- candle_columns: ohlcv_1m's mode, the candle row and its indicators as one row (docs/storage.md).
    `candles` is then a parenthesised subquery of the 1m candles (staging), these columns of it are
    carried into the output, which has the candle's columns first, its ingested_at (the watermark)
    instead of last_ingested_at, and no close copy, is_closed or macd_histogram (the indicators_1m
    view derives them). -#}
{%- set merged = candle_columns is not none -%}
{%- set out_ingested = 'ingested_at' if merged else 'last_ingested_at' -%}
{%- set ema = indicator_function('ema') -%}
{%- set wilder = indicator_function('wilder') -%}
{%- set continue_from_index = 50 -%}
{%- set input_window = 200 -%}
{%- set width_seconds = {'1m': 60, '5m': 300, '15m': 900, '1h': 3600, '1d': 86400, '1w': 604800}[timeframe] -%}
{%- set has_flags = timeframe != '1m' -%}  {#- ohlcv_1m holds closed minutes only; rollups carry the flags #}
{%- set state_columns = ['ema_12', 'ema_26', 'ema_50', 'rsi_avg_gain_14', 'rsi_avg_loss_14', 'macd_fast_ema',
                         'macd_signal'] -%}
{#- ohlcv_1m built before the indicators moved onto its rows: rebuilt alone (its candles, and so what
    is built from them, do not change; a rollup's full refresh would lose months retention dropped) #}
{%- if merged %}
{{- require_columns(['candle_index', 'inputs_complete', 'macd_fast_ema'],
                    rebuild_select=this.identifier ~ ' indicators_' ~ timeframe) }}
{%- else %}
{{- require_columns(['is_closed', 'inputs_complete', 'macd_fast_ema']) }}
{%- endif %}
with
{%- if is_incremental() %}
touched as (
    select exchange, symbol, min(from_time) as from_time
    from (
        select src.exchange, src.symbol, min(src.open_time) as from_time
        from {{ candles }} as src
        {%- if rebuild_slice() is not none %}
        -- `marketflow rebuild`: from the slice's first candle on (macros/rebuild_slice.sql)
        where {{ rebuild_filter('open_time', rebuild_width(timeframe), 'src.') }}
        {%- else %}
        where src.{{ ingested_column }} > {{ incremental_watermark(out_ingested, var('ohlcv_lookback_minutes', 60)) }}
        {%- endif %}
        group by src.exchange, src.symbol
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
    group by exchange, symbol
),

resume as (
    -- continue from the stored row before the first touched candle if its state is complete
    select
        touched.exchange,
        touched.symbol,
        case when anchor.candle_index is not null then touched.from_time end   as from_time,
        coalesce(anchor.candle_index, 0)                                        as anchor_index,
        {%- for column in state_columns %}
        anchor.{{ column }}                                                     as seed_{{ column }}{{ ',' if not loop.last }}
        {%- endfor %}
    from touched
    left join lateral (
        select stored.candle_index, {{ state_columns | join(', ') }}
        from {{ this }} as stored
        where stored.exchange = touched.exchange
          and stored.symbol = touched.symbol
          and stored.open_time < touched.from_time
        order by stored.open_time desc
        limit 1
    ) as anchor on anchor.candle_index >= {{ continue_from_index }}
),

scope as (
    -- read from the 199th candle before from_time (sma_200's window), or from the first one
    select resume.*, coalesce(context.open_time, '-infinity'::timestamptz) as read_from
    from resume
    left join lateral (
        select c.open_time
        from {{ candles }} as c
        where c.exchange = resume.exchange
          and c.symbol = resume.symbol
          and c.open_time < resume.from_time
        order by c.open_time desc
        offset 198 limit 1
    ) as context on true
),

candles as (
    select
        c.exchange,
        c.symbol,
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
        where candle.exchange = scope.exchange
          and candle.symbol = scope.symbol
          and candle.open_time >= scope.read_from
        offset 0  -- keeps the subquery from being flattened into a join
    ) as c
),
{%- else %}
candles as (
    select
        c.exchange,
        c.symbol,
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
    select
        candles.*,
        -- position among the market's candles, continuing from the anchor's (rows before
        -- from_time are only context for the windows below and get the anchor's index)
        anchor_index + count(*) filter (where from_time is null or open_time >= from_time)
            over (market rows unbounded preceding)                          as candle_index,
        close - lag(close) over market                                      as change,
        -- running sum of the closes read: the sum of the last n closes is a difference of two
        sum(close) over (market rows unbounded preceding)                   as close_sum,
        -- the row's inputs: this candle and up to {{ input_window - 1 }} before it (moving counts, O(1) a row)
        count(*) filter (where not candle_is_final) over inputs             as partial_inputs,
        count(*) over inputs                                                as input_candles,
        first_value(open_time) over inputs                                  as first_input_at
    from candles
    window market as (partition by exchange, symbol order by open_time),
           inputs as (market rows between {{ input_window - 1 }} preceding and current row)
),

means as (
    select
        numbered.*,
        {%- for n in [12, 26] %}
        -- the exact mean of the first n closes, only where ema_{{ n }} takes it as its seed (sma_{{ n }} is
        -- not a column: computing it for every row cost a numeric division and cast per row)
        case when candle_index = {{ n }} then
            (round(close_sum - lag(close_sum, {{ n }}, 0::numeric) over market, 30) / {{ n }})::double precision
        end                                                                 as ema_seed_{{ n }},
        {%- endfor %}
        -- MACD's fast EMA is seeded where its slow one starts (TA-Lib): the mean of closes 15..26 at 26
        case when candle_index = 26 then
            (round(close_sum - lag(close_sum, 12, 0::numeric) over market, 30) / 12)::double precision
        end                                                                 as macd_fast_seed,
        {%- for n in [20, 50, 200] %}
        -- exact sum of the last n closes, at a fixed scale (so the division does not depend on how
        -- far back the running sum started), divided in numeric, then rounded to double
        case when candle_index >= {{ n }} then
            (round(close_sum - lag(close_sum, {{ n }}, 0::numeric) over market, 30) / {{ n }})::double precision
        end                                                                 as sma_{{ n }},
        {%- endfor %}
        -- Wilder's seeds: the means of the market's first 14 gains / losses (the changes at
        -- candle_index 2..15), looked up at candle_index 15 only (a row that exists only when the
        -- market is computed from its first candle): a window for them cost ~1 s per 400k rows
        {%- for side, sign in [('gain', ''), ('loss', '-')] %}
        case when candle_index = 15 then (
            select avg(greatest({{ sign }}first_15.change, 0))::double precision
            from (
                select opening.close - lag(opening.close) over (order by opening.open_time) as change
                from {{ candles }} as opening
                where opening.exchange = numbered.exchange
                  and opening.symbol = numbered.symbol
                order by opening.open_time
                limit 15
            ) as first_15
            where first_15.change is not null  -- greatest() would turn the first row's NULL into a 0
        ) end                                                               as {{ side }}_seed_14{{ ',' if side == 'gain' }}
        {%- endfor %}
    from numbered
    window market as (partition by exchange, symbol order by open_time)
),

smoothed as (
    -- only the rows being (re)computed: the context rows before from_time feed the windows above
    select
        exchange,
        symbol,
        open_time,
        close,
        {%- for column in candle_columns or [] if column != 'close' %}
        {{ column }},
        {%- endfor %}
        candle_index,
        candle_is_closed,
        candle_is_closed
            and partial_inputs = 0
            and extract(epoch from open_time - first_input_at) = (input_candles - 1) * {{ width_seconds }}
                                                                            as inputs_complete,
        last_ingested_at,
        seed_macd_signal,
        sma_20,
        sma_50,
        sma_200,
        {%- for n in [12, 26, 50] %}
        {{ ema }}(
            close::double precision,
            {{ 'ema_seed_' ~ n if n != 50 else 'case when candle_index = 50 then sma_50 end' }},
            2::double precision / {{ n + 1 }},
            seed_ema_{{ n }}
        ) over running                                                      as ema_{{ n }},
        {%- endfor %}
        {{ ema }}(close::double precision, macd_fast_seed, 2::double precision / 13, seed_macd_fast_ema)
            over running                                                    as macd_fast_ema,
        {{ wilder }}(
            greatest(change, 0)::double precision,
            case when candle_index = 15 then gain_seed_14 end,
            14,
            seed_rsi_avg_gain_14
        ) over running                                                      as rsi_avg_gain_14,
        {{ wilder }}(
            greatest(-change, 0)::double precision,
            case when candle_index = 15 then loss_seed_14 end,
            14,
            seed_rsi_avg_loss_14
        ) over running                                                      as rsi_avg_loss_14
    from means
    where from_time is null or open_time >= from_time
    window running as (partition by exchange, symbol order by open_time rows unbounded preceding)
),

macd as (
    select
        smoothed.*,
        macd_fast_ema - ema_26                                              as macd_line
    from smoothed
),

macd_warm as (
    select
        macd.*,
        -- the mean of the first 9 MACD values (candle_index 26..34), summed in time order
        case when candle_index = 34 then
            avg(macd_line) filter (where candle_index <= 34) over (
                partition by exchange, symbol order by open_time rows unbounded preceding
            )
        end                                                                 as macd_signal_warm
    from macd
),

signaled as (
    select
        macd_warm.*,
        {{ ema }}(macd_line, macd_signal_warm, 2::double precision / 10, seed_macd_signal)
            over (partition by exchange, symbol order by open_time rows unbounded preceding) as macd_signal
    from macd_warm
),

final as (
    select
        exchange,
        symbol,
        open_time,
        {%- if merged %}
        {%- for column in candle_columns %}
        {{ column }},
        {%- endfor %}
        last_ingested_at                                                    as ingested_at,
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
            else 100 * rsi_avg_gain_14 / (rsi_avg_gain_14 + rsi_avg_loss_14)
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

select *
from final
{%- if is_incremental() %}
-- leave out rows equal to the stored ones: one index probe per row (a scalar subquery, never a
-- join whose plan depends on row estimates)
where (
    select stored::text
    from {{ this }} as stored
    where stored.exchange = final.exchange
      and stored.symbol = final.symbol
      and stored.open_time = final.open_time
) is distinct from final::text
{%- elif merged %}
-- a full build writes the rows in key order: a market's candles physically together (ohlcv_1m.sql)
order by exchange, symbol, open_time
{%- endif %}
{%- endmacro %}
