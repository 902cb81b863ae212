-- walhook state schema, version 8: backfills. Each sends the rows a subscriber's rules
-- cover, as they are now, in key order and in step with the live stream (see the
-- README, "Backfills"). `progress` holds, per table, the last key done (its columns' text)
-- and the rows sent: a crash, a restart or a takeover resumes after it. A backfill is
-- pending until the leader takes it up; paused and cancelled are an operator's.
CREATE TABLE IF NOT EXISTS walhook.backfills (
    id            bigserial   PRIMARY KEY,
    slot          text        NOT NULL,
    subscriber    text        NOT NULL,
    tables        text[]      NOT NULL,
    where_sql     text,
    initial       boolean     NOT NULL DEFAULT false,
    status        text        NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'running', 'paused', 'done', 'cancelled', 'failed')),
    progress      jsonb       NOT NULL DEFAULT '{}',
    rows_done     bigint      NOT NULL DEFAULT 0,
    rows_estimate bigint,
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);
CREATE INDEX IF NOT EXISTS backfills_slot_status ON walhook.backfills (slot, status);
