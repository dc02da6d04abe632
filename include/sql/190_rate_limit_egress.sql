-- The shared rate-limit bucket per exchange AND egress identity (plugins/marketflow/rate_limit.py): an
-- exchange counts its limit per IP, so workers behind one IP (one MARKETFLOW_EGRESS_ID) share a bucket
-- and workers behind another IP have one of their own. Existing buckets become the 'default' identity's,
-- which is what every worker without MARKETFLOW_EGRESS_ID uses.
ALTER TABLE ops.rate_limit_buckets ADD COLUMN IF NOT EXISTS egress_id text NOT NULL DEFAULT 'default';
ALTER TABLE ops.rate_limit_buckets DROP CONSTRAINT IF EXISTS rate_limit_buckets_pkey;
ALTER TABLE ops.rate_limit_buckets ADD CONSTRAINT rate_limit_buckets_pkey PRIMARY KEY (exchange, egress_id);
COMMENT ON COLUMN ops.rate_limit_buckets.egress_id IS
    'The workers'' egress identity (MARKETFLOW_EGRESS_ID, default ''default''): one budget per exchange and outgoing IP.';
COMMENT ON TABLE ops.rate_limit_buckets IS
    'Shared request budget per exchange and egress identity; paused_until is set by 429 Retry-After and 418 bans.';
