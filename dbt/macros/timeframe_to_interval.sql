{#-
  SQL expression turning a ccxt timeframe string ('1m', '15m', '1h', '1d', '1w', '1M', ...) into a
  PostgreSQL interval. ccxt is case-sensitive: 'm' = minutes, 'M' = months. Anything else
  (including a malformed number) yields NULL, which the not_null test on stg_ohlcv.close_time
  reports.
-#}
{% macro timeframe_to_interval(timeframe) -%}
    case
        when {{ timeframe }} !~ '^[0-9]+[smhdwMy]$' then null
        when right({{ timeframe }}, 1) = 's' then make_interval(secs => left({{ timeframe }}, -1)::int)
        when right({{ timeframe }}, 1) = 'm' then make_interval(mins => left({{ timeframe }}, -1)::int)
        when right({{ timeframe }}, 1) = 'h' then make_interval(hours => left({{ timeframe }}, -1)::int)
        when right({{ timeframe }}, 1) = 'd' then make_interval(days => left({{ timeframe }}, -1)::int)
        when right({{ timeframe }}, 1) = 'w' then make_interval(weeks => left({{ timeframe }}, -1)::int)
        when right({{ timeframe }}, 1) = 'M' then make_interval(months => left({{ timeframe }}, -1)::int)
        when right({{ timeframe }}, 1) = 'y' then make_interval(years => left({{ timeframe }}, -1)::int)
    end
{%- endmacro %}
