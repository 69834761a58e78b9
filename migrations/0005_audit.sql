-- Who replayed or purged what, and when. A row is written when the operation starts
-- (outcome 'running') and completed when it ends, so an interrupted one is visible too.
CREATE TABLE audit_log (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    -- The admin token's name, or `cli:<user>` for the command line.
    actor       TEXT        NOT NULL,
    -- dlq.replay | dlq.purge | replay
    action      TEXT        NOT NULL,
    filter      JSONB       NOT NULL,
    -- Messages or events the operation acted on.
    count       BIGINT      NOT NULL DEFAULT 0,
    -- running | ok | error: <message>
    outcome     TEXT        NOT NULL DEFAULT 'running'
);

CREATE INDEX audit_log_started ON audit_log (started_at);
