{#-
  The distinct (exchange, symbol, timeframe) candle series of stg_ohlcv, read with a loose index
  scan: one index probe per series instead of reading every candle. The view's candles are keyed
  (market_id, open_time) (staging.candle, docs/storage.md), so the scan walks the market ids (the
  view's joins are left out when only market_id is read) and names each series from staging.market; a
  unit test's fixture (no market ids) is scanned by its names. Same technique as
  `distinct_markets`; renders a parenthesised subquery usable as a FROM item.
-#}
{% macro dq_distinct_series(relation) -%}
{%- if not stg_ohlcv_is_fixture(relation) -%}
(
    with recursive ids as (
        (
            select r.market_id
            from {{ relation }} as r
            order by r.market_id
            limit 1
        )
        union all
        select (
            select r.market_id
            from {{ relation }} as r
            where r.market_id > ids.market_id
            order by r.market_id
            limit 1
        )
        from ids
        where ids.market_id is not null
    )
    select named.exchange, named.symbol, named.timeframe
    from ids
    join {{ stg_market_relation() }} as named
        on named.market_id = ids.market_id
)
{%- else -%}
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
{%- endif %}
{%- endmacro %}
