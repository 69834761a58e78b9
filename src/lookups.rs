//! The money-lookup role: reads from the provider's API the amount and currency of the
//! succeeded (or refunded) attempts whose events carried none, and has the ledger post
//! them. It runs wherever the retry scheduler runs (`app.rs`, the `scheduler` role).
//!
//! The queue is the ledger's `money_lookups` table (see `ledger/lookups.rs`: reconciliation
//! writes a row for every attempt without money, whatever its source, so the ledger never
//! knows which providers can answer). A pass claims due rows with `FOR UPDATE SKIP LOCKED`
//! and a lease (several instances cooperate; a row whose process died comes back when its
//! lease ends), then per row:
//!
//! - the source has no money client (its provider's webhooks carry money, or it has no
//!   `[sources.api]`): the row is closed `not_applicable`;
//! - the client answers money: the ledger writes it onto the attempt and posts its entries
//!   in one transaction, through reconciliation's own path, so it is posted exactly once;
//! - `Transient` (5xx, timeout, an attempt still processing): tried again at once a few
//!   times on a short backoff (backon), then the row waits `failure_wait` doubled per
//!   consecutive failure (at most `max_failure_wait`); it is never parked for this;
//! - `RateLimited`: the row and the rest of that source's claimed rows wait `Retry-After`
//!   (or `failure_wait` without one), at most `max_rate_limit_wait`;
//! - `Rejected` (not found, no order, an amount that does not convert): parked with the
//!   reason, for an operator (`subsync ledger lookups`, `subsync ledger lookups-resume`);
//! - a panic in the client costs its row (parked with the panic's text), never the pass.
//!
//! Within a pass, sources are looked up side by side, each source's rows in order; a pass
//! lasts as long as its slowest source (every call is bounded by its `api.timeout_ms`). Every outcome is counted in
//! `subsync_money_lookups_total{provider, outcome}` (`posted`, `retried`, `rate_limited`,
//! `parked`, `panicked`, `not_applicable`); logs name the source and attempt, never a
//! credential.

use std::{
    collections::{BTreeMap, HashMap},
    panic::AssertUnwindSafe,
    sync::Arc,
    time::Duration,
};

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use chrono::{DateTime, TimeDelta, Utc};
use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::db::{Db, DbError};
use crate::ledger::{Applied, Closed, DueLookup};
use crate::money::Money;
use crate::providers::Sources;
use crate::providers::contract::{MoneyClient, MoneyQuery};
use crate::providers::http::ProviderApiError;
use crate::supervise::panic_text;

/// How long a claimed row is leased to its pass.
const LEASE: Duration = Duration::from_secs(300);
/// Longest tick the loop takes.
const MAX_TICK: Duration = Duration::from_secs(86_400);

/// How long failures make a row wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waits {
    /// After the first failed lookup; doubled per consecutive failure.
    pub failure: Duration,
    /// The most a failed lookup waits.
    pub max_failure: Duration,
    /// The most a provider's rate limit may make a row wait.
    pub max_rate_limit: Duration,
}

impl Default for Waits {
    fn default() -> Self {
        Self {
            failure: Duration::from_secs(60),
            max_failure: Duration::from_secs(3600),
            max_rate_limit: Duration::from_secs(3600),
        }
    }
}

/// What one pass did, per outcome.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    pub posted: usize,
    pub retried: usize,
    pub rate_limited: usize,
    pub parked: usize,
    pub not_applicable: usize,
}

/// A source's money client and its provider's name (the metrics label).
#[derive(Clone)]
struct Client {
    provider: &'static str,
    client: Option<Arc<dyn MoneyClient>>,
}

/// Every configured source's money client (or none), by source id.
#[derive(Clone)]
pub struct MoneyClients(HashMap<String, Client>);

impl MoneyClients {
    pub fn of(sources: &Sources) -> Self {
        let clients = sources
            .iter()
            .map(|s| {
                let client = Client {
                    provider: s.kind().as_str(),
                    client: s.money_client(),
                };
                (s.id().to_owned(), client)
            })
            .collect();
        Self(clients)
    }

    /// Sets `source_id`'s client (a test seam: a client that fails in ways a fake API
    /// cannot, such as a panic).
    pub fn set(&mut self, source_id: &str, provider: &'static str, client: Arc<dyn MoneyClient>) {
        let client = Client {
            provider,
            client: Some(client),
        };
        self.0.insert(source_id.to_owned(), client);
    }
}

pub struct Lookups {
    db: Db,
    clients: MoneyClients,
    waits: Waits,
    batch: i64,
}

/// What one lookup led to.
enum Outcome {
    Money(Money),
    Failed(ProviderApiError),
    Panicked(String),
}

impl Lookups {
    /// The lookups of the sources of `clients` (those without a money client close their
    /// rows as not applicable, and so do sources no longer configured).
    pub fn new(db: Db, clients: MoneyClients) -> Self {
        Self {
            db,
            clients,
            waits: Waits::default(),
            batch: 50,
        }
    }

    pub fn with_waits(mut self, waits: Waits) -> Self {
        self.waits = waits;
        self
    }

    /// Runs passes every `interval` until shutdown; a pass that fails or panics is logged
    /// and the next tick tries again.
    pub async fn run(self, interval: Duration, shutdown: CancellationToken) {
        let interval = interval.clamp(Duration::from_millis(1), MAX_TICK);
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            match AssertUnwindSafe(self.run_once(Utc::now()))
                .catch_unwind()
                .await
            {
                Ok(Ok(pass)) if pass != Pass::default() => tracing::info!(?pass, "money lookups"),
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, "money lookup pass failed; trying again next tick")
                }
                Err(panic) => tracing::error!(
                    panic = %panic_text(panic.as_ref()),
                    "money lookup pass panicked; trying again next tick"
                ),
            }
        }
    }

    /// One pass at `now`: claim what is due, look up, record.
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<Pass, DbError> {
        let due = self.db.claim_money_lookups(now, LEASE, self.batch).await?;
        let mut by_source: BTreeMap<&str, Vec<&DueLookup>> = BTreeMap::new();
        for row in &due {
            by_source.entry(&row.source_id).or_default().push(row);
        }
        let sources = by_source
            .into_iter()
            .map(|(source, rows)| self.source_pass(source, rows, now));
        let mut pass = Pass::default();
        for result in futures_util::future::join_all(sources).await {
            let p = result?;
            pass.posted += p.posted;
            pass.retried += p.retried;
            pass.rate_limited += p.rate_limited;
            pass.parked += p.parked;
            pass.not_applicable += p.not_applicable;
        }
        Ok(pass)
    }

    /// One source's claimed rows, in order; a rate limit defers the rest of them.
    async fn source_pass(
        &self,
        source: &str,
        rows: Vec<&DueLookup>,
        now: DateTime<Utc>,
    ) -> Result<Pass, DbError> {
        let mut pass = Pass::default();
        let (provider, client) = match self.clients.0.get(source) {
            Some(c) => (c.provider, c.client.clone()),
            None => ("unknown", None),
        };
        let Some(client) = client else {
            // One statement for all of them: a source without a client can have many.
            let reason = "the source has no money client (its webhooks carry money, or it has no [sources.api])";
            let ids: Vec<&str> = rows.iter().map(|r| r.attempt_id.as_str()).collect();
            (self.db)
                .close_money_lookup(source, &ids, Closed::NotApplicable, reason)
                .await?;
            count(provider, "not_applicable", ids.len() as u64);
            pass.not_applicable += ids.len();
            return Ok(pass);
        };
        let mut limited_until: Option<(DateTime<Utc>, String)> = None;
        for row in rows {
            if let Some((until, why)) = &limited_until {
                (self.db)
                    .defer_money_lookup(source, &row.attempt_id, *until, why, false)
                    .await?;
                count(provider, "rate_limited", 1);
                pass.rate_limited += 1;
                continue;
            }
            match lookup(client.as_ref(), row).await {
                Outcome::Money(money) => {
                    let applied = (self.db)
                        .apply_money_lookup(source, &row.attempt_id, &money)
                        .await?;
                    if applied == Applied::Posted {
                        count(provider, "posted", 1);
                        pass.posted += 1;
                    }
                }
                Outcome::Failed(ProviderApiError::RateLimited { retry_after }) => {
                    let wait = retry_after
                        .unwrap_or(self.waits.failure)
                        .min(self.waits.max_rate_limit);
                    let until = later(now, wait);
                    let why = format!("rate limited: waiting {}s", wait.as_secs());
                    (self.db)
                        .defer_money_lookup(source, &row.attempt_id, until, &why, false)
                        .await?;
                    limited_until = Some((until, why));
                    count(provider, "rate_limited", 1);
                    pass.rate_limited += 1;
                }
                Outcome::Failed(ProviderApiError::Transient(error)) => {
                    let until = later(now, failure_wait(&self.waits, row.failures));
                    (self.db)
                        .defer_money_lookup(source, &row.attempt_id, until, &error, true)
                        .await?;
                    count(provider, "retried", 1);
                    pass.retried += 1;
                }
                Outcome::Failed(error @ ProviderApiError::Rejected { .. }) => {
                    self.park(source, row, provider, &error.to_string(), "parked")
                        .await?;
                    pass.parked += 1;
                }
                Outcome::Panicked(message) => {
                    let reason = format!("the money client panicked: {message}");
                    self.park(source, row, provider, &reason, "panicked")
                        .await?;
                    pass.parked += 1;
                }
            }
        }
        Ok(pass)
    }

    async fn park(
        &self,
        source: &str,
        row: &DueLookup,
        provider: &'static str,
        reason: &str,
        outcome: &'static str,
    ) -> Result<(), DbError> {
        (self.db)
            .close_money_lookup(source, &[row.attempt_id.as_str()], Closed::Parked, reason)
            .await?;
        count(provider, outcome, 1);
        tracing::warn!(
            source, attempt_id = %row.attempt_id, %reason,
            "money lookup parked: `subsync ledger lookups-resume` after fixing the cause"
        );
        Ok(())
    }
}

/// The wait after `failures` earlier consecutive failures (and this one): backon's
/// exponential steps from `failure`, at most `max_failure`.
fn failure_wait(waits: &Waits, failures: i32) -> Duration {
    let steps = usize::try_from(failures.max(0)).unwrap_or(0).min(64);
    ExponentialBuilder::default()
        .with_min_delay(waits.failure)
        .with_max_delay(waits.max_failure)
        .without_max_times()
        .build()
        .nth(steps)
        .unwrap_or(waits.max_failure)
}

/// Asks the provider, retrying a transient failure at once a few times; a panic in the
/// client is caught here and becomes this row's outcome.
async fn lookup(client: &dyn MoneyClient, row: &DueLookup) -> Outcome {
    let query = MoneyQuery {
        attempt_id: row.attempt_id.clone(),
        subscription_id: row.subscription_id.clone(),
        cycle_id: row.cycle_id.clone(),
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_max_times(2);
    let attempts = (|| client.money(&query))
        .retry(backoff)
        .when(|e| matches!(e, ProviderApiError::Transient(_)));
    match AssertUnwindSafe(attempts).catch_unwind().await {
        Ok(Ok(money)) => Outcome::Money(money),
        Ok(Err(error)) => Outcome::Failed(error),
        Err(panic) => Outcome::Panicked(panic_text(panic.as_ref())),
    }
}

/// `now` plus `wait` (waits are bounded by the configuration; the end of time otherwise).
fn later(now: DateTime<Utc>, wait: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(wait)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn count(provider: &'static str, outcome: &'static str, n: u64) {
    metrics::counter!("subsync_money_lookups_total", "provider" => provider, "outcome" => outcome)
        .increment(n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_wait_longer_up_to_the_maximum() {
        let waits = Waits {
            failure: Duration::from_secs(60),
            max_failure: Duration::from_secs(300),
            max_rate_limit: Duration::from_secs(3600),
        };
        let waited: Vec<u64> = (0..6).map(|n| failure_wait(&waits, n).as_secs()).collect();
        assert_eq!(waited, [60, 120, 240, 300, 300, 300]);
    }
}
