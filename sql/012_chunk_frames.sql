-- walhook state schema, version 12: a chunk is one frame.
-- A chunk was seven arrays, which the state database (often the source) received
-- uncompressed, parsed and checked element by element, and compressed column by column:
-- the CPU a failing subscriber's spill took from the source. Now walhook encodes a
-- chunk's events as one value and compresses it with lz4 itself (src/state/frame.rs);
-- the server stores it as it is (STORAGE EXTERNAL: out of line, not compressed again).
-- `events` and `bytes` are the chunk's event count and bytes of bodies, uncompressed.
-- Chunks written before, and chunks of one event over 16 MiB, keep their arrays and are
-- read all the same.
-- A frame's row has lsns = '{NULL}' and no other array: a walhook of an earlier version
-- (which knows no frames) fails on such a row, with an error or a crash, instead of
-- turning it into no rows and deleting it.
ALTER TABLE walhook.spill_chunks
    ADD COLUMN IF NOT EXISTS frame bytea,
    ADD COLUMN IF NOT EXISTS events integer,
    ADD COLUMN IF NOT EXISTS bytes bigint,
    ALTER COLUMN frame SET STORAGE EXTERNAL,
    ALTER COLUMN seqs DROP NOT NULL,
    ALTER COLUMN ids DROP NOT NULL,
    ALTER COLUMN types DROP NOT NULL,
    ALTER COLUMN keys DROP NOT NULL,
    ALTER COLUMN bodies DROP NOT NULL;
ALTER TABLE walhook.spill_chunks ADD CONSTRAINT spill_chunks_one_form
    CHECK (CASE WHEN frame IS NULL THEN seqs IS NOT NULL AND ids IS NOT NULL AND types IS NOT NULL
                                        AND keys IS NOT NULL AND bodies IS NOT NULL
                ELSE cardinality(lsns) = 1 AND lsns[1] IS NULL END) NOT VALID;
