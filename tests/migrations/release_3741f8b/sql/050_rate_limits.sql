-- One token bucket per exchange, shared by every worker (plugins/marketflow/rate_limit.py).
-- Tokens are ccxt request-cost units; refill_per_second already includes our share of the limit.
CREATE TABLE IF NOT EXISTS ops.rate_limit_buckets (
    exchange            text        PRIMARY KEY,
    capacity            numeric     NOT NULL CHECK (capacity > 0),
    refill_per_second   numeric     NOT NULL CHECK (refill_per_second > 0),
    tokens              numeric     NOT NULL,
    refilled_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    paused_until        timestamptz,
    pause_reason        text
);
COMMENT ON TABLE ops.rate_limit_buckets IS 'Shared request budget per exchange; paused_until is set by 429 Retry-After and 418 bans.';

CREATE TABLE IF NOT EXISTS ops.rate_limit_metrics (
    exchange        text        NOT NULL,
    minute          timestamptz NOT NULL,
    tokens_used     numeric     NOT NULL DEFAULT 0,
    acquisitions    integer     NOT NULL DEFAULT 0,
    denied          integer     NOT NULL DEFAULT 0,
    wait_seconds    numeric     NOT NULL DEFAULT 0,
    http_429        integer     NOT NULL DEFAULT 0,
    http_418        integer     NOT NULL DEFAULT 0,
    CONSTRAINT rate_limit_metrics_pk PRIMARY KEY (exchange, minute)
);
COMMENT ON TABLE ops.rate_limit_metrics IS 'Per exchange and minute: tokens used, denied acquisitions, seconds waited, 429s and 418s received.';
