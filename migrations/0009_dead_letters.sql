-- The dead-letter index: one row per id in the dead-letter queue, so `/metrics` reads the
-- oldest dead letter's age here instead of fetching the queue's head (a fetch is a
-- delivery to a quorum queue). The worker writes its row when it dead-letters; replays
-- and purges remove theirs; the dead-letter indexer re-reads the queue when its depth and
-- these rows disagree (the broker dead-letters past the delivery limit on its own).
CREATE TABLE dead_letters (
    -- `{source_id}:{event_id}`, or `sha256:{body hash}` for a message without envelope.
    id               TEXT        PRIMARY KEY,
    source_id        TEXT,
    event_id         TEXT,
    reason           TEXT,
    -- When it was (first) dead-lettered: ours, or the broker's `x-death` time.
    dead_lettered_at TIMESTAMPTZ NOT NULL,
    -- Messages with this id in the queue (a crash between a dead-letter's confirm and the
    -- original's ack leaves two).
    copies           INTEGER     NOT NULL DEFAULT 1 CHECK (copies > 0),
    -- worker | indexer
    recorded_by      TEXT        NOT NULL,
    recorded_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX dead_letters_oldest ON dead_letters (dead_lettered_at);
