//! Payment links (`payment_links`): which billing attempt a provider's payment belongs
//! to, for refunds whose events name the payment, not the attempt (Stripe's refunds name
//! a PaymentIntent or a Charge; its attempts are `{invoice}:{attempt_count}`).
//!
//! Ownership: the ledger owns the table. Reconciliation calls [`resolve`] first: a refund
//! whose payment is linked (`done`) gets the link's attempt, subscription and cycle, and
//! goes on as any other refund (its archived normalization carries them from then on). A
//! refund whose payment is not linked yet is held: it is not stored or booked, and its
//! event's id is added to the payment's row ([`hold`]; the row, pending and due now when
//! new, is written and locked by [`resolve`], in the batch's transaction). The lookup role (`crate::lookups`) asks the provider and
//! calls [`Db::apply_payment_link`], which, in one transaction, records the link and
//! reconciles the held events again, from their archived normalization: their refunds are
//! then linked by [`resolve`] and stored and posted by reconciliation's own path, so
//! exactly once, whatever order the payment and its refunds arrived in.
//!
//! A payment that belongs to no attempt (a one-off charge of no subscription) is closed
//! `not_applicable`, and its refunds stay unbooked: no subscription's money moved.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use super::archive::{ArchivedRow, NewEvent, archived_event};
use super::reconcile::{Inbox, reconcile_in};
use crate::canonical::{CanonicalEvent, PaymentLink};
use crate::db::{Db, DbError};
use crate::dunning::schedule::Dunning;

/// A pending link claimed by [`Db::claim_payment_links`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueLink {
    pub source_id: String,
    pub payment_ref: String,
    /// Consecutive failed lookups before this one.
    pub failures: i32,
}

/// The refunds of `events` that name a payment with no attempt (`(source, payment ref)`).
fn unlinked<'e>(events: &'e [NewEvent<'_>]) -> impl Iterator<Item = (&'e str, &'e str)> {
    events.iter().flat_map(|e| {
        e.events.iter().filter_map(|c| match c {
            CanonicalEvent::Refund(r) if r.attempt_id.is_none() => r
                .payment_ref
                .as_deref()
                .map(|p| (e.envelope.source_id.as_str(), p)),
            _ => None,
        })
    })
}

/// `events` with every refund of a linked payment given its attempt; `None` when no event
/// has a refund without one (the common batch: no statement).
///
/// The payments' rows are written (pending, due now, when new) and locked here, before
/// anything is read: a link made concurrently ([`Db::apply_payment_link`] locks the row
/// too) is either committed before this (and read here) or waits for this transaction
/// (and then reconciles the events this one holds), so no held refund is ever missed.
pub(super) async fn resolve(
    tx: &mut sqlx::PgConnection,
    events: &[NewEvent<'_>],
) -> Result<Option<Vec<Vec<CanonicalEvent>>>, DbError> {
    let mut keys: Vec<(&str, &str)> = unlinked(events).collect();
    if keys.is_empty() {
        return Ok(None);
    }
    keys.sort_unstable();
    keys.dedup();
    type Row = (
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "INSERT INTO payment_links AS l (source_id, payment_ref, due_at)
         SELECT s, p, now() FROM UNNEST($1::text[], $2::text[]) AS k(s, p) ORDER BY s, p
         ON CONFLICT (source_id, payment_ref) DO UPDATE SET updated_at = l.updated_at
         RETURNING l.source_id, l.payment_ref, l.attempt_id, l.subscription_id, l.cycle_id",
    )
    .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    let links: HashMap<(String, String), PaymentLink> = rows
        .into_iter()
        .filter_map(|(s, p, attempt_id, subscription_id, cycle_id)| {
            let link = PaymentLink {
                // Only a linked (`done`) row has an attempt.
                attempt_id: attempt_id?,
                subscription_id,
                cycle_id,
            };
            Some(((s, p), link))
        })
        .collect();
    let resolved = events
        .iter()
        .map(|e| {
            let source = &e.envelope.source_id;
            e.events
                .iter()
                .map(|c| match c {
                    CanonicalEvent::Refund(r) if r.attempt_id.is_none() => {
                        let link = (r.payment_ref.as_ref())
                            .and_then(|p| links.get(&(source.clone(), p.clone())));
                        let Some(link) = link else { return c.clone() };
                        let mut r = r.clone();
                        r.attempt_id = Some(link.attempt_id.clone());
                        r.subscription_id = r.subscription_id.or(link.subscription_id.clone());
                        r.cycle_id = r.cycle_id.or(link.cycle_id.clone());
                        CanonicalEvent::Refund(r)
                    }
                    other => other.clone(),
                })
                .collect()
        })
        .collect();
    Ok(Some(resolved))
}

/// The batch's events as [`resolve`] left them.
pub(super) fn with_resolved<'a>(
    events: &'a [NewEvent<'a>],
    resolved: &'a Option<Vec<Vec<CanonicalEvent>>>,
) -> Cow<'a, [NewEvent<'a>]> {
    match resolved {
        None => Cow::Borrowed(events),
        Some(resolved) => Cow::Owned(
            events
                .iter()
                .zip(resolved)
                .map(|(e, events)| NewEvent {
                    envelope: e.envelope,
                    event_type: e.event_type,
                    events,
                })
                .collect(),
        ),
    }
}

/// Holds the refunds still without an attempt: each payment's row (pending, due now, when
/// new) gets their archived events' ids. `ids` are the batch's archive rows (`None`: a
/// duplicate, which holds nothing).
pub(super) async fn hold(
    tx: &mut sqlx::PgConnection,
    events: &[NewEvent<'_>],
    ids: &[Option<i64>],
) -> Result<(), DbError> {
    let mut held: BTreeMap<(&str, &str), Vec<i64>> = BTreeMap::new();
    for (event, id) in events.iter().zip(ids) {
        let Some(id) = *id else { continue };
        for key in unlinked(std::slice::from_ref(event)) {
            held.entry(key).or_default().push(id);
        }
    }
    for ((source, payment), ids) in held {
        sqlx::query(
            "INSERT INTO payment_links AS l (source_id, payment_ref, held_event_ids, due_at)
             VALUES ($1, $2, $3, now())
             ON CONFLICT (source_id, payment_ref) DO UPDATE SET
                held_event_ids = ARRAY(SELECT DISTINCT unnest(l.held_event_ids || excluded.held_event_ids)
                                       ORDER BY 1),
                updated_at = now()",
        )
        .bind(source)
        .bind(payment)
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

impl Db {
    /// Claims up to `limit` pending links due at `now` (`FOR UPDATE SKIP LOCKED`) and
    /// leases them for `lease`, as money lookups are.
    pub async fn claim_payment_links(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        lease: std::time::Duration,
        limit: i64,
    ) -> Result<Vec<DueLink>, DbError> {
        let rows: Vec<(String, String, i32)> = sqlx::query_as(
            "WITH due AS (
                 SELECT source_id, payment_ref FROM payment_links
                 WHERE status = 'pending' AND due_at <= $1
                 ORDER BY due_at, source_id, payment_ref LIMIT $2 FOR UPDATE SKIP LOCKED)
             UPDATE payment_links l
                SET due_at = $1 + make_interval(secs => $3::float8 / 1000), tries = l.tries + 1,
                    updated_at = now()
             FROM due
             WHERE l.source_id = due.source_id AND l.payment_ref = due.payment_ref
             RETURNING l.source_id, l.payment_ref, l.failures",
        )
        .bind(now)
        .bind(limit)
        .bind(super::lookups::millis(lease))
        .fetch_all(self.pool())
        .await?;
        let mut due: Vec<DueLink> = rows
            .into_iter()
            .map(|(source_id, payment_ref, failures)| DueLink {
                source_id,
                payment_ref,
                failures,
            })
            .collect();
        due.sort_by(|a, b| (&a.source_id, &a.payment_ref).cmp(&(&b.source_id, &b.payment_ref)));
        Ok(due)
    }

    /// In one transaction: the link recorded, and the events held for it reconciled again
    /// (their refunds now linked, stored and posted). A row no longer pending (another
    /// instance linked it) changes nothing.
    pub async fn apply_payment_link(
        &self,
        source_id: &str,
        payment_ref: &str,
        link: &PaymentLink,
        dunning: &Dunning,
    ) -> Result<super::Applied, DbError> {
        let mut tx = self.pool().begin().await?;
        let row: Option<(String, Vec<i64>)> = sqlx::query_as(
            "SELECT status, held_event_ids FROM payment_links
             WHERE source_id = $1 AND payment_ref = $2 FOR UPDATE",
        )
        .bind(source_id)
        .bind(payment_ref)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((_, held)) = row.filter(|(status, _)| status == "pending") else {
            return Ok(super::Applied::AlreadyClosed);
        };
        sqlx::query(
            "UPDATE payment_links SET status = 'done', attempt_id = $3, subscription_id = $4,
                    cycle_id = $5, due_at = NULL, last_error = NULL, updated_at = now()
             WHERE source_id = $1 AND payment_ref = $2",
        )
        .bind(source_id)
        .bind(payment_ref)
        .bind(&link.attempt_id)
        .bind(&link.subscription_id)
        .bind(&link.cycle_id)
        .execute(&mut *tx)
        .await?;
        type Row = (
            i64,
            String,
            String,
            chrono::DateTime<chrono::Utc>,
            Option<String>,
            serde_json::Value,
            Vec<u8>,
            String,
            serde_json::Value,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, provider, provider_event_id, received_at, content_type, headers, body,
                    event_type, normalized
             FROM events WHERE source_id = $1 AND id = ANY($2) ORDER BY id",
        )
        .bind(source_id)
        .bind(&held)
        .fetch_all(&mut *tx)
        .await?;
        let mut archived = Vec::with_capacity(rows.len());
        for (id, provider, event_id, at, content_type, headers, body, event_type, normalized) in
            rows
        {
            let row: ArchivedRow = (id, provider, event_id, at, content_type, headers, body);
            let (Some(event), Ok(events)) = (
                archived_event(source_id, row),
                serde_json::from_value::<Vec<CanonicalEvent>>(normalized),
            ) else {
                continue;
            };
            archived.push((event, event_type, events));
        }
        let events: Vec<NewEvent<'_>> = archived
            .iter()
            .map(|(event, event_type, events)| NewEvent {
                envelope: &event.envelope,
                event_type,
                events,
            })
            .collect();
        let ids: Vec<i64> = archived.iter().map(|(event, ..)| event.id).collect();
        if !events.is_empty() {
            reconcile_in(&mut tx, &events, Inbox::Archived(&ids), dunning).await?;
        }
        tx.commit().await?;
        Ok(super::Applied::Posted)
    }
}
