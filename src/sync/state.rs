//! The `sync_state` table (watermark and resumable cursor per source) and the per-source
//! lock that lets one instance run a source at a time.

use chrono::{DateTime, Utc};
use sqlx::Connection;

use crate::db::{Db, DbError};

/// Where a run starts: a fresh run, or the unfinished one it resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub started_at: DateTime<Utc>,
    pub since: Option<DateTime<Utc>>,
    pub cursor: Option<String>,
    /// A previous run of the same request stopped before the end: this one continues it.
    pub resumed: bool,
}

#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct Row {
    pub watermark: Option<DateTime<Utc>>,
    pub run_started_at: Option<DateTime<Utc>>,
    pub run_since: Option<DateTime<Utc>>,
    pub cursor: Option<String>,
}

pub async fn load(db: &Db, source_id: &str) -> Result<Row, DbError> {
    let row = sqlx::query_as(
        "SELECT watermark, run_started_at, run_since, cursor FROM sync_state WHERE source_id = $1",
    )
    .bind(source_id)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.unwrap_or_default())
}

/// Decides where a run starts. An unfinished run is resumed when the request is the same
/// (no explicit `since`, or the same one); an explicit different `since` starts afresh.
/// Without an explicit `since`, a fresh run reads from the watermark minus `lookback`
/// (everything on the first run).
pub fn plan(
    row: &Row,
    since: Option<DateTime<Utc>>,
    lookback: chrono::Duration,
    now: DateTime<Utc>,
) -> Start {
    if let Some(started_at) = row.run_started_at
        && (since.is_none() || since == row.run_since)
    {
        return Start {
            started_at,
            since: row.run_since,
            cursor: row.cursor.clone(),
            resumed: true,
        };
    }
    Start {
        started_at: now,
        // The watermark comes from provider data: saturate at the start of time.
        since: since.or(row.watermark.map(|w| {
            w.checked_sub_signed(lookback)
                .unwrap_or(DateTime::<Utc>::MIN_UTC)
        })),
        cursor: None,
        resumed: false,
    }
}

/// Records the start of a fresh run (a resumed one is already recorded).
pub async fn begin(db: &Db, source_id: &str, start: &Start) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO sync_state (source_id, run_started_at, run_since, cursor)
         VALUES ($1, $2, $3, NULL)
         ON CONFLICT (source_id) DO UPDATE SET
            run_started_at = excluded.run_started_at, run_since = excluded.run_since,
            cursor = NULL, run_pages = 0, run_records = 0, run_changed = 0, updated_at = now()",
    )
    .bind(source_id)
    .bind(start.started_at)
    .bind(start.since)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// A page's records are queued: the next run continues after it.
pub async fn page_done(
    db: &Db,
    source_id: &str,
    next: Option<&str>,
    records: u64,
    changed: u64,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE sync_state SET cursor = $2, run_pages = run_pages + 1,
            run_records = run_records + $3, run_changed = run_changed + $4, updated_at = now()
         WHERE source_id = $1",
    )
    .bind(source_id)
    .bind(next)
    .bind(records as i64)
    .bind(changed as i64)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// The listing was read to its end: the watermark moves to the run's start.
pub async fn finish(db: &Db, source_id: &str, started_at: DateTime<Utc>) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE sync_state SET watermark = $2, run_started_at = NULL, run_since = NULL,
            cursor = NULL, last_error = NULL, last_finished_at = now(), updated_at = now()
         WHERE source_id = $1",
    )
    .bind(source_id)
    .bind(started_at)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// The run stopped on an error: the watermark stays, the cursor stays (resume point).
pub async fn failed(db: &Db, source_id: &str, error: &str) -> Result<(), DbError> {
    sqlx::query("UPDATE sync_state SET last_error = $2, updated_at = now() WHERE source_id = $1")
        .bind(source_id)
        .bind(error)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// The subscription ids the ledger knows for a source, sorted (from subscription changes
/// and from attempts), for APIs that list per contract.
pub async fn known_subscriptions(db: &Db, source_id: &str) -> Result<Vec<String>, DbError> {
    let ids: Vec<(String,)> = sqlx::query_as(
        "SELECT subscription_id FROM subscriptions WHERE source_id = $1
         UNION
         SELECT subscription_id FROM billing_attempts
         WHERE source_id = $1 AND subscription_id IS NOT NULL
         ORDER BY 1",
    )
    .bind(source_id)
    .fetch_all(db.pool())
    .await?;
    Ok(ids.into_iter().map(|(id,)| id).collect())
}

/// The source's subscriptions the ledger has live (active, past due or paused), by id.
pub async fn live_subscriptions(db: &Db, source_id: &str) -> Result<Vec<String>, DbError> {
    let ids: Vec<(String,)> = sqlx::query_as(
        "SELECT subscription_id FROM subscriptions
         WHERE source_id = $1 AND status IN ('active', 'past_due', 'paused')
         ORDER BY 1",
    )
    .bind(source_id)
    .fetch_all(db.pool())
    .await?;
    Ok(ids.into_iter().map(|(id,)| id).collect())
}

/// A session-level advisory lock on its own connection, taken out of the pool: if the
/// process dies or the run is dropped, the connection closes and Postgres releases it.
pub struct Lock {
    conn: sqlx::PgConnection,
}

/// Takes the source's lock, or `None` when another instance holds it.
pub async fn try_lock(db: &Db, source_id: &str) -> Result<Option<Lock>, DbError> {
    let mut conn = db.pool().acquire().await?.detach();
    let (locked,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(lock_key(source_id))
        .fetch_one(&mut conn)
        .await?;
    Ok(locked.then_some(Lock { conn }))
}

impl Lock {
    pub async fn release(mut self, source_id: &str) {
        let _ = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
            .bind(lock_key(source_id))
            .execute(&mut self.conn)
            .await;
        let _ = self.conn.close().await;
    }
}

fn lock_key(source_id: &str) -> String {
    format!("subsync.sync:{source_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_first_run_reads_everything_and_later_runs_start_before_the_watermark() {
        let now = t("2026-11-21T12:00:00Z");
        let hour = chrono::Duration::hours(1);
        let first = plan(&Row::default(), None, hour, now);
        assert_eq!((first.since, first.resumed), (None, false));
        let row = Row {
            watermark: Some(t("2026-11-21T10:00:00Z")),
            ..Row::default()
        };
        let next = plan(&row, None, hour, now);
        assert_eq!(next.since, Some(t("2026-11-21T09:00:00Z")));
        assert_eq!(next.started_at, now);
        let explicit = plan(&row, Some(t("2026-01-01T00:00:00Z")), hour, now);
        assert_eq!(explicit.since, Some(t("2026-01-01T00:00:00Z")));
    }

    #[test]
    fn an_unfinished_run_resumes_unless_another_since_is_asked() {
        let now = t("2026-11-21T12:00:00Z");
        let row = Row {
            watermark: Some(t("2026-11-20T00:00:00Z")),
            run_started_at: Some(t("2026-11-21T11:00:00Z")),
            run_since: Some(t("2026-11-19T23:00:00Z")),
            cursor: Some("page-3".to_owned()),
        };
        let resumed = plan(&row, None, chrono::Duration::hours(1), now);
        assert!(resumed.resumed);
        assert_eq!(resumed.cursor.as_deref(), Some("page-3"));
        assert_eq!(resumed.started_at, t("2026-11-21T11:00:00Z"));
        let same = plan(&row, row.run_since, chrono::Duration::hours(1), now);
        assert!(same.resumed);
        let other = plan(
            &row,
            Some(t("2026-01-01T00:00:00Z")),
            chrono::Duration::zero(),
            now,
        );
        assert!(!other.resumed);
        assert_eq!(other.cursor, None);
    }
}
