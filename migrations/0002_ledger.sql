-- The ledger: subscriptions, billing attempts and an append-only double-entry journal.
-- Reconciliation is order-independent: every write below is a merge that only moves
-- forward (see src/ledger/reconcile.rs), so any order of the same events gives one state.

-- Canonical ranks. Attempts: pending < requires_action < skipped < failed < succeeded <
-- refunded (a late `failed` after `succeeded` is stale; money moved wins). Subscriptions:
-- ties of provider version and update time are broken by this rank, so the merge is a max.
CREATE FUNCTION attempt_rank(status TEXT) RETURNS INT LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT CASE status
        WHEN 'pending' THEN 0 WHEN 'requires_action' THEN 1 WHEN 'skipped' THEN 2
        WHEN 'failed' THEN 3 WHEN 'succeeded' THEN 4 WHEN 'refunded' THEN 5 END
$$;

CREATE TABLE subscriptions (
    source_id          TEXT        NOT NULL,
    subscription_id    TEXT        NOT NULL,
    status             TEXT        NOT NULL,
    provider_status    TEXT        NOT NULL,
    currency           TEXT,
    customer_id        TEXT,
    current_period_end TIMESTAMPTZ,
    -- The ordering key of the change that set this row: (version, updated_at, rank).
    version            BIGINT      NOT NULL,
    provider_updated_at TIMESTAMPTZ NOT NULL,
    status_rank        INT         NOT NULL,
    last_event_id      BIGINT      NOT NULL REFERENCES events (id),
    PRIMARY KEY (source_id, subscription_id)
);

CREATE TABLE billing_attempts (
    source_id        TEXT        NOT NULL,
    attempt_id       TEXT        NOT NULL,
    subscription_id  TEXT,
    cycle_id         TEXT,
    status           TEXT        NOT NULL CHECK (attempt_rank(status) IS NOT NULL),
    provider_status  TEXT        NOT NULL,
    amount_minor     BIGINT,
    currency         TEXT,
    error_code       TEXT,
    error_message    TEXT,
    -- retry_soon | needs_customer_action | never_retry | provider_error | inventory
    decline_bucket   TEXT,
    attempted_at     TIMESTAMPTZ,
    next_attempt_at  TIMESTAMPTZ,
    attempt_count    INT,
    -- The archived event that last moved this attempt forward.
    last_event_id    BIGINT      NOT NULL REFERENCES events (id),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (source_id, attempt_id),
    CHECK ((amount_minor IS NULL) = (currency IS NULL))
);
CREATE INDEX billing_attempts_subscription ON billing_attempts (source_id, subscription_id);
CREATE INDEX billing_attempts_status ON billing_attempts (status);

-- Journal entries: one per (attempt, kind), so an attempt is collected at most once and
-- refunded at most once however often and in whatever order its events arrive.
CREATE TABLE journal_entries (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_id       TEXT        NOT NULL,
    subscription_id TEXT        NOT NULL,
    attempt_id      TEXT        NOT NULL,
    kind            TEXT        NOT NULL CHECK (kind IN ('collection', 'refund')),
    event_id        BIGINT      NOT NULL REFERENCES events (id),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (source_id, attempt_id, kind)
);

-- Accounts per source and subscription: receivable (settled by collections), collected,
-- refunded. A collection: collected +x, receivable -x. A refund reverses it into
-- refunded: refunded +x, collected -x.
CREATE TABLE postings (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entry_id        BIGINT      NOT NULL REFERENCES journal_entries (id),
    source_id       TEXT        NOT NULL,
    subscription_id TEXT        NOT NULL,
    account         TEXT        NOT NULL CHECK (account IN ('receivable', 'collected', 'refunded')),
    amount_minor    BIGINT      NOT NULL,
    currency        TEXT        NOT NULL
);
CREATE INDEX postings_entry ON postings (entry_id);
CREATE INDEX postings_subscription ON postings (source_id, subscription_id);

-- Append-only: entries and postings are never updated or deleted; a correction is a new
-- entry.
CREATE FUNCTION journal_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the journal is append-only: % on % is not allowed', TG_OP, TG_TABLE_NAME;
END
$$;
CREATE TRIGGER journal_entries_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON journal_entries
    FOR EACH STATEMENT EXECUTE FUNCTION journal_is_append_only();
CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON postings
    FOR EACH STATEMENT EXECUTE FUNCTION journal_is_append_only();

-- Every entry balances: its postings sum to zero per currency. Checked once per
-- statement over the inserted rows (postings of an entry are inserted together).
CREATE FUNCTION postings_balance() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unbalanced BIGINT;
BEGIN
    SELECT entry_id INTO unbalanced FROM new_postings
    GROUP BY entry_id, currency HAVING sum(amount_minor) <> 0 LIMIT 1;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'journal entry % does not balance', unbalanced;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER postings_balance AFTER INSERT ON postings
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION postings_balance();
