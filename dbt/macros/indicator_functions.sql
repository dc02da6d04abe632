{#-
  Running-state aggregates for the indicator marts (models/marts/indicators), created in their own
  schema (var `indicator_function_schema`, default `dbt_functions`) by the pre-hook of the view
  model int_indicator_functions, which every indicator model depends on (so dbt, and cosmos' task
  graph, create them before any indicator model or its unit tests run), and referenced by the
  models as indicator_function('ema') etc.

  Why aggregates: an EMA or a Wilder average depends on every earlier value. Used as window
  functions over `ORDER BY open_time ROWS UNBOUNDED PRECEDING`, PostgreSQL keeps the transition
  state from row to row and emits it for every row: one pass, O(n), no recursive CTE.

    ema(x, warm, alpha, seed)     state := (x - state) * alpha + state
    wilder(x, warm, n, seed)      state := (state * (n - 1) + x) / n

  Both are double precision. Until the state exists it is taken from the arguments:
    * seed is not null -> the state of the row BEFORE the first aggregated row (an incremental
      run continuing from the stored value of the last row it keeps); the first row is then a
      regular step from that seed;
    * seed is null     -> the state is `warm` as soon as warm is not null (the warm-up value the
      model computes: SMA of the first n values at row n), and stays null before.
  A null x leaves the state unchanged. The state is the value itself (EMA / average), which the
  marts store, so "continue from the stored row" and "recompute from the first row" run exactly
  the same floating-point operations: incremental and full builds agree bit for bit.

  Idempotent and safe for concurrent dbt processes (cosmos runs one per model): the DDL's md5 is
  kept as the schema's comment; when it matches, the hook only reads the catalog. Otherwise it
  takes a transaction-level advisory lock, checks again and (re)creates everything: CREATE OR
  REPLACE on the same function from two sessions at once would fail with "tuple concurrently
  updated". The hook is one DO statement inside the model's transaction (a view: the lock, only
  taken when something changes, is released a moment later when dbt commits).

  Not an on-run-start hook: cosmos runs every model as its own dbt invocation, and a project hook
  would run (and be reported) in each of them, `dbt test` included.
-#}

{% macro indicator_function_schema() -%}
    {{ return(var('indicator_function_schema', 'dbt_functions')) }}
{%- endmacro %}

{% macro indicator_function(name) -%}
    {{ indicator_function_schema() }}.{{ name }}
{%- endmacro %}

{% macro indicator_functions_ddl() -%}
{%- set s = indicator_function_schema() -%}
create schema if not exists {{ s }};

{{ smoothing_aggregate(s, 'ema', 'alpha double precision', '(x - state) * alpha + state') }}

{{ smoothing_aggregate(s, 'wilder', 'n integer', '(state * (n - 1) + x) / n') }}

{{ indicator_state_aggregate(s) }}

comment on function {{ s }}.ema_step(double precision, double precision, double precision, double precision, double precision)
    is 'Transition of marketflow''s ema aggregate: (x - state) * alpha + state; see dbt/macros/indicator_functions.sql.';
comment on function {{ s }}.wilder_step(double precision, double precision, double precision, integer, double precision)
    is 'Transition of marketflow''s wilder aggregate: (state * (n - 1) + x) / n; see dbt/macros/indicator_functions.sql.';
{%- endmacro %}

{% macro create_indicator_functions() -%}
{%- set s = indicator_function_schema() -%}
{%- set ddl = indicator_functions_ddl() -%}
{%- set version = indicator_functions_version() -%}
do $create_indicator_functions$
begin
    if (select obj_description(oid, 'pg_namespace') from pg_namespace where nspname = '{{ s }}')
       is distinct from '{{ version }}' then
        perform pg_advisory_xact_lock(hashtext('marketflow.create_indicator_functions'));
        if (select obj_description(oid, 'pg_namespace') from pg_namespace where nspname = '{{ s }}')
           is distinct from '{{ version }}' then
{{ ddl | indent(12, true) }}
            comment on schema {{ s }} is '{{ version }}';
        end if;
    end if;
end
$create_indicator_functions$
{%- endmacro %}

{% macro indicator_functions_version() -%}
    {{ return('marketflow indicator functions ' ~ local_md5(indicator_functions_ddl())) }}
{%- endmacro %}

{#- One smoothing aggregate: state starts at `seed` (until there is one, the output is `warm`),
    a NULL input keeps it, any other input applies `update`. -#}
{% macro smoothing_aggregate(s, name, parameter, update) -%}
{%- set parameter_type = parameter.split(' ', 1)[1] -%}
create or replace function {{ s }}.{{ name }}_step(
    state double precision, x double precision, warm double precision,
    {{ parameter }}, seed double precision
) returns double precision
language plpgsql immutable parallel safe as $fn$
begin
    if state is null then
        if seed is null then
            return warm;
        end if;
        state := seed;
    end if;
    if x is null then
        return state;
    end if;
    return {{ update }};
end
$fn$;

create or replace aggregate {{ s }}.{{ name }}(double precision, double precision, {{ parameter_type }}, double precision) (
    sfunc = {{ s }}.{{ name }}_step,
    stype = double precision
);
{%- endmacro %}


{#- The smoothed states of one candle series, one aggregate call per row instead of seven (each
    call of a plpgsql function costs more than its arithmetic): the six EMA / Wilder states of
    ohlcv_indicators and MACD's signal line, as an array (see indicator_state_columns for the
    elements). Every state is updated with the same expression, on the same inputs, in the same
    order as the single-state aggregates above (and, for the signal's warm-up mean, PostgreSQL's
    float8 avg(): a sum from 0 in row order, divided by the count), so the values are identical
    to the bit. -#}
{% macro indicator_state_columns() -%}
    {#- name, update (of s, with input x), input argument, warm argument, seed argument -#}
    {{ return([
        ('ema_12', '({x} - {s}) * (2::double precision / 13) + {s}', 'x_close', 'warm_ema_12', 'seed_ema_12'),
        ('ema_26', '({x} - {s}) * (2::double precision / 27) + {s}', 'x_close', 'warm_ema_26', 'seed_ema_26'),
        ('ema_50', '({x} - {s}) * (2::double precision / 51) + {s}', 'x_close', 'warm_ema_50', 'seed_ema_50'),
        ('macd_fast_ema', '({x} - {s}) * (2::double precision / 13) + {s}', 'x_close', 'warm_macd_fast_ema',
         'seed_macd_fast_ema'),
        ('rsi_avg_gain_14', '({s} * (14 - 1) + {x}) / 14', 'x_gain', 'warm_rsi_avg_gain_14', 'seed_rsi_avg_gain_14'),
        ('rsi_avg_loss_14', '({s} * (14 - 1) + {x}) / 14', 'x_loss', 'warm_rsi_avg_loss_14', 'seed_rsi_avg_loss_14'),
    ]) }}
{%- endmacro %}

{#- One state's step, as one expression (one plpgsql statement): the single-state aggregates'
    rules with `state` = element i of the array. -#}
{% macro indicator_state_step(i, update, x, warm, seed) -%}
case
            when state[{{ i }}] is null then
                case
                    when {{ seed }} is null then {{ warm }}
                    when {{ x }} is null then {{ seed }}
                    else {{ update | replace('{x}', x) | replace('{s}', seed) }}
                end
            when {{ x }} is null then state[{{ i }}]
            else {{ update | replace('{x}', x) | replace('{s}', 'state[' ~ i ~ ']') }}
        end
{%- endmacro %}

{% macro indicator_state_aggregate(s) -%}
{%- set columns = indicator_state_columns() -%}
{%- set signal = columns | length + 1 -%}
create or replace function {{ s }}.indicator_step(
    state double precision[], x_close double precision, x_gain double precision, x_loss double precision,
    candle_index bigint,
    {%- for c in columns %}
    warm_{{ c[0] }} double precision,
    {%- endfor %}
    {%- for c in columns %}
    seed_{{ c[0] }} double precision,
    {%- endfor %}
    seed_macd_signal double precision
) returns double precision[]
language plpgsql immutable parallel safe as $fn$
declare
    {%- for c in columns %}
    {{ c[0] }} double precision;
    {%- endfor %}
    macd_line double precision;
    -- running float8 sum and count of the MACD line at candle_index <= 34 (the signal's warm-up)
    warm_sum double precision := state[{{ signal + 1 }}];
    warm_count double precision := state[{{ signal + 2 }}];
begin
    {%- for c in columns %}
    {{ c[0] }} := {{ indicator_state_step(loop.index, c[1], c[2], c[3], c[4]) }};
    {%- endfor %}
    macd_line := macd_fast_ema - ema_26;
    if candle_index <= 34 and macd_line is not null then
        warm_sum := coalesce(warm_sum, 0) + macd_line;
        warm_count := coalesce(warm_count, 0) + 1;
    end if;
    return array[
        {%- for c in columns %}
        {{ c[0] }},
        {%- endfor %}
        {{ indicator_state_step(signal, '({x} - {s}) * (2::double precision / 10) + {s}', 'macd_line',
                                'case when candle_index = 34 then warm_sum / warm_count end', 'seed_macd_signal') }},
        warm_sum,
        warm_count
    ];
end
$fn$;

create or replace aggregate {{ s }}.indicator_state(
    double precision, double precision, double precision, bigint,
    {%- for c in columns %}
    double precision,
    {%- endfor %}
    {%- for c in columns %}
    double precision,
    {%- endfor %}
    double precision
) (
    sfunc = {{ s }}.indicator_step,
    stype = double precision[]
);

comment on function {{ s }}.indicator_step(double precision[], double precision, double precision, double precision, bigint,
    {%- for c in columns %} double precision,{% endfor %}{% for c in columns %} double precision,{% endfor %} double precision)
    is 'Transition of marketflow''s indicator_state aggregate (ema_12, ema_26, ema_50, macd_fast_ema, rsi_avg_gain_14, rsi_avg_loss_14, macd_signal, signal warm-up sum and count); see dbt/macros/indicator_functions.sql.';
{%- endmacro %}
