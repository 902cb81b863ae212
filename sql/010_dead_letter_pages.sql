-- walhook state schema, version 10: the console and `GET /deliveries` list dead letters
-- newest first, of every subscriber or of one, 50 at a time; these indexes serve those
-- pages (and their counts) without sorting the table.
CREATE INDEX IF NOT EXISTS dead_letters_newest
    ON walhook.dead_letters (slot, died_at DESC, lsn DESC, seq DESC);
CREATE INDEX IF NOT EXISTS dead_letters_subscriber_newest
    ON walhook.dead_letters (slot, subscriber, died_at DESC, lsn DESC, seq DESC);
