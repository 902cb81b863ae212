-- walhook state schema, version 9: a backfill of a document (`walhook backfill start
-- --document NAME`) walks the keys of the document's first source table and sends each
-- document as a read; `document` names it (null for a backfill of rows).
ALTER TABLE walhook.backfills ADD COLUMN IF NOT EXISTS document text;
