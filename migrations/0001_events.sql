-- The events archive: every verified webhook, raw body byte for byte, exactly once per
-- (source, provider event id). Inserting a duplicate is a no-op: that is the inbox dedupe.
CREATE TABLE events (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_id         TEXT        NOT NULL,
    provider          TEXT        NOT NULL,
    provider_event_id TEXT        NOT NULL,
    event_type        TEXT        NOT NULL,
    received_at       TIMESTAMPTZ NOT NULL,
    content_type      TEXT,
    -- Non-secret provider headers kept beside the body (never signatures or credentials).
    headers           JSONB       NOT NULL DEFAULT '{}'::jsonb,
    body              BYTEA       NOT NULL,
    envelope_version  SMALLINT    NOT NULL,
    -- The canonical events the provider adapter found in it (empty for ignored types).
    normalized        JSONB       NOT NULL DEFAULT '[]'::jsonb,
    -- What processing did with the event: 'archived' (canonical events found, awaiting
    -- reconciliation) or 'ignored' (an event type subsync does not act on).
    outcome           TEXT        NOT NULL,
    processed_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT events_dedupe UNIQUE (source_id, provider_event_id)
);

CREATE INDEX events_source_received ON events (source_id, received_at);
