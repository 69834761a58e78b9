//! The retry scheduler: claims due retries with `FOR UPDATE SKIP LOCKED` (so any number of
//! instances cooperate and each due retry is called once), re-checks the ledger before
//! calling, records the call before making it and its outcome after.
//!
//! Crash safety: the call row is committed before the HTTP call, with an idempotency key
//! derived from (source, cycle, retry number). A retry left `in_flight` with an unfinished
//! call (the process died between call and commit) is re-sent after `in_flight_timeout`
//! with the SAME number and key, so the provider answers with the first call's result and
//! never charges twice.

use std::{collections::HashMap, sync::Arc, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use sha2::Digest;
use tokio_util::sync::CancellationToken;

use super::clients::{CallError, CallOutcome, RetryCall, RetryClient};
use super::decline::{self, DeclineBucket};
use super::schedule::{Dunning, row_for};
use crate::ledger::{Db, DbError};

/// A retry this scheduler claimed and must call.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub source_id: String,
    pub cycle_key: String,
    pub retry_number: i32,
    pub call: RetryCall,
    first_failed_at: DateTime<Utc>,
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    pub called: usize,
    pub completed_without_call: usize,
    pub resent: usize,
    /// Accepted retries whose outcome never arrived, handed back to the policy.
    pub expired: usize,
}

pub struct Scheduler {
    db: Db,
    dunning: Dunning,
    clients: Arc<HashMap<String, Box<dyn RetryClient>>>,
    in_flight_timeout: Duration,
    accepted_timeout: Duration,
    batch: i64,
}

/// The idempotency key of retry `n` of a cycle: the same on every re-send.
pub fn idempotency_key(source_id: &str, cycle_key: &str, n: i32) -> String {
    let digest = sha2::Sha256::digest(format!("{source_id}\n{cycle_key}\n{n}"));
    format!("subsync-retry-{}", hex::encode(&digest[..16]))
}

impl Scheduler {
    pub fn new(
        db: Db,
        dunning: Dunning,
        clients: HashMap<String, Box<dyn RetryClient>>,
        in_flight_timeout: Duration,
    ) -> Self {
        Self {
            db,
            dunning,
            clients: Arc::new(clients),
            in_flight_timeout,
            accepted_timeout: Duration::from_secs(86_400),
            batch: 50,
        }
    }

    /// Runs passes every `interval` until shutdown.
    pub async fn run(self, interval: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            match self.run_once(Utc::now()).await {
                Ok(pass) if pass != Pass::default() => tracing::info!(?pass, "retry pass"),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "retry pass failed; trying again next tick"),
            }
        }
    }

    /// One pass at time `now`: re-arm stuck calls, claim what is due, call, record.
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<Pass, DbError> {
        let resent = self.rearm_unanswered(now).await?;
        let expired = self.expire_accepted(now).await?;
        let (claimed, completed_without_call) = self.claim(now).await?;
        for retry in &claimed {
            let outcome = self.call(retry).await;
            self.record(retry, &outcome, now).await?;
        }
        Ok(Pass {
            called: claimed.len(),
            completed_without_call,
            resent,
            expired,
        })
    }

    /// Calls left unanswered (a crash between call and commit) go back to `scheduled` with
    /// their retry number, so the re-send carries the same idempotency key. Staleness is
    /// real elapsed time (the database's clock), whatever `now` the pass schedules with.
    async fn rearm_unanswered(&self, now: DateTime<Utc>) -> Result<usize, DbError> {
        let timeout_ms = i64::try_from(self.in_flight_timeout.as_millis()).unwrap_or(i64::MAX);
        let done = sqlx::query(
            "UPDATE retries r SET status = 'scheduled', due_at = $1, retries_done = r.retries_done - 1,
                    last_outcome = 'no answer recorded: re-sending the same call', updated_at = now()
             FROM retry_calls c
             WHERE r.status = 'in_flight' AND c.source_id = r.source_id AND c.cycle_key = r.cycle_key
               AND c.retry_number = r.retries_done AND c.finished_at IS NULL
               AND c.started_at < now() - make_interval(secs => $2::float8 / 1000)",
        )
        .bind(now)
        .bind(timeout_ms as f64)
        .execute(self.db.pool())
        .await?;
        Ok(done.rows_affected() as usize)
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
        let cutoff = now
            - chrono::Duration::from_std(self.accepted_timeout).unwrap_or(chrono::Duration::MAX);
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
        for (source_id, cycle_key, bucket, done, first_failed_at) in &stale {
            let bucket = decline::bucket_from_str(bucket).unwrap_or(DeclineBucket::RetrySoon);
            let decision = self.dunning.plan(source_id).map(|p| {
                p.policy.decide(
                    bucket,
                    u32::try_from(*done).unwrap_or(0),
                    *first_failed_at,
                    now,
                )
            });
            let (status, due_at, action) =
                decision
                    .as_ref()
                    .map(row_for)
                    .unwrap_or(("exhausted", None, None));
            sqlx::query(
                "UPDATE retries SET status = $3, due_at = $4, final_action = COALESCE($5, final_action),
                        last_outcome = 'no outcome reported for the accepted retry', updated_at = now()
                 WHERE source_id = $1 AND cycle_key = $2",
            )
            .bind(source_id)
            .bind(cycle_key)
            .bind(status)
            .bind(due_at)
            .bind(action)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(stale.len())
    }

    /// Claims due retries, completing without a call those the ledger says are settled.
    async fn claim(&self, now: DateTime<Utc>) -> Result<(Vec<Claimed>, usize), DbError> {
        let mut tx = self.db.pool().begin().await?;
        type Due = (
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            i32,
            DateTime<Utc>,
        );
        let due: Vec<Due> = sqlx::query_as(
            "SELECT source_id, cycle_key, attempt_id, cycle_id, subscription_id, retries_done, first_failed_at
             FROM retries WHERE status = 'scheduled' AND due_at <= $1
             ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(now)
        .bind(self.batch)
        .fetch_all(&mut *tx)
        .await?;
        let (mut claimed, mut settled) = (Vec::new(), 0);
        for (source_id, cycle_key, attempt_id, cycle_id, subscription_id, done, first_failed_at) in
            due
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
            if !self.clients.contains_key(&source_id) {
                continue;
            }
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
            // Recorded before the call; a re-send after a crash counts itself here.
            sqlx::query(
                "INSERT INTO retry_calls (source_id, cycle_key, retry_number, idempotency_key, request)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (source_id, cycle_key, retry_number)
                 DO UPDATE SET sends = retry_calls.sends + 1",
            )
            .bind(&source_id)
            .bind(&cycle_key)
            .bind(n)
            .bind(&key)
            .bind(format!("retry #{n} of cycle {cycle_key} (attempt {attempt_id})"))
            .execute(&mut *tx)
            .await?;
            let call = RetryCall {
                attempt_id,
                cycle_id,
                subscription_id,
                idempotency_key: key,
            };
            claimed.push(Claimed {
                source_id,
                cycle_key,
                retry_number: n,
                call,
                first_failed_at,
            });
        }
        tx.commit().await?;
        Ok((claimed, settled))
    }

    /// Calls the provider; transient failures are retried at once a few times with the
    /// same idempotency key before the pass gives up on this retry.
    async fn call(&self, retry: &Claimed) -> (Result<CallOutcome, CallError>, Duration) {
        let started = std::time::Instant::now();
        let Some(client) = self.clients.get(&retry.source_id) else {
            return (
                Err(CallError::Rejected {
                    status: 0,
                    message: "no client".into(),
                }),
                Duration::ZERO,
            );
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(2))
            .with_max_times(3);
        let result = (|| client.retry(&retry.call))
            .retry(backoff)
            .when(|e| matches!(e, CallError::Transient(_)))
            .await;
        (result, started.elapsed())
    }

    async fn record(
        &self,
        retry: &Claimed,
        (result, took): &(Result<CallOutcome, CallError>, Duration),
        now: DateTime<Utc>,
    ) -> Result<(), DbError> {
        let plan = self.dunning.plan(&retry.source_id);
        let decide = |bucket: DeclineBucket| {
            let retries_done = u32::try_from(retry.retry_number).unwrap_or(0);
            plan.map(|p| {
                p.policy
                    .decide(bucket, retries_done, retry.first_failed_at, now)
            })
        };
        // (status, due_at, retries_done, final action, bucket)
        let (status, due_at, done, action, bucket): (
            &str,
            Option<DateTime<Utc>>,
            i32,
            Option<&str>,
            Option<&str>,
        ) = match result {
            Ok(CallOutcome::Charged) => ("recovered", None, retry.retry_number, None, None),
            Ok(CallOutcome::Accepted | CallOutcome::InProgress) => {
                ("in_flight", None, retry.retry_number, None, None)
            }
            Ok(CallOutcome::RequiresAction) => {
                ("awaiting_customer", None, retry.retry_number, None, None)
            }
            Ok(CallOutcome::NotEligible(_)) => ("completed", None, retry.retry_number, None, None),
            Ok(CallOutcome::Declined { code, .. }) => {
                let bucket = decline::classify(code.as_deref(), "declined");
                let (s, d, a) =
                    decide(bucket)
                        .as_ref()
                        .map(row_for)
                        .unwrap_or(("exhausted", None, None));
                (s, d, retry.retry_number, a, Some(bucket.as_str()))
            }
            Err(CallError::Rejected { .. }) => {
                let (s, d, a) = decide(DeclineBucket::ProviderError)
                    .as_ref()
                    .map(row_for)
                    .unwrap_or(("exhausted", None, None));
                (s, d, retry.retry_number, a, None)
            }
            // Not an answer about the payment: the same retry number (and key) again later.
            Err(CallError::RateLimited { retry_after }) => {
                let wait = retry_after.unwrap_or(Duration::from_secs(60));
                (
                    "scheduled",
                    Some(now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX)),
                    retry.retry_number - 1,
                    None,
                    None,
                )
            }
            Err(CallError::Transient(_)) => (
                "scheduled",
                Some(now + chrono::Duration::minutes(5)),
                retry.retry_number - 1,
                None,
                None,
            ),
        };
        let outcome = match result {
            Ok(o) => format!("{o:?}"),
            Err(e) => e.to_string(),
        };
        let mut tx = self.db.pool().begin().await?;
        sqlx::query(
            "UPDATE retry_calls SET finished_at = now(), duration_ms = $4, result = $5
             WHERE source_id = $1 AND cycle_key = $2 AND retry_number = $3",
        )
        .bind(&retry.source_id)
        .bind(&retry.cycle_key)
        .bind(retry.retry_number)
        .bind(i32::try_from(took.as_millis()).unwrap_or(i32::MAX))
        .bind(&outcome)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE retries SET status = $3, due_at = $4, retries_done = $5, final_action = COALESCE($6, final_action),
                    bucket = COALESCE($7, bucket), last_outcome = $8, updated_at = now()
             WHERE source_id = $1 AND cycle_key = $2 AND status = 'in_flight'",
        )
        .bind(&retry.source_id)
        .bind(&retry.cycle_key)
        .bind(status)
        .bind(due_at)
        .bind(done)
        .bind(action)
        .bind(bucket)
        .bind(&outcome)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        metrics::counter!("subsync_retries_attempted_total", "source" => retry.source_id.clone(), "status" => status).increment(1);
        Ok(())
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
    let status: Option<(String,)> = sqlx::query_as(
        "SELECT status FROM subscriptions WHERE source_id = $1 AND subscription_id = $2",
    )
    .bind(source_id)
    .bind(subscription_id)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(match status.as_ref().map(|(s,)| s.as_str()) {
        Some("cancelled") => Some("contract cancelled"),
        Some("paused") => Some("contract paused"),
        Some("expired") => Some("contract expired"),
        Some("failed") => Some("contract failed"),
        _ => None,
    })
}
