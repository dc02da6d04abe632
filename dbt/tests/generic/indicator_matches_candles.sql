{#-
  An indicator mart against the candle table it is computed from: for every indicator row written
  and every candle ingested within the test window (var data_test_window_hours, 0 = all rows),
    the candle has an indicator row and the row has a candle, with the same close, the same
    is_closed (1m candles are always closed) and last_ingested_at = the candle's `ingested_column`;
    candle_index = the candle_index of the market's previous indicator row + 1 (1 for the first).
  Apply without a `where`: the test needs the whole tables for the lookups and windows itself.

    data_tests:
      - indicator_matches_candles:
          arguments:
            candles: ref('ohlcv_1h')
            ingested_column: last_ingested_at
-#}
{% test indicator_matches_candles(model, candles, ingested_column) %}
{%- set candle_closed = 'true' if ingested_column == 'ingested_at' else 'c.is_closed' %}

-- The keys written within the window on either side, as islands of rows less than a day apart:
-- after an old backfill, the backfilled island and the live one are read, not the history between
-- them (a span from the market's earliest window row on would re-read all of it for 48 hours).
with window_keys as (
    select exchange, symbol, open_time
    from {{ model }}
    where {{ recent_rows_filter('last_ingested_at') }}
    union
    select exchange, symbol, open_time
    from {{ candles }}
    where {{ recent_rows_filter(ingested_column) }}
),

spans as (
    select exchange, symbol, min(open_time) as span_start, max(open_time) as span_end
    from (
        select *, count(*) filter (where is_first) over (partition by exchange, symbol order by open_time) as island
        from (
            select
                *,
                open_time - interval '1 day' > coalesce(
                    lag(open_time) over (partition by exchange, symbol order by open_time), '-infinity'
                ) as is_first
            from window_keys
        ) as marked
    ) as numbered
    group by exchange, symbol, island
),

-- Per island, the indicator rows from the one before span_start on, each with the candle_index
-- of the row before it: one index range scan and a window per island (a lookup of the previous
-- row per key cost an index probe per row, seconds at 400k rows).
indicator_rows as (
    select
        rows_.*,
        spans.span_start,
        lag(rows_.candle_index) over (
            partition by rows_.exchange, rows_.symbol, spans.span_start order by rows_.open_time
        )                                       as previous_candle_index
    from spans
    cross join lateral (
        select p.exchange, p.symbol, p.open_time, p.candle_index, p.close, p.is_closed, p.last_ingested_at
        from {{ model }} as p
        where p.exchange = spans.exchange
          and p.symbol = spans.symbol
          -- the row before the island: looked for in the hour before it first, and only if that is empty
          -- (a gap of over an hour) in everything before. Through the views' name join PostgreSQL 15 has
          -- no ordered index path for "the newest row before", so an unbounded lookup reads the market's
          -- history up to the island (the index range); COALESCE runs the second one only when needed.
          and p.open_time >= coalesce(
          {%- for lookback in ["interval '1 hour'", none] %}
              (
              select max(before.open_time)
              from {{ model }} as before
              where before.exchange = spans.exchange
                and before.symbol = spans.symbol
                {%- if lookback %}
                and before.open_time >= spans.span_start - {{ lookback }}
                {%- endif %}
                and before.open_time < spans.span_start
              ),
          {%- endfor %}
              spans.span_start)
          and p.open_time <= spans.span_end
        offset 0  -- keeps the range scan per island
    ) as rows_
),

candle_rows as (
    select c.*
    from spans
    cross join lateral (
        select c.exchange, c.symbol, c.open_time, c.close, {{ candle_closed }} as is_closed,
               c.{{ ingested_column }} as ingested
        from {{ candles }} as c
        where c.exchange = spans.exchange
          and c.symbol = spans.symbol
          and c.open_time >= spans.span_start
          and c.open_time <= spans.span_end
        offset 0  -- keeps the range scan per island
    ) as c
),

-- Every indicator row and candle of the islands, paired by key; only pairs with a side
-- written within the window are judged (the rows before are there for the lookups).
compared as (
    select
        coalesce(ind.exchange, candle.exchange) as exchange,
        coalesce(ind.symbol, candle.symbol)     as symbol,
        coalesce(ind.open_time, candle.open_time) as open_time,
        ind.candle_index,
        ind.previous_candle_index,
        ind.close                               as row_close,
        candle.close                            as candle_close,
        ({{ recent_rows_filter('ind.last_ingested_at') }}) is true
            or ({{ recent_rows_filter('candle.ingested') }}) is true as in_window,
        case
            when ind.open_time is null then 'candle has no indicator row'
            when candle.open_time is null then 'indicator row has no candle'
            when ind.close is distinct from candle.close then 'close differs from the candle'
            when ind.is_closed is distinct from candle.is_closed then 'is_closed differs from the candle'
            when ind.last_ingested_at is distinct from candle.ingested
                then 'last_ingested_at differs from the candle'
            when ind.candle_index is distinct from coalesce(ind.previous_candle_index, 0) + 1
                then 'candle_index is not the previous row''s + 1'
        end                                     as problem
    from (select * from indicator_rows where open_time >= span_start) as ind
    full outer join candle_rows as candle
        on candle.exchange = ind.exchange and candle.symbol = ind.symbol and candle.open_time = ind.open_time
)

select exchange, symbol, open_time, candle_index, previous_candle_index, row_close, candle_close, problem
from compared
where problem is not null
  and in_window

{% endtest %}
