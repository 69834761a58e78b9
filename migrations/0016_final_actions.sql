-- Dunning finishes: the final action of an exhausted or stopped retry is carried out
-- through the provider's API, every open wait has a deadline, and every change of a retry
-- row is kept as its timeline.

-- When the final action was settled (carried out, found done, skipped, refused, or not
-- offered by the provider); NULL while it is pending. The deadline of an open wait
-- (`awaiting_customer`, `provider_managed`): past it, the policy decides.
ALTER TABLE retries
    ADD COLUMN final_action_at TIMESTAMPTZ,
    ADD COLUMN expires_at      TIMESTAMPTZ;

-- Rows exhausted before this version never had their action carried out; doing it now,
-- perhaps months later, would surprise their owners. They are settled as skipped.
UPDATE retries SET final_action_at = now()
WHERE status IN ('exhausted', 'stopped') AND final_action IN ('mark_unpaid', 'pause', 'cancel');

CREATE INDEX retries_final_action_pending ON retries (updated_at)
    WHERE status IN ('exhausted', 'stopped') AND final_action IN ('mark_unpaid', 'pause', 'cancel')
      AND final_action_at IS NULL;
CREATE INDEX retries_expiring ON retries (expires_at)
    WHERE status IN ('awaiting_customer', 'provider_managed');

-- Each final action call, recorded before it is made and completed after, like
-- `retry_calls`: a crash between the two leaves it unfinished, and it is re-sent with the
-- SAME idempotency key (and, for APIs without one, after reading the provider's state).
CREATE TABLE final_actions (
    source_id            TEXT        NOT NULL,
    cycle_key            TEXT        NOT NULL,
    action               TEXT        NOT NULL CHECK (action IN ('mark_unpaid', 'pause', 'cancel')),
    subscription_id      TEXT,
    idempotency_key      TEXT        NOT NULL,
    started_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    sends                INT         NOT NULL DEFAULT 0,
    -- After a failed send (no usable answer): when to send again.
    next_at              TIMESTAMPTZ,
    consecutive_failures INT         NOT NULL DEFAULT 0,
    last_error           TEXT,
    finished_at          TIMESTAMPTZ,
    outcome              TEXT CHECK (outcome IN (
        'done',          -- the provider carried it out
        'already_done',  -- the provider was already in that state
        'skipped',       -- not carried out: paid meanwhile, subscription already ended, ...
        'refused',       -- the provider refused the request (4xx)
        'unsupported',   -- the provider's API has no such call
        'failed')),      -- calls kept failing (no usable answer)
    -- The provider's answer (its resulting state) or why nothing was sent.
    answer               TEXT,
    PRIMARY KEY (source_id, cycle_key)
);
INSERT INTO final_actions (source_id, cycle_key, action, subscription_id, idempotency_key,
                           finished_at, outcome, answer)
SELECT source_id, cycle_key, final_action, subscription_id, '', now(), 'skipped',
       'exhausted before subsync carried final actions out'
FROM retries WHERE status IN ('exhausted', 'stopped') AND final_action IN ('mark_unpaid', 'pause', 'cancel');

-- The timeline of every retry: one row per change of what it is doing and why, written by
-- the trigger below whatever statement changed it (reconciliation, the scheduler, an
-- expiry, an operator), so no write path can leave a decision unexplained.
CREATE TABLE retry_events (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_id       TEXT        NOT NULL,
    cycle_key       TEXT        NOT NULL,
    at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    status          TEXT        NOT NULL,
    bucket          TEXT        NOT NULL,
    retries_done    INT         NOT NULL,
    due_at          TIMESTAMPTZ,
    expires_at      TIMESTAMPTZ,
    final_action    TEXT,
    final_action_at TIMESTAMPTZ,
    -- The decision's explanation (`retries.last_outcome`).
    reason          TEXT
);
CREATE INDEX final_actions_subscription ON final_actions (source_id, subscription_id);

CREATE INDEX retry_events_retry ON retry_events (source_id, cycle_key, id);

CREATE FUNCTION retry_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND
       (OLD.status, OLD.bucket, OLD.retries_done, OLD.due_at, OLD.expires_at, OLD.final_action,
        OLD.final_action_at, OLD.last_outcome)
       IS NOT DISTINCT FROM
       (NEW.status, NEW.bucket, NEW.retries_done, NEW.due_at, NEW.expires_at, NEW.final_action,
        NEW.final_action_at, NEW.last_outcome) THEN
        RETURN NULL;
    END IF;
    INSERT INTO retry_events (source_id, cycle_key, status, bucket, retries_done, due_at,
                              expires_at, final_action, final_action_at, reason)
    VALUES (NEW.source_id, NEW.cycle_key, NEW.status, NEW.bucket, NEW.retries_done, NEW.due_at,
            NEW.expires_at, NEW.final_action, NEW.final_action_at, NEW.last_outcome);
    RETURN NULL;
END $$;

CREATE TRIGGER retries_timeline AFTER INSERT OR UPDATE ON retries
    FOR EACH ROW EXECUTE FUNCTION retry_event();

-- Every decision of a retry policy after a failure, with what it decided from (the time,
-- the code and its bucket, the retries made, the first failure) and what it decided: the
-- history `dunning simulate` replays through a candidate policy.
CREATE TABLE retry_decisions (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_id       TEXT        NOT NULL,
    cycle_key       TEXT        NOT NULL,
    -- The time the policy decided from (the failure's time, or the scheduler's pass).
    decided_at      TIMESTAMPTZ NOT NULL,
    code            TEXT        NOT NULL,
    bucket          TEXT        NOT NULL,
    retries_done    INT         NOT NULL,
    first_failed_at TIMESTAMPTZ NOT NULL,
    status          TEXT        NOT NULL,
    due_at          TIMESTAMPTZ,
    final_action    TEXT,
    rule            TEXT        NOT NULL,
    policy          TEXT        NOT NULL
);
CREATE INDEX retry_decisions_retry ON retry_decisions (source_id, cycle_key, id);
CREATE INDEX retry_decisions_time ON retry_decisions (decided_at);
