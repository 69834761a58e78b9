//! The whole archived history of a scope: every archived event whose archived
//! normalization, or the current one, names one of its subscriptions or attempts, or
//! that set one of their rows or entries, closed over what those events (and the
//! ledger's rows and entries) link them to in turn.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::PgConnection;

use super::{CorrectError, CorrectionScope, Normalizer};
use crate::canonical::CanonicalEvent;
use crate::envelope::Envelope;
use crate::ledger::archive::{ArchivedRow, NewEvent, archived_event};
use crate::ledger::payments;

/// An archived event normalized with the current code.
pub(super) struct Normalized {
    pub id: i64,
    pub envelope: Envelope,
    pub event_type: String,
    pub events: Vec<CanonicalEvent>,
}

pub(super) struct History {
    /// In archive order.
    pub events: Vec<Normalized>,
    pub subscriptions: BTreeSet<String>,
    pub attempts: BTreeSet<String>,
}

pub(super) async fn gather(
    tx: &mut PgConnection,
    scope: CorrectionScope<'_>,
    normalize: &Normalizer<'_>,
) -> Result<History, CorrectError> {
    let source = scope.source_id;
    let mut subscriptions: BTreeSet<String> = scope.subscriptions.iter().cloned().collect();
    let mut attempts: BTreeSet<String> = scope.attempts.iter().cloned().collect();
    let mut found: BTreeMap<i64, Normalized> = BTreeMap::new();
    loop {
        let before = (subscriptions.len(), attempts.len());
        let subs: Vec<&str> = subscriptions.iter().map(String::as_str).collect();
        let atts: Vec<&str> = attempts.iter().map(String::as_str).collect();
        // What the ledger links them to, whatever the current normalization says: the
        // subscriptions' attempts, and the subscriptions the attempts' rows and entries
        // are under (so every entry of an attempt is compared, wherever it was filed).
        let links: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT attempt_id, NULL::text FROM billing_attempts
             WHERE source_id = $1 AND subscription_id = ANY($2)
             UNION SELECT attempt_id, NULL FROM journal_entries
             WHERE source_id = $1 AND subscription_id = ANY($2) AND attempt_id IS NOT NULL
             UNION SELECT NULL, subscription_id FROM billing_attempts
             WHERE source_id = $1 AND attempt_id = ANY($3) AND subscription_id <> ''
             UNION SELECT NULL, subscription_id FROM journal_entries
             WHERE source_id = $1 AND attempt_id = ANY($3) AND subscription_id <> ''",
        )
        .bind(source)
        .bind(&subs)
        .bind(&atts)
        .fetch_all(&mut *tx)
        .await?;
        for (attempt, subscription) in links {
            attempts.extend(attempt);
            subscriptions.extend(subscription);
        }
        let subs: Vec<&str> = subscriptions.iter().map(String::as_str).collect();
        let atts: Vec<&str> = attempts.iter().map(String::as_str).collect();
        let seen: Vec<i64> = found.keys().copied().collect();
        let rows: Vec<ArchivedRow> = sqlx::query_as(
            "SELECT e.id, e.provider, e.provider_event_id, e.received_at, e.content_type, e.headers, e.body
             FROM events e
             WHERE e.source_id = $1 AND NOT (e.id = ANY($5)) AND (
                 e.id = ANY($4)
                 OR e.id IN (SELECT last_event_id FROM billing_attempts
                             WHERE source_id = $1 AND attempt_id = ANY($3))
                 OR e.id IN (SELECT last_event_id FROM subscriptions
                             WHERE source_id = $1 AND subscription_id = ANY($2))
                 OR e.id IN (SELECT last_event_id FROM refunds
                             WHERE source_id = $1 AND attempt_id = ANY($3))
                 OR e.id IN (SELECT event_id FROM journal_entries WHERE source_id = $1
                             AND (subscription_id = ANY($2) OR attempt_id = ANY($3)))
                 OR EXISTS (SELECT 1 FROM jsonb_array_elements(e.normalized) c
                            WHERE c->>'subscription_id' = ANY($2) OR c->>'attempt_id' = ANY($3)))
             ORDER BY e.id",
        )
        .bind(source)
        .bind(&subs)
        .bind(&atts)
        .bind(scope.event_ids)
        .bind(&seen)
        .fetch_all(&mut *tx)
        .await?;
        for row in rows {
            let Some(archived) = archived_event(source, row) else {
                continue;
            };
            let (event_type, mut events) =
                normalize(&archived.envelope).map_err(|error| CorrectError::Unnormalizable {
                    event_id: archived.envelope.event_id.clone(),
                    error,
                })?;
            // A refund of a linked payment is its attempt's (the link is not shadowed).
            let new = NewEvent {
                envelope: &archived.envelope,
                event_type: &event_type,
                events: &events,
            };
            if let Some(mut resolved) = payments::resolve(&mut *tx, &[new]).await? {
                events = resolved.remove(0);
            }
            for canonical in &events {
                match canonical {
                    CanonicalEvent::BillingAttempt(a) => {
                        attempts.insert(a.attempt_id.clone());
                        subscriptions.extend(a.subscription_id.clone());
                    }
                    CanonicalEvent::Subscription(c) => {
                        subscriptions.insert(c.subscription_id.clone());
                    }
                    CanonicalEvent::Refund(r) => {
                        attempts.extend(r.attempt_id.clone());
                        subscriptions.extend(r.subscription_id.clone());
                    }
                }
            }
            found.insert(
                archived.id,
                Normalized {
                    id: archived.id,
                    envelope: archived.envelope,
                    event_type,
                    events,
                },
            );
        }
        if (subscriptions.len(), attempts.len()) == before {
            break;
        }
    }
    Ok(History {
        events: found.into_values().collect(),
        subscriptions,
        attempts,
    })
}

/// Locks the history's rows in the order the reconcile takes them (archived events by
/// id, then attempts, then subscriptions, each in key order), so a concurrent replay or
/// worker waits instead of deadlocking: a worker's event about them merges on top of the
/// corrected state after the commit. A row changed since the snapshot fails the
/// transaction, which is retried.
pub(super) async fn lock(
    tx: &mut PgConnection,
    history: &History,
    source: &str,
) -> Result<(), CorrectError> {
    let (subscriptions, attempts) = (&history.subscriptions, &history.attempts);
    let ids: Vec<i64> = history.events.iter().map(|e| e.id).collect();
    sqlx::query("SELECT 1 FROM events WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    let subs: Vec<&str> = subscriptions.iter().map(String::as_str).collect();
    let atts: Vec<&str> = attempts.iter().map(String::as_str).collect();
    sqlx::query(
        "SELECT 1 FROM billing_attempts WHERE source_id = $1 AND attempt_id = ANY($2)
         ORDER BY attempt_id FOR UPDATE",
    )
    .bind(source)
    .bind(&atts)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "SELECT 1 FROM subscriptions WHERE source_id = $1 AND subscription_id = ANY($2)
         ORDER BY subscription_id FOR UPDATE",
    )
    .bind(source)
    .bind(&subs)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
