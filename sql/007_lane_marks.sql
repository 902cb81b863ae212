-- walhook state schema, version 7: a lane's saved mark says, beyond its watermark, which
-- later events are done. Every event before (high_lsn, high_seq) is done except those
-- listed in `pending`: 16 bytes per event, its commit LSN and its sequence, each a
-- big-endian 64-bit integer, in ascending order. (watermark_lsn, watermark_seq) stays
-- the first of them (everything before it is done), so one slow or retried event no
-- longer makes a restart send every event delivered after it again. NULL: nothing known
-- past the watermark.
ALTER TABLE walhook.lanes ADD COLUMN IF NOT EXISTS high_lsn bigint;
ALTER TABLE walhook.lanes ADD COLUMN IF NOT EXISTS high_seq bigint;
ALTER TABLE walhook.lanes ADD COLUMN IF NOT EXISTS pending bytea;
