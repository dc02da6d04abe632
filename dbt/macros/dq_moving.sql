{#-
  Moving statistics over the previous `n` rows of an ordered window `w`, from running sums over
  `rows between unbounded preceding and 1 preceding` (everything before the current row):
  linear in the number of rows whatever n is. (PostgreSQL recomputes a float stddev_samp() over a
  sliding frame from scratch for every row - no inverse transition - which costs n per row.)

  dq_prev_n(running_before, n)  sum over the previous n rows (i-n .. i-1) of the value whose
                                running sum before the current row is `running_before`
                                (a running count gives the count)
  dq_stddev_from(cnt, s1, s2)   sample standard deviation from count, sum and sum of squares
                                (NULL below 2 values)
-#}
{% macro dq_prev_n(running_before, n, window='w') -%}
    (coalesce({{ running_before }}, 0) - coalesce(lag({{ running_before }}, {{ n }}) over {{ window }}, 0))
{%- endmacro %}

{% macro dq_stddev_from(cnt, s1, s2) -%}
    case when {{ cnt }} >= 2
        then sqrt(greatest(0, ({{ s2 }} - ({{ s1 }}) * ({{ s1 }}) / ({{ cnt }})) / (({{ cnt }}) - 1))) end
{%- endmacro %}
