-- Refunds with their own amounts: a partial refund, a second one, a void or a credit of a
-- collected payment. Each refund is a row of its own (merged forward like an attempt:
-- pending < failed < succeeded), and each succeeded refund is one journal entry of its
-- own, keyed by the refund's id, for its amount capped at what the payment still holds:
-- the refunds of a payment never sum to more than it collected, whatever order they
-- arrive in and however a full refund (an attempt's status) and its parts overlap.
CREATE TABLE refunds (
    source_id       TEXT        NOT NULL,
    refund_id       TEXT        NOT NULL,
    -- The attempt (payment) it gives money back from.
    attempt_id      TEXT        NOT NULL,
    subscription_id TEXT,
    cycle_id        TEXT,
    status          TEXT        NOT NULL CHECK (status IN ('pending', 'failed', 'succeeded')),
    provider_status TEXT        NOT NULL,
    amount_minor    BIGINT      NOT NULL CHECK (amount_minor > 0),
    currency        TEXT        NOT NULL,
    refunded_at     TIMESTAMPTZ,
    last_event_id   BIGINT      NOT NULL REFERENCES events (id),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (source_id, refund_id)
);
CREATE INDEX refunds_attempt ON refunds (source_id, attempt_id);

-- A refund entry names the refund it books; the entry of a full refund reported only as
-- an attempt's status names none. Uniqueness: one collection and one status refund per
-- attempt and per cycle (as before: NULLS NOT DISTINCT, PostgreSQL 15), one entry per
-- refund id.
ALTER TABLE journal_entries ADD COLUMN refund_id TEXT;
ALTER TABLE journal_entries DROP CONSTRAINT journal_entries_source_id_attempt_id_kind_key;
CREATE UNIQUE INDEX journal_entries_attempt
    ON journal_entries (source_id, attempt_id, kind, refund_id) NULLS NOT DISTINCT;
DROP INDEX journal_entries_cycle;
CREATE UNIQUE INDEX journal_entries_cycle
    ON journal_entries (source_id, cycle_id, kind, refund_id) NULLS NOT DISTINCT
    WHERE cycle_id IS NOT NULL;
CREATE UNIQUE INDEX journal_entries_refund ON journal_entries (source_id, refund_id)
    WHERE refund_id IS NOT NULL;
