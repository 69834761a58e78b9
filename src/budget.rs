//! Request budgets: one token bucket per provider account, kept in Postgres so that every
//! process and role calling the account shares it, with dunning first.
//!
//! A provider limits requests per account (Stripe 100/s live and 25/s in test mode, Polar
//! 100/min in its sandbox, ...), not per process: a pull sync and the retry scheduler calling the same
//! account from two machines must stay within one limit together, and a sync walking a
//! large backfill must never delay a payment retry. So each call first takes a token from
//! its account's bucket (`rate_budgets`, one row per account), atomically in one
//! statement:
//!
//! - the bucket refills at the account's `rate` (requests per second) up to `burst` =
//!   max(2, 2 × rate) tokens;
//! - [`Priority::Dunning`] (the retry scheduler) takes any token;
//! - [`Priority::Background`] (pull sync, money and payment lookups) takes one only while
//!   more than half the burst is left: the rest is kept for dunning. While dunning is idle
//!   background callers still get the full rate (the bucket refills faster than they
//!   drain it from half full); when dunning calls, background callers wait.
//!
//! Accounts: sources with the same provider, API base URL and credential are one account
//! (`<provider>:<16 hex of SHA-256 of base URL and credential>`: no secret is stored or
//! logged). The rate is the source's `api.requests_per_second`, else the pace of its
//! `sync.min_interval_ms`, else the provider's documented limit (Stripe 100/s for a live
//! key, 25/s for a test key; Polar 100/min, its sandbox's). Shopify limits by query cost
//! (answered with `THROTTLED` and the exact wait), and Rebilly, PayNow and Appstle publish
//! no limit: they have a budget only when one is configured. Each take is one statement on the pool; a
//! call that finds no token sleeps for the time the bucket needs (at most 5 s per check)
//! and checks again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;

use crate::config::Settings;
use crate::db::{Db, DbError};
use crate::providers::Sources;

/// Who is asking: dunning comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// The retry scheduler: may take every token.
    Dunning,
    /// Pull sync and lookups: leave half the burst to dunning.
    Background,
}

/// The longest single sleep before the bucket is checked again.
const MAX_SLEEP: Duration = Duration::from_secs(5);

/// One account's bucket.
#[derive(Debug, Clone)]
pub struct Budget {
    db: Db,
    account: String,
    rate: f64,
    burst: f64,
}

impl Budget {
    pub fn new(db: Db, account: String, requests_per_second: f64) -> Self {
        let rate = requests_per_second.max(1e-3);
        Self {
            db,
            account,
            rate,
            burst: (2.0 * rate).max(2.0),
        }
    }

    pub fn account(&self) -> &str {
        &self.account
    }

    /// Waits for a token of the account's bucket and takes it.
    pub async fn take(&self, priority: Priority) -> Result<(), DbError> {
        loop {
            match self.try_take(priority).await? {
                None => return Ok(()),
                Some(wait) => {
                    metrics::counter!("subsync_budget_waits_total", "priority" => priority.label())
                        .increment(1);
                    tokio::time::sleep(wait.min(MAX_SLEEP)).await;
                }
            }
        }
    }

    /// Takes a token if `priority` may have one now (`None`), else how long until it may.
    pub async fn try_take(&self, priority: Priority) -> Result<Option<Duration>, DbError> {
        let keep = match priority {
            Priority::Dunning => 0.0,
            Priority::Background => self.burst / 2.0,
        };
        // In one statement, under the row's lock: the bucket refilled to now (created
        // full), and a token taken if it then holds `keep` + 1.
        let (tokens, taken): (f64, bool) = sqlx::query_as(
            "WITH now AS (SELECT clock_timestamp() AS at)
             INSERT INTO rate_budgets AS b (account, tokens, refilled_at, last_taken)
             SELECT $1, $2 - 1, now.at, true FROM now
             ON CONFLICT (account) DO UPDATE SET
                 tokens = LEAST($2, b.tokens
                     + GREATEST(0, EXTRACT(EPOCH FROM excluded.refilled_at - b.refilled_at)) * $3)
                     - CASE WHEN LEAST($2, b.tokens
                         + GREATEST(0, EXTRACT(EPOCH FROM excluded.refilled_at - b.refilled_at)) * $3)
                         >= $4 + 1 THEN 1 ELSE 0 END,
                 refilled_at = GREATEST(b.refilled_at, excluded.refilled_at),
                 last_taken = LEAST($2, b.tokens
                     + GREATEST(0, EXTRACT(EPOCH FROM excluded.refilled_at - b.refilled_at)) * $3)
                     >= $4 + 1
             RETURNING tokens, last_taken",
        )
        .bind(&self.account)
        .bind(self.burst)
        .bind(self.rate)
        .bind(keep)
        .fetch_one(self.db.pool())
        .await?;
        if taken {
            return Ok(None);
        }
        let missing = (keep + 1.0 - tokens).max(0.0);
        Ok(Some(
            Duration::from_secs_f64(missing / self.rate).max(Duration::from_millis(1)),
        ))
    }
}

impl Priority {
    fn label(self) -> &'static str {
        match self {
            Priority::Dunning => "dunning",
            Priority::Background => "background",
        }
    }
}

/// The budgets of the configured sources, by source id (sources of one account share a
/// bucket).
#[derive(Debug, Clone, Default)]
pub struct Budgets(Arc<HashMap<String, Budget>>);

impl Budgets {
    pub fn new(settings: &Settings, db: &Db, sources: &Sources) -> Self {
        let budgets = settings
            .sources
            .iter()
            .filter_map(|s| {
                let api = s.api.as_ref()?;
                let source = sources.get(&s.id)?;
                let paced = s.sync.as_ref().map_or(0, |sync| sync.min_interval_ms);
                let rate = (api.requests_per_second)
                    .or_else(|| (paced > 0).then(|| 1000.0 / paced as f64))
                    .or_else(|| source.list_client()?.requests_per_second())?;
                let digest = crate::providers::sha256_hex(&[
                    api.base_url.as_bytes(),
                    b"\n",
                    api.token.expose_secret().as_bytes(),
                ]);
                let account = format!("{}:{}", source.kind().as_str(), &digest[..16]);
                Some((s.id.clone(), Budget::new(db.clone(), account, rate)))
            })
            .collect();
        Self(Arc::new(budgets))
    }

    /// Takes a token of `source_id`'s account (nothing to take without a budget).
    pub async fn take(&self, source_id: &str, priority: Priority) -> Result<(), DbError> {
        match self.0.get(source_id) {
            Some(budget) => budget.take(priority).await,
            None => Ok(()),
        }
    }

    pub fn get(&self, source_id: &str) -> Option<&Budget> {
        self.0.get(source_id)
    }
}
