-- Live first on the shared bucket (plugins/marketflow/rate_limit.py): every live (minute-feed) take marks
-- a short burst, and history takes (backfills, the hourly reconcile, gap repairs) wait until it has
-- passed, so for the seconds after each minute close the exchange serves the minute feed first.
ALTER TABLE ops.rate_limit_buckets ADD COLUMN IF NOT EXISTS live_until timestamptz;
COMMENT ON COLUMN ops.rate_limit_buckets.live_until IS
    'End of the live path''s current burst (its last take + exchanges.<name>.live_burst_seconds); history takes wait until then.';
