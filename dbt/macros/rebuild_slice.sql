{#-
  A rebuild of one slice of the marts (`marketflow rebuild`, plugins/marketflow/rebuild.py): var
  `rebuild` = {"exchange": X, "symbol": S, "start": ISO, "end": ISO}, any of them null (= all
  markets / from the first / to the last candle). When it is set, every incremental model reads
  the slice instead of the rows written since its watermark, and writes only rows of the slice:

    candles_1m, int_ohlcv_1m_days the slice's candles (the command deleted the slice first, so
                                  every candle of it is re-read from staging)
    rollups                       the buckets that overlap the slice, recomputed from all their
                                  finer parts (a bucket cut by the slice's edge is whole again)
    indicators                    every row from the slice's first candle on, merged only where
                                  a value differs (EMA / RSI state runs forward; identical rows
                                  are not rewritten)
    data-quality hours / days     the hours (days) that overlap the slice, of the slice's markets
                                  only (other exchanges' rows are read, never written)

  Without the var these macros render nothing and the models run as always.
-#}
{% macro rebuild_slice() -%}
    {%- set slice = var('rebuild', none) -%}
    {%- if slice is none or slice == '' -%}
        {{ return(none) }}
    {%- endif -%}
    {%- if slice is string -%}
        {%- set slice = fromjson(slice) -%}
    {%- endif -%}
    {%- for key in slice -%}
        {%- if key not in ('exchange', 'symbol', 'start', 'end') -%}
            {{ exceptions.raise_compiler_error("var rebuild: unknown key '" ~ key ~ "' (expected exchange, symbol, start, end)") }}
        {%- endif -%}
    {%- endfor -%}
    {{ return(slice) }}
{%- endmacro %}

{#- SQL literal of a string (single quotes doubled). -#}
{% macro rebuild_literal(value) -%}
    '{{ value | replace("'", "''") }}'
{%- endmacro %}

{#-
  Condition "this row belongs to the rebuild slice": its market is the slice's and its period
  [time_column, time_column + width) overlaps [start, end). width: a SQL interval literal's text
  ('5 minutes'), or none for instants (time_column in [start, end)); time_column none: the market
  only. prefix: 'alias.' of the row. by_market_id: the row names its market by market_id (candles_1m),
  matched against the slice's 1m series in staging.market.
-#}
{% macro rebuild_filter(time_column, width=none, prefix='', by_market_id=false) -%}
    {%- set slice = rebuild_slice() -%}
    {%- set parts = [] -%}
    {%- set names = [] -%}
    {%- if slice.get('exchange') -%}
        {%- do names.append('exchange = ' ~ rebuild_literal(slice['exchange'])) -%}
    {%- endif -%}
    {%- if slice.get('symbol') -%}
        {%- do names.append('symbol = ' ~ rebuild_literal(slice['symbol'])) -%}
    {%- endif -%}
    {%- if by_market_id and names -%}
        {%- do parts.append(prefix ~ 'market_id in (select series.market_id from ' ~ stg_market_relation()
                            ~ " as series where series.timeframe = '1m' and series." ~ names | join(' and series.') ~ ')') -%}
    {%- else -%}
        {%- for name in names -%}
            {%- do parts.append(prefix ~ name) -%}
        {%- endfor -%}
    {%- endif -%}
    {%- if time_column and slice.get('start') -%}
        {%- if width -%}
            {%- do parts.append(prefix ~ time_column ~ ' > ' ~ rebuild_literal(slice['start']) ~ "::timestamptz - interval '" ~ width ~ "'") -%}
        {%- else -%}
            {%- do parts.append(prefix ~ time_column ~ ' >= ' ~ rebuild_literal(slice['start']) ~ '::timestamptz') -%}
        {%- endif -%}
    {%- endif -%}
    {%- if time_column and slice.get('end') -%}
        {%- do parts.append(prefix ~ time_column ~ ' < ' ~ rebuild_literal(slice['end']) ~ '::timestamptz') -%}
    {%- endif -%}
    ({{ parts | join(' and ') if parts else 'true' }})
{%- endmacro %}

{#- The width of a candle table's rows, as rebuild_filter takes it. -#}
{% macro rebuild_width(timeframe) -%}
    {{ return({'1m': '1 minute', '5m': '5 minutes', '15m': '15 minutes', '1h': '1 hour', '1d': '1 day',
               '1w': '7 days'}[timeframe]) }}
{%- endmacro %}
