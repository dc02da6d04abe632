{#-
  The indicator marts' warm-up and identity rules (macros/ohlcv_indicators.sql), per row, with a
  `violations` array:
    candle_index >= 1
    sma_n / ema_n NULL exactly while candle_index < n; rsi_14 and its averages while < 15;
    macd_fast_ema while < 26; macd_line, macd_signal and macd_histogram while < 34
    ema_50 = sma_50 at candle_index 50 (the EMA is seeded with the SMA)
    rsi_14 in [0, 100], Wilder averages >= 0, rsi_14 = 0 when both are 0
    macd_line = macd_fast_ema - ema_26, macd_histogram = macd_line - macd_signal (exactly, as computed)
    is_closed / inputs_complete not NULL, inputs_complete only when is_closed

    data_tests:
      - indicator_conventions
-#}
{% test indicator_conventions(model) %}

with checked as (
    select
        *,
        array_remove(array[
            case when candle_index is null or candle_index < 1 then 'candle_index < 1' end,
            {%- for n in [20, 50, 200] %}
            case when (sma_{{ n }} is null) <> (candle_index < {{ n }}) then 'sma_{{ n }} warm-up' end,
            {%- endfor %}
            {%- for n in [12, 26, 50] %}
            case when (ema_{{ n }} is null) <> (candle_index < {{ n }}) then 'ema_{{ n }} warm-up' end,
            {%- endfor %}
            case when (rsi_14 is null) <> (candle_index < 15)
                   or (rsi_avg_gain_14 is null) <> (candle_index < 15)
                   or (rsi_avg_loss_14 is null) <> (candle_index < 15) then 'rsi_14 warm-up' end,
            case when (macd_fast_ema is null) <> (candle_index < 26) then 'macd_fast_ema warm-up' end,
            case when (macd_line is null) <> (candle_index < 34)
                   or (macd_signal is null) <> (candle_index < 34)
                   or (macd_histogram is null) <> (candle_index < 34) then 'macd warm-up' end,
            case when candle_index = 50 and ema_50 is distinct from sma_50 then 'ema_50 not seeded with sma_50' end,
            case when rsi_14 < 0 or rsi_14 > 100 then 'rsi_14 outside 0..100' end,
            case when rsi_avg_gain_14 < 0 or rsi_avg_loss_14 < 0 then 'negative Wilder average' end,
            case when rsi_avg_gain_14 + rsi_avg_loss_14 = 0 and rsi_14 <> 0 then 'rsi_14 of no movement is not 0' end,
            case when macd_line is distinct from
                      case when candle_index >= 34 then macd_fast_ema - ema_26 end
                then 'macd_line is not macd_fast_ema - ema_26' end,
            case when is_closed is null or inputs_complete is null or (inputs_complete and not is_closed)
                then 'is_closed / inputs_complete inconsistent' end,
            case when macd_histogram is distinct from macd_line - macd_signal
                then 'macd_histogram is not macd_line - macd_signal' end
        ], null) as violations
    from {{ model }}
)

select *
from checked
where cardinality(violations) > 0

{% endtest %}
