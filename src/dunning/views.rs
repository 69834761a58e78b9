//! What is scheduled and why, for people and tools.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ledger::{Db, DbError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RetryView {
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
    pub final_action: Option<String>,
    pub last_outcome: Option<String>,
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
    pub limit: Option<i64>,
}

const COLUMNS: &str =
    "source_id, cycle_key, subscription_id, attempt_id, status, bucket, policy, retries_done,
    first_failed_at, due_at, final_action, last_outcome, updated_at";

pub async fn list(db: &Db, q: &RetriesQuery) -> Result<Vec<RetryView>, DbError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM retries
         WHERE ($1::text IS NULL OR source_id = $1)
           AND ($2::text IS NULL OR subscription_id = $2)
           AND (NOT $3 OR (status = 'scheduled' AND due_at <= now()))
         ORDER BY due_at NULLS LAST, updated_at DESC
         LIMIT $4"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(q.source_id.as_deref())
        .bind(q.subscription_id.as_deref())
        .bind(q.due)
        .bind(q.limit.unwrap_or(100).clamp(1, 1000))
        .fetch_all(db.pool())
        .await?)
}

/// The subscription's retry that is still open (scheduled, in flight, awaiting the
/// customer or provider-managed), if any.
pub async fn open_for(
    db: &Db,
    source_id: &str,
    subscription_id: &str,
) -> Result<Option<RetryView>, DbError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM retries
         WHERE source_id = $1 AND subscription_id = $2
           AND status IN ('scheduled', 'in_flight', 'awaiting_customer', 'provider_managed')
         ORDER BY first_failed_at DESC LIMIT 1"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(source_id)
        .bind(subscription_id)
        .fetch_optional(db.pool())
        .await?)
}

/// How many retries are in each status, and how many scheduled ones are due now.
pub async fn counts(db: &Db) -> Result<(Vec<(String, i64)>, i64), DbError> {
    let by_status: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM retries GROUP BY status ORDER BY status")
            .fetch_all(db.pool())
            .await?;
    let (due,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM retries WHERE status = 'scheduled' AND due_at <= now()",
    )
    .fetch_one(db.pool())
    .await?;
    Ok((by_status, due))
}
