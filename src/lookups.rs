//! The lookup role: reads from the provider's API what an event left out, and has the
//! ledger post it. Two queues: money lookups (the amount and currency of the succeeded or
//! refunded attempts whose events carried none) and payment links (the attempt a refunded
//! payment belongs to, for refunds that name only the provider's payment; see
//! `ledger/payments.rs`). It runs wherever the retry scheduler runs (`app.rs`, the
//! `scheduler` role). Both queues are worked the same way; what follows says "row" for
//! either.
//!
//! The queue is the ledger's `money_lookups` table (see `ledger/lookups.rs`: reconciliation
//! writes a row for every attempt without money, whatever its source, so the ledger never
//! knows which providers can answer). A pass claims due rows with `FOR UPDATE SKIP LOCKED`
//! and a lease (several instances cooperate; a row whose process died comes back when its
//! lease ends), then per row:
//!
//! - the source has no client for the queue (its provider's webhooks carry money, or it
//!   has no `[sources.api]`): the row is closed `not_applicable`;
//! - the client answers money: the ledger writes it onto the attempt and posts its entries
//!   in one transaction, through reconciliation's own path, so it is posted exactly once;
//! - the client answers a payment's attempt: the ledger records the link and reconciles
//!   the refunds held for it, in one transaction; a payment of no attempt (a one-off
//!   charge) is closed `not_applicable`;
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
//! lasts as long as its slowest source (every call is bounded by its `api.timeout_ms`).
//! Every outcome is counted in `subsync_money_lookups_total{provider, outcome}` and
//! `subsync_payment_links_total{provider, outcome}` (`posted`, `retried`, `rate_limited`,
//! `parked`, `panicked`, `not_applicable`); logs name the source and the attempt or
//! payment, never a credential.

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

use crate::canonical::PaymentLink;
use crate::db::{Db, DbError};
use crate::dunning::schedule::Dunning;
use crate::ledger::{Applied, Closed, DueLink, DueLookup, Queue};
use crate::money::Money;
use crate::providers::Sources;
use crate::providers::contract::{MoneyClient, MoneyQuery, PaymentClient};
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

/// A source's lookup clients and its provider's name (the metrics label).
#[derive(Clone)]
struct Client {
    provider: &'static str,
    money: Option<Arc<dyn MoneyClient>>,
    payment: Option<Arc<dyn PaymentClient>>,
}

/// Every configured source's lookup clients (or none), by source id.
#[derive(Clone)]
pub struct LookupClients(HashMap<String, Client>);

impl LookupClients {
    pub fn of(sources: &Sources) -> Self {
        let clients = sources
            .iter()
            .map(|s| {
                let client = Client {
                    provider: s.kind().as_str(),
                    money: s.money_client(),
                    payment: s.payment_client(),
                };
                (s.id().to_owned(), client)
            })
            .collect();
        Self(clients)
    }

    /// Sets `source_id`'s money client (a test seam: a client that fails in ways a fake
    /// API cannot, such as a panic).
    pub fn set(&mut self, source_id: &str, provider: &'static str, client: Arc<dyn MoneyClient>) {
        let entry = self.0.entry(source_id.to_owned()).or_insert(Client {
            provider,
            money: None,
            payment: None,
        });
        entry.money = Some(client);
    }
}

pub struct Lookups {
    db: Db,
    clients: LookupClients,
    dunning: Dunning,
    budgets: crate::budget::Budgets,
    waits: Waits,
    batch: i64,
}

/// One claimed row of either queue.
enum Job {
    Money(DueLookup),
    Payment(DueLink),
}

impl Job {
    fn queue(&self) -> Queue {
        match self {
            Job::Money(_) => Queue::Money,
            Job::Payment(_) => Queue::Payment,
        }
    }

    /// The row's key in its queue: the attempt, or the payment.
    fn key(&self) -> &str {
        match self {
            Job::Money(row) => &row.attempt_id,
            Job::Payment(row) => &row.payment_ref,
        }
    }

    fn failures(&self) -> i32 {
        match self {
            Job::Money(row) => row.failures,
            Job::Payment(row) => row.failures,
        }
    }
}

/// What one lookup led to.
enum Outcome {
    Money(Money),
    Link(Option<PaymentLink>),
    Failed(ProviderApiError),
    Panicked(String),
}

impl Lookups {
    /// The lookups of the sources of `clients` (a source without the queue's client closes
    /// its rows as not applicable, and so does a source no longer configured). `dunning`
    /// is reconciliation's, for the refunds a payment link releases.
    pub fn new(db: Db, clients: LookupClients, dunning: Dunning) -> Self {
        Self {
            budgets: Default::default(),
            db,
            clients,
            dunning,
            waits: Waits::default(),
            batch: 50,
        }
    }

    /// Takes each call's token from its account's budget (in the background: dunning first).
    pub fn with_budgets(mut self, budgets: crate::budget::Budgets) -> Self {
        self.budgets = budgets;
        self
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
                Ok(Ok(pass)) if pass != Pass::default() => tracing::info!(?pass, "lookups"),
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, "lookup pass failed; trying again next tick")
                }
                Err(panic) => tracing::error!(
                    panic = %panic_text(panic.as_ref()),
                    "lookup pass panicked; trying again next tick"
                ),
            }
        }
    }

    /// One pass at `now`: claim what is due in both queues, look up, record.
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<Pass, DbError> {
        let money = self.db.claim_money_lookups(now, LEASE, self.batch).await?;
        let links = self.db.claim_payment_links(now, LEASE, self.batch).await?;
        let mut by_source: BTreeMap<String, Vec<Job>> = BTreeMap::new();
        for row in money {
            by_source
                .entry(row.source_id.clone())
                .or_default()
                .push(Job::Money(row));
        }
        for row in links {
            by_source
                .entry(row.source_id.clone())
                .or_default()
                .push(Job::Payment(row));
        }
        let sources = by_source
            .iter()
            .map(|(source, jobs)| self.source_pass(source, jobs, now));
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
        jobs: &[Job],
        now: DateTime<Utc>,
    ) -> Result<Pass, DbError> {
        let mut pass = Pass::default();
        let client = self.clients.0.get(source);
        let provider = client.map_or("unknown", |c| c.provider);
        let (money, payment) = match client {
            Some(c) => (c.money.clone(), c.payment.clone()),
            None => (None, None),
        };
        // One statement per queue for the rows no client can answer: a source without one
        // can have many.
        for (queue, has_client, reason) in [
            (
                Queue::Money,
                money.is_some(),
                "the source has no money client (its webhooks carry money, or it has no [sources.api])",
            ),
            (
                Queue::Payment,
                payment.is_some(),
                "the source has no payment client (no [sources.api])",
            ),
        ] {
            let keys: Vec<&str> = (jobs.iter())
                .filter(|j| j.queue() == queue && !has_client)
                .map(Job::key)
                .collect();
            if !keys.is_empty() {
                (self.db)
                    .close_lookups(queue, source, &keys, Closed::NotApplicable, reason)
                    .await?;
                count(queue, provider, "not_applicable", keys.len() as u64);
                pass.not_applicable += keys.len();
            }
        }
        let mut limited_until: Option<(DateTime<Utc>, String)> = None;
        for job in jobs {
            let (queue, key) = (job.queue(), job.key());
            if limited_until.is_none() {
                (self.budgets)
                    .take(source, crate::budget::Priority::Background)
                    .await?;
            }
            let outcome = match (job, &money, &payment) {
                _ if limited_until.is_some() => None,
                (Job::Money(row), Some(client), _) => Some(money_of(client.as_ref(), row).await),
                (Job::Payment(row), _, Some(client)) => {
                    Some(link_of(client.as_ref(), &row.payment_ref).await)
                }
                // Closed above.
                _ => continue,
            };
            let Some(outcome) = outcome else {
                let (until, why) = limited_until.as_ref().expect("rate limited");
                (self.db)
                    .defer_lookup(queue, source, key, *until, why, false)
                    .await?;
                count(queue, provider, "rate_limited", 1);
                pass.rate_limited += 1;
                continue;
            };
            match outcome {
                Outcome::Money(money) => {
                    let applied = self.db.apply_money_lookup(source, key, &money).await?;
                    if applied == Applied::Posted {
                        count(queue, provider, "posted", 1);
                        pass.posted += 1;
                    }
                }
                Outcome::Link(Some(link)) => {
                    let applied = (self.db)
                        .apply_payment_link(source, key, &link, &self.dunning)
                        .await?;
                    if applied == Applied::Posted {
                        count(queue, provider, "posted", 1);
                        pass.posted += 1;
                    }
                }
                Outcome::Link(None) => {
                    let reason =
                        "the payment paid no subscription's invoice: its refunds are not booked";
                    (self.db)
                        .close_lookups(queue, source, &[key], Closed::NotApplicable, reason)
                        .await?;
                    count(queue, provider, "not_applicable", 1);
                    pass.not_applicable += 1;
                }
                Outcome::Failed(ProviderApiError::RateLimited { retry_after }) => {
                    let wait = retry_after
                        .unwrap_or(self.waits.failure)
                        .min(self.waits.max_rate_limit);
                    let until = later(now, wait);
                    let why = format!("rate limited: waiting {}s", wait.as_secs());
                    (self.db)
                        .defer_lookup(queue, source, key, until, &why, false)
                        .await?;
                    limited_until = Some((until, why));
                    count(queue, provider, "rate_limited", 1);
                    pass.rate_limited += 1;
                }
                Outcome::Failed(ProviderApiError::Transient(error)) => {
                    let until = later(now, failure_wait(&self.waits, job.failures()));
                    (self.db)
                        .defer_lookup(queue, source, key, until, &error, true)
                        .await?;
                    count(queue, provider, "retried", 1);
                    pass.retried += 1;
                }
                Outcome::Failed(error @ ProviderApiError::Rejected { .. }) => {
                    self.park(job, source, provider, &error.to_string(), "parked")
                        .await?;
                    pass.parked += 1;
                }
                Outcome::Panicked(message) => {
                    let reason = format!("the lookup client panicked: {message}");
                    self.park(job, source, provider, &reason, "panicked")
                        .await?;
                    pass.parked += 1;
                }
            }
        }
        Ok(pass)
    }

    async fn park(
        &self,
        job: &Job,
        source: &str,
        provider: &'static str,
        reason: &str,
        outcome: &'static str,
    ) -> Result<(), DbError> {
        let (queue, key) = (job.queue(), job.key());
        (self.db)
            .close_lookups(queue, source, &[key], Closed::Parked, reason)
            .await?;
        count(queue, provider, outcome, 1);
        tracing::warn!(
            source, key, ?queue, %reason,
            "lookup parked: `subsync ledger lookups-resume` after fixing the cause"
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

/// The quick retries of a transient failure within one lookup.
fn quick_retries() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_max_times(2)
}

/// Asks the provider for an attempt's money, retrying a transient failure at once a few
/// times; a panic in the client is caught here and becomes this row's outcome.
async fn money_of(client: &dyn MoneyClient, row: &DueLookup) -> Outcome {
    let query = MoneyQuery {
        attempt_id: row.attempt_id.clone(),
        subscription_id: row.subscription_id.clone(),
        cycle_id: row.cycle_id.clone(),
    };
    let attempts = (|| client.money(&query))
        .retry(quick_retries())
        .when(|e| matches!(e, ProviderApiError::Transient(_)));
    match AssertUnwindSafe(attempts).catch_unwind().await {
        Ok(Ok(money)) => Outcome::Money(money),
        Ok(Err(error)) => Outcome::Failed(error),
        Err(panic) => Outcome::Panicked(panic_text(panic.as_ref())),
    }
}

/// Asks the provider which attempt a payment belongs to, as [`money_of`] asks.
async fn link_of(client: &dyn PaymentClient, payment_ref: &str) -> Outcome {
    let attempts = (|| client.attempt_of(payment_ref))
        .retry(quick_retries())
        .when(|e| matches!(e, ProviderApiError::Transient(_)));
    match AssertUnwindSafe(attempts).catch_unwind().await {
        Ok(Ok(link)) => Outcome::Link(link),
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

fn count(queue: Queue, provider: &'static str, outcome: &'static str, n: u64) {
    let name = match queue {
        Queue::Money => "subsync_money_lookups_total",
        Queue::Payment => "subsync_payment_links_total",
    };
    metrics::counter!(name, "provider" => provider, "outcome" => outcome).increment(n);
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
