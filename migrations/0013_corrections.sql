-- Corrections: `subsync replay --correct` recomputes subscriptions from their whole
-- archived history with the current mapping and fixes the journal only by appending. A
-- balance that differs from the recomputed one gets a `correction` entry whose postings
-- move the difference (the entry still balances per currency); entries already posted
-- are never changed.
--
-- The list below must name every kind the journal has: a migration that adds a kind
-- extends this one.
ALTER TABLE journal_entries DROP CONSTRAINT journal_entries_kind_check;
ALTER TABLE journal_entries ADD CONSTRAINT journal_entries_kind_check
    CHECK (kind IN ('collection', 'refund', 'correction'));

-- A correction is about a subscription's balances, not one attempt: no attempt id (an
-- attempt without a subscription, whose entries are under the subscription '', keeps its
-- own id so its corrections stay its own). Every other kind names its attempt.
ALTER TABLE journal_entries ALTER COLUMN attempt_id DROP NOT NULL;
ALTER TABLE journal_entries ADD CONSTRAINT journal_entries_attempt_named
    CHECK (attempt_id IS NOT NULL OR kind = 'correction');

-- Still one collection and one status refund per attempt and per cycle, one entry per
-- refund; an attempt (or subscription) may be corrected more than once (a second mapping
-- fix), so corrections are left out. The reconcile's `ON CONFLICT DO NOTHING` honours
-- partial unique indexes as it did the full ones.
DROP INDEX journal_entries_attempt;
CREATE UNIQUE INDEX journal_entries_attempt
    ON journal_entries (source_id, attempt_id, kind, refund_id) NULLS NOT DISTINCT
    WHERE kind <> 'correction';
DROP INDEX journal_entries_cycle;
CREATE UNIQUE INDEX journal_entries_cycle
    ON journal_entries (source_id, cycle_id, kind, refund_id) NULLS NOT DISTINCT
    WHERE cycle_id IS NOT NULL AND kind <> 'correction';

-- The audited run (`audit_log`, action `replay.correct`) that posted a correction.
ALTER TABLE journal_entries ADD COLUMN audit_id BIGINT REFERENCES audit_log (id);
ALTER TABLE journal_entries ADD CONSTRAINT journal_entries_audit_of_correction
    CHECK (audit_id IS NULL OR kind = 'correction');
