-- walhook state schema, version 1.
-- Rows are namespaced by replication slot, so several walhook deployments can share
-- one state database.

CREATE TABLE IF NOT EXISTS walhook.lanes (
    slot          text        NOT NULL,
    subscriber    text        NOT NULL,
    -- Every event of this lane before (watermark_lsn, watermark_seq) is delivered,
    -- dead or spilled. On restart, replayed events before it are skipped.
    watermark_lsn bigint      NOT NULL,
    watermark_seq bigint      NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot, subscriber)
);

-- The spill log: events of a lane that failed or lagged, served in per-key order.
CREATE TABLE IF NOT EXISTS walhook.spill (
    slot            text        NOT NULL,
    subscriber      text        NOT NULL,
    lsn             bigint      NOT NULL,
    seq             bigint      NOT NULL,
    event_id        text        NOT NULL,
    event_type      text        NOT NULL,
    ordering_key    text        NOT NULL,
    body            bytea       NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    spilled_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot, subscriber, lsn, seq)
);
CREATE INDEX IF NOT EXISTS spill_key_order
    ON walhook.spill (slot, subscriber, ordering_key, lsn, seq);
CREATE INDEX IF NOT EXISTS spill_due
    ON walhook.spill (slot, subscriber, next_attempt_at);

-- Events that exhausted their attempts, kept for inspection and replay.
CREATE TABLE IF NOT EXISTS walhook.dead_letters (
    slot         text        NOT NULL,
    subscriber   text        NOT NULL,
    lsn          bigint      NOT NULL,
    seq          bigint      NOT NULL,
    event_id     text        NOT NULL,
    event_type   text        NOT NULL,
    ordering_key text        NOT NULL,
    body         bytea       NOT NULL,
    attempts     integer     NOT NULL,
    reason       text        NOT NULL,
    died_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot, subscriber, lsn, seq)
);
CREATE INDEX IF NOT EXISTS dead_letters_died_at ON walhook.dead_letters (slot, subscriber, died_at);

-- The spill log is a queue: rows come and go in bursts. Keep it vacuumed and its
-- statistics fresh however small or large it is.
ALTER TABLE walhook.spill SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000,
    autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 5000);
