//! The dead-letter index (table `dead_letters`, migration 0009): what is in the
//! dead-letter queue and since when, kept in Postgres so that a `/metrics` scrape never
//! touches the queue. Reading the queue's head to learn its age is a fetch, which a quorum
//! queue counts as a delivery of that letter, on every scrape.
//!
//! The worker records each letter it dead-letters (right after the broker confirmed it);
//! replays and purges forget the letters they move or remove. The broker also dead-letters
//! on its own (a message past the delivery limit after crash loops), unseen by us: the
//! [`run_indexer`] task compares the queue's depth with the rows every few minutes and,
//! when they disagree, browses the queue once and rewrites the rows from it (with the
//! broker's `x-death` times). Until then such a letter is missing from the age gauge.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::OpsError;
use super::dlq::MAX_SCAN;
use crate::db::{Db, DbError};
use crate::queue::{Broker, DeadLettered};

/// Records a letter this process has just dead-lettered.
pub async fn record(db: &Db, letter: &DeadLettered) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO dead_letters (id, source_id, event_id, reason, dead_lettered_at, recorded_by)
         VALUES ($1, $2, $3, $4, $5, 'worker')
         ON CONFLICT (id) DO UPDATE SET copies = dead_letters.copies + 1,
             dead_lettered_at = LEAST(dead_letters.dead_lettered_at, EXCLUDED.dead_lettered_at)",
    )
    .bind(&letter.id)
    .bind(&letter.source_id)
    .bind(&letter.event_id)
    .bind(&letter.reason)
    .bind(letter.at)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// One message with this id left the dead-letter queue (replayed or removed).
pub async fn forget(db: &Db, id: &str) -> Result<(), DbError> {
    sqlx::query(
        "WITH gone AS (DELETE FROM dead_letters WHERE id = $1 AND copies <= 1 RETURNING id)
         UPDATE dead_letters SET copies = copies - 1 WHERE id = $1 AND copies > 1",
    )
    .bind(id)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Forgets a letter after an operator moved it; a failure only leaves the row to the
/// indexer (the operation itself succeeded), so it is logged, not returned.
pub async fn forget_logged(db: &Db, id: &str) {
    if let Err(error) = forget(db, id).await {
        tracing::warn!(%error, id, "could not update the dead-letter index; the indexer will");
    }
}

/// What the index holds: the oldest letter's time and how many letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexStats {
    pub oldest: Option<DateTime<Utc>>,
    pub letters: i64,
}

pub async fn stats(db: &Db) -> Result<IndexStats, DbError> {
    let (oldest, letters): (Option<DateTime<Utc>>, i64) = sqlx::query_as(
        "SELECT min(dead_lettered_at), coalesce(sum(copies), 0)::bigint FROM dead_letters",
    )
    .fetch_one(db.pool())
    .await?;
    Ok(IndexStats { oldest, letters })
}

/// Compares the dead-letter queue's depth with the index and, when they differ, browses
/// the queue once and rewrites the index from it. Returns the letters indexed, or `None`
/// when the two agreed and the queue was not read.
pub async fn reindex(broker: &Broker, db: &Db) -> Result<Option<u64>, OpsError> {
    let (_, queue) = broker.stats().await?;
    if i64::from(queue.messages) == stats(db).await?.letters {
        return Ok(None);
    }
    // Rows written after this instant (a worker dead-lettering during the browse) stay.
    let (started,): (DateTime<Utc>,) = sqlx::query_as("SELECT now()")
        .fetch_one(db.pool())
        .await
        .map_err(DbError::from)?;
    let mut letters: BTreeMap<String, (DeadLettered, i32)> = BTreeMap::new();
    let mut session = broker.dead_letter_session().await?;
    let mut scanned = 0;
    let walk: Result<(), OpsError> = async {
        while scanned < MAX_SCAN {
            let Some(letter) = session.next().await? else {
                break;
            };
            scanned += 1;
            let summary = letter.summary();
            let entry = letters.entry(summary.id.clone()).or_insert_with(|| {
                let letter = DeadLettered {
                    id: summary.id,
                    source_id: summary.source_id,
                    event_id: summary.event_id,
                    reason: summary.reason,
                    at: summary.first_death_at.unwrap_or(started),
                };
                (letter, 0)
            });
            entry.1 += 1;
        }
        Ok(())
    }
    .await;
    session.close().await;
    walk?;
    rewrite(db, started, letters.into_values().collect()).await?;
    Ok(Some(scanned as u64))
}

async fn rewrite(
    db: &Db,
    before: DateTime<Utc>,
    letters: Vec<(DeadLettered, i32)>,
) -> Result<(), DbError> {
    let mut tx = db.pool().begin().await?;
    sqlx::query("DELETE FROM dead_letters WHERE recorded_at < $1")
        .bind(before)
        .execute(&mut *tx)
        .await?;
    let column = |f: fn(&DeadLettered) -> Option<String>| -> Vec<Option<String>> {
        letters.iter().map(|(l, _)| f(l)).collect()
    };
    sqlx::query(
        "INSERT INTO dead_letters (id, source_id, event_id, reason, dead_lettered_at, copies, recorded_by)
         SELECT id, source_id, event_id, reason, at, copies, 'indexer'
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::int[])
             AS l(id, source_id, event_id, reason, at, copies)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(column(|l| Some(l.id.clone())))
    .bind(column(|l| l.source_id.clone()))
    .bind(column(|l| l.event_id.clone()))
    .bind(column(|l| l.reason.clone()))
    .bind(letters.iter().map(|(l, _)| l.at).collect::<Vec<_>>())
    .bind(letters.iter().map(|(_, n)| *n).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The `dead-letter-indexer` task: a [`reindex`] every `interval` (and once at start) until
/// shutdown. A pass that fails (broker or database away) waits for the next one.
pub async fn run_indexer(broker: Broker, db: Db, interval: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if !broker.wait_connected(Duration::from_secs(10)).await {
            continue;
        }
        match reindex(&broker, &db).await {
            Ok(Some(letters)) => {
                tracing::info!(letters, "dead-letter index rebuilt from the queue")
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "dead-letter index pass failed; next one later"),
        }
    }
}
