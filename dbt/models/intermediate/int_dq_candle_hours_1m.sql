{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key=['exchange', 'symbol', 'period_start'],
        on_schema_change='fail',
        post_hook="{{ analyze_when_changed() }}",
        indexes=[
            {'columns': ['exchange', 'symbol', 'period_start'], 'unique': true},
            {'columns': ['max_ingested_at']},
        ],
    )
}}

{#-
  Per 1m market and UTC hour with candles: how many candles, which of them are price spikes and
  volume anomalies (rules in int_dq_candle_hours_1m.yml), and the largest divergence from other
  exchanges' closes of the same minutes. The per-candle work of the data-quality marts, done once
  per candle: incremental.

  Which hours are recomputed: staging rows written since the newest max_ingested_at already held,
  minus var dq_lookback_minutes (same reasoning as ohlcv_1m: late-committing loads), give per
  symbol the earliest changed open time; every market of that symbol (its divergence depends on
  the others) is recomputed from that hour on. A full refresh recomputes everything.

  Cost: per market, one ordered range scan of staging.candle's (market_id, open_time) key, read from enough
  candles before the first recomputed hour to rebuild the baselines exactly (2 x (N + 2) candles),
  then moving sums (running sums before each row, differenced with lag(): linear whatever the window size;
  PostgreSQL has no moving-aggregate support for float stddev, which would cost N per row).
  No sort of all candles, no join of all candles against all candles.
-#}

{%- set n = var('dq_baseline_candles', 60) | int %}
{%- set min_n = var('dq_min_baseline_candles', 30) | int %}
{%- set context = 2 * (n + 2) %}
{%- set spike_k = var('dq_spike_k', 8) | float %}
{%- set spike_min = var('dq_spike_min_return', 0.003) | float %}
{%- set max_gap = var('dq_return_max_gap_minutes', 5) | int %}
{%- set vol_z = var('dq_volume_z', 4) | float %}
{%- set vol_ratio = var('dq_volume_min_ratio', 20) | float %}

with series as (
    -- every 1m market in staging, found with index probes
    select s.exchange, s.symbol
    from {{ dq_distinct_series(ref('stg_ohlcv')) }} as s
    where s.timeframe = '1m'
),

{% if is_incremental() %}
changed as (
    select symbol, min(open_time) as changed_from
    from {{ ref('stg_ohlcv') }}
    where timeframe = '1m'
    {%- if rebuild_slice() is not none %}
      and {{ rebuild_filter('open_time') }}  -- `marketflow rebuild`: the slice (macros/rebuild_slice.sql)
    {%- else %}
      and ingested_at > {{ incremental_watermark('max_ingested_at', var('dq_lookback_minutes', 60)) }}
    {%- endif %}
    group by symbol
),

todo as (
    select series.exchange, series.symbol, date_trunc('hour', changed.changed_from, 'UTC') as recompute_from
    from series
    join changed on changed.symbol = series.symbol
    {%- if rebuild_slice() is not none %}
    -- a rebuild writes the slice's markets only (the others' closes are read for the divergence)
    where {{ rebuild_filter(none, prefix='series.') }}
    {%- endif %}
),
{% else %}
todo as (
    select exchange, symbol, '-infinity'::timestamptz as recompute_from
    from series
),
{% endif %}

plan as (
    select
        todo.exchange,
        todo.symbol,
        todo.recompute_from,
        -- read from the context-th candle before the first recomputed hour (or the first candle)
        coalesce((
            select c.open_time
            from {{ ref('stg_ohlcv') }} as c
            where {{ stg_series_filter('c', 'todo.exchange', 'todo.symbol', "'1m'") }}
              and c.open_time < todo.recompute_from
            order by c.open_time desc
            offset {{ context - 1 }} limit 1
        ), '-infinity'::timestamptz) as read_from,
        -- the other exchanges listing the same symbol
        array(
            select other.exchange
            from series as other
            where other.symbol = todo.symbol
              and other.exchange <> todo.exchange
        ) as other_exchanges
    from todo
),

hours as (
    select plan.exchange, plan.symbol, per_hour.*
    from plan
    cross join lateral (
        select
            date_trunc('hour', flagged.open_time, 'UTC')                        as period_start,
            count(*)                                                            as present,
            count(*) filter (where flagged.is_price_spike)                      as price_spikes,
            count(*) filter (where flagged.is_volume_anomaly)                   as volume_anomalies,
            coalesce(array_agg(flagged.open_time order by flagged.open_time)
                filter (where flagged.is_price_spike), '{}')                    as spike_times,
            coalesce(array_agg(flagged.open_time order by flagged.open_time)
                filter (where flagged.is_volume_anomaly), '{}')                 as volume_anomaly_times,
            -- largest distance to another exchange's close of the same minute, in bps of the two
            -- closes' mid (the farthest other close is the highest or the lowest one)
            round(max(case when flagged.close > 0 then greatest(
                abs(flagged.close - others.max_close) / ((flagged.close + others.max_close) / 2),
                abs(flagged.close - others.min_close) / ((flagged.close + others.min_close) / 2)
            ) * 10000 end), 4)                                                  as cross_exchange_divergence_bps,
            max(flagged.ingested_at)                                            as max_ingested_at
        from (
            select
                *,
                -- a spike and its immediate reversion (opposite sign, next candle) are one event
                spike_candidate and not coalesce(
                    lag(spike_candidate) over w and sign(log_return) <> sign(lag(log_return) over w), false
                ) as is_price_spike
            from (
                select
                    *,
                    coalesce(
                        {{ dq_prev_n('clean_n', n) }} >= {{ min_n }}
                        and abs(log_return) > greatest(
                            {{ spike_k }} * {{ dq_stddev_from(dq_prev_n('clean_n', n), dq_prev_n('clean_s1', n), dq_prev_n('clean_s2', n)) }},
                            {{ spike_min }}),
                        false
                    ) as spike_candidate
                from (
                    select
                        *,
                        count(clean_return) over running                as clean_n,
                        sum(clean_return) over running                  as clean_s1,
                        sum(clean_return * clean_return) over running   as clean_s2
                    from (
                        select
                            *,
                            -- the second baseline leaves out outliers and the move right after one
                            case when not rough_outlier and not coalesce(lag(rough_outlier) over w, false)
                                then log_return end as clean_return
                        from (
                            select
                                open_time,
                                close,
                                ingested_at,
                                log_return,
                                -- pass 1: outlier-sensitive baseline, only to keep spikes out of pass 2
                                coalesce(
                                    {{ dq_prev_n('return_n', n) }} >= {{ min_n }}
                                    and abs(log_return) > greatest(
                                        {{ spike_k }} * {{ dq_stddev_from(dq_prev_n('return_n', n), dq_prev_n('return_s1', n), dq_prev_n('return_s2', n)) }},
                                        {{ spike_min }}),
                                    false
                                ) as rough_outlier,
                                coalesce(
                                    {{ dq_prev_n('volume_n', n) }} >= {{ min_n }}
                                    and log_volume - {{ dq_prev_n('volume_s1', n) }} / {{ dq_prev_n('volume_n', n) }} > greatest(
                                        {{ vol_z }} * {{ dq_stddev_from(dq_prev_n('volume_n', n), dq_prev_n('volume_s1', n), dq_prev_n('volume_s2', n)) }},
                                        ln({{ vol_ratio }})),
                                    false
                                ) as is_volume_anomaly
                            from (
                                select
                                    *,
                                    count(log_return) over running              as return_n,
                                    sum(log_return) over running                as return_s1,
                                    sum(log_return * log_return) over running   as return_s2,
                                    count(log_volume) over running              as volume_n,
                                    sum(log_volume) over running                as volume_s1,
                                    sum(log_volume * log_volume) over running   as volume_s2
                                from (
                                    select
                                        c.open_time,
                                        c.close,
                                        c.ingested_at,
                                        -- return to the previous candle, unless it is more than max_gap minutes back
                                        case
                                            when lag(c.open_time) over w >= c.open_time - interval '{{ max_gap }} minutes'
                                             and lag(c.close) over w > 0 and c.close > 0
                                            then ln(c.close::float8 / (lag(c.close) over w)::float8)
                                        end as log_return,
                                        case when c.volume > 0 then ln(c.volume::float8) end as log_volume
                                    from {{ ref('stg_ohlcv') }} as c
                                    where {{ stg_series_filter('c', 'plan.exchange', 'plan.symbol', "'1m'") }}
                                      and c.open_time >= plan.read_from
                                    window w as (order by c.open_time)
                                ) as returns
                                window running as (order by open_time rows between unbounded preceding and 1 preceding)
                            ) as first_sums
                            window w as (order by open_time)
                        ) as first_pass
                        window w as (order by open_time)
                    ) as cleaned
                    window running as (order by open_time rows between unbounded preceding and 1 preceding)
                ) as second_sums
                window w as (order by open_time)
            ) as judged_candidates
            window w as (order by open_time)
        ) as flagged
        -- the same minutes on the other exchanges listing the symbol (a primary-key range scan
        -- per other exchange)
        left join (
            select o.open_time, max(o.close) as max_close, min(o.close) as min_close
            from unnest(plan.other_exchanges) as other (exchange)
            cross join lateral (
                select c.open_time, c.close
                from {{ ref('stg_ohlcv') }} as c
                where {{ stg_series_filter('c', 'other.exchange', 'plan.symbol', "'1m'") }}
                  and c.open_time >= plan.recompute_from
                offset 0  -- keep it a per-exchange index scan: flattened, it is planned as a scan of all of staging
            ) as o
            group by o.open_time
        ) as others on others.open_time = flagged.open_time
        where flagged.open_time >= plan.recompute_from
        group by 1
    ) as per_hour
)

select
    exchange,
    symbol,
    period_start,
    present,
    price_spikes,
    volume_anomalies,
    spike_times,
    volume_anomaly_times,
    cross_exchange_divergence_bps,
    max_ingested_at
from hours
{%- if is_incremental() and rebuild_slice() is not none %}
where {{ rebuild_filter('period_start', '1 hour') }}  -- a rebuild writes the hours of the slice only
{%- endif %}
