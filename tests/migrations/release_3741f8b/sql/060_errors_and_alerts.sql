-- Every failed exchange call (each attempt, retried or not), classified (plugins/marketflow/errors.py).
CREATE TABLE IF NOT EXISTS ops.api_errors (
    error_id        bigserial   PRIMARY KEY,
    occurred_at     timestamptz NOT NULL DEFAULT now(),
    exchange        text        NOT NULL,
    symbol          text,
    endpoint        text,
    http_status     integer,
    error_class     text        NOT NULL,
    exception       text        NOT NULL,
    message         text        NOT NULL,
    attempt         integer     NOT NULL,
    will_retry      boolean     NOT NULL,
    dag_id          text,
    run_id          text,
    task_id         text,
    try_number      integer
);
CREATE INDEX IF NOT EXISTS api_errors_exchange_time_idx ON ops.api_errors (exchange, occurred_at);

-- Consecutive failed extracts per market; an alert fires when the count reaches the configured limit.
CREATE TABLE IF NOT EXISTS ops.market_health (
    exchange                text        NOT NULL,
    symbol                  text        NOT NULL,
    consecutive_failures    integer     NOT NULL DEFAULT 0,
    last_error_class        text,
    last_error              text,
    last_failure_at         timestamptz,
    last_success_at         timestamptz,
    alerted_at              timestamptz,
    CONSTRAINT market_health_pk PRIMARY KEY (exchange, symbol)
);

-- Alerts raised by the pipeline (consecutive failures) and by Airflow deadline callbacks.
CREATE TABLE IF NOT EXISTS ops.alerts (
    alert_id        bigserial   PRIMARY KEY,
    raised_at       timestamptz NOT NULL DEFAULT now(),
    kind            text        NOT NULL,
    subject         text        NOT NULL,
    message         text        NOT NULL,
    dag_id          text,
    run_id          text,
    delivered       boolean     NOT NULL DEFAULT false,
    delivery_error  text
);
CREATE INDEX IF NOT EXISTS alerts_raised_idx ON ops.alerts (raised_at);
