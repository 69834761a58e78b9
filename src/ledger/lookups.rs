//! Money lookups (`money_lookups`): the queue of succeeded or refunded attempts whose
//! events carried no amount or no currency, and the one write that settles each.
//!
//! Ownership: the ledger owns the table. Reconciliation writes a row for every such
//! attempt of a source that has a money client (`Dunning::looks_up_money`, built from the
//! catalogue: the ledger imports nothing of `providers`), in the transaction that stored
//! the attempt ([`enqueue`]). A source without one writes none: its attempts wait for an
//! event with the money, as before, and cost nothing. The lookup role (`crate::lookups`)
//! claims due rows, asks the provider and calls back in here; a row whose source has lost
//! its client (configuration changed, or the rows migration 0011 wrote for every such
//! attempt stored before it) is closed as `not_applicable`, all of a source's at once.
//!
//! Exactly once: [`Db::apply_money_lookup`] writes the money onto the attempt (only where
//! none is stored) and posts its entries through reconciliation's own `post_journal`,
//! unique per (attempt, kind) and per (cycle, kind), then completes the row: all in one
//! transaction, so a lookup made twice (two instances, a lease that expired, a crash
//! before the commit) posts once.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::reconcile::{FINAL_ATTEMPT, FinalAttempt, attempt_rank, post_journal};
use crate::canonical::AttemptStatus;
use crate::db::{Db, DbError};
use crate::dunning::schedule::Dunning;
use crate::money::Money;

/// A lookup claimed by [`Db::claim_money_lookups`], with the attempt's ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueLookup {
    pub source_id: String,
    pub attempt_id: String,
    pub subscription_id: Option<String>,
    pub cycle_id: Option<String>,
    /// Consecutive failed lookups before this one.
    pub failures: i32,
}

/// What [`Db::apply_money_lookup`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The money is on the attempt and its entries are posted (now or before).
    Posted,
    /// The row was no longer pending (another instance completed it): nothing written.
    AlreadyClosed,
}

/// One lookup row as operators see it: a money lookup (`kind` `money`, keyed by its
/// attempt) or a payment link (`payment`, keyed by the provider's payment, with the
/// attempt once linked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct LookupView {
    /// `money` or `payment`.
    pub kind: String,
    pub source_id: String,
    pub attempt_id: Option<String>,
    pub payment_ref: Option<String>,
    /// `pending`, `done`, `parked` or `not_applicable`.
    pub status: String,
    pub due_at: Option<DateTime<Utc>>,
    pub tries: i32,
    pub failures: i32,
    /// The latest failure, or why the row was parked.
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The two lookup queues: money lookups (keyed by attempt) and payment links (keyed by
/// the provider's payment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    Money,
    Payment,
}

impl Queue {
    /// The table and its key column.
    fn table(self) -> (&'static str, &'static str) {
        match self {
            Queue::Money => ("money_lookups", "attempt_id"),
            Queue::Payment => ("payment_links", "payment_ref"),
        }
    }
}

/// How a row that is not posted ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// A permanent answer or a panicking client: waits for an operator.
    Parked,
    /// The source has no money client.
    NotApplicable,
}

impl Closed {
    fn as_str(self) -> &'static str {
        match self {
            Closed::Parked => "parked",
            Closed::NotApplicable => "not_applicable",
        }
    }
}

/// Writes a pending lookup, due now, for each stored attempt that is succeeded or
/// refunded without money; an existing row (any status) is kept.
pub(super) async fn enqueue(
    tx: &mut sqlx::PgConnection,
    attempts: &HashMap<(String, String), FinalAttempt>,
    dunning: &Dunning,
) -> Result<(), DbError> {
    let succeeded = attempt_rank(AttemptStatus::Succeeded);
    let mut keys: Vec<&(String, String)> = attempts
        .iter()
        .filter(|((source, _), a)| {
            a.rank >= succeeded && a.amount_minor.is_none() && dunning.looks_up_money(source)
        })
        .map(|(key, _)| key)
        .collect();
    if keys.is_empty() {
        return Ok(());
    }
    keys.sort();
    let source: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let attempt: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    sqlx::query(
        "INSERT INTO money_lookups (source_id, attempt_id, due_at)
         SELECT s, a, now() FROM UNNEST($1::text[], $2::text[]) AS i(s, a)
         ON CONFLICT DO NOTHING",
    )
    .bind(&source)
    .bind(&attempt)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub(super) fn millis(d: Duration) -> f64 {
    d.as_millis().min(u128::from(u32::MAX) * 1000) as f64
}

impl Db {
    /// Claims up to `limit` pending lookups due at `now` (`FOR UPDATE SKIP LOCKED`, so
    /// instances share the queue) and leases them: their due time moves `lease` past
    /// `now`, so a lookup whose process dies comes back after it.
    pub async fn claim_money_lookups(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<DueLookup>, DbError> {
        type Row = (String, String, Option<String>, Option<String>, i32);
        let rows: Vec<Row> = sqlx::query_as(
            "WITH due AS (
                 SELECT source_id, attempt_id FROM money_lookups
                 WHERE status = 'pending' AND due_at <= $1
                 ORDER BY due_at, source_id, attempt_id LIMIT $2 FOR UPDATE SKIP LOCKED)
             UPDATE money_lookups l
                SET due_at = $1 + make_interval(secs => $3::float8 / 1000), tries = l.tries + 1,
                    updated_at = now()
             FROM due JOIN billing_attempts a USING (source_id, attempt_id)
             WHERE l.source_id = due.source_id AND l.attempt_id = due.attempt_id
             RETURNING l.source_id, l.attempt_id, a.subscription_id, a.cycle_id, l.failures",
        )
        .bind(now)
        .bind(limit)
        .bind(millis(lease))
        .fetch_all(self.pool())
        .await?;
        let mut due: Vec<DueLookup> = rows
            .into_iter()
            .map(
                |(source_id, attempt_id, subscription_id, cycle_id, failures)| DueLookup {
                    source_id,
                    attempt_id,
                    subscription_id,
                    cycle_id,
                    failures,
                },
            )
            .collect();
        due.sort_by(|a, b| (&a.source_id, &a.attempt_id).cmp(&(&b.source_id, &b.attempt_id)));
        Ok(due)
    }

    /// In one transaction: the money onto the attempt (where none is stored yet), the
    /// attempt's entries posted by reconciliation's own path (a collection, and a refund
    /// when refunded; each at most once), the row completed.
    pub async fn apply_money_lookup(
        &self,
        source_id: &str,
        attempt_id: &str,
        money: &Money,
    ) -> Result<Applied, DbError> {
        let mut tx = self.pool().begin().await?;
        let status: Option<(String,)> = sqlx::query_as(
            "SELECT status FROM money_lookups WHERE source_id = $1 AND attempt_id = $2 FOR UPDATE",
        )
        .bind(source_id)
        .bind(attempt_id)
        .fetch_optional(&mut *tx)
        .await?;
        if status.is_none_or(|(s,)| s != "pending") {
            return Ok(Applied::AlreadyClosed);
        }
        let attempt: FinalAttempt = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE billing_attempts
                SET amount_minor = COALESCE(amount_minor, $3),
                    currency = CASE WHEN amount_minor IS NULL THEN $4 ELSE currency END,
                    updated_at = now()
              WHERE source_id = $1 AND attempt_id = $2
             RETURNING {FINAL_ATTEMPT}"
        )))
        .bind(source_id)
        .bind(attempt_id)
        .bind(money.minor)
        .bind(&money.currency)
        .fetch_one(&mut *tx)
        .await?;
        let key = (source_id.to_owned(), attempt_id.to_owned());
        post_journal(&mut tx, &HashMap::from([(key, attempt)]), &[]).await?;
        sqlx::query(
            "UPDATE money_lookups SET status = 'done', due_at = NULL, last_error = NULL,
                    updated_at = now()
             WHERE source_id = $1 AND attempt_id = $2",
        )
        .bind(source_id)
        .bind(attempt_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Applied::Posted)
    }

    /// A pending lookup of `queue` tried again at `due_at`, with the reason; `failed`
    /// counts it as a consecutive failure (a rate limit does not).
    pub async fn defer_lookup(
        &self,
        queue: Queue,
        source_id: &str,
        key: &str,
        due_at: DateTime<Utc>,
        error: &str,
        failed: bool,
    ) -> Result<(), DbError> {
        let (table, column) = queue.table();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET due_at = $3, last_error = $4,
                    failures = failures + CASE WHEN $5 THEN 1 ELSE 0 END, updated_at = now()
             WHERE source_id = $1 AND {column} = $2 AND status = 'pending'"
        )))
        .bind(source_id)
        .bind(key)
        .bind(due_at)
        .bind(error)
        .bind(failed)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Ends pending lookups of `queue` that found nothing to post: parked (with its
    /// reason) or not applicable.
    pub async fn close_lookups(
        &self,
        queue: Queue,
        source_id: &str,
        keys: &[&str],
        closed: Closed,
        reason: &str,
    ) -> Result<(), DbError> {
        let (table, column) = queue.table();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET status = $3, due_at = NULL, last_error = $4, updated_at = now()
             WHERE source_id = $1 AND {column} = ANY($2) AND status = 'pending'"
        )))
        .bind(source_id)
        .bind(keys)
        .bind(closed.as_str())
        .bind(reason)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Puts parked (or not applicable) lookups of both queues back, due now: one source's,
    /// or one attempt's or payment's (`key`). Returns how many.
    pub async fn resume_lookups(&self, source_id: &str, key: Option<&str>) -> Result<u64, DbError> {
        let mut resumed = 0;
        for queue in [Queue::Money, Queue::Payment] {
            let (table, column) = queue.table();
            let done = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE {table} SET status = 'pending', due_at = now(), failures = 0,
                        updated_at = now()
                 WHERE source_id = $1 AND ($2::text IS NULL OR {column} = $2)
                   AND status IN ('parked', 'not_applicable')"
            )))
            .bind(source_id)
            .bind(key)
            .execute(self.pool())
            .await?;
            resumed += done.rows_affected();
        }
        Ok(resumed)
    }

    /// Lookup rows of both queues, newest change first, optionally of one status.
    pub async fn lookups(
        &self,
        status: Option<&str>,
        limit: i64,
    ) -> Result<Vec<LookupView>, DbError> {
        Ok(sqlx::query_as(
            "SELECT * FROM (
                 SELECT 'money' AS kind, source_id, attempt_id, NULL::text AS payment_ref,
                        status, due_at, tries, failures, last_error, created_at, updated_at
                 FROM money_lookups WHERE ($1::text IS NULL OR status = $1)
                 UNION ALL
                 SELECT 'payment', source_id, attempt_id, payment_ref,
                        status, due_at, tries, failures, last_error, created_at, updated_at
                 FROM payment_links WHERE ($1::text IS NULL OR status = $1)) l
             ORDER BY updated_at DESC, kind, source_id, attempt_id, payment_ref LIMIT $2",
        )
        .bind(status)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }
}
