-- A refund that failed after it succeeded (Stripe sends `refund.failed` for a refund it had
-- reported `succeeded` when the card issuer returns the money) gave nothing back in the
-- end. Its entry stays, as every entry does, and a `refund_reversal` entry of the same
-- refund id moves the money back (collected +x, refunded -x). A refund's `failed` is its
-- last word, so it wins over `succeeded` in whatever order the two arrive; a refund that
-- failed before it was booked is never booked.
--
-- The list below names every kind the journal has (it extends 0013's).
ALTER TABLE journal_entries DROP CONSTRAINT journal_entries_kind_check;
ALTER TABLE journal_entries ADD CONSTRAINT journal_entries_kind_check
    CHECK (kind IN ('collection', 'refund', 'correction', 'refund_reversal'));

-- One refund entry and at most one reversal per refund id.
DROP INDEX journal_entries_refund;
CREATE UNIQUE INDEX journal_entries_refund ON journal_entries (source_id, refund_id, kind)
    WHERE refund_id IS NOT NULL;
