-- walhook state schema, version 11: the spill log compresses with lz4.
-- A failing subscriber's events are written as chunks, often to the source database
-- itself. PostgreSQL's default compression (pglz) spent a third of the CPU of those writes
-- and chunk bodies were not compressed at all; lz4 is several times cheaper and makes the
-- rows, their WAL and what the walsender reads past a fraction of the size. Values under
-- about 2 kB are stored as they are either way.
-- A server built without lz4 support keeps chunks uncompressed (pglz would cost more CPU
-- than it saves); values already written keep their compression.
DO $$
BEGIN
  EXECUTE 'ALTER TABLE walhook.spill_chunks
             ALTER COLUMN bodies SET STORAGE EXTENDED, ALTER COLUMN bodies SET COMPRESSION lz4,
             ALTER COLUMN lsns SET COMPRESSION lz4, ALTER COLUMN seqs SET COMPRESSION lz4,
             ALTER COLUMN ids SET COMPRESSION lz4, ALTER COLUMN types SET COMPRESSION lz4,
             ALTER COLUMN keys SET COMPRESSION lz4, ALTER COLUMN prev_keys SET COMPRESSION lz4';
  EXECUTE 'ALTER TABLE walhook.spill ALTER COLUMN body SET COMPRESSION lz4,
             ALTER COLUMN history SET COMPRESSION lz4';
  EXECUTE 'ALTER TABLE walhook.dead_letters ALTER COLUMN body SET COMPRESSION lz4';
EXCEPTION WHEN feature_not_supported OR syntax_error THEN
  RAISE NOTICE 'walhook: this server has no lz4 compression; the spill log stays uncompressed';
  EXECUTE 'ALTER TABLE walhook.spill_chunks
             ALTER COLUMN lsns SET STORAGE EXTERNAL, ALTER COLUMN seqs SET STORAGE EXTERNAL,
             ALTER COLUMN ids SET STORAGE EXTERNAL, ALTER COLUMN types SET STORAGE EXTERNAL,
             ALTER COLUMN keys SET STORAGE EXTERNAL, ALTER COLUMN prev_keys SET STORAGE EXTERNAL';
END $$;
