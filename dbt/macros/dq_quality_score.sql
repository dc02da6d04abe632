{#-
  quality_score of a period, 0-100 (numeric(5,2)); NULL when nothing was expected:

    100 * present / expected
      - least(2 * duplicates,       20)
      - least(1 * out_of_order,     10)
      - least(5 * price_spikes,     25)
      - least(2 * volume_anomalies, 10)
    clamped to [0, 100].

  Completeness dominates (every missing candle costs its share of 100); each kind of anomaly
  costs a fixed amount per occurrence, capped so one noisy kind cannot zero a complete period.
  Documented in data_quality_summary.yml; changing it changes that contract.
-#}
{% macro dq_quality_score(expected, present, duplicates, out_of_order, price_spikes, volume_anomalies) -%}
    case when {{ expected }} > 0 then
        round(greatest(0, least(100,
            100.0 * {{ present }} / {{ expected }}
            - least(2 * {{ duplicates }}, 20)
            - least(1 * {{ out_of_order }}, 10)
            - least(5 * {{ price_spikes }}, 25)
            - least(2 * {{ volume_anomalies }}, 10)
        ))::numeric, 2)::numeric(5, 2)
    end
{%- endmacro %}
