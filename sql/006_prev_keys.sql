-- walhook state schema, version 6: events whose change moved a row to another ordering
-- key (an update of key columns) are ordered under both keys. `prev_key` is the row's key
-- before the change: such an event is served only once no older event of either key
-- waits, and no newer event of either key is served before it.
ALTER TABLE walhook.spill ADD COLUMN IF NOT EXISTS prev_key text;
ALTER TABLE walhook.spill_chunks ADD COLUMN IF NOT EXISTS prev_keys text[];
-- A dead letter keeps it, so a replay orders the event under both keys again.
ALTER TABLE walhook.dead_letters ADD COLUMN IF NOT EXISTS prev_key text;
CREATE INDEX IF NOT EXISTS spill_prev_key_order
    ON walhook.spill (slot, subscriber, prev_key, lsn, seq) WHERE prev_key IS NOT NULL;
