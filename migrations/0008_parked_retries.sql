-- Parked retries: a retry whose call keeps failing inside subsync (transport errors,
-- timeouts, rate limits, a request that cannot be built, a panicking client, a process
-- that died during the call) is parked after `dunning.park_after_failures` consecutive
-- failures instead of looping; an operator resumes it (`subsync retries resume`,
-- `POST /admin/retries/{id}/resume`). A provider's answer about the payment (declined,
-- charged, accepted) resets the count.
ALTER TABLE retries
    -- Calls in a row that got no usable answer; 0 after any answer about the payment.
    ADD COLUMN consecutive_failures INT NOT NULL DEFAULT 0,
    -- The latest failure's text (never a secret), kept until an answer clears it.
    ADD COLUMN last_error TEXT;

ALTER TABLE retries DROP CONSTRAINT retries_status_check;
ALTER TABLE retries ADD CONSTRAINT retries_status_check CHECK (status IN (
    'scheduled', 'in_flight', 'awaiting_customer', 'provider_managed', 'recovered',
    'completed', 'exhausted', 'stopped',
    'parked'));           -- calls kept failing: waits for an operator to resume it

-- A parked retry is still open (a payment recovers it): the open-retries index covers it,
-- so the payment path's lookup by subscription keeps using the index.
DROP INDEX retries_open_subscription;
CREATE INDEX retries_open_subscription ON retries (source_id, subscription_id)
    WHERE status IN ('scheduled', 'in_flight', 'awaiting_customer', 'provider_managed', 'parked');
