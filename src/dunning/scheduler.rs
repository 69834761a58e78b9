//! The retry scheduler: claims due retries with `FOR UPDATE SKIP LOCKED` (so any number of
//! instances cooperate and each due retry is called once), re-checks the ledger before
//! calling, records the call before making it and its outcome after.
//!
//! Crash safety: the call row is committed before the HTTP call, with an idempotency key
//! derived from (source, cycle, retry number). A retry left `in_flight` with an unfinished
//! call (the process died between call and commit) is re-sent after `in_flight_timeout`
//! with the SAME number and key, so the provider answers with the first call's result and
//! never charges twice.
//!
//! One retry never stops the others: a panic in a provider client (or in handling its
//! answer) is caught per retry and counted as that retry's failure, every time it computes
//! is checked, and a retry whose calls keep failing (or whose process keeps dying during
//! the call) is parked after `park_after` failures in a row (see [`super::outcome`]).
//! Nor does one provider slow the others: the running scheduler claims and calls in one
//! lane per source with a client (plus one for the rest), each on its own tick, so a
//! provider that stalls every call delays only its own retries.

use std::{
    collections::{BTreeMap, HashMap},
    panic::AssertUnwindSafe,
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, TimeDelta, Utc};
use futures_util::FutureExt;
use sha2::Digest;
use tokio_util::sync::CancellationToken;

use super::decisions::Failure;
use super::decline::{self, DeclineBucket};
use super::policy::Decision;
use super::schedule::{Dunning, explain, row_for, stamp};
use super::status::RetryStatus;
use crate::db::{Db, DbError};
use crate::providers::Sources;
use crate::providers::contract::{FinalActionClient, RetryCall, RetryClient};

mod call;
mod final_action;

pub use final_action::final_action_key;

use call::{count_parked, panic_message};

/// Consecutive failures that park a retry unless configured (`dunning.park_after_failures`).
pub const DEFAULT_PARK_AFTER: u32 = 5;
/// Longest tick and timeouts the scheduler takes: beyond them tokio's timer and
/// Postgres's intervals overflow, and no sane setting comes near (config refuses more).
const MAX_TICK: Duration = Duration::from_secs(86_400);
const MAX_TIMEOUT: Duration = Duration::from_secs(3_650 * 86_400);
/// The code of an accepted retry whose outcome never came, as the decision log names it.
const NO_OUTCOME: &str = "no outcome";
/// What a re-armed call (no answer recorded) counts as.
const NO_ANSWER: &str = "no answer recorded: the process stopped during the call";

/// A retry this scheduler claimed and must call.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub source_id: String,
    pub cycle_key: String,
    pub retry_number: i32,
    pub call: RetryCall,
    first_failed_at: DateTime<Utc>,
    /// Consecutive failures before this call.
    failures: i32,
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    pub called: usize,
    pub completed_without_call: usize,
    pub resent: usize,
    /// Accepted retries whose outcome never arrived, handed back to the policy.
    pub expired: usize,
    /// Retries parked by this pass (their calls kept failing).
    pub parked: usize,
    /// Waits for the customer or a provider's own retries that passed their deadline.
    pub deadlines: usize,
    /// Final actions sent (or settled without a call).
    pub final_actions: usize,
}

/// The clients dunning calls, by source: retries, and final actions.
#[derive(Clone, Default)]
pub struct Clients {
    pub retry: HashMap<String, Arc<dyn RetryClient>>,
    pub final_action: HashMap<String, Arc<dyn FinalActionClient>>,
}

/// Retry clients alone (no final action is carried out through an API).
impl From<HashMap<String, Arc<dyn RetryClient>>> for Clients {
    fn from(retry: HashMap<String, Arc<dyn RetryClient>>) -> Self {
        Self {
            retry,
            final_action: HashMap::new(),
        }
    }
}

pub struct Scheduler {
    db: Db,
    dunning: Dunning,
    clients: Arc<HashMap<String, Arc<dyn RetryClient>>>,
    finals: Arc<HashMap<String, Arc<dyn FinalActionClient>>>,
    in_flight_timeout: Duration,
    accepted_timeout: Duration,
    park_after: u32,
    waits: super::outcome::Waits,
    batch: i64,
    /// The accounts' request budgets, shared with sync and lookups (dunning first).
    budgets: crate::budget::Budgets,
}

/// Which due retries a pass claims.
#[derive(Debug, Clone, Copy)]
enum Lane<'a> {
    /// Every source (one pass of `run_once`).
    All,
    /// One source with a retry or final-action client.
    Source(&'a str),
    /// Every source but those with a client of their own lane.
    Rest(&'a [String]),
}

impl Lane<'_> {
    /// The one source claimed, and the sources never claimed.
    fn filter(&self) -> (Option<&str>, &[String]) {
        match *self {
            Lane::All => (None, &[]),
            Lane::Source(source) => (Some(source), &[]),
            Lane::Rest(with_client) => (None, with_client),
        }
    }
}

impl std::fmt::Display for Lane<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lane::All => f.write_str("all sources"),
            Lane::Source(source) => write!(f, "source {source}"),
            Lane::Rest(_) => f.write_str("sources without a client"),
        }
    }
}

/// The idempotency key of retry `n` of a cycle: the same on every re-send.
pub fn idempotency_key(source_id: &str, cycle_key: &str, n: i32) -> String {
    let digest = sha2::Sha256::digest(format!("{source_id}\n{cycle_key}\n{n}"));
    format!("subsync-retry-{}", hex::encode(&digest[..16]))
}

/// The retry and final-action clients of every source whose provider takes them through
/// its API.
pub fn clients(sources: &Sources) -> Clients {
    Clients {
        retry: (sources.iter())
            .filter_map(|s| Some((s.id().to_owned(), s.retry_client()?)))
            .collect(),
        final_action: (sources.iter())
            .filter_map(|s| Some((s.id().to_owned(), s.final_action_client()?)))
            .collect(),
    }
}

impl Scheduler {
    pub fn new(
        db: Db,
        dunning: Dunning,
        clients: impl Into<Clients>,
        in_flight_timeout: Duration,
    ) -> Self {
        let clients = clients.into();
        Self {
            db,
            dunning,
            clients: Arc::new(clients.retry),
            finals: Arc::new(clients.final_action),
            in_flight_timeout: in_flight_timeout.min(MAX_TIMEOUT),
            accepted_timeout: Duration::from_secs(86_400),
            park_after: DEFAULT_PARK_AFTER,
            waits: Default::default(),
            batch: 50,
            budgets: Default::default(),
        }
    }

    /// Takes each call's token from its account's budget, before any other caller.
    pub fn with_budgets(mut self, budgets: crate::budget::Budgets) -> Self {
        self.budgets = budgets;
        self
    }

    /// Consecutive failures (calls without a usable answer) that park a retry (at least 1).
    pub fn with_park_after_failures(mut self, failures: u32) -> Self {
        self.park_after = failures.max(1);
        self
    }

    /// How long failures make a retry wait.
    pub fn with_waits(mut self, waits: super::outcome::Waits) -> Self {
        self.waits = waits;
        self
    }

    /// Runs passes every `interval` (1 ms to a day) until shutdown. A pass that fails or
    /// panics is logged and the next tick tries again.
    pub async fn run(self, interval: Duration, shutdown: CancellationToken) {
        let interval = interval.clamp(Duration::from_millis(1), MAX_TICK);
        let with_client: Vec<String> = (self.clients.keys())
            .chain(self.finals.keys())
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut lanes: Vec<Lane<'_>> = with_client.iter().map(|s| Lane::Source(s)).collect();
        lanes.push(Lane::Rest(&with_client));
        let lanes = lanes
            .into_iter()
            .map(|lane| self.run_lane(lane, interval, &shutdown));
        futures_util::future::join_all(lanes).await;
    }

    async fn run_lane(&self, lane: Lane<'_>, interval: Duration, shutdown: &CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let pass = AssertUnwindSafe(self.pass(Utc::now(), lane))
                .catch_unwind()
                .await;
            match pass {
                Ok(Ok(pass)) if pass != Pass::default() => {
                    tracing::info!(?pass, %lane, "retry pass")
                }
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, %lane, "retry pass failed; trying again next tick")
                }
                Err(panic) => tracing::error!(
                    panic = %panic_message(panic.as_ref()), %lane,
                    "retry pass panicked; trying again next tick"
                ),
            }
        }
    }

    /// One pass over every source at time `now`: re-arm stuck calls, claim what is due,
    /// call, record.
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<Pass, DbError> {
        self.pass(now, Lane::All).await
    }

    /// One pass of `lane`. The shared upkeep (re-arming unanswered calls, expiring
    /// accepted ones) runs in the lane that is not a single source.
    async fn pass(&self, now: DateTime<Utc>, lane: Lane<'_>) -> Result<Pass, DbError> {
        let (resent, mut parked, expired, deadlines) = match lane {
            Lane::Source(_) => (0, 0, 0, 0),
            Lane::All | Lane::Rest(_) => {
                let (resent, parked) = self.rearm_unanswered(now).await?;
                let expired = self.expire_accepted(now).await?;
                (resent, parked, expired, self.expire_waits(now).await?)
            }
        };
        let (claimed, completed_without_call) = self.claim(now, lane).await?;
        // Sources are called side by side, each source's retries in order: a provider that
        // stalls or misbehaves costs its own retries time, never another source's.
        let mut by_source: BTreeMap<&str, Vec<&Claimed>> = BTreeMap::new();
        for retry in &claimed {
            by_source.entry(&retry.source_id).or_default().push(retry);
        }
        let sources = by_source.into_values().map(|retries| async move {
            let mut parked = 0;
            for retry in retries {
                if self.clients.contains_key(&retry.source_id) {
                    (self.budgets)
                        .take(&retry.source_id, crate::budget::Priority::Dunning)
                        .await?;
                }
                let (called, took) = self.call(retry).await;
                let update = self.update_for(retry, called, now);
                if self.record(retry, &update, took).await? {
                    parked += 1;
                }
            }
            Ok::<usize, DbError>(parked)
        });
        for result in futures_util::future::join_all(sources).await {
            parked += result?;
        }
        let final_actions = self.final_actions(now, lane).await?;
        Ok(Pass {
            called: claimed.len(),
            completed_without_call,
            resent,
            expired,
            parked,
            deadlines,
            final_actions,
        })
    }

    /// Calls left unanswered (a crash between call and commit) go back to `scheduled` with
    /// their retry number, so the re-send carries the same idempotency key. Staleness is
    /// real elapsed time (the database's clock), whatever `now` the pass schedules with.
    /// Each counts as a failure of its retry: a call that kills the process every time is
    /// parked instead of bringing the crash back after each restart.
    async fn rearm_unanswered(&self, now: DateTime<Utc>) -> Result<(usize, usize), DbError> {
        let timeout_ms = i64::try_from(self.in_flight_timeout.as_millis()).unwrap_or(i64::MAX);
        let park_after = i32::try_from(self.park_after).unwrap_or(i32::MAX);
        let rearmed: Vec<(String, String, String)> = sqlx::query_as(
            "UPDATE retries r SET
                    status = CASE WHEN r.consecutive_failures + 1 >= $3 THEN 'parked' ELSE 'scheduled' END,
                    due_at = CASE WHEN r.consecutive_failures + 1 >= $3 THEN NULL ELSE $1 END,
                    retries_done = r.retries_done - 1,
                    consecutive_failures = r.consecutive_failures + 1, last_error = $4,
                    last_outcome = CASE WHEN r.consecutive_failures + 1 >= $3
                        THEN 'parked after ' || (r.consecutive_failures + 1) || ' consecutive failures: ' || $4
                        ELSE 'no answer recorded: re-sending the same call' END,
                    updated_at = now()
             FROM retry_calls c
             WHERE r.status = 'in_flight' AND c.source_id = r.source_id AND c.cycle_key = r.cycle_key
               AND c.retry_number = r.retries_done AND c.finished_at IS NULL
               AND c.started_at < now() - make_interval(secs => $2::float8 / 1000)
             RETURNING r.source_id, r.cycle_key, r.status",
        )
        .bind(now)
        .bind(timeout_ms as f64)
        .bind(park_after)
        .bind(NO_ANSWER)
        .fetch_all(self.db.pool())
        .await?;
        let mut parked = 0;
        for (source_id, cycle_key, status) in &rearmed {
            if status == RetryStatus::Parked.as_str() {
                parked += 1;
                count_parked(source_id, cycle_key, NO_ANSWER);
            }
        }
        Ok((rearmed.len() - parked, parked))
    }

    /// How long an accepted asynchronous retry (Appstle, Shopify) may wait for its outcome
    /// before the policy decides the next one.
    pub fn with_accepted_timeout(mut self, timeout: Duration) -> Self {
        self.accepted_timeout = timeout;
        self
    }

    /// Accepted retries whose outcome (webhook) never came: the try counts as failed with
    /// its bucket, and the policy decides what follows.
    async fn expire_accepted(&self, now: DateTime<Utc>) -> Result<usize, DbError> {
        // A timeout reaching before the start of time expires nothing.
        let cutoff = TimeDelta::from_std(self.accepted_timeout)
            .ok()
            .and_then(|timeout| now.checked_sub_signed(timeout));
        let Some(cutoff) = cutoff else {
            return Ok(0);
        };
        let mut tx = self.db.pool().begin().await?;
        let stale: Vec<(String, String, String, i32, DateTime<Utc>)> = sqlx::query_as(
            "SELECT r.source_id, r.cycle_key, r.bucket, r.retries_done, r.first_failed_at
             FROM retries r JOIN retry_calls c
               ON c.source_id = r.source_id AND c.cycle_key = r.cycle_key AND c.retry_number = r.retries_done
             WHERE r.status = 'in_flight' AND c.finished_at IS NOT NULL AND c.finished_at < $1
             FOR UPDATE OF r SKIP LOCKED",
        )
        .bind(cutoff)
        .fetch_all(&mut *tx)
        .await?;
        let waited = humantime::format_duration(self.accepted_timeout);
        let mut decided = Vec::new();
        for (source_id, cycle_key, bucket, done, first_failed_at) in &stale {
            let bucket = decline::bucket_from_str(bucket).unwrap_or(DeclineBucket::RetrySoon);
            let done = u32::try_from(*done).unwrap_or(0);
            let (status, due_at, action, why) = match self.dunning.plan(source_id) {
                Some(plan) => {
                    let failure = Failure {
                        source_id,
                        cycle_key,
                        code: NO_OUTCOME,
                        bucket,
                        retries_done: done,
                        first_failed_at: *first_failed_at,
                        now,
                    };
                    let (decision, logged) = failure.decide(&plan.policy);
                    decided.push(logged);
                    let (status, due_at, action) = row_for(&decision);
                    let why = explain(&plan.policy, NO_OUTCOME, bucket, done, &decision);
                    (status, due_at, action, why)
                }
                None => (
                    RetryStatus::Exhausted,
                    None,
                    None,
                    "no retry policy".to_owned(),
                ),
            };
            let expires_at = self
                .dunning
                .plan(source_id)
                .and_then(|p| p.policy.deadline(status, now));
            sqlx::query(
                "UPDATE retries SET status = $3, due_at = $4, final_action = COALESCE($5, final_action),
                        expires_at = $7, last_outcome = $6, updated_at = now()
                 WHERE source_id = $1 AND cycle_key = $2",
            )
            .bind(source_id)
            .bind(cycle_key)
            .bind(status.as_str())
            .bind(due_at)
            .bind(action)
            .bind(format!(
                "no outcome reported for the accepted retry within {waited}: {why}"
            ))
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        }
        super::decisions::log(&mut tx, &decided).await?;
        tx.commit().await?;
        Ok(stale.len())
    }

    /// Waits past their deadline (`awaiting_customer`, `provider_managed`): the policy
    /// stops them with its final action, and says why.
    async fn expire_waits(&self, now: DateTime<Utc>) -> Result<usize, DbError> {
        let mut tx = self.db.pool().begin().await?;
        let passed: Vec<(String, String, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT source_id, cycle_key, status, expires_at FROM retries
             WHERE status IN ('awaiting_customer', 'provider_managed') AND expires_at <= $1
             ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(now)
        .bind(self.batch)
        .fetch_all(&mut *tx)
        .await?;
        for (source_id, cycle_key, status, expires_at) in &passed {
            let status = RetryStatus::parse(status).unwrap_or(RetryStatus::AwaitingCustomer);
            let decision = self
                .dunning
                .plan(source_id)
                .map(|p| p.policy.expire(status));
            let (status_after, _, action) =
                decision
                    .as_ref()
                    .map(row_for)
                    .unwrap_or((RetryStatus::Exhausted, None, None));
            let then = match &decision {
                Some(Decision::Stop { action, reason }) => {
                    format!("stop ({reason}), then {}", action.as_str())
                }
                _ => "exhausted (no retry policy)".to_owned(),
            };
            sqlx::query(
                "UPDATE retries SET status = $3, due_at = NULL, expires_at = NULL,
                        final_action = COALESCE($4, final_action), last_outcome = $5, updated_at = now()
                 WHERE source_id = $1 AND cycle_key = $2",
            )
            .bind(source_id)
            .bind(cycle_key)
            .bind(status_after.as_str())
            .bind(action)
            .bind(format!("{status} deadline {} passed: {then}", stamp(*expires_at)))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(passed.len())
    }

    /// Claims due retries, completing without a call those the ledger says are settled.
    async fn claim(
        &self,
        now: DateTime<Utc>,
        lane: Lane<'_>,
    ) -> Result<(Vec<Claimed>, usize), DbError> {
        let (only, except) = lane.filter();
        let mut tx = self.db.pool().begin().await?;
        type Due = (
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            i32,
            DateTime<Utc>,
            i32,
        );
        let due: Vec<Due> = sqlx::query_as(
            "SELECT source_id, cycle_key, attempt_id, cycle_id, subscription_id, retries_done, first_failed_at,
                    consecutive_failures
             FROM retries WHERE status = 'scheduled' AND due_at <= $1
               AND ($3::text IS NULL OR source_id = $3) AND NOT (source_id = ANY($4))
             ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(now)
        .bind(self.batch)
        .bind(only)
        .bind(except)
        .fetch_all(&mut *tx)
        .await?;
        let (mut claimed, mut settled) = (Vec::new(), 0);
        for (
            source_id,
            cycle_key,
            attempt_id,
            cycle_id,
            subscription_id,
            done,
            first_failed_at,
            failures,
        ) in due
        {
            if let Some(reason) =
                settled_reason(&mut tx, &source_id, &cycle_key, subscription_id.as_deref()).await?
            {
                sqlx::query(
                    "UPDATE retries SET status = CASE WHEN $3 = 'paid' THEN 'recovered' ELSE 'completed' END,
                            due_at = NULL, last_outcome = 'completed without a call: ' || $3, updated_at = now()
                     WHERE source_id = $1 AND cycle_key = $2",
                )
                .bind(&source_id)
                .bind(&cycle_key)
                .bind(reason)
                .execute(&mut *tx)
                .await?;
                settled += 1;
                continue;
            }
            // A retry without a client (its source lost its `api`) is claimed too: its call
            // fails, so it moves on and is parked instead of holding the batch's head.
            let n = done + 1;
            let key = idempotency_key(&source_id, &cycle_key, n);
            sqlx::query(
                "UPDATE retries SET status = 'in_flight', retries_done = $3, last_outcome = 'calling',
                        updated_at = now()
                 WHERE source_id = $1 AND cycle_key = $2",
            )
            .bind(&source_id)
            .bind(&cycle_key)
            .bind(n)
            .execute(&mut *tx)
            .await?;
            // Recorded before the call; a re-send (after a failed call, or a crash) counts
            // itself here and learns when the first send started.
            let (sends, first_sent_at): (i32, DateTime<Utc>) = sqlx::query_as(
                "INSERT INTO retry_calls (source_id, cycle_key, retry_number, idempotency_key, request)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (source_id, cycle_key, retry_number)
                 DO UPDATE SET sends = retry_calls.sends + 1
                 RETURNING sends, started_at",
            )
            .bind(&source_id)
            .bind(&cycle_key)
            .bind(n)
            .bind(&key)
            .bind(format!("retry #{n} of cycle {cycle_key} (attempt {attempt_id})"))
            .fetch_one(&mut *tx)
            .await?;
            let call = RetryCall {
                attempt_id,
                cycle_id,
                subscription_id,
                idempotency_key: key,
                previous_send_at: (sends > 1).then_some(first_sent_at),
            };
            claimed.push(Claimed {
                source_id,
                cycle_key,
                retry_number: n,
                call,
                first_failed_at,
                failures,
            });
        }
        tx.commit().await?;
        Ok((claimed, settled))
    }
}

/// Why a due retry needs no call: its cycle was paid or skipped, or its contract ended.
async fn settled_reason(
    tx: &mut sqlx::PgConnection,
    source_id: &str,
    cycle_key: &str,
    subscription_id: Option<&str>,
) -> Result<Option<&'static str>, sqlx::Error> {
    let (paid, skipped): (bool, bool) = sqlx::query_as(
        "SELECT COALESCE(bool_or(status IN ('succeeded', 'refunded')), false),
                COALESCE(bool_or(status = 'skipped'), false)
         FROM billing_attempts WHERE source_id = $1 AND (cycle_id = $2 OR attempt_id = $2)",
    )
    .bind(source_id)
    .bind(cycle_key)
    .fetch_one(&mut *tx)
    .await?;
    if paid {
        return Ok(Some("paid"));
    }
    if skipped {
        return Ok(Some("skipped"));
    }
    let Some(subscription_id) = subscription_id else {
        return Ok(None);
    };
    let status = subscription_status(tx, source_id, subscription_id).await?;
    Ok(match status.as_deref() {
        Some("cancelled") => Some("contract cancelled"),
        Some("paused") => Some("contract paused"),
        Some("expired") => Some("contract expired"),
        Some("failed") => Some("contract failed"),
        _ => None,
    })
}

/// The subscription's status in the ledger, if it is known.
async fn subscription_status(
    tx: &mut sqlx::PgConnection,
    source_id: &str,
    subscription_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    let status: Option<(String,)> = sqlx::query_as(
        "SELECT status FROM subscriptions WHERE source_id = $1 AND subscription_id = $2",
    )
    .bind(source_id)
    .bind(subscription_id)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(status.map(|(s,)| s))
}
