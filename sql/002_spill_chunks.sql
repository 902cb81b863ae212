-- walhook state schema, version 2: spill chunks.
-- While a lane whose subscriber keeps up is behind a burst, it spills in chunks: one row
-- per write of up to 2,000 events, bodies stored once and uncompressed, served from
-- memory, and deleted once every event in it is delivered. When a delivery of such a lane
-- fails, or after a crash, its chunks are turned into rows of walhook.spill, which are
-- served one event at a time with retries.
CREATE TABLE IF NOT EXISTS walhook.spill_chunks (
    slot       text        NOT NULL,
    subscriber text        NOT NULL,
    chunk      bigint      GENERATED ALWAYS AS IDENTITY,
    lsns       bigint[]    NOT NULL,
    seqs       bigint[]    NOT NULL,
    ids        text[]      NOT NULL,
    types      text[]      NOT NULL,
    keys       text[]      NOT NULL,
    bodies     bytea[]     NOT NULL,
    spilled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot, subscriber, chunk)
);
ALTER TABLE walhook.spill_chunks ALTER COLUMN bodies SET STORAGE EXTERNAL;
