-- What the loader saw in raw payloads besides the candles themselves. dbt cannot read MongoDB,
-- so the data-quality marts count these facts:
--   duplicate_identical  the same open time twice in one payload, same values
--   duplicate_conflict   the same open time twice in one payload, different values (the later row wins)
--   revised              a payload's values differ from what staging held (the exchange corrected it)
--   out_of_order         a row not in the exchange's documented order (Binance oldest first, OKX newest first)
CREATE TABLE IF NOT EXISTS staging.ohlcv_anomalies (
    raw_payload_id  text        NOT NULL,
    kind            text        NOT NULL,
    open_time       timestamptz NOT NULL,
    exchange        text        NOT NULL,
    symbol          text        NOT NULL,
    timeframe       text        NOT NULL,
    detail          text,
    run_id          text        NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ohlcv_anomalies_pk PRIMARY KEY (raw_payload_id, kind, open_time),
    CONSTRAINT ohlcv_anomalies_kind CHECK (kind IN ('duplicate_identical', 'duplicate_conflict', 'revised',
                                                    'out_of_order'))
);
CREATE INDEX IF NOT EXISTS ohlcv_anomalies_market_idx ON staging.ohlcv_anomalies (exchange, symbol, timeframe, open_time);
COMMENT ON TABLE staging.ohlcv_anomalies IS 'Duplicates, revisions and out-of-order rows seen while loading raw payloads.';

-- The markets file as the database sees it (synced by every DAG run's prepare_storage task),
-- so quality marts know each market's expected range without reading YAML.
CREATE TABLE IF NOT EXISTS ops.market_config (
    exchange        text        NOT NULL,
    symbol          text        NOT NULL,
    timeframe       text        NOT NULL,
    ccxt_id         text        NOT NULL,
    history_start   timestamptz NOT NULL,
    history_end     timestamptz,
    enabled         boolean     NOT NULL,
    synced_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT market_config_pk PRIMARY KEY (exchange, symbol, timeframe)
);
COMMENT ON TABLE ops.market_config IS 'Configured markets and their expected history (history_end NULL = live).';

-- Re-fetch work: gap repairs (and later backfills), one row per market window.
CREATE TABLE IF NOT EXISTS ops.backfill_tasks (
    task_id         bigserial   PRIMARY KEY,
    exchange        text        NOT NULL,
    symbol          text        NOT NULL,
    timeframe       text        NOT NULL,
    window_start    timestamptz NOT NULL,
    window_end      timestamptz NOT NULL,
    reason          text        NOT NULL DEFAULT 'gap',
    priority        bigint      NOT NULL DEFAULT 0,
    status          text        NOT NULL DEFAULT 'pending',
    outcome         text,
    attempts        integer     NOT NULL DEFAULT 0,
    max_attempts    integer     NOT NULL DEFAULT 3,
    candles_found   integer,
    last_error      text,
    last_run_id     text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT backfill_tasks_window UNIQUE (exchange, symbol, timeframe, window_start, window_end),
    CONSTRAINT backfill_tasks_status CHECK (status IN ('pending', 'running', 'completed', 'failed')),
    CONSTRAINT backfill_tasks_outcome CHECK (outcome IS NULL OR outcome IN ('repaired', 'confirmed_empty')),
    CONSTRAINT backfill_tasks_window_order CHECK (window_end > window_start)
);
CREATE INDEX IF NOT EXISTS backfill_tasks_queue_idx ON ops.backfill_tasks (status, priority DESC);
COMMENT ON TABLE ops.backfill_tasks IS
    'Windows to re-fetch. pending -> running -> completed (outcome repaired | confirmed_empty) or back to pending; failed = gave up with an error.';
