{#-
  The columns of the indicator views indicators_1m ... indicators_1w, defined once: the names, order and
  types the tables of those names had (close and is_closed are the candle's, macd_histogram is
  line - signal, the same double subtraction the tables stored, last_ingested_at the newest ingestion
  behind the row).

  indicator_view_columns(overrides)  the select list. `overrides` maps a column to the expression the
                                     view's source gives it (indicators_1m joins the market's names back
                                     from staging.market and derives is_closed and last_ingested_at);
                                     every other column is the source's own column of that name.

  Used by models/marts/indicators/indicators_1m.sql and rollup_indicators_view (macros/ohlcv_rollup.sql).
-#}
{% macro indicator_view_columns(overrides={}) -%}
{%- set columns = [
    ('exchange', 'exchange'),
    ('symbol', 'symbol'),
    ('open_time', 'open_time'),
    ('close', 'close'),
    ('candle_index', 'candle_index'),
    ('is_closed', 'is_closed'),
    ('inputs_complete', 'inputs_complete'),
    ('sma_20', 'sma_20'),
    ('sma_50', 'sma_50'),
    ('sma_200', 'sma_200'),
    ('ema_12', 'ema_12'),
    ('ema_26', 'ema_26'),
    ('ema_50', 'ema_50'),
    ('rsi_14', 'rsi_14'),
    ('macd_line', 'macd_line'),
    ('macd_signal', 'macd_signal'),
    ('macd_histogram', 'macd_line - macd_signal'),
    ('rsi_avg_gain_14', 'rsi_avg_gain_14'),
    ('rsi_avg_loss_14', 'rsi_avg_loss_14'),
    ('macd_fast_ema', 'macd_fast_ema'),
    ('last_ingested_at', 'last_ingested_at'),
] -%}
{%- set names = columns | map('first') | list -%}
{%- for name in overrides if name not in names -%}
  {{ exceptions.raise_compiler_error(
      "indicator_view_columns: '" ~ name ~ "' is not a column of the indicator views (" ~ names | join(', ')
      ~ "). Fix: override one of those, or add the column to the list in macros/indicator_view_columns.sql") }}
{%- endfor -%}
{%- for name, default in columns -%}
  {%- set expression = overrides.get(name, default) -%}
  {{ '    ' ~ (expression if expression == name or expression.endswith('.' ~ name)
               else (expression ~ ' ').ljust(72) ~ 'as ' ~ name) }}{{ ',\n' if not loop.last }}
{%- endfor %}
{%- endmacro %}
