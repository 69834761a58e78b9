-- Money lookups: a succeeded (or refunded) attempt whose event carried no amount or no
-- currency (Shopify's billing-attempt webhooks have no amount, Appstle's an amount without
-- a currency) gets one row here, written by reconciliation in the transaction that stored
-- the attempt. The lookup role (`src/lookups.rs`) claims due rows with
-- `FOR UPDATE SKIP LOCKED`, reads the money from the provider's API and, in one
-- transaction, writes it onto the attempt, posts the attempt's entries through the
-- ledger's own path (unique per attempt and per cycle, so exactly once) and marks the row
-- done. Owned by `ledger`.
CREATE TABLE money_lookups (
    source_id    TEXT        NOT NULL,
    attempt_id   TEXT        NOT NULL,
    status       TEXT        NOT NULL DEFAULT 'pending' CHECK (status IN (
        'pending',           -- due at `due_at` (claimed rows are leased by moving it)
        'done',              -- the money is on the attempt and its entries are posted
        'parked',            -- a permanent answer (not found, malformed) or a panic: see `last_error`
        'not_applicable')),  -- the source has no money client (its webhooks carry money, or no [sources.api])
    due_at       TIMESTAMPTZ,
    -- Lookups made for this row; consecutive failures drive the backoff.
    tries        INT         NOT NULL DEFAULT 0,
    failures     INT         NOT NULL DEFAULT 0,
    -- The latest failure or the reason it was parked (never a secret).
    last_error   TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (source_id, attempt_id),
    FOREIGN KEY (source_id, attempt_id) REFERENCES billing_attempts (source_id, attempt_id),
    CHECK ((status = 'pending') = (due_at IS NOT NULL))
);
CREATE INDEX money_lookups_due ON money_lookups (due_at) WHERE status = 'pending';
CREATE INDEX money_lookups_parked ON money_lookups (source_id) WHERE status = 'parked';

-- Attempts stored without money before this migration are looked up too.
INSERT INTO money_lookups (source_id, attempt_id, due_at)
SELECT source_id, attempt_id, now() FROM billing_attempts
WHERE status IN ('succeeded', 'refunded') AND (amount_minor IS NULL OR currency IS NULL);
