//! Preview: what a batch would change in the ledger, without changing it. The batch is
//! reconciled exactly as the worker would (same code, same transaction shape), the rows
//! it touches are read before and after, and the transaction is rolled back. Nothing is
//! called outside the database (retries are only scheduled rows, rolled back too).
//!
//! Used by pull sync (only records that change the ledger are queued; `--dry-run`) and by
//! replays' `--dry-run`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::archive::NewEvent;
use super::reconcile::{Inbox, Reconciled, reconcile_in};
use crate::canonical::CanonicalEvent;
use crate::db::{Db, DbError};
use crate::dunning::schedule::Dunning;

/// One ledger row an event would change: its state before (`None`: a new row) and after.
/// Bookkeeping columns (which event set it, when) are left out: they are not the state.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Change {
    /// `billing_attempt`, `subscription`, `refund` or `payment_link` (a refund held for
    /// its payment's link).
    #[schema(value_type = String)]
    pub entity: &'static str,
    pub id: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// What reconciling one event would do.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventPreview {
    #[serde(serialize_with = "outcome_word")]
    pub outcome: Reconciled,
    /// Empty when the event would change nothing (duplicate, stale, or the same state).
    pub changes: Vec<Change>,
}

fn outcome_word<S: serde::Serializer>(outcome: &Reconciled, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match outcome {
        Reconciled::Applied => "applied",
        Reconciled::Stale => "stale",
        Reconciled::Ignored => "ignored",
        Reconciled::Duplicate => "duplicate",
    })
}

type Key = (&'static str, String, String);

impl Db {
    /// Reconciles `events` in a transaction that is rolled back, and returns, per input
    /// in order, its outcome and the ledger rows it would change.
    pub async fn preview(
        &self,
        events: &[NewEvent<'_>],
        dunning: &Dunning,
    ) -> Result<Vec<EventPreview>, DbError> {
        self.preview_in(events, Inbox::Insert, dunning).await
    }

    /// [`Db::preview`] of [`Db::rereconcile`]: archived events reconciled again.
    pub async fn preview_archived(
        &self,
        events: &[NewEvent<'_>],
        ids: &[i64],
        dunning: &Dunning,
    ) -> Result<Vec<EventPreview>, DbError> {
        self.preview_in(events, Inbox::Archived(ids), dunning).await
    }

    async fn preview_in(
        &self,
        events: &[NewEvent<'_>],
        inbox: Inbox<'_>,
        dunning: &Dunning,
    ) -> Result<Vec<EventPreview>, DbError> {
        let per_event: Vec<Vec<Key>> = events.iter().map(keys_of).collect();
        let mut tx = self.pool().begin().await?;
        let mut previews = Vec::with_capacity(events.len());
        // Each run of events that share no row is reconciled at once, its rows read
        // before and after; an event touching a row an earlier one of the run touched
        // starts the next run (the first always joins), so a change is told of the event
        // that made it, not of every event of the batch naming the row.
        let mut start = 0;
        while start < events.len() {
            let mut keys: BTreeSet<&Key> = BTreeSet::new();
            let mut end = start;
            while end < events.len() && per_event[end].iter().all(|k| !keys.contains(k)) {
                keys.extend(&per_event[end]);
                end += 1;
            }
            let run_inbox = match inbox {
                Inbox::Insert => Inbox::Insert,
                Inbox::Archived(ids) => Inbox::Archived(&ids[start..end]),
            };
            let before = rows(&mut tx, &keys).await?;
            let outcomes = reconcile_in(&mut tx, &events[start..end], run_inbox, dunning).await?;
            let after = rows(&mut tx, &keys).await?;
            for (outcome, keys) in outcomes.into_iter().zip(&per_event[start..end]) {
                let changes = keys
                    .iter()
                    .filter_map(|key| {
                        let (b, a) = (before.get(key).cloned(), after.get(key).cloned());
                        (b != a).then(|| Change {
                            entity: key.0,
                            id: key.2.clone(),
                            before: b,
                            after: a,
                        })
                    })
                    .collect();
                previews.push(EventPreview { outcome, changes });
            }
            start = end;
        }
        tx.rollback().await?;
        Ok(previews)
    }
}

/// The ledger rows an event's canonical events address.
fn keys_of(event: &NewEvent<'_>) -> Vec<Key> {
    let source = &event.envelope.source_id;
    let mut keys: Vec<Key> = event
        .events
        .iter()
        .map(|canonical| match canonical {
            CanonicalEvent::BillingAttempt(a) => {
                ("billing_attempt", source.clone(), a.attempt_id.clone())
            }
            CanonicalEvent::Subscription(c) => {
                ("subscription", source.clone(), c.subscription_id.clone())
            }
            CanonicalEvent::Refund(r) => ("refund", source.clone(), r.refund_id.clone()),
        })
        .collect();
    // A refund of a payment not linked yet is held on the payment's link: a new link is
    // its change.
    keys.extend(event.events.iter().filter_map(|canonical| match canonical {
        CanonicalEvent::Refund(r) if r.attempt_id.is_none() => {
            Some(("payment_link", source.clone(), r.payment_ref.clone()?))
        }
        _ => None,
    }));
    keys.sort();
    keys.dedup();
    keys
}

/// The current state of `keys`' rows, without bookkeeping columns.
async fn rows(
    tx: &mut sqlx::PgConnection,
    keys: &BTreeSet<&Key>,
) -> Result<BTreeMap<Key, serde_json::Value>, DbError> {
    let mut found = BTreeMap::new();
    // A link's state is its status and answer; the events held on it and its schedule
    // are bookkeeping.
    const LINK_BOOKKEEPING: &str =
        "- 'held_event_ids' - 'due_at' - 'tries' - 'failures' - 'last_error' - 'created_at'";
    for (entity, table, id_column, bookkeeping) in [
        ("billing_attempt", "billing_attempts", "attempt_id", ""),
        ("subscription", "subscriptions", "subscription_id", ""),
        ("refund", "refunds", "refund_id", ""),
        (
            "payment_link",
            "payment_links",
            "payment_ref",
            LINK_BOOKKEEPING,
        ),
    ] {
        let (sources, ids): (Vec<&str>, Vec<&str>) = keys
            .iter()
            .filter(|k| k.0 == entity)
            .map(|k| (k.1.as_str(), k.2.as_str()))
            .unzip();
        if ids.is_empty() {
            continue;
        }
        let sql = format!(
            "SELECT t.source_id, t.{id_column},
                    to_jsonb(t) - 'source_id' - '{id_column}' - 'last_event_id' - 'updated_at'
                    {bookkeeping}
             FROM {table} t
             JOIN UNNEST($1::text[], $2::text[]) AS k(s, i)
               ON t.source_id = k.s AND t.{id_column} = k.i"
        );
        let rows: Vec<(String, String, serde_json::Value)> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(&sources)
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?;
        for (source, id, state) in rows {
            found.insert((entity, source, id), state);
        }
    }
    Ok(found)
}
