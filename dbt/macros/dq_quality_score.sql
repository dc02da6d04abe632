{#-
  quality_score of a period, 0-100 (numeric(5,2)); NULL when nothing was expected:

    100 * greatest(0, present - penalty) / expected,   rounded to 2 decimals, where
    penalty = 1    * price_spikes
            + 0.5  * duplicates
            + 0.25 * corrections
            + 0.25 * volume_anomalies
            + 0.1  * out_of_order

  Every term is a count of candles (distinct minutes), so the score is the share of the
  period's expected candles that are present and clean, in percent: each expected candle is worth
  100 / expected points; a missing one loses all of them, a flagged one the weight of its flag (a
  spike's price is wrong: as bad as missing; a conflicting duplicate: one of two values is wrong;
  a correction: readers before it saw other values; a volume anomaly may be a real burst; an
  out-of-order row was put back in order by the loader). A rate, not an absolute count: one
  flagged or missing candle costs 60 times less in a day than in an hour, and a day's score is
  its hours' scores weighted by their expected candles (exactly, before rounding, unless an hour
  is floored at 0). Documented in data_quality_summary.yml and the README; changing it changes
  that contract.
-#}
{% macro dq_quality_score(expected, present, duplicates, corrections, out_of_order, price_spikes, volume_anomalies) -%}
    case when {{ expected }} > 0 then
        round(
            100.0 * greatest(0,
                {{ present }}
                - 1.0 * {{ price_spikes }}
                - 0.5 * {{ duplicates }}
                - 0.25 * {{ corrections }}
                - 0.25 * {{ volume_anomalies }}
                - 0.1 * {{ out_of_order }}
            ) / {{ expected }},
            2
        )::numeric(5, 2)
    end
{%- endmacro %}
