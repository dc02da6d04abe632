{#-
  Time helpers of the data-quality models.

  dq_as_of()                    the instant "now" of the build: var `dq_as_of` (an ISO timestamp,
                                for reproducible rebuilds and tests) or now() (transaction start).
                                Also what the rollups' is_closed is judged against.
  dq_timeframe_seconds(tf)      length of a ccxt timeframe in seconds (fixed-length timeframes:
                                s/m/h/d/w; marketflow collects nothing longer than 1w).
  dq_floor_time(ts, tf)         the open time of the tf candle containing ts (UTC grid; weeks start
  dq_ceil_time(ts, tf)          on Monday like the exchanges' and marketflow.timeframes.floor_ms),
                                and the first grid point at or after ts.
-#}
{% macro dq_as_of() -%}
    {%- set as_of = var('dq_as_of', none) -%}
    {%- if as_of -%}
        '{{ as_of }}'::timestamptz
    {%- else -%}
        now()
    {%- endif -%}
{%- endmacro %}

{% macro dq_timeframe_seconds(timeframe) -%}
    extract(epoch from {{ timeframe_to_interval(timeframe) }})
{%- endmacro %}

{% macro _dq_grid_offset(timeframe) -%}
    (case when right({{ timeframe }}, 1) = 'w' then 345600 else 0 end)
{%- endmacro %}

{% macro dq_floor_time(ts, timeframe) -%}
    to_timestamp(
        floor((extract(epoch from {{ ts }}) - {{ _dq_grid_offset(timeframe) }}) / {{ dq_timeframe_seconds(timeframe) }})
        * {{ dq_timeframe_seconds(timeframe) }} + {{ _dq_grid_offset(timeframe) }}
    )
{%- endmacro %}

{% macro dq_ceil_time(ts, timeframe) -%}
    to_timestamp(
        ceil((extract(epoch from {{ ts }}) - {{ _dq_grid_offset(timeframe) }}) / {{ dq_timeframe_seconds(timeframe) }})
        * {{ dq_timeframe_seconds(timeframe) }} + {{ _dq_grid_offset(timeframe) }}
    )
{%- endmacro %}
