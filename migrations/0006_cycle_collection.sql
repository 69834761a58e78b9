-- One collection (and one refund) per billing cycle. A provider collects a cycle once,
-- even when it reports that payment as two succeeded attempts (Rebilly's
-- `transaction-processed` names it by transaction, an `invoice-paid` without a transaction
-- by invoice; a pull sync may see either). Entries posted before this migration have no
-- cycle and keep the per-attempt rule only.
ALTER TABLE journal_entries ADD COLUMN cycle_id TEXT;
CREATE UNIQUE INDEX journal_entries_cycle ON journal_entries (source_id, cycle_id, kind)
    WHERE cycle_id IS NOT NULL;
