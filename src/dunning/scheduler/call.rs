//! One claimed retry: the call (with a panic caught as the retry's failure), the row its
//! result leads to, and the write of both. Apart from the loop so each stays readable.

use std::{panic::AssertUnwindSafe, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use futures_util::FutureExt;

use super::{Claimed, Scheduler};
use crate::db::DbError;
use crate::dunning::outcome::{self, Called, Update};
use crate::dunning::status::RetryStatus;
use crate::providers::http::ProviderApiError;

impl Scheduler {
    /// Calls the provider; transient failures are retried at once a few times with the
    /// same idempotency key before the pass gives up on this retry, unless the client
    /// cannot be re-sent safely (no idempotency key: Appstle), which is sent once per pass.
    /// A panic in the client is caught here and becomes this retry's failure.
    pub(super) async fn call(&self, retry: &Claimed) -> (Called, Duration) {
        let started = std::time::Instant::now();
        let Some(client) = self.clients.get(&retry.source_id) else {
            return (Called::NoClient, Duration::ZERO);
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(2))
            .with_max_times(if client.resends_safely() { 3 } else { 0 });
        let attempts = (|| client.retry(&retry.call))
            .retry(backoff)
            .when(|e| matches!(e, ProviderApiError::Transient(_)));
        let called = match AssertUnwindSafe(attempts).catch_unwind().await {
            Ok(Ok(outcome)) => Called::Answer(outcome),
            Ok(Err(error)) => Called::Error(error),
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                tracing::error!(
                    retry_id = %format_args!("{}:{}", retry.source_id, retry.cycle_key),
                    source = %retry.source_id, retry_number = retry.retry_number, panic = %message,
                    "the retry client panicked; counted as a failure of this retry"
                );
                Called::Panicked(message)
            }
        };
        (called, started.elapsed())
    }

    /// The row the call's result leads to; a panic while deciding (the policy, the
    /// answer's handling) is this retry's failure too, never the loop's.
    pub(super) fn update_for(&self, retry: &Claimed, called: Called, now: DateTime<Utc>) -> Update {
        let cx = outcome::Context {
            source_id: &retry.source_id,
            cycle_key: &retry.cycle_key,
            policy: self.dunning.plan(&retry.source_id).map(|p| &p.policy),
            retry_number: retry.retry_number,
            first_failed_at: retry.first_failed_at,
            prior_failures: retry.failures,
            park_after: self.park_after,
            waits: self.waits,
            now,
        };
        let decided =
            std::panic::catch_unwind(AssertUnwindSafe(|| outcome::update_for(&called, &cx)));
        decided.unwrap_or_else(|panic| {
            let message = format!(
                "handling the answer panicked: {}",
                panic_message(panic.as_ref())
            );
            tracing::error!(
                retry_id = %format_args!("{}:{}", retry.source_id, retry.cycle_key),
                source = %retry.source_id, retry_number = retry.retry_number, panic = %message,
                "counted as a failure of this retry"
            );
            outcome::update_for(&Called::Panicked(message), &cx)
        })
    }

    /// Writes the call's result and the retry's new row; true when it parked the retry.
    pub(super) async fn record(
        &self,
        retry: &Claimed,
        update: &Update,
        took: Duration,
    ) -> Result<bool, DbError> {
        let result = update.error.as_deref().unwrap_or(&update.outcome);
        let mut tx = self.db.pool().begin().await?;
        sqlx::query(
            "UPDATE retry_calls SET finished_at = now(), duration_ms = $4, result = $5
             WHERE source_id = $1 AND cycle_key = $2 AND retry_number = $3",
        )
        .bind(&retry.source_id)
        .bind(&retry.cycle_key)
        .bind(retry.retry_number)
        .bind(i32::try_from(took.as_millis()).unwrap_or(i32::MAX))
        .bind(result)
        .execute(&mut *tx)
        .await?;
        let written = sqlx::query(
            "UPDATE retries SET status = $3, due_at = $4, retries_done = $5, final_action = COALESCE($6, final_action),
                    bucket = COALESCE($7, bucket), last_outcome = $8, consecutive_failures = $9,
                    last_error = $10, expires_at = $11, updated_at = now()
             WHERE source_id = $1 AND cycle_key = $2 AND status = 'in_flight'",
        )
        .bind(&retry.source_id)
        .bind(&retry.cycle_key)
        .bind(update.status.as_str())
        .bind(update.due_at)
        .bind(update.retries_done)
        .bind(update.final_action)
        .bind(update.bucket)
        .bind(&update.outcome)
        .bind(update.consecutive_failures)
        .bind(update.error.as_deref())
        .bind(update.expires_at)
        .execute(&mut *tx)
        .await?;
        if written.rows_affected() == 1 {
            let decided = update.decided.as_slice();
            crate::dunning::decisions::log(&mut tx, decided).await?;
        }
        tx.commit().await?;
        let status = update.status.as_str();
        metrics::counter!("subsync_retries_attempted_total", "source" => retry.source_id.clone(), "status" => status).increment(1);
        let parked = written.rows_affected() == 1 && update.status == RetryStatus::Parked;
        if parked {
            let error = update.error.as_deref().unwrap_or_default();
            count_parked(&retry.source_id, &retry.cycle_key, error);
        }
        Ok(parked)
    }
}

/// Counts and logs a retry that was just parked.
pub(super) fn count_parked(source_id: &str, cycle_key: &str, error: &str) {
    metrics::counter!("subsync_retries_parked_total", "source" => source_id.to_owned())
        .increment(1);
    tracing::warn!(
        retry_id = %format_args!("{source_id}:{cycle_key}"), source = source_id, %error,
        "retry parked: its calls keep failing; `subsync retries resume` after fixing the cause"
    );
}

pub(super) use crate::supervise::panic_text as panic_message;
