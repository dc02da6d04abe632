-- Per-market state for failure isolation (plugins/marketflow/market_health.py).
--
-- ops.market_health: one row per market. status
--   active     the last call succeeded (or the market has not failed yet)
--   failing    its last extract or load failed; it is still called every run
--   suspended  it failed permanently (bad symbol, auth, bad request, unusable data) suspend_after_failures
--              times in a row: no more calls until its configuration changes (config_fingerprint) or an
--              operator resumes it (python -m marketflow.cli markets resume <exchange> <symbol>)
ALTER TABLE ops.market_health ADD COLUMN IF NOT EXISTS status text NOT NULL DEFAULT 'active';
ALTER TABLE ops.market_health ADD COLUMN IF NOT EXISTS consecutive_permanent_failures integer NOT NULL DEFAULT 0;
ALTER TABLE ops.market_health ADD COLUMN IF NOT EXISTS suspended_at timestamptz;
ALTER TABLE ops.market_health ADD COLUMN IF NOT EXISTS suspended_reason text;
ALTER TABLE ops.market_health ADD COLUMN IF NOT EXISTS config_fingerprint text;
ALTER TABLE ops.market_health ADD COLUMN IF NOT EXISTS resumed_at timestamptz;
ALTER TABLE ops.market_health ADD COLUMN IF NOT EXISTS resumed_by text;
ALTER TABLE ops.market_health ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'market_health_status') THEN
        ALTER TABLE ops.market_health
            ADD CONSTRAINT market_health_status CHECK (status IN ('active', 'failing', 'suspended'));
    END IF;
END
$$;
COMMENT ON TABLE ops.market_health IS
    'Per market: consecutive failures, status active / failing / suspended, and why (market_health.py).';

-- What each multi-market task did for each market, per task (not per try): a retry re-runs only the
-- markets whose last outcome here is a transient failure.
CREATE TABLE IF NOT EXISTS ops.market_task_outcomes (
    dag_id          text        NOT NULL,
    run_id          text        NOT NULL,
    task_id         text        NOT NULL,
    exchange        text        NOT NULL,
    symbol          text        NOT NULL,
    try_number      integer     NOT NULL,
    outcome         text        NOT NULL,
    error_class     text,
    error           text,
    candles         integer,
    seconds         numeric,
    finished_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT market_task_outcomes_pk PRIMARY KEY (dag_id, run_id, task_id, exchange, symbol),
    CONSTRAINT market_task_outcomes_outcome CHECK (outcome IN ('success', 'failed_transient', 'failed_permanent',
                                                               'suspended', 'not_started'))
);
CREATE INDEX IF NOT EXISTS market_task_outcomes_finished_idx ON ops.market_task_outcomes (finished_at);
COMMENT ON TABLE ops.market_task_outcomes IS
    'Per task and market: the outcome of its latest try (success, failed_transient, failed_permanent, suspended, not_started).';

-- Live (minute) and history spending of the shared rate-limit bucket, per exchange and minute.
ALTER TABLE ops.rate_limit_metrics ADD COLUMN IF NOT EXISTS live_tokens_used numeric NOT NULL DEFAULT 0;
ALTER TABLE ops.rate_limit_metrics ADD COLUMN IF NOT EXISTS live_wait_seconds numeric NOT NULL DEFAULT 0;

-- The repair queue: chunks of long gaps, and the order repairs claim them in.
CREATE INDEX IF NOT EXISTS backfill_tasks_claim_idx ON ops.backfill_tasks (exchange, reason, status, priority DESC);
