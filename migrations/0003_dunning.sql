-- Dunning: payment retries are data. One row per failed billing cycle (a Stripe invoice,
-- a Polar order; the attempt itself where the provider has no cycle), written in the same
-- transaction as the failure that caused it, and picked by schedulers with
-- FOR UPDATE SKIP LOCKED so any number of instances cooperate.
CREATE TABLE retries (
    source_id        TEXT        NOT NULL,
    cycle_key        TEXT        NOT NULL,
    subscription_id  TEXT,
    -- The latest failed attempt of the cycle (what Appstle retries) and the cycle id.
    attempt_id       TEXT        NOT NULL,
    cycle_id         TEXT,
    status           TEXT        NOT NULL CHECK (status IN (
        'scheduled',          -- a retry call is due at due_at
        'in_flight',          -- a call was made (or is being made); its outcome is awaited
        'awaiting_customer',  -- needs a new payment method or a completed challenge
        'provider_managed',   -- the provider retries itself (PayNow, Rebilly): tracked only
        'recovered',          -- the cycle was paid
        'completed',          -- nothing left to do without a call (skipped, contract ended)
        'exhausted',          -- out of tries or time: final_action applies
        'stopped')),          -- never retry (hard decline) or not eligible: final_action applies
    bucket           TEXT        NOT NULL,
    retries_done     INT         NOT NULL DEFAULT 0,
    first_failed_at  TIMESTAMPTZ NOT NULL,
    due_at           TIMESTAMPTZ,
    policy           TEXT        NOT NULL,
    final_action     TEXT,
    last_outcome     TEXT,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (source_id, cycle_key)
);
CREATE INDEX retries_due ON retries (due_at) WHERE status = 'scheduled';
CREATE INDEX retries_in_flight ON retries (updated_at) WHERE status = 'in_flight';

-- Every retry call, recorded before it is made and completed after: a crash between the
-- two leaves a started row, and the scheduler re-sends the SAME idempotency key, so the
-- provider answers with the first call's result instead of charging again.
CREATE TABLE retry_calls (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_id       TEXT        NOT NULL,
    cycle_key       TEXT        NOT NULL,
    retry_number    INT         NOT NULL,
    idempotency_key TEXT        NOT NULL,
    request         TEXT        NOT NULL,
    started_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    sends           INT         NOT NULL DEFAULT 1,
    finished_at     TIMESTAMPTZ,
    duration_ms     INT,
    result          TEXT,
    UNIQUE (source_id, cycle_key, retry_number)
);
