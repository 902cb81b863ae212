-- walhook state schema, version 4: which walhook process leads a slot. Two or more
-- processes on one config share this row: the holder streams the slot and delivers,
-- the others stand by and take over once its lease has expired. `fences` says that
-- the holder has seen a standby, and so stops delivering as soon as its lease lapses.
CREATE TABLE IF NOT EXISTS walhook.leases (
    slot            text        PRIMARY KEY,
    holder          text        NOT NULL,
    epoch           bigint      NOT NULL,
    expires_at      timestamptz NOT NULL,
    fences          boolean     NOT NULL DEFAULT false,
    standby_seen_at timestamptz,
    acquired_at     timestamptz NOT NULL DEFAULT now()
);
