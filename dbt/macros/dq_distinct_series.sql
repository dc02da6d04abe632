{#-
  The distinct (exchange, symbol, timeframe) candle series of a relation indexed on
  (exchange, symbol, timeframe, ...) (staging.ohlcv's primary key), read with a loose index scan:
  one index probe per series instead of reading every candle. Same technique as
  `distinct_markets`; renders a parenthesised subquery usable as a FROM item.
-#}
{% macro dq_distinct_series(relation) -%}
(
    with recursive series as (
        (
            select exchange, symbol, timeframe
            from {{ relation }}
            order by exchange, symbol, timeframe
            limit 1
        )
        union all
        select next_series.exchange, next_series.symbol, next_series.timeframe
        from series
        cross join lateral (
            select r.exchange, r.symbol, r.timeframe
            from {{ relation }} as r
            where (r.exchange, r.symbol, r.timeframe) > (series.exchange, series.symbol, series.timeframe)
            order by r.exchange, r.symbol, r.timeframe
            limit 1
        ) as next_series
    )
    select exchange, symbol, timeframe from series
)
{%- endmacro %}
