-- Revision 0003. A repair window older than the exchange serves (its history depth: Kraken's newest
-- 720 candles, Gate's 10,000) is its own outcome, beyond_exchange_history: the candles may exist, the
-- exchange's endpoint no longer gives them, so it is neither "confirmed empty at source" nor a failure.
-- marts.data_quality_gaps reports such gaps with the status of the same name; never re-queued.
ALTER TABLE ops.backfill_tasks DROP CONSTRAINT backfill_tasks_outcome;
ALTER TABLE ops.backfill_tasks ADD CONSTRAINT backfill_tasks_outcome
    CHECK (outcome IS NULL OR outcome IN ('repaired', 'confirmed_empty', 'beyond_exchange_history'));

COMMENT ON TABLE ops.backfill_tasks IS
    'Windows to re-fetch. pending -> running -> completed (outcome repaired | confirmed_empty | beyond_exchange_history) or back to pending; failed = gave up with an error.';
