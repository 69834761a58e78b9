-- Reconciliation looks retry calls up by the idempotency key they sent (a provider that
-- echoes the key but names no cycle, Shopify): one lookup per reconciled batch.
CREATE INDEX retry_calls_idempotency_key ON retry_calls (source_id, idempotency_key);
