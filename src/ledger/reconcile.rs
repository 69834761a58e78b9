//! Reconciliation: a batch of normalized events written in ONE transaction with their
//! inbox dedupe rows, so delivery is at-least-once and effects are exactly-once.
//!
//! Order independence: every write is a merge that only moves forward, so any order and
//! any duplication of the same events gives the same state.
//! - An attempt's status takes the maximum of `pending < requires_action < skipped <
//!   failed < succeeded < refunded` (ties broken by the provider's word): a late `failed`
//!   after `succeeded` is stale, never applied. Its current state (status, provider word,
//!   error, decline bucket, next attempt, count) comes from the winning event; facts that
//!   do not change (subscription, cycle, amount, attempted-at) are filled from whichever
//!   event has them.
//! - A subscription takes the change with the greatest (provider version, provider update
//!   time — or receipt time when the payload has none —, status rank, provider word).
//! - Money follows facts that only ever become true: an attempt that is (or was)
//!   succeeded has exactly one collection entry. Collections are unique per attempt and
//!   per billing cycle — a cycle is collected once even when a provider reports that
//!   payment as two succeeded attempts —, so no order or duplicate posts twice. Failed and
//!   skipped attempts post nothing.
//! - Refunds: a refund (also a void or a credit of a payment) is a row of its own, merged
//!   forward like an attempt (`pending < failed < succeeded`). Each succeeded refund is one
//!   journal entry keyed by its id, for its amount capped at what the payment still holds;
//!   an attempt refunded in full (a status, with no refund of its own) gets one entry for
//!   what is left. So partial refunds book their amounts, and however the parts and the
//!   full refund overlap or arrive, a payment's refunds sum to at most its collection,
//!   and to all of it once it is refunded in full. A refund that arrives before its
//!   payment is kept and booked when the payment is collected.
//! - Concurrency of a refund and its payment: both lock the payment's attempt row before
//!   reading what the payment holds (the attempt upsert; for a refund, an upsert that
//!   creates the attempt as `pending` with an empty provider word — below any word the
//!   provider reports, so its first report wins whatever it says — when the refund is the first
//!   news of it). A refund and a collection of one payment in two concurrent transactions
//!   are so serialized, and the second sees the first's rows.
//! - An attempt without a cycle id whose idempotency key is one of subsync's retry calls
//!   (a Shopify attempt a retry created) takes that retry's cycle
//!   (`dunning::schedule::cycles_of_retry_keys`, one lookup per batch). The call row is
//!   committed before the call is made, so every event of such an attempt finds it,
//!   whatever their order.
//! - A succeeded or refunded attempt stored without an amount or currency (Shopify's
//!   webhooks carry none, Appstle's no currency) of a source with a money client gets a
//!   money lookup row in the same transaction (`lookups.rs`); its entries are posted when
//!   the lookup writes the money.
//!
//! Concurrent workers: each statement is an upsert whose conflict handling re-reads the
//! latest committed row; rows are written in key order so locks are taken in one order.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::archive::{self, NewEvent};
use super::payments;
use crate::canonical::{
    AttemptStatus, BillingAttempt, CanonicalEvent, Refund, RefundStatus, SubscriptionChange,
    SubscriptionStatus,
};
use crate::db::{Db, DbError};
use crate::dunning::{
    decline,
    schedule::{self, AttemptFact, Dunning},
};

/// What reconciliation did with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconciled {
    /// Moved the ledger forward.
    Applied,
    /// Superseded: a later state was already there (archived and counted, not applied).
    Stale,
    /// An event type subsync does not act on (archived only).
    Ignored,
    /// Already reconciled from an earlier delivery: nothing changed.
    Duplicate,
}

pub fn attempt_rank(status: AttemptStatus) -> i32 {
    match status {
        AttemptStatus::Pending => 0,
        AttemptStatus::RequiresAction => 1,
        AttemptStatus::Skipped => 2,
        AttemptStatus::Failed => 3,
        AttemptStatus::Succeeded => 4,
        AttemptStatus::Refunded => 5,
    }
}

fn subscription_rank(status: SubscriptionStatus) -> i32 {
    match status {
        SubscriptionStatus::Pending => 0,
        SubscriptionStatus::Active => 1,
        SubscriptionStatus::PastDue => 2,
        SubscriptionStatus::Paused => 3,
        SubscriptionStatus::Cancelled => 4,
        SubscriptionStatus::Expired => 5,
        SubscriptionStatus::Failed => 6,
    }
}

/// The snake_case word of a canonical status.
pub(super) fn word<T: serde::Serialize>(status: T) -> String {
    match serde_json::to_value(status) {
        Ok(serde_json::Value::String(s)) => s,
        _ => unreachable!("canonical statuses serialize as strings"),
    }
}

/// The merged state of every event of a batch about one attempt.
#[derive(Clone)]
struct AttemptRow {
    event_id: i64,
    attempt: BillingAttempt,
}

impl AttemptRow {
    fn key(&self) -> (i32, &str) {
        (
            attempt_rank(self.attempt.status),
            &self.attempt.provider_status,
        )
    }

    /// Keeps the greater state and fills its unknown facts from the other; the SQL upsert
    /// below applies the same rule against the stored row.
    fn merge(self, other: AttemptRow) -> AttemptRow {
        let (mut winner, loser) = if other.key() > self.key() {
            (other, self)
        } else {
            (self, other)
        };
        let (w, l) = (&mut winner.attempt, loser.attempt);
        w.subscription_id = w.subscription_id.take().or(l.subscription_id);
        w.cycle_id = w.cycle_id.take().or(l.cycle_id);
        w.amount = w.amount.take().or(l.amount);
        w.attempted_at = w.attempted_at.take().or(l.attempted_at);
        w.idempotency_key = w.idempotency_key.take().or(l.idempotency_key);
        winner
    }
}

/// The merged state of every event of a batch about one refund.
#[derive(Clone)]
struct RefundRow {
    event_id: i64,
    refund: Refund,
}

fn refund_rank(status: RefundStatus) -> i32 {
    match status {
        RefundStatus::Pending => 0,
        RefundStatus::Failed => 1,
        RefundStatus::Succeeded => 2,
    }
}

impl RefundRow {
    fn key(&self) -> (i32, &str) {
        (
            refund_rank(self.refund.status),
            &self.refund.provider_status,
        )
    }

    /// Keeps the greater state and fills its unknown facts from the other (mirrors the
    /// SQL upsert). The payment, amount and currency are the first report's.
    fn merge(self, other: RefundRow) -> RefundRow {
        let (mut winner, loser) = if other.key() > self.key() {
            (other, self)
        } else {
            (self, other)
        };
        let (w, l) = (&mut winner.refund, loser.refund);
        w.subscription_id = w.subscription_id.take().or(l.subscription_id);
        w.cycle_id = w.cycle_id.take().or(l.cycle_id);
        w.refunded_at = w.refunded_at.take().or(l.refunded_at);
        winner
    }
}

/// A subscription change with its ordering key.
#[derive(Clone)]
struct SubscriptionRow {
    event_id: i64,
    change: SubscriptionChange,
    version: i64,
    updated_at: DateTime<Utc>,
}

impl SubscriptionRow {
    fn key(&self) -> (i64, DateTime<Utc>, i32, &str) {
        (
            self.version,
            self.updated_at,
            subscription_rank(self.change.status),
            &self.change.provider_status,
        )
    }

    /// Keeps the newer change and fills its unknown facts from the other (mirrors the SQL).
    fn merge(self, other: SubscriptionRow) -> SubscriptionRow {
        let (mut winner, loser) = if other.key() > self.key() {
            (other, self)
        } else {
            (self, other)
        };
        let (w, l) = (&mut winner.change, loser.change);
        w.currency = w.currency.take().or(l.currency);
        w.customer_id = w.customer_id.take().or(l.customer_id);
        w.current_period_end = w.current_period_end.take().or(l.current_period_end);
        winner
    }
}

impl Db {
    /// Reconciles a batch in one transaction. Returns one outcome per input, in order.
    /// Retry consequences (schedule, recover, re-arm) are written in the same transaction.
    pub async fn reconcile(
        &self,
        events: &[NewEvent<'_>],
        dunning: &Dunning,
    ) -> Result<Vec<Reconciled>, DbError> {
        let mut tx = self.pool().begin().await?;
        let outcomes = reconcile_in(&mut tx, events, Inbox::Insert, dunning).await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    /// Reconciles events that are already archived (rows `ids`) again, with what their
    /// payload normalizes to now (after a mapping fix): their archived normalization and
    /// outcome are replaced, and the merges run as for new events, so an unchanged event
    /// changes nothing and nothing posts twice.
    pub async fn rereconcile(
        &self,
        events: &[NewEvent<'_>],
        ids: &[i64],
        dunning: &Dunning,
    ) -> Result<Vec<Reconciled>, DbError> {
        let mut tx = self.pool().begin().await?;
        let outcomes = reconcile_in(&mut tx, events, Inbox::Archived(ids), dunning).await?;
        tx.commit().await?;
        Ok(outcomes)
    }
}

/// How a batch reaches the inbox.
#[derive(Debug, Clone, Copy)]
pub(super) enum Inbox<'a> {
    /// New deliveries: archived now, duplicates skipped.
    Insert,
    /// Already archived as these rows (one per event): re-normalized in place.
    Archived(&'a [i64]),
}

/// [`Db::reconcile`] inside a transaction the caller commits (or rolls back: a preview).
pub(super) async fn reconcile_in(
    tx: &mut sqlx::PgConnection,
    events: &[NewEvent<'_>],
    inbox: Inbox<'_>,
    dunning: &Dunning,
) -> Result<Vec<Reconciled>, DbError> {
    // Refunds that name a linked payment get its attempt before anything is archived.
    let resolved = payments::resolve(&mut *tx, events).await?;
    let events = &*payments::with_resolved(events, &resolved);
    let ids = match inbox {
        Inbox::Insert => archive::insert(&mut *tx, events).await?,
        Inbox::Archived(ids) => {
            archive::renormalize(&mut *tx, events, ids).await?;
            ids.iter().copied().map(Some).collect()
        }
    };

    // Merge the batch per attempt and per subscription; BTreeMaps give key order.
    let mut attempts: BTreeMap<(String, String), AttemptRow> = BTreeMap::new();
    let mut subscriptions: BTreeMap<(String, String), SubscriptionRow> = BTreeMap::new();
    let mut refunds: BTreeMap<(String, String), RefundRow> = BTreeMap::new();
    for (event, id) in events.iter().zip(&ids) {
        let Some(event_id) = *id else { continue };
        let source = &event.envelope.source_id;
        for canonical in event.events {
            match canonical {
                CanonicalEvent::BillingAttempt(a) => {
                    let row = AttemptRow {
                        event_id,
                        attempt: a.clone(),
                    };
                    let key = (source.clone(), a.attempt_id.clone());
                    let merged = match attempts.remove(&key) {
                        Some(existing) => existing.merge(row),
                        None => row,
                    };
                    attempts.insert(key, merged);
                }
                CanonicalEvent::Subscription(c) => {
                    let row = SubscriptionRow {
                        event_id,
                        change: c.clone(),
                        version: c.version.unwrap_or(-1),
                        updated_at: c.updated_at.unwrap_or(event.envelope.received_at),
                    };
                    let key = (source.clone(), c.subscription_id.clone());
                    let merged = match subscriptions.remove(&key) {
                        Some(existing) => existing.merge(row),
                        None => row,
                    };
                    subscriptions.insert(key, merged);
                }
                // A refund of nothing gives nothing back (and a row needs an amount).
                CanonicalEvent::Refund(r) if r.amount.minor <= 0 => {}
                // Its payment is not linked yet: held below.
                CanonicalEvent::Refund(Refund {
                    attempt_id: None, ..
                }) => {}
                CanonicalEvent::Refund(r) => {
                    let row = RefundRow {
                        event_id,
                        refund: r.clone(),
                    };
                    let key = (source.clone(), r.refund_id.clone());
                    let merged = match refunds.remove(&key) {
                        Some(existing) => existing.merge(row),
                        None => row,
                    };
                    refunds.insert(key, merged);
                }
            }
        }
    }

    link_retry_attempts(&mut *tx, &mut attempts).await?;
    let final_attempts = upsert_attempts(&mut *tx, &attempts).await?;
    let final_refunds = upsert_refunds(&mut *tx, &refunds).await?;
    let refunded_payments: Vec<(&str, &str)> = refunds
        .iter()
        .filter_map(|((s, _), row)| Some((s.as_str(), row.refund.attempt_id.as_deref()?)))
        .collect();
    payments::hold(&mut *tx, events, &ids).await?;
    post_journal(&mut *tx, &final_attempts, &refunded_payments).await?;
    super::lookups::enqueue(&mut *tx, &final_attempts, dunning).await?;
    let applied_subscriptions = upsert_subscriptions(&mut *tx, &subscriptions).await?;
    let facts = attempt_facts(&attempts, &final_attempts);
    schedule::on_attempts(&mut *tx, dunning, &facts).await?;
    for ((source, id), row) in &subscriptions {
        let key = (source.clone(), id.clone());
        if row.change.status == SubscriptionStatus::Active && applied_subscriptions.contains(&key) {
            schedule::on_subscription_active(&mut *tx, dunning, source, id).await?;
        }
    }
    // Subscriptions this batch changed or failed: a provider's own dunning may have ended.
    let touched: Vec<(&str, &str)> = (subscriptions.keys())
        .map(|(source, id)| (source.as_str(), id.as_str()))
        .chain(
            (facts.iter())
                .filter(|f| f.status == AttemptStatus::Failed)
                .filter_map(|f| Some((f.source_id.as_str(), f.subscription_id.as_deref()?))),
        )
        .collect();
    schedule::follow_provider_ends(&mut *tx, dunning, &touched).await?;

    // An event is applied when one of its canonical events is the state now stored.
    let mut outcomes = Vec::with_capacity(events.len());
    let mut stale_ids = Vec::new();
    for (event, id) in events.iter().zip(&ids) {
        let Some(event_id) = *id else {
            outcomes.push(Reconciled::Duplicate);
            continue;
        };
        if event.events.is_empty() {
            outcomes.push(Reconciled::Ignored);
            continue;
        }
        let source = &event.envelope.source_id;
        let applied = event.events.iter().any(|canonical| match canonical {
            CanonicalEvent::BillingAttempt(a) => final_attempts
                .get(&(source.clone(), a.attempt_id.clone()))
                .is_some_and(|f| {
                    (attempt_rank(a.status), a.provider_status.as_str())
                        >= (f.rank, f.provider_status.as_str())
                }),
            CanonicalEvent::Subscription(c) => {
                let key = (source.clone(), c.subscription_id.clone());
                applied_subscriptions.contains(&key)
                    && subscriptions
                        .get(&key)
                        .is_some_and(|w| w.event_id == event_id)
            }
            CanonicalEvent::Refund(r) if r.amount.minor <= 0 => false,
            // Held for its payment's link: applied when the link is made.
            CanonicalEvent::Refund(Refund {
                attempt_id: None, ..
            }) => true,
            CanonicalEvent::Refund(r) => final_refunds
                .get(&(source.clone(), r.refund_id.clone()))
                .is_some_and(|(rank, word)| {
                    (refund_rank(r.status), r.provider_status.as_str()) >= (*rank, word.as_str())
                }),
        });
        if applied {
            outcomes.push(Reconciled::Applied);
        } else {
            outcomes.push(Reconciled::Stale);
            stale_ids.push(event_id);
        }
    }
    if !stale_ids.is_empty() {
        sqlx::query("UPDATE events SET outcome = 'stale' WHERE id = ANY($1)")
            .bind(&stale_ids)
            .execute(&mut *tx)
            .await?;
    }
    Ok(outcomes)
}

/// An attempt without a cycle id that was created by one of subsync's retry calls (its
/// idempotency key is that call's) belongs to the cycle of that retry: it takes the
/// retry's cycle key as its cycle id, so dunning counts it on that cycle's retry row and
/// the journal's per-cycle uniqueness covers it. One lookup for the batch.
async fn link_retry_attempts(
    tx: &mut sqlx::PgConnection,
    attempts: &mut BTreeMap<(String, String), AttemptRow>,
) -> Result<(), DbError> {
    let keys: Vec<(&str, &str)> = attempts
        .iter()
        .filter(|(_, row)| row.attempt.cycle_id.is_none())
        .filter_map(|((source, _), row)| {
            let key = row.attempt.idempotency_key.as_deref()?;
            Some((source.as_str(), key))
        })
        .collect();
    let cycles = schedule::cycles_of_retry_keys(&mut *tx, &keys).await?;
    if cycles.is_empty() {
        return Ok(());
    }
    for ((source, _), row) in attempts.iter_mut() {
        let a = &mut row.attempt;
        if a.cycle_id.is_some() {
            continue;
        }
        if let Some(key) = &a.idempotency_key {
            a.cycle_id = cycles.get(&(source.clone(), key.clone())).cloned();
        }
    }
    Ok(())
}

fn status_of_rank(rank: i32) -> AttemptStatus {
    match rank {
        0 => AttemptStatus::Pending,
        1 => AttemptStatus::RequiresAction,
        2 => AttemptStatus::Skipped,
        3 => AttemptStatus::Failed,
        4 => AttemptStatus::Succeeded,
        _ => AttemptStatus::Refunded,
    }
}

/// What dunning needs of the batch's attempts: their stored status, and the failure
/// details when the stored state is this batch's failure.
fn attempt_facts(
    rows: &BTreeMap<(String, String), AttemptRow>,
    stored: &HashMap<(String, String), FinalAttempt>,
) -> Vec<AttemptFact> {
    rows.iter()
        .filter_map(|((source, _), row)| {
            let a = &row.attempt;
            let stored = stored.get(&(source.clone(), a.attempt_id.clone()))?;
            let status = status_of_rank(stored.rank);
            let ours = status == a.status;
            Some(AttemptFact {
                source_id: source.clone(),
                attempt_id: a.attempt_id.clone(),
                cycle_id: a.cycle_id.clone(),
                subscription_id: a.subscription_id.clone(),
                status,
                error_code: if ours { a.error_code.clone() } else { None },
                provider_status: stored.provider_status.clone(),
                attempted_at: a.attempted_at,
                next_attempt_at: if ours { a.next_attempt_at } else { None },
            })
        })
        .collect()
}

/// An attempt as stored after the upsert.
#[derive(sqlx::FromRow)]
pub(super) struct FinalAttempt {
    pub(super) subscription_id: String,
    pub(super) cycle_id: Option<String>,
    pub(super) rank: i32,
    pub(super) provider_status: String,
    pub(super) amount_minor: Option<i64>,
    pub(super) currency: Option<String>,
    pub(super) last_event_id: i64,
}

/// The `RETURNING` list of a [`FinalAttempt`].
pub(super) const FINAL_ATTEMPT: &str = "COALESCE(subscription_id, '') AS subscription_id, \
    cycle_id, attempt_rank(status) AS rank, provider_status, amount_minor, currency, \
    last_event_id";

/// A [`FinalAttempt`] with its key.
#[derive(sqlx::FromRow)]
struct StoredAttempt {
    source_id: String,
    attempt_id: String,
    #[sqlx(flatten)]
    stored: FinalAttempt,
}

async fn upsert_attempts(
    tx: &mut sqlx::PgConnection,
    rows: &BTreeMap<(String, String), AttemptRow>,
) -> Result<HashMap<(String, String), FinalAttempt>, DbError> {
    if rows.is_empty() {
        return Ok(HashMap::new());
    }
    let mut c = AttemptColumns::default();
    for ((source, _), row) in rows {
        c.push(source, row);
    }
    // `fwd`: the incoming state is greater than the stored one.
    const FWD: &str = "(attempt_rank(excluded.status), excluded.provider_status) > (attempt_rank(a.status), a.provider_status)";
    let state = [
        "status",
        "provider_status",
        "error_code",
        "error_message",
        "decline_bucket",
        "next_attempt_at",
        "attempt_count",
        "last_event_id",
    ]
    .map(|f| format!("{f} = CASE WHEN {FWD} THEN excluded.{f} ELSE a.{f} END"))
    .join(", ");
    let facts = ["subscription_id", "cycle_id", "attempted_at"]
        .map(|f| format!("{f} = CASE WHEN {FWD} THEN COALESCE(excluded.{f}, a.{f}) ELSE COALESCE(a.{f}, excluded.{f}) END"))
        .join(", ");
    // Amount and currency travel together (a CHECK keeps them paired).
    let money = format!(
        "amount_minor = CASE WHEN {FWD} THEN COALESCE(excluded.amount_minor, a.amount_minor) ELSE COALESCE(a.amount_minor, excluded.amount_minor) END,
         currency = CASE WHEN ({FWD} AND excluded.amount_minor IS NOT NULL) OR a.amount_minor IS NULL THEN excluded.currency ELSE a.currency END"
    );
    let sql = format!(
        "INSERT INTO billing_attempts AS a (source_id, attempt_id, subscription_id, cycle_id, status,
            provider_status, amount_minor, currency, error_code, error_message, decline_bucket,
            attempted_at, next_attempt_at, attempt_count, last_event_id)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::int8[], $8::text[], $9::text[], $10::text[], $11::text[], $12::timestamptz[],
            $13::timestamptz[], $14::int4[], $15::int8[])
         ON CONFLICT (source_id, attempt_id) DO UPDATE SET {state}, {facts}, {money}, updated_at = now()
         RETURNING source_id, attempt_id, {FINAL_ATTEMPT}"
    );
    let returned: Vec<StoredAttempt> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(&c.source_id)
        .bind(&c.attempt_id)
        .bind(&c.subscription_id)
        .bind(&c.cycle_id)
        .bind(&c.status)
        .bind(&c.provider_status)
        .bind(&c.amount_minor)
        .bind(&c.currency)
        .bind(&c.error_code)
        .bind(&c.error_message)
        .bind(&c.decline_bucket)
        .bind(&c.attempted_at)
        .bind(&c.next_attempt_at)
        .bind(&c.attempt_count)
        .bind(&c.last_event_id)
        .fetch_all(&mut *tx)
        .await?;
    Ok(returned
        .into_iter()
        .map(|r| ((r.source_id, r.attempt_id), r.stored))
        .collect())
}

/// Column vectors for the attempts upsert.
#[derive(Default)]
struct AttemptColumns {
    source_id: Vec<String>,
    attempt_id: Vec<String>,
    subscription_id: Vec<Option<String>>,
    cycle_id: Vec<Option<String>>,
    status: Vec<String>,
    provider_status: Vec<String>,
    amount_minor: Vec<Option<i64>>,
    currency: Vec<Option<String>>,
    error_code: Vec<Option<String>>,
    error_message: Vec<Option<String>>,
    decline_bucket: Vec<Option<&'static str>>,
    attempted_at: Vec<Option<DateTime<Utc>>>,
    next_attempt_at: Vec<Option<DateTime<Utc>>>,
    attempt_count: Vec<Option<i32>>,
    last_event_id: Vec<i64>,
}

impl AttemptColumns {
    fn push(&mut self, source: &str, row: &AttemptRow) {
        let a = &row.attempt;
        self.source_id.push(source.to_owned());
        self.attempt_id.push(a.attempt_id.clone());
        self.subscription_id.push(a.subscription_id.clone());
        self.cycle_id.push(a.cycle_id.clone());
        self.status.push(word(a.status));
        self.provider_status.push(a.provider_status.clone());
        self.amount_minor.push(a.amount.as_ref().map(|m| m.minor));
        self.currency
            .push(a.amount.as_ref().map(|m| m.currency.clone()));
        self.error_code.push(a.error_code.clone());
        self.error_message.push(a.error_message.clone());
        let failed = a.status == AttemptStatus::Failed;
        self.decline_bucket.push(
            failed.then(|| decline::classify(a.error_code.as_deref(), &a.provider_status).as_str()),
        );
        self.attempted_at.push(a.attempted_at);
        self.next_attempt_at.push(a.next_attempt_at);
        self.attempt_count
            .push(a.attempt_count.and_then(|n| i32::try_from(n).ok()));
        self.last_event_id.push(row.event_id);
    }
}

/// Upserts refunds; returns each one's stored `(rank, provider word)`.
async fn upsert_refunds(
    tx: &mut sqlx::PgConnection,
    rows: &BTreeMap<(String, String), RefundRow>,
) -> Result<HashMap<(String, String), (i32, String)>, DbError> {
    if rows.is_empty() {
        return Ok(HashMap::new());
    }
    let mut source = Vec::new();
    let mut refund = Vec::new();
    let mut attempt = Vec::new();
    let mut subscription = Vec::new();
    let mut cycle = Vec::new();
    let mut status = Vec::new();
    let mut provider_status = Vec::new();
    let mut amount = Vec::new();
    let mut currency = Vec::new();
    let mut refunded_at = Vec::new();
    let mut event = Vec::new();
    for ((s, _), row) in rows {
        let r = &row.refund;
        // Only linked refunds are merged (the others are held).
        let Some(attempt_id) = r.attempt_id.as_deref() else {
            continue;
        };
        source.push(s.as_str());
        refund.push(r.refund_id.as_str());
        attempt.push(attempt_id);
        subscription.push(r.subscription_id.as_deref());
        cycle.push(r.cycle_id.as_deref());
        status.push(word(r.status));
        provider_status.push(r.provider_status.as_str());
        amount.push(r.amount.minor);
        currency.push(r.amount.currency.as_str());
        refunded_at.push(r.refunded_at);
        event.push(row.event_id);
    }
    // Lock each refund's payment (see the module doc), creating it when unseen.
    let mut payments: Vec<(&str, &str, i64)> = source
        .iter()
        .zip(&attempt)
        .zip(&event)
        .map(|((s, a), e)| (*s, *a, *e))
        .collect();
    payments.sort();
    payments.dedup_by(|x, y| (x.0, x.1) == (y.0, y.1));
    sqlx::query(
        "INSERT INTO billing_attempts AS a (source_id, attempt_id, status, provider_status,
            last_event_id)
         SELECT s, a, 'pending', '', e FROM UNNEST($1::text[], $2::text[], $3::int8[]) AS k(s, a, e)
         ON CONFLICT (source_id, attempt_id) DO UPDATE SET updated_at = a.updated_at",
    )
    .bind(payments.iter().map(|p| p.0).collect::<Vec<_>>())
    .bind(payments.iter().map(|p| p.1).collect::<Vec<_>>())
    .bind(payments.iter().map(|p| p.2).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    const RANK: &str = "CASE {} WHEN 'pending' THEN 0 WHEN 'failed' THEN 1 ELSE 2 END";
    let rank = |column: &str| RANK.replace("{}", column);
    let fwd = format!(
        "({}, excluded.provider_status) > ({}, r.provider_status)",
        rank("excluded.status"),
        rank("r.status")
    );
    let sql = format!(
        "INSERT INTO refunds AS r (source_id, refund_id, attempt_id, subscription_id, cycle_id,
            status, provider_status, amount_minor, currency, refunded_at, last_event_id)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
            $6::text[], $7::text[], $8::int8[], $9::text[], $10::timestamptz[], $11::int8[])
         ON CONFLICT (source_id, refund_id) DO UPDATE SET
            status = CASE WHEN {fwd} THEN excluded.status ELSE r.status END,
            provider_status = CASE WHEN {fwd} THEN excluded.provider_status ELSE r.provider_status END,
            last_event_id = CASE WHEN {fwd} THEN excluded.last_event_id ELSE r.last_event_id END,
            subscription_id = COALESCE(r.subscription_id, excluded.subscription_id),
            cycle_id = COALESCE(r.cycle_id, excluded.cycle_id),
            refunded_at = COALESCE(r.refunded_at, excluded.refunded_at),
            updated_at = now()
         RETURNING source_id, refund_id, {}, provider_status",
        rank("status")
    );
    let stored: Vec<(String, String, i32, String)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(&source)
        .bind(&refund)
        .bind(&attempt)
        .bind(&subscription)
        .bind(&cycle)
        .bind(&status)
        .bind(&provider_status)
        .bind(&amount)
        .bind(&currency)
        .bind(&refunded_at)
        .bind(&event)
        .fetch_all(&mut *tx)
        .await?;
    Ok(stored
        .into_iter()
        .map(|(s, r, rank, word)| ((s, r), (rank, word)))
        .collect())
}

/// One journal entry to write: two postings of `amount`.
struct NewEntry<'a> {
    source_id: &'a str,
    attempt_id: &'a str,
    subscription_id: &'a str,
    cycle_id: Option<&'a str>,
    /// `collection` (collected +x, receivable -x) or `refund` (refunded +x, collected -x).
    kind: &'static str,
    refund_id: Option<&'a str>,
    event_id: i64,
    amount: i64,
    currency: &'a str,
}

/// Ensures the entries the stored facts call for: a collection for every attempt that is
/// (or was) succeeded, then the refunds of the batch's payments — the attempts' and
/// `refunded_payments` (`(source, attempt)` of the batch's refunds; see the module doc). Also
/// the path of money read later by a lookup (`lookups.rs`), so its uniqueness covers both.
pub(super) async fn post_journal(
    tx: &mut sqlx::PgConnection,
    attempts: &HashMap<(String, String), FinalAttempt>,
    refunded_payments: &[(&str, &str)],
) -> Result<(), DbError> {
    let succeeded = attempt_rank(AttemptStatus::Succeeded);
    let mut collections: Vec<NewEntry<'_>> = attempts
        .iter()
        .filter(|(_, a)| a.rank >= succeeded)
        .filter_map(|((source, attempt), a)| {
            Some(NewEntry {
                source_id: source,
                attempt_id: attempt,
                subscription_id: &a.subscription_id,
                cycle_id: a.cycle_id.as_deref(),
                kind: "collection",
                refund_id: None,
                event_id: a.last_event_id,
                amount: a.amount_minor?,
                currency: a.currency.as_deref()?,
            })
        })
        .collect();
    collections.sort_by(|x, y| (x.source_id, x.attempt_id).cmp(&(y.source_id, y.attempt_id)));
    let waiting = insert_entries(&mut *tx, &collections).await?;
    // The payments whose refunds may be due: the batch's refunds', its attempts refunded
    // in full, and the payments just collected that have refunds stored (one came first;
    // the collections' own statement looks, so a batch without refunds pays nothing).
    let refunded = attempt_rank(AttemptStatus::Refunded);
    let mut payments: BTreeSet<(&str, &str)> = attempts
        .iter()
        .filter(|(_, a)| a.rank == refunded && a.amount_minor.is_some())
        .map(|((s, a), _)| (s.as_str(), a.as_str()))
        .collect();
    payments.extend(refunded_payments);
    payments.extend(waiting.iter().map(|(s, a)| (s.as_str(), a.as_str())));
    post_refunds(&mut *tx, &payments).await
}

/// What a payment holds: its collection, what its refund entries took back so far, and
/// the refunds still to book (succeeded, no entry yet), oldest first.
#[derive(sqlx::FromRow)]
struct Holding {
    source_id: String,
    attempt_id: String,
    subscription_id: String,
    cycle_id: Option<String>,
    collected: i64,
    currency: String,
    refunded: i64,
    /// The attempt is refunded in full (a status) and no status refund entry exists.
    full_refund_due: bool,
    attempt_event_id: i64,
    /// `(refund id, amount, currency, event)` per refund still to book.
    due: sqlx::types::Json<Vec<(String, i64, String, i64)>>,
}

/// Books the refunds of `payments` that are due, each capped at what its payment still
/// holds, and the rest of a payment refunded in full.
async fn post_refunds(
    tx: &mut sqlx::PgConnection,
    payments: &BTreeSet<(&str, &str)>,
) -> Result<(), DbError> {
    if payments.is_empty() {
        return Ok(());
    }
    let (sources, attempts): (Vec<&str>, Vec<&str>) = payments.iter().copied().unzip();
    // A payment's collection is its attempt's, or its cycle's when the provider reported
    // the cycle's payment under another attempt; its refund entries are found the same way.
    let holdings: Vec<Holding> = sqlx::query_as(
        "SELECT k.s AS source_id, k.a AS attempt_id, c.subscription_id, c.cycle_id,
                p.amount_minor AS collected, p.currency,
                COALESCE((SELECT sum(rp.amount_minor) FROM journal_entries r
                          JOIN postings rp ON rp.entry_id = r.id AND rp.account = 'refunded'
                          WHERE r.source_id = k.s AND r.kind = 'refund'
                            AND (r.attempt_id = k.a OR r.attempt_id = c.attempt_id
                                 OR (c.cycle_id IS NOT NULL AND r.cycle_id = c.cycle_id))), 0)::int8
                    AS refunded,
                (b.status = 'refunded' AND NOT EXISTS (
                    SELECT 1 FROM journal_entries r WHERE r.source_id = k.s AND r.kind = 'refund'
                      AND r.refund_id IS NULL
                      AND (r.attempt_id = k.a OR (c.cycle_id IS NOT NULL AND r.cycle_id = c.cycle_id))))
                    AS full_refund_due,
                b.last_event_id AS attempt_event_id,
                COALESCE((SELECT jsonb_agg(jsonb_build_array(f.refund_id, f.amount_minor, f.currency,
                                                             f.last_event_id)
                                           ORDER BY f.refunded_at NULLS LAST, f.refund_id)
                          FROM refunds f
                          WHERE f.source_id = k.s AND f.attempt_id = k.a AND f.status = 'succeeded'
                            AND NOT EXISTS (SELECT 1 FROM journal_entries r
                                            WHERE r.source_id = f.source_id
                                              AND r.refund_id = f.refund_id)), '[]'::jsonb)
                    AS due
         FROM UNNEST($1::text[], $2::text[]) AS k(s, a)
         JOIN billing_attempts b ON b.source_id = k.s AND b.attempt_id = k.a
         CROSS JOIN LATERAL (
             SELECT e.id, e.attempt_id, e.subscription_id, e.cycle_id FROM journal_entries e
             WHERE e.source_id = k.s AND e.kind = 'collection'
               AND (e.attempt_id = k.a OR (b.cycle_id IS NOT NULL AND e.cycle_id = b.cycle_id))
             ORDER BY e.id LIMIT 1) AS c
         JOIN postings p ON p.entry_id = c.id AND p.account = 'collected'
         ORDER BY k.s, k.a",
    )
    .bind(&sources)
    .bind(&attempts)
    .fetch_all(&mut *tx)
    .await?;
    let mut entries = Vec::new();
    for h in &holdings {
        let mut left = h.collected - h.refunded;
        for (refund_id, amount, currency, event_id) in h.due.iter() {
            if *currency != h.currency {
                tracing::warn!(
                    source = %h.source_id, refund = %refund_id,
                    "refund in {currency} of a payment collected in {}: not booked", h.currency
                );
                continue;
            }
            let amount = (*amount).min(left);
            if amount <= 0 {
                continue;
            }
            left -= amount;
            entries.push(NewEntry {
                source_id: &h.source_id,
                attempt_id: &h.attempt_id,
                subscription_id: &h.subscription_id,
                cycle_id: h.cycle_id.as_deref(),
                kind: "refund",
                refund_id: Some(refund_id),
                event_id: *event_id,
                amount,
                currency: &h.currency,
            });
        }
        if h.full_refund_due && left > 0 {
            entries.push(NewEntry {
                source_id: &h.source_id,
                attempt_id: &h.attempt_id,
                subscription_id: &h.subscription_id,
                cycle_id: h.cycle_id.as_deref(),
                kind: "refund",
                refund_id: None,
                event_id: h.attempt_event_id,
                amount: left,
                currency: &h.currency,
            });
        }
    }
    insert_entries(&mut *tx, &entries).await?;
    Ok(())
}

/// Inserts entries with their two postings; an entry that exists already (its attempt,
/// cycle or refund id has one of its kind) is skipped. Returns the `(source, attempt)` of
/// the collections it inserted that have refunds stored. That read is a statement after
/// the attempts' upsert, so it sees a refund whose transaction held the attempt's row
/// before ours: a refund that came before its payment is never missed.
async fn insert_entries(
    tx: &mut sqlx::PgConnection,
    rows: &[NewEntry<'_>],
) -> Result<Vec<(String, String)>, DbError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let source: Vec<&str> = rows.iter().map(|r| r.source_id).collect();
    let attempt: Vec<&str> = rows.iter().map(|r| r.attempt_id).collect();
    let subscription: Vec<&str> = rows.iter().map(|r| r.subscription_id).collect();
    let cycle: Vec<Option<&str>> = rows.iter().map(|r| r.cycle_id).collect();
    let kind: Vec<&str> = rows.iter().map(|r| r.kind).collect();
    let refund: Vec<Option<&str>> = rows.iter().map(|r| r.refund_id).collect();
    let event: Vec<i64> = rows.iter().map(|r| r.event_id).collect();
    let amount: Vec<i64> = rows.iter().map(|r| r.amount).collect();
    let currency: Vec<&str> = rows.iter().map(|r| r.currency).collect();
    Ok(sqlx::query_as(
        "WITH input AS (
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[],
                                  $6::int8[], $7::text[], $8::text[], $9::text[])
                 AS i(source_id, attempt_id, subscription_id, kind, event_id, amount, currency,
                      cycle_id, refund_id)),
         entries AS (
             -- Unique per (attempt, kind), per (cycle, kind) and per refund id: a conflict
             -- skips it.
             INSERT INTO journal_entries (source_id, subscription_id, attempt_id, kind, event_id,
                                          cycle_id, refund_id)
             SELECT source_id, subscription_id, attempt_id, kind, event_id, cycle_id, refund_id
             FROM input
             ON CONFLICT DO NOTHING
             RETURNING id, source_id, attempt_id, kind, refund_id),
         -- The balance trigger sees these postings too (a statement-level trigger with a
         -- transition table covers inserts in a WITH).
         posted AS (
             INSERT INTO postings (entry_id, source_id, subscription_id, account, amount_minor,
                                   currency)
             SELECT e.id, i.source_id, i.subscription_id, p.account, p.sign * i.amount, i.currency
             FROM entries e
             JOIN input i ON i.source_id = e.source_id AND i.attempt_id = e.attempt_id
                         AND i.kind = e.kind AND i.refund_id IS NOT DISTINCT FROM e.refund_id
             CROSS JOIN LATERAL (VALUES
                 (CASE e.kind WHEN 'collection' THEN 'collected' ELSE 'refunded' END, 1),
                 (CASE e.kind WHEN 'collection' THEN 'receivable' ELSE 'collected' END, -1)
             ) AS p(account, sign)
             RETURNING 1)
         SELECT DISTINCT e.source_id, e.attempt_id FROM entries e
         WHERE e.kind = 'collection'
           AND EXISTS (SELECT 1 FROM refunds r
                       WHERE r.source_id = e.source_id AND r.attempt_id = e.attempt_id)",
    )
    .bind(&source)
    .bind(&attempt)
    .bind(&subscription)
    .bind(&kind)
    .bind(&event)
    .bind(&amount)
    .bind(&currency)
    .bind(&cycle)
    .bind(&refund)
    .fetch_all(&mut *tx)
    .await?)
}

/// Upserts subscription changes; returns the keys whose stored state is now this batch's.
async fn upsert_subscriptions(
    tx: &mut sqlx::PgConnection,
    rows: &BTreeMap<(String, String), SubscriptionRow>,
) -> Result<HashSet<(String, String)>, DbError> {
    if rows.is_empty() {
        return Ok(HashSet::new());
    }
    let keys: Vec<&(String, String)> = rows.keys().collect();
    let values: Vec<&SubscriptionRow> = rows.values().collect();
    let source: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let id: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let status: Vec<String> = values.iter().map(|r| word(r.change.status)).collect();
    let provider_status: Vec<&str> = values
        .iter()
        .map(|r| r.change.provider_status.as_str())
        .collect();
    let currency: Vec<Option<&str>> = values
        .iter()
        .map(|r| r.change.currency.as_deref())
        .collect();
    let customer: Vec<Option<&str>> = values
        .iter()
        .map(|r| r.change.customer_id.as_deref())
        .collect();
    let period_end: Vec<Option<DateTime<Utc>>> =
        values.iter().map(|r| r.change.current_period_end).collect();
    let version: Vec<i64> = values.iter().map(|r| r.version).collect();
    let updated_at: Vec<DateTime<Utc>> = values.iter().map(|r| r.updated_at).collect();
    let rank: Vec<i32> = values
        .iter()
        .map(|r| subscription_rank(r.change.status))
        .collect();
    let event: Vec<i64> = values.iter().map(|r| r.event_id).collect();
    // `fwd`: the incoming change is newer than the stored one.
    const FWD: &str = "(excluded.version, excluded.provider_updated_at, excluded.status_rank, excluded.provider_status)
        > (s.version, s.provider_updated_at, s.status_rank, s.provider_status)";
    let state = [
        "status",
        "provider_status",
        "version",
        "provider_updated_at",
        "status_rank",
        "last_event_id",
    ]
    .map(|f| format!("{f} = CASE WHEN {FWD} THEN excluded.{f} ELSE s.{f} END"))
    .join(", ");
    let facts = ["currency", "customer_id", "current_period_end"]
        .map(|f| format!("{f} = CASE WHEN {FWD} THEN COALESCE(excluded.{f}, s.{f}) ELSE COALESCE(s.{f}, excluded.{f}) END"))
        .join(", ");
    let sql = format!(
        "INSERT INTO subscriptions AS s (source_id, subscription_id, status, provider_status, currency,
             customer_id, current_period_end, version, provider_updated_at, status_rank, last_event_id)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
             $7::timestamptz[], $8::int8[], $9::timestamptz[], $10::int4[], $11::int8[])
         ON CONFLICT (source_id, subscription_id) DO UPDATE SET {state}, {facts}
         RETURNING source_id, subscription_id, last_event_id"
    );
    let returned: Vec<(String, String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(&source)
        .bind(&id)
        .bind(&status)
        .bind(&provider_status)
        .bind(&currency)
        .bind(&customer)
        .bind(&period_end)
        .bind(&version)
        .bind(&updated_at)
        .bind(&rank)
        .bind(&event)
        .fetch_all(&mut *tx)
        .await?;
    // Applied where the stored change is now the one this batch brought.
    Ok(returned
        .into_iter()
        .filter(|(source, id, last)| {
            rows.get(&(source.clone(), id.clone()))
                .is_some_and(|r| r.event_id == *last)
        })
        .map(|(source, id, _)| (source, id))
        .collect())
}
