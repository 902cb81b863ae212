-- walhook state schema, version 3: subscribers stopped by an operator (paused) or by
-- walhook (disabled: 410 Gone, or failing past the circuit breaker's limits). A
-- subscriber without a row is active. A stopped subscriber's events are kept in its
-- spill log until it is resumed.
CREATE TABLE IF NOT EXISTS walhook.subscribers (
    slot       text        NOT NULL,
    subscriber text        NOT NULL,
    status     text        NOT NULL CHECK (status IN ('paused', 'disabled')),
    reason     text        NOT NULL,
    since      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot, subscriber)
);
