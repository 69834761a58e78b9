//! The audit log of operator actions (replays and purges): who, what, how many, when.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::db::{Db, DbError};

/// Who acts: an admin token's name, or `cli:<user>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub String);

impl Actor {
    /// The command line's actor: `cli:` and the login name.
    pub fn cli() -> Self {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".to_owned());
        Self(format!("cli:{user}"))
    }
}

/// One audited operation, from its start to its end.
pub struct Entry {
    id: i64,
}

pub async fn start(
    db: &Db,
    actor: &Actor,
    action: &str,
    filter: &serde_json::Value,
) -> Result<Entry, DbError> {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO audit_log (actor, action, filter) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(&actor.0)
    .bind(action)
    .bind(filter)
    .fetch_one(db.pool())
    .await?;
    Ok(Entry { id })
}

impl Entry {
    /// The audit row's id (what a correction entry names as its run).
    pub fn id(&self) -> i64 {
        self.id
    }

    pub async fn finish(self, db: &Db, count: u64, outcome: &str) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE audit_log SET finished_at = now(), count = $2, outcome = $3 WHERE id = $1",
        )
        .bind(self.id)
        .bind(count as i64)
        .bind(outcome)
        .execute(db.pool())
        .await?;
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AuditRow {
    pub id: i64,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub actor: String,
    pub action: String,
    pub filter: serde_json::Value,
    pub count: i64,
    pub outcome: String,
}

/// The latest audit entries, newest first.
pub async fn recent(db: &Db, limit: i64) -> Result<Vec<AuditRow>, DbError> {
    let rows = sqlx::query_as(
        "SELECT id, started_at, finished_at, actor, action, filter, count, outcome
         FROM audit_log ORDER BY id DESC LIMIT $1",
    )
    .bind(limit.clamp(1, 1000))
    .fetch_all(db.pool())
    .await?;
    Ok(rows)
}
