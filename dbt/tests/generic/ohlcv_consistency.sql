{#-
  Candle sanity: fails for every row where
    high < greatest(open, close)   (high is not the highest price)
    low  > least(open, close)      (low is not the lowest price)
    high < low
    any of open/high/low/close/volume is negative (or quote_volume / trades, when given)
    any of open/high/low/close is NULL
  Each failing row is returned with a `violations` array naming what is wrong.

    data_tests:
      - ohlcv_consistency:
          arguments:
            quote_volume: quote_volume
            trades: trades
-#}
{% test ohlcv_consistency(model, open='open', high='high', low='low', close='close', volume='volume',
                          quote_volume=none, trades=none) %}

with checked as (
    select
        *,
        array_remove(array[
            case when {{ open }} is null or {{ high }} is null or {{ low }} is null or {{ close }} is null
                then 'price is null' end,
            case when {{ high }} < greatest({{ open }}, {{ close }}) then 'high < greatest(open, close)' end,
            case when {{ low }} > least({{ open }}, {{ close }}) then 'low > least(open, close)' end,
            case when {{ high }} < {{ low }} then 'high < low' end,
            case when least({{ open }}, {{ high }}, {{ low }}, {{ close }}) < 0 then 'negative price' end,
            case when {{ volume }} < 0 then 'negative volume' end
            {%- if quote_volume %},
            case when {{ quote_volume }} < 0 then 'negative quote_volume' end
            {%- endif %}
            {%- if trades %},
            case when {{ trades }} < 0 then 'negative trades' end
            {%- endif %}
        ], null) as violations
    from {{ model }}
)

select *
from checked
where cardinality(violations) > 0

{% endtest %}
