-- walhook state schema, version 5: the history of a delivery's failed attempts (when,
-- the status, how long it took, the error with an excerpt of the answer), kept with a
-- spilled event and a dead letter, the last 20 of them.
ALTER TABLE walhook.spill ADD COLUMN IF NOT EXISTS history jsonb NOT NULL DEFAULT '[]';
ALTER TABLE walhook.dead_letters ADD COLUMN IF NOT EXISTS history jsonb NOT NULL DEFAULT '[]';
CREATE OR REPLACE FUNCTION walhook.last_attempts(h jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN jsonb_array_length(h) <= 20 THEN h
    ELSE (SELECT jsonb_agg(e ORDER BY n) FROM jsonb_array_elements(h) WITH ORDINALITY AS x(e, n)
          WHERE n > jsonb_array_length(h) - 20) END
$$;
