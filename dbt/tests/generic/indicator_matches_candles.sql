{#-
  An indicator mart against the candle table it is computed from: for every indicator row written
  and every candle ingested within the test window (var data_test_window_hours, 0 = all rows),
    the candle has an indicator row and the row has a candle, with the same close and
    last_ingested_at = the candle's `ingested_column`;
    candle_index = the candle_index of the market's previous indicator row + 1 (1 for the first).
  Apply without a `where`: the test needs the whole tables for the lookups and windows itself.

    data_tests:
      - indicator_matches_candles:
          arguments:
            candles: ref('ohlcv_1h')
            ingested_column: last_ingested_at
-#}
{% test indicator_matches_candles(model, candles, ingested_column) %}

with keys as (
    select exchange, symbol, open_time
    from {{ model }}
    where {{ recent_rows_filter('last_ingested_at') }}
    union
    select exchange, symbol, open_time
    from {{ candles }}
    where {{ recent_rows_filter(ingested_column) }}
),

-- Per market, the indicator rows from the one before its earliest key on, each with the
-- candle_index of the row before it: one index range scan and a window per market (a lookup of
-- the previous row per key cost an index probe per row, seconds at 400k rows).
spans as (
    select exchange, symbol, min(open_time) as span_start
    from keys
    group by exchange, symbol
),

indicator_rows as (
    select
        rows_.exchange,
        rows_.symbol,
        rows_.open_time,
        rows_.candle_index,
        rows_.close,
        rows_.last_ingested_at,
        lag(rows_.candle_index) over (
            partition by rows_.exchange, rows_.symbol order by rows_.open_time
        )                                       as previous_candle_index
    from spans
    cross join lateral (
        select p.exchange, p.symbol, p.open_time, p.candle_index, p.close, p.last_ingested_at
        from {{ model }} as p
        where p.exchange = spans.exchange
          and p.symbol = spans.symbol
          and p.open_time >= coalesce((
              select max(before.open_time)
              from {{ model }} as before
              where before.exchange = spans.exchange
                and before.symbol = spans.symbol
                and before.open_time < spans.span_start
          ), spans.span_start)
        offset 0  -- keeps the range scan per market
    ) as rows_
),

compared as (
    select
        keys.exchange,
        keys.symbol,
        keys.open_time,
        ind.candle_index,
        ind.previous_candle_index,
        ind.close                               as row_close,
        candle.close                            as candle_close,
        case
            when ind.open_time is null then 'candle has no indicator row'
            when candle.open_time is null then 'indicator row has no candle'
            when ind.close is distinct from candle.close then 'close differs from the candle'
            when ind.last_ingested_at is distinct from candle.{{ ingested_column }}
                then 'last_ingested_at differs from the candle'
            when ind.candle_index is distinct from coalesce(ind.previous_candle_index, 0) + 1
                then 'candle_index is not the previous row''s + 1'
        end                                     as problem
    from keys
    left join indicator_rows as ind
        on ind.exchange = keys.exchange and ind.symbol = keys.symbol and ind.open_time = keys.open_time
    left join {{ candles }} as candle
        on candle.exchange = keys.exchange and candle.symbol = keys.symbol and candle.open_time = keys.open_time
)

select *
from compared
where problem is not null

{% endtest %}
