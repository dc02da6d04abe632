{#-
  Per-series lookups in stg_ohlcv. Since storage stage 2 (docs/storage.md) the candles are in
  staging.candle keyed (market_id, open_time), and stg_ohlcv joins the series' names back from
  staging.market. A filter on the view's exchange, symbol and timeframe reaches one market's candles
  through that join, which PostgreSQL 15 cannot turn into an ordered scan of the market's key range:
  an ORDER BY open_time ... LIMIT, or a min() / max(), would then read and sort the market's whole
  history. These macros filter on market_id instead (one probe of staging.market's unique key), so
  the (market_id, open_time) index serves the order again.

  In a dbt unit test stg_ohlcv is a fixture (a CTE without market ids): there they render the
  filters on the names, which select the same rows.
-#}
{% macro stg_ohlcv_is_fixture(relation) -%}
    {{ return('__dbt__cte__' in (relation | string)) }}
{%- endmacro %}

{#- staging.market (source staging.market) as a relation, without making it a dependency of the
    model: a dependency would have to be mocked in every unit test of the model, which never reads it
    (stg_ohlcv's fixture carries the names). Resolved from the graph when executing. -#}
{% macro stg_market_relation() -%}
    {%- if execute -%}
        {%- set node = graph.sources['source.' ~ project_name ~ '.staging.market'] -%}
        {{ return(api.Relation.create(database=node.database, schema=node.schema, identifier=node.identifier)) }}
    {%- else -%}
        {{ return('staging.market') }}
    {%- endif -%}
{%- endmacro %}

{#- `alias`'s rows of the series (exchange, symbol, timeframe): SQL expressions of the outer query. -#}
{% macro stg_series_filter(alias, exchange, symbol, timeframe) -%}
{%- if stg_ohlcv_is_fixture(ref('stg_ohlcv')) -%}
{{ alias }}.exchange = {{ exchange }} and {{ alias }}.symbol = {{ symbol }} and {{ alias }}.timeframe = {{ timeframe }}
{%- else -%}
{{ alias }}.market_id = (
            select series.market_id
            from {{ stg_market_relation() }} as series
            where series.exchange = {{ exchange }} and series.symbol = {{ symbol }} and series.timeframe = {{ timeframe }}
        )
{%- endif -%}
{%- endmacro %}
