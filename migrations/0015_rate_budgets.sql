-- Request budgets: one token bucket per provider account (sources with the same API base
-- URL and credential share it), shared by every process and role that calls the account:
-- pull sync and money lookups (background) and the retry scheduler (first). Tokens refill
-- at the account's rate up to its burst; background callers never take the bucket's last
-- half, which stays for dunning. `account` is `<provider>:<16 hex of SHA-256>` of the base
-- URL and credential: no secret is stored. Owned by `budget`.
CREATE TABLE rate_budgets (
    account     TEXT             PRIMARY KEY,
    tokens      DOUBLE PRECISION NOT NULL,
    refilled_at TIMESTAMPTZ      NOT NULL,
    -- Whether the last take found a token (read back by the statement that took it).
    last_taken  BOOLEAN          NOT NULL DEFAULT false
);
