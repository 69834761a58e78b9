-- Payment links: a refund whose event names the provider's payment (Stripe's refunds name
-- a PaymentIntent or a Charge) rather than the billing attempt it gives money back from.
-- Reconciliation holds such a refund here, unbooked, with the id of its archived event;
-- the lookup role (`src/lookups.rs`) asks the provider once which attempt the payment
-- belongs to and, in one transaction, records the answer and reconciles the held events
-- again, so their refunds are stored and posted through the ledger's own path. A later
-- refund of a linked payment is linked in its own batch, with no call. Owned by `ledger`.
CREATE TABLE payment_links (
    source_id       TEXT        NOT NULL,
    payment_ref     TEXT        NOT NULL,
    status          TEXT        NOT NULL DEFAULT 'pending' CHECK (status IN (
        'pending',          -- due at `due_at` (claimed rows are leased by moving it)
        'done',             -- linked: `attempt_id` (and the ids below) are the answer
        'parked',           -- a permanent answer or a panic: see `last_error`
        'not_applicable')), -- the payment is no subscription's (or the source has no payment client)
    attempt_id      TEXT,
    subscription_id TEXT,
    cycle_id        TEXT,
    -- The archived events whose refunds wait for this link.
    held_event_ids  BIGINT[]    NOT NULL DEFAULT '{}',
    due_at          TIMESTAMPTZ,
    tries           INT         NOT NULL DEFAULT 0,
    failures        INT         NOT NULL DEFAULT 0,
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (source_id, payment_ref),
    CHECK ((status = 'pending') = (due_at IS NOT NULL)),
    CHECK ((status = 'done') = (attempt_id IS NOT NULL))
);
CREATE INDEX payment_links_due ON payment_links (due_at) WHERE status = 'pending';
