//! What is scheduled and why, for people and tools; and the one operator write on a
//! retry, resuming a parked one.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::status::RetryStatus;
use crate::db::{Db, DbError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RetryView {
    /// `{source_id}:{cycle_key}`: what `retries resume` and the admin API take.
    pub id: String,
    pub source_id: String,
    pub cycle_key: String,
    pub subscription_id: Option<String>,
    pub attempt_id: String,
    pub status: String,
    pub bucket: String,
    pub policy: String,
    /// Retries made so far (the next call is number `retries_done + 1`).
    pub retries_done: i32,
    pub first_failed_at: DateTime<Utc>,
    pub due_at: Option<DateTime<Utc>>,
    /// When a wait for the customer or for the provider's own retries ends (the policy
    /// then stops it with its final action).
    pub expires_at: Option<DateTime<Utc>>,
    pub final_action: Option<String>,
    /// When the final action was settled (carried out, found done, skipped, refused or
    /// unsupported); `null` while it is pending or there is none.
    pub final_action_at: Option<DateTime<Utc>>,
    pub last_outcome: Option<String>,
    /// Calls in a row without a usable answer; `parked_after_failures` of them park it.
    pub consecutive_failures: i32,
    /// The latest failed call's error (cleared by an answer about the payment).
    pub last_error: Option<String>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RetriesQuery {
    pub source_id: Option<String>,
    pub subscription_id: Option<String>,
    /// Only retries due now (status `scheduled`, due time passed).
    #[serde(default)]
    pub due: bool,
    /// Only retries in this status (e.g. `parked`).
    pub status: Option<String>,
    pub limit: Option<i64>,
}

const COLUMNS: &str = "source_id || ':' || cycle_key AS id, source_id, cycle_key, subscription_id,
    attempt_id, status, bucket, policy, retries_done, first_failed_at, due_at, expires_at, final_action,
    final_action_at, last_outcome, consecutive_failures, last_error, updated_at";

pub async fn list(db: &Db, q: &RetriesQuery) -> Result<Vec<RetryView>, DbError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM retries
         WHERE ($1::text IS NULL OR source_id = $1)
           AND ($2::text IS NULL OR subscription_id = $2)
           AND (NOT $3 OR (status = 'scheduled' AND due_at <= now()))
           AND ($5::text IS NULL OR status = $5)
         ORDER BY due_at NULLS LAST, updated_at DESC
         LIMIT $4"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(q.source_id.as_deref())
        .bind(q.subscription_id.as_deref())
        .bind(q.due)
        .bind(q.limit.unwrap_or(100).clamp(1, 1000))
        .bind(q.status.as_deref())
        .fetch_all(db.pool())
        .await?)
}

/// The subscription's retry that is still open (scheduled, in flight, awaiting the
/// customer, provider-managed or parked), if any.
pub async fn open_for(
    db: &Db,
    source_id: &str,
    subscription_id: &str,
) -> Result<Option<RetryView>, DbError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM retries
         WHERE source_id = $1 AND subscription_id = $2
           AND status IN ('scheduled', 'in_flight', 'awaiting_customer', 'provider_managed', 'parked')
         ORDER BY first_failed_at DESC LIMIT 1"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(source_id)
        .bind(subscription_id)
        .fetch_optional(db.pool())
        .await?)
}

/// A final action and what came of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct FinalActionView {
    pub cycle_key: String,
    /// `mark_unpaid`, `pause` or `cancel`.
    pub action: String,
    /// The key sent with every send of it (empty when none was sent).
    pub idempotency_key: String,
    pub sends: i32,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `done`, `already_done`, `skipped`, `refused`, `unsupported`, `failed`; `null` while
    /// it is being sent.
    pub outcome: Option<String>,
    /// The provider's answer (its resulting state), or why nothing was sent.
    pub answer: Option<String>,
    pub last_error: Option<String>,
}

/// One change of a retry: what it became and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RetryEvent {
    pub at: DateTime<Utc>,
    pub status: String,
    pub bucket: String,
    pub retries_done: i32,
    pub due_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub final_action: Option<String>,
    pub final_action_at: Option<DateTime<Utc>>,
    /// The decision's explanation: the code and the bucket it chose, the policy's rule,
    /// the computed time, or what made it skip.
    pub reason: Option<String>,
}

/// One retry with its calls' history: the row, its final action, its timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RetryDetail {
    pub retry: RetryView,
    pub final_action: Option<FinalActionView>,
    /// Every change, oldest first.
    pub timeline: Vec<RetryEvent>,
}

const FINAL_COLUMNS: &str = "cycle_key, action, idempotency_key, sends, started_at, finished_at,
    outcome, answer, last_error";

/// The retry `source_id:cycle_key` with its final action and timeline.
pub async fn show(
    db: &Db,
    source_id: &str,
    cycle_key: &str,
) -> Result<Option<RetryDetail>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM retries WHERE source_id = $1 AND cycle_key = $2");
    let retry: Option<RetryView> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(source_id)
        .bind(cycle_key)
        .fetch_optional(db.pool())
        .await?;
    let Some(retry) = retry else {
        return Ok(None);
    };
    let sql = format!(
        "SELECT {FINAL_COLUMNS} FROM final_actions WHERE source_id = $1 AND cycle_key = $2"
    );
    let final_action = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(source_id)
        .bind(cycle_key)
        .fetch_optional(db.pool())
        .await?;
    let timeline = sqlx::query_as(
        "SELECT at, status, bucket, retries_done, due_at, expires_at, final_action, final_action_at, reason
         FROM retry_events WHERE source_id = $1 AND cycle_key = $2 ORDER BY id",
    )
    .bind(source_id)
    .bind(cycle_key)
    .fetch_all(db.pool())
    .await?;
    Ok(Some(RetryDetail {
        retry,
        final_action,
        timeline,
    }))
}

/// The subscription's latest final action (carried out or not), if any.
pub async fn final_action_of(
    db: &Db,
    source_id: &str,
    subscription_id: &str,
) -> Result<Option<FinalActionView>, DbError> {
    let sql = format!(
        "SELECT {FINAL_COLUMNS} FROM final_actions WHERE source_id = $1 AND subscription_id = $2
         ORDER BY started_at DESC LIMIT 1"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(source_id)
        .bind(subscription_id)
        .fetch_optional(db.pool())
        .await?)
}

/// The oldest open retry's age in seconds, per open status (0 when none is open).
pub async fn oldest_open(db: &Db) -> Result<Vec<(&'static str, f64)>, DbError> {
    let stored: Vec<(String, f64)> = sqlx::query_as(
        "SELECT status, EXTRACT(EPOCH FROM now() - min(first_failed_at))::float8 FROM retries
         WHERE status IN ('scheduled', 'in_flight', 'awaiting_customer', 'provider_managed', 'parked')
         GROUP BY status",
    )
    .fetch_all(db.pool())
    .await?;
    Ok(RetryStatus::OPEN
        .iter()
        .map(|status| {
            let age = stored
                .iter()
                .find(|(s, _)| s == status.as_str())
                .map_or(0.0, |(_, age)| age.max(0.0));
            (status.as_str(), age)
        })
        .collect())
}

/// How many retries are in each status (every status, 0 included: a gauge whose status
/// emptied must drop to 0, not keep its last value), and how many scheduled ones are due.
pub async fn counts(db: &Db) -> Result<(Vec<(String, i64)>, i64), DbError> {
    let stored: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM retries GROUP BY status ORDER BY status")
            .fetch_all(db.pool())
            .await?;
    let mut by_status: Vec<(String, i64)> = RetryStatus::ALL
        .iter()
        .map(|status| (status.as_str().to_owned(), 0))
        .collect();
    for (status, n) in stored {
        match by_status.iter_mut().find(|(known, _)| *known == status) {
            Some((_, count)) => *count = n,
            None => by_status.push((status, n)),
        }
    }
    let (due,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM retries WHERE status = 'scheduled' AND due_at <= now()",
    )
    .fetch_one(db.pool())
    .await?;
    Ok((by_status, due))
}

/// What resuming a retry found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resumed {
    /// It was parked: now scheduled, due at once, its failure count back to 0.
    Resumed(Box<RetryView>),
    /// It is not parked (this status): nothing changed.
    NotParked(String),
    NotFound,
}

/// Puts a parked retry back on the schedule, due now, with its failure count reset (its
/// `last_error` stays for reference until an answer clears it). The retry number is
/// unchanged, so a call that may have reached the provider is re-sent with the same key.
pub async fn resume(
    db: &Db,
    source_id: &str,
    cycle_key: &str,
    by: &str,
) -> Result<Resumed, DbError> {
    let sql = format!(
        "UPDATE retries SET status = 'scheduled', due_at = now(), consecutive_failures = 0,
                last_outcome = 'resumed by ' || $3, updated_at = now()
         WHERE source_id = $1 AND cycle_key = $2 AND status = 'parked'
         RETURNING {COLUMNS}"
    );
    let resumed: Option<RetryView> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(source_id)
        .bind(cycle_key)
        .bind(by)
        .fetch_optional(db.pool())
        .await?;
    if let Some(view) = resumed {
        return Ok(Resumed::Resumed(Box::new(view)));
    }
    let status: Option<(String,)> =
        sqlx::query_as("SELECT status FROM retries WHERE source_id = $1 AND cycle_key = $2")
            .bind(source_id)
            .bind(cycle_key)
            .fetch_optional(db.pool())
            .await?;
    Ok(match status {
        Some((status,)) => Resumed::NotParked(status),
        None => Resumed::NotFound,
    })
}
