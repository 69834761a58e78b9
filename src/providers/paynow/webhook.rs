//! PayNow webhook `{"event_type", "event_id", "body"}` → canonical events: the decision
//! table of every event type, the wire types and the normalization. The mapping is
//! documented in `paynow/mod.rs`.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::canonical::{
    AttemptStatus, BillingAttempt, CanonicalEvent, RefundStatus, SubscriptionChange,
    SubscriptionStatus,
};
use crate::money::Money;
use crate::providers::support::parse_payload;
use crate::providers::support::unknown_provider_value;
use crate::providers::support::{Id, currency_code, first_id, missing, opt_time, parse_raw, text};
use crate::providers::{NormalizeError, Normalized};

/// The `provider` label of the unknown-value counter.
const PROVIDER: &str = "paynow";

/// What subsync does with a PayNow event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Handling {
    /// `body` is a Payment: one billing attempt with this status.
    Payment(AttemptStatus),
    /// `body` is a Refund: the refund of its payment's attempt.
    Refund,
    /// `body` is a Subscription: one subscription change.
    Subscription,
    /// Archived as `ignored`, for this reason.
    Ignored(&'static str),
}

use Handling::{Ignored, Payment as PaymentAttempt, Refund as RefundOf, Subscription as State};

const DELIVERY: &str = "the delivery of a purchased item to the customer (game commands, \
    roles): no payment and no subscription state";
const TRIAL: &str = "a free trial: nothing is charged; the paid subscription reports itself \
    with the ON_SUBSCRIPTION_* events and its charges with ON_PAYMENT_*";
const CHARGEBACK: &str = "a dispute of a payment (chargeback_status pending/won/lost): the \
    ledger has no chargeback state, and a lost dispute's reversal would need a compensating \
    entry it cannot book yet";
const CONNECTED_USER: &str = "the store's own marketplace account (registration, payouts, \
    trust): not a customer's billing; PayNow defines no payload for it";
const FOLLOW_UP: &str = "a marketing e-mail about a purchase or an abandoned checkout: no \
    billing; PayNow defines no payload for it";

/// Every value of PayNow's `WebhookEventType` (19 of them with a payload in the
/// definitions). A type not listed is ignored and counted.
pub(super) const EVENTS: &[(&str, Handling)] = &[
    (
        "ON_PAYMENT_COMPLETED",
        PaymentAttempt(AttemptStatus::Succeeded),
    ),
    ("ON_PAYMENT_FAILED", PaymentAttempt(AttemptStatus::Failed)),
    ("ON_REFUND", RefundOf),
    ("ON_SUBSCRIPTION_ACTIVATED", State),
    ("ON_SUBSCRIPTION_RENEWED", State),
    ("ON_SUBSCRIPTION_CANCELED", State),
    (
        "ON_ORDER_COMPLETED",
        Ignored(
            "an order, not a try to charge: its charge arrives as ON_PAYMENT_COMPLETED, \
             whose payment id is the attempt id",
        ),
    ),
    ("ON_CHARGEBACK", Ignored(CHARGEBACK)),
    ("ON_CHARGEBACK_CLOSED", Ignored(CHARGEBACK)),
    ("ON_DELIVERY_ITEM_ADDED", Ignored(DELIVERY)),
    ("ON_DELIVERY_ITEM_ACTIVATED", Ignored(DELIVERY)),
    ("ON_DELIVERY_ITEM_USED", Ignored(DELIVERY)),
    ("ON_DELIVERY_ITEM_REVOKED", Ignored(DELIVERY)),
    ("ON_DELIVERY_ITEM_EXPIRED", Ignored(DELIVERY)),
    ("ON_DELIVERY_ITEM_RENEWED", Ignored(DELIVERY)),
    (
        "ON_DISCORD_ACCOUNT_LINKED_TO_CHECKOUT",
        Ignored("a Discord account linked to a checkout: no billing"),
    ),
    ("ON_TRIAL_ACTIVATED", Ignored(TRIAL)),
    ("ON_TRIAL_COMPLETED", Ignored(TRIAL)),
    ("ON_TRIAL_CANCELED", Ignored(TRIAL)),
    ("ON_CONNECTED_USER_REGISTERED", Ignored(CONNECTED_USER)),
    ("ON_CONNECTED_USER_BECAME_PAYABLE", Ignored(CONNECTED_USER)),
    (
        "ON_CONNECTED_USER_BECAME_UNPAYABLE",
        Ignored(CONNECTED_USER),
    ),
    ("ON_CONNECTED_USER_PAYOUT_CREATED", Ignored(CONNECTED_USER)),
    (
        "ON_CONNECTED_USER_PAYOUT_COMPLETED",
        Ignored(CONNECTED_USER),
    ),
    (
        "ON_CONNECTED_USER_TRANSACTION_INSERTED",
        Ignored(CONNECTED_USER),
    ),
    (
        "ON_CONNECTED_USER_TRUST_STATUS_CHANGED",
        Ignored(CONNECTED_USER),
    ),
    (
        "ON_PURCHASE_FOLLOW_UP_ATTEMPT_EMAIL_SENT",
        Ignored(FOLLOW_UP),
    ),
    (
        "ON_PURCHASE_FOLLOW_UP_ATTEMPT_SUCCEEDED",
        Ignored(FOLLOW_UP),
    ),
    (
        "ON_ABANDONED_CHECKOUT_RECOVERY_ATTEMPT_EMAIL_SENT",
        Ignored(FOLLOW_UP),
    ),
    (
        "ON_ABANDONED_CHECKOUT_RECOVERY_ATTEMPT_SUCCEEDED",
        Ignored(FOLLOW_UP),
    ),
];

/// The handling of `event_type`, `None` for a type not in [`EVENTS`].
pub(super) fn handling(event_type: &str) -> Option<Handling> {
    EVENTS
        .iter()
        .find(|(name, _)| *name == event_type)
        .map(|(_, handling)| *handling)
}

#[derive(Deserialize)]
struct Payload {
    event_type: String,
    body: Option<Box<RawValue>>,
}

/// The fields of the ON_PAYMENT_* body (a Payment) the normalization reads.
#[derive(Deserialize)]
struct Payment {
    id: Option<Id>,
    order_id: Option<Id>,
    status: Option<String>,
    amount: Option<i64>,
    currency: Option<String>,
    failure_code: Option<String>,
    failed_at: Option<String>,
    completed_at: Option<String>,
    created_at: Option<String>,
}

/// The fields of the ON_REFUND body (a Refund) the normalization reads.
#[derive(Deserialize)]
struct Refund {
    id: Option<Id>,
    payment_id: Option<Id>,
    order_id: Option<Id>,
    status: Option<String>,
    /// "The initial payment amount".
    amount: Option<i64>,
    /// "The amount refunded to the store".
    store_refund_amount: Option<i64>,
    currency: Option<String>,
    completed_at: Option<String>,
    created_at: Option<String>,
}

#[derive(Deserialize)]
struct Customer {
    id: Option<Id>,
}

/// The fields of a subscription the normalization reads: the ON_SUBSCRIPTION_* body, or
/// the management API's `SubscriptionDto` the list renders (which adds `updated_at` and
/// `past_due`).
#[derive(Deserialize)]
struct Subscription {
    id: Option<Id>,
    status: Option<String>,
    past_due: Option<bool>,
    currency: Option<String>,
    customer_id: Option<Id>,
    customer: Option<Customer>,
    current_period_end: Option<String>,
    updated_at: Option<String>,
}

pub fn normalize(body: &[u8]) -> Result<Normalized, NormalizeError> {
    let payload: Payload = parse_payload(body, "PayNow")?;
    let t = payload.event_type.as_str();
    let inner = payload.body.as_deref();
    let events = match handling(t) {
        Some(Ignored(_)) => Vec::new(),
        None => {
            unknown_provider_value(PROVIDER, "event_type", t);
            Vec::new()
        }
        Some(PaymentAttempt(status)) => vec![attempt(t, parse_raw(inner, t)?, status)?],
        Some(RefundOf) => refund(t, parse_raw(inner, t)?)?,
        Some(State) => vec![CanonicalEvent::Subscription(subscription(
            t,
            &parse_raw(inner, t)?,
        )?)],
    };
    Ok(Normalized {
        events,
        event_type: payload.event_type,
    })
}

fn money(
    what: &str,
    amount: Option<i64>,
    currency: Option<&String>,
) -> Result<Option<Money>, NormalizeError> {
    match (amount, text(currency)) {
        (Some(minor), Some(currency)) => Ok(Some(Money::from_minor(minor, &currency)?)),
        (Some(_), None) => Err(missing(what, "body.currency beside the amount")),
        (None, Some(currency)) => currency_code(&currency, "body.currency").map(|_| None),
        (None, None) => Ok(None),
    }
}

fn attempt(
    what: &str,
    p: Payment,
    status: AttemptStatus,
) -> Result<CanonicalEvent, NormalizeError> {
    let attempt_id = first_id([p.id.as_ref()]).ok_or_else(|| missing(what, "body.id"))?;
    let failed = status == AttemptStatus::Failed;
    let attempted = if failed {
        &p.failed_at
    } else {
        &p.completed_at
    };
    let attempted = text(attempted.as_ref()).or_else(|| text(p.created_at.as_ref()));
    Ok(CanonicalEvent::BillingAttempt(BillingAttempt {
        attempt_id,
        // The Payment names no subscription (only its order).
        subscription_id: None,
        cycle_id: first_id([p.order_id.as_ref()]),
        status,
        provider_status: text(p.status.as_ref()).unwrap_or_else(|| what.to_owned()),
        amount: money(what, p.amount, p.currency.as_ref())?,
        error_code: text(p.failure_code.as_ref()).filter(|_| failed),
        error_message: None,
        attempted_at: opt_time(attempted.as_deref(), "body attempt time")?,
        next_attempt_at: None,
        attempt_count: None,
        idempotency_key: None,
    }))
}

/// PayNow's `RefundStatus` words ("created, approved, processing, completed, canceled,
/// failed"). The event itself is "Triggered when a refund is completed" (and its schema's
/// example status is `created`), so every word but the two that say no refund was made
/// reads as made.
const REFUND_STATUSES: &[&str] = &[
    "created",
    "approved",
    "processing",
    "completed",
    "canceled",
    "failed",
];

/// A Refund: the refund itself (its id, `store_refund_amount`), and, when it was made, the
/// payment's attempt with the payment's `amount` — refunded when the refund is the whole
/// amount, else still succeeded (`partially_refunded`): the partial amount is the refund's.
fn refund(what: &str, r: Refund) -> Result<Vec<CanonicalEvent>, NormalizeError> {
    let payment =
        first_id([r.payment_id.as_ref()]).ok_or_else(|| missing(what, "body.payment_id"))?;
    let refund_id = first_id([r.id.as_ref()]).ok_or_else(|| missing(what, "body.id"))?;
    let amount =
        money(what, r.amount, r.currency.as_ref())?.ok_or_else(|| missing(what, "body.amount"))?;
    let word = text(r.status.as_ref()).unwrap_or_else(|| "completed".to_owned());
    let status = match word.to_ascii_lowercase().as_str() {
        "canceled" | "failed" => RefundStatus::Failed,
        known => {
            if !REFUND_STATUSES.contains(&known) {
                unknown_provider_value(PROVIDER, "refund.status", &word);
            }
            RefundStatus::Succeeded
        }
    };
    let refunded = money(what, r.store_refund_amount, r.currency.as_ref())?
        .ok_or_else(|| missing(what, "body.store_refund_amount"))?;
    let at = text(r.completed_at.as_ref()).or_else(|| text(r.created_at.as_ref()));
    let at = opt_time(at.as_deref(), "body.completed_at")?;
    let cycle_id = first_id([r.order_id.as_ref()]);
    let mut events = vec![CanonicalEvent::Refund(crate::canonical::Refund {
        refund_id,
        attempt_id: Some(payment.clone()),
        payment_ref: None,
        subscription_id: None,
        cycle_id: cycle_id.clone(),
        status,
        provider_status: word,
        amount: refunded.clone(),
        refunded_at: at,
    })];
    if status == RefundStatus::Succeeded {
        let (status, provider_status) = if refunded.minor >= amount.minor {
            (AttemptStatus::Refunded, "refunded")
        } else {
            (AttemptStatus::Succeeded, "partially_refunded")
        };
        events.push(CanonicalEvent::BillingAttempt(BillingAttempt {
            attempt_id: payment,
            subscription_id: None,
            cycle_id,
            status,
            provider_status: provider_status.to_owned(),
            amount: Some(amount),
            error_code: None,
            error_message: None,
            attempted_at: at,
            next_attempt_at: None,
            attempt_count: None,
            idempotency_key: None,
        }));
    }
    Ok(events)
}

/// The canonical status of subscription status `word` (`SubscriptionStatusDto`), with its
/// `past_due` flag; `None` for a word that says nothing canonical (`invalid`, unknown).
pub(super) fn subscription_status(word: &str, past_due: bool) -> Option<SubscriptionStatus> {
    Some(match word.to_ascii_lowercase().as_str() {
        "created" => SubscriptionStatus::Pending,
        "active" if past_due => SubscriptionStatus::PastDue,
        "active" => SubscriptionStatus::Active,
        "canceled" => SubscriptionStatus::Cancelled,
        _ => return None,
    })
}

fn subscription(t: &str, s: &Subscription) -> Result<SubscriptionChange, NormalizeError> {
    let subscription_id = first_id([s.id.as_ref()]).ok_or_else(|| missing(t, "body.id"))?;
    let past_due = s.past_due == Some(true);
    // What the event itself says, where the body's status does not.
    let implied = match t {
        "ON_SUBSCRIPTION_CANCELED" => SubscriptionStatus::Cancelled,
        _ if past_due => SubscriptionStatus::PastDue,
        _ => SubscriptionStatus::Active,
    };
    let (status, provider_status) = match text(s.status.as_ref()) {
        Some(word) => match subscription_status(&word, past_due) {
            Some(status) => (status, word),
            None => {
                unknown_provider_value(PROVIDER, "subscription.status", &word);
                (implied, word)
            }
        },
        None => (implied, t.to_owned()),
    };
    let currency = text(s.currency.as_ref())
        .map(|c| currency_code(&c, "body.currency"))
        .transpose()?;
    Ok(SubscriptionChange {
        subscription_id,
        status,
        provider_status,
        currency,
        customer_id: first_id([
            s.customer_id.as_ref(),
            s.customer.as_ref().and_then(|c| c.id.as_ref()),
        ]),
        current_period_end: opt_time(s.current_period_end.as_deref(), "body.current_period_end")?,
        updated_at: opt_time(s.updated_at.as_deref(), "body.updated_at")?,
        version: None,
    })
}

#[cfg(test)]
mod tests;
