{#-
  The distinct (exchange, symbol) pairs of a relation indexed on (exchange, symbol, ...), read with
  a "loose index scan": one index probe per market instead of reading every row. PostgreSQL 15
  has no skip scan, and staging.ticker / ohlcv_1m grow by one row per market per minute, so a
  plain SELECT DISTINCT would read tens of millions of rows to find a few dozen markets.

  Renders a parenthesised subquery (WITH RECURSIVE is allowed inside a subquery), so it can be
  used anywhere a FROM item can, including inside a model's own CTEs and in unit tests.
-#}
{% macro distinct_markets(relation) -%}
(
    with recursive markets as (
        (
            select exchange, symbol
            from {{ relation }}
            order by exchange, symbol
            limit 1
        )
        union all
        select next_market.exchange, next_market.symbol
        from markets
        cross join lateral (
            select r.exchange, r.symbol
            from {{ relation }} as r
            where (r.exchange, r.symbol) > (markets.exchange, markets.symbol)
            order by r.exchange, r.symbol
            limit 1
        ) as next_market
    )
    select exchange, symbol from markets
)
{%- endmacro %}
