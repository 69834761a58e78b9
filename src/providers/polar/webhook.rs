//! Polar webhook `{"type","timestamp","data"}` → canonical events: the decision table of
//! every webhook type, the wire types and the normalization. The mapping is documented in
//! `polar/mod.rs`.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::canonical::{
    AttemptStatus, BillingAttempt, CanonicalEvent, Refund, RefundStatus, SubscriptionChange,
};
use crate::money::{DecimalText, Money, exponent};
use crate::providers::support::unknown_provider_value;
use crate::providers::support::{malformed, stripe_subscription_status};
use crate::providers::support::{parse_payload, parse_time};
use crate::providers::{NormalizeError, Normalized};

/// The `provider` label of the unknown-value counter.
const PROVIDER: &str = "polar";

/// What subsync does with a Polar webhook type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Handling {
    /// `data` is an `Order`: one billing attempt.
    Order,
    /// `data` is a `Subscription`: one subscription change.
    Subscription,
    /// `data` is a `Refund`: the order's refund, with its own amount.
    Refund,
    /// Archived as `ignored`, for this reason.
    Ignored(&'static str),
}

use Handling::{
    Ignored, Order as OrderAttempt, Refund as OrderRefund, Subscription as SubscriptionState,
};

/// Every webhook type of Polar's definitions (`webhooks` of the OpenAPI document: the
/// order, subscription and refund ones), and the other types Polar's server sends, whose
/// payloads the definitions do not describe. A type not listed is ignored and counted.
pub(super) const WEBHOOKS: &[(&str, Handling)] = &[
    ("order.created", OrderAttempt),
    ("order.updated", OrderAttempt),
    ("order.paid", OrderAttempt),
    ("order.refunded", OrderAttempt),
    ("subscription.created", SubscriptionState),
    ("subscription.updated", SubscriptionState),
    ("subscription.active", SubscriptionState),
    ("subscription.canceled", SubscriptionState),
    ("subscription.uncanceled", SubscriptionState),
    ("subscription.cycled", SubscriptionState),
    ("subscription.revoked", SubscriptionState),
    ("subscription.past_due", SubscriptionState),
    ("subscription.paused", SubscriptionState),
    ("subscription.resumed", SubscriptionState),
    ("refund.created", OrderRefund),
    ("refund.updated", OrderRefund),
    ("checkout.created", Ignored(CHECKOUT)),
    ("checkout.updated", Ignored(CHECKOUT)),
    ("checkout.expired", Ignored(CHECKOUT)),
    ("customer.created", Ignored(CUSTOMER)),
    ("customer.updated", Ignored(CUSTOMER)),
    ("customer.deleted", Ignored(CUSTOMER)),
    ("customer.state_changed", Ignored(CUSTOMER)),
    ("customer_seat.assigned", Ignored(NO_BILLING)),
    ("customer_seat.claimed", Ignored(NO_BILLING)),
    ("customer_seat.revoked", Ignored(NO_BILLING)),
    ("member.created", Ignored(NO_BILLING)),
    ("member.updated", Ignored(NO_BILLING)),
    ("member.deleted", Ignored(NO_BILLING)),
    ("product.created", Ignored(CATALOGUE)),
    ("product.updated", Ignored(CATALOGUE)),
    ("discount.created", Ignored(CATALOGUE)),
    ("discount.updated", Ignored(CATALOGUE)),
    ("discount.deleted", Ignored(CATALOGUE)),
    ("benefit.created", Ignored(CATALOGUE)),
    ("benefit.updated", Ignored(CATALOGUE)),
    ("benefit_grant.created", Ignored(GRANT)),
    ("benefit_grant.cycled", Ignored(GRANT)),
    ("benefit_grant.updated", Ignored(GRANT)),
    ("benefit_grant.revoked", Ignored(GRANT)),
    (
        "organization.updated",
        Ignored("the merchant's own settings"),
    ),
];

const CHECKOUT: &str =
    "a checkout session; what it leads to arrives as order.* and subscription.* webhooks";
const CUSTOMER: &str = "the customer's profile and entitlements; payments and subscription \
    states arrive as order.* and subscription.* webhooks";
const NO_BILLING: &str = "seats and members of a customer: no payment, no subscription state";
const CATALOGUE: &str = "the catalogue (products, discounts, benefits): no payment";
const GRANT: &str = "a benefit granted or revoked because of a subscription or order, whose \
    own webhooks carry the billing state";

/// The handling of `event_type`, `None` for a type not in [`WEBHOOKS`].
pub(super) fn handling(event_type: &str) -> Option<Handling> {
    WEBHOOKS
        .iter()
        .find(|(name, _)| *name == event_type)
        .map(|(_, handling)| *handling)
}

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    event_type: String,
    timestamp: Option<String>,
    data: Option<Box<RawValue>>,
}

/// The fields of Polar's `Order` the normalization reads.
#[derive(Deserialize)]
struct Order {
    id: Option<String>,
    status: Option<String>,
    subscription_id: Option<String>,
    total_amount: Option<DecimalText>,
    currency: Option<String>,
    created_at: Option<String>,
    modified_at: Option<String>,
    next_payment_attempt_at: Option<String>,
}

/// The fields of Polar's `Refund` the normalization reads.
#[derive(Deserialize)]
struct PolarRefund {
    id: Option<String>,
    status: Option<String>,
    amount: Option<DecimalText>,
    tax_amount: Option<DecimalText>,
    currency: Option<String>,
    order_id: Option<String>,
    subscription_id: Option<String>,
    created_at: Option<String>,
    modified_at: Option<String>,
}

/// The fields of Polar's `Subscription` the normalization reads.
#[derive(Deserialize)]
struct Subscription {
    id: Option<String>,
    status: Option<String>,
    currency: Option<String>,
    customer_id: Option<String>,
    current_period_end: Option<String>,
    modified_at: Option<String>,
}

fn time(value: Option<String>, field: &str) -> Result<Option<DateTime<Utc>>, NormalizeError> {
    value.map(|v| parse_time(&v, field)).transpose()
}

fn required(value: Option<String>, what: &str) -> Result<String, NormalizeError> {
    value
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| malformed(format!("no {what}")))
}

pub(super) fn normalize(body: &[u8]) -> Result<Normalized, NormalizeError> {
    let event: Event = parse_payload(body, "Polar webhook")?;
    let handling = match handling(&event.event_type) {
        Some(Ignored(_)) => return Ok(Normalized::ignored(event.event_type)),
        None => {
            unknown_provider_value(PROVIDER, "type", &event.event_type);
            return Ok(Normalized::ignored(event.event_type));
        }
        Some(handling) => handling,
    };
    let what = &event.event_type;
    let timestamp = time(event.timestamp, "timestamp")?;
    let data = event
        .data
        .ok_or_else(|| malformed(format!("{what}: no data")))?;
    let data = data.get().as_bytes();
    let canonical = match handling {
        OrderAttempt => {
            let order: Order = parse_payload(data, "Polar order")?;
            order_attempt(order, timestamp)
        }
        OrderRefund => refund(parse_payload(data, "Polar refund")?),
        _ => {
            let sub: Subscription = parse_payload(data, "Polar subscription")?;
            subscription_change(sub, timestamp)
        }
    }
    .map_err(|e| prefix(what, e))?;
    Ok(Normalized {
        event_type: event.event_type,
        events: canonical.into_iter().collect(),
    })
}

fn prefix(what: &str, error: NormalizeError) -> NormalizeError {
    let NormalizeError::Malformed(reason) = error;
    malformed(format!("{what}: {reason}"))
}

/// `RefundStatus`: every word and the refund status it gives.
pub(super) const REFUND_STATUSES: [(&str, RefundStatus); 4] = [
    ("pending", RefundStatus::Pending),
    ("succeeded", RefundStatus::Succeeded),
    ("failed", RefundStatus::Failed),
    ("canceled", RefundStatus::Failed),
];

/// Integer minor units of a Polar amount field.
fn minor(text: &DecimalText, field: &str) -> Result<i64, NormalizeError> {
    text.0.parse().map_err(|_| {
        malformed(format!(
            "{field}: {:?} is not an integer of minor units",
            text.0
        ))
    })
}

/// A `Refund` of an order: the order's attempt gets back `amount + tax_amount` (the
/// order's `total_amount` that was collected includes its tax).
fn refund(r: PolarRefund) -> Result<Option<CanonicalEvent>, NormalizeError> {
    let refund_id = required(r.id, "refund id")?;
    let provider_status = required(r.status, "refund status")?;
    let Some(status) = REFUND_STATUSES
        .iter()
        .find(|(word, _)| *word == provider_status)
        .map(|(_, status)| *status)
    else {
        unknown_provider_value(PROVIDER, "refund.status", &provider_status);
        return Ok(None);
    };
    let currency = required(r.currency, "refund currency")?;
    let amount = minor(
        r.amount
            .as_ref()
            .ok_or_else(|| malformed("no refund amount"))?,
        "amount",
    )?;
    let tax = match r.tax_amount.as_ref() {
        Some(tax) => minor(tax, "tax_amount")?,
        None => 0,
    };
    let modified = time(r.modified_at, "modified_at")?;
    let created = time(r.created_at, "created_at")?;
    Ok(Some(CanonicalEvent::Refund(Refund {
        refund_id,
        attempt_id: Some(required(r.order_id, "refund order_id")?),
        payment_ref: None,
        subscription_id: r.subscription_id.filter(|s| !s.is_empty()),
        cycle_id: None,
        status,
        provider_status,
        amount: Money::from_minor(amount + tax, &currency)?,
        refunded_at: modified.or(created),
    })))
}

/// The attempt status of an order in `OrderStatus` word `status`; `in_dunning` = a
/// non-null `next_payment_attempt_at`. `None` for a word outside `OrderStatus`.
pub(super) fn attempt_status(status: &str, in_dunning: bool) -> Option<AttemptStatus> {
    Some(match status {
        "pending" if in_dunning => AttemptStatus::Failed,
        "draft" | "pending" => AttemptStatus::Pending,
        // Money was collected; the partial refund is booked from its Refund.
        "paid" | "partially_refunded" => AttemptStatus::Succeeded,
        "refunded" => AttemptStatus::Refunded,
        "void" => AttemptStatus::Skipped,
        _ => return None,
    })
}

fn order_attempt(
    order: Order,
    timestamp: Option<DateTime<Utc>>,
) -> Result<Option<CanonicalEvent>, NormalizeError> {
    let id = required(order.id, "order id")?;
    let provider_status = required(order.status, "order status")?;
    let next_attempt_at = time(order.next_payment_attempt_at, "next_payment_attempt_at")?;
    let Some(status) = attempt_status(&provider_status, next_attempt_at.is_some()) else {
        unknown_provider_value(PROVIDER, "order.status", &provider_status);
        return Ok(None);
    };
    let currency = required(order.currency, "order currency")?;
    let amount = match order.total_amount.as_ref() {
        Some(text) => Some(Money::from_minor(minor(text, "total_amount")?, &currency)?),
        None => {
            exponent(&currency)?;
            None
        }
    };
    let modified = time(order.modified_at, "modified_at")?;
    let created = time(order.created_at, "created_at")?;
    Ok(Some(CanonicalEvent::BillingAttempt(BillingAttempt {
        attempt_id: id.clone(),
        subscription_id: order.subscription_id.filter(|s| !s.is_empty()),
        cycle_id: Some(id),
        status,
        provider_status,
        amount,
        error_code: None,
        error_message: None,
        attempted_at: modified.or(created).or(timestamp),
        next_attempt_at,
        attempt_count: None,
        idempotency_key: None,
    })))
}

fn subscription_change(
    sub: Subscription,
    timestamp: Option<DateTime<Utc>>,
) -> Result<Option<CanonicalEvent>, NormalizeError> {
    let id = required(sub.id, "subscription id")?;
    let provider_status = required(sub.status, "subscription status")?;
    let Some(status) = stripe_subscription_status(&provider_status) else {
        unknown_provider_value(PROVIDER, "subscription.status", &provider_status);
        return Ok(None);
    };
    let currency = sub
        .currency
        .map(|c| exponent(&c).map(|(code, _)| code))
        .transpose()
        .map_err(|e| malformed(format!("currency: {e}")))?;
    Ok(Some(CanonicalEvent::Subscription(SubscriptionChange {
        subscription_id: id,
        status,
        provider_status,
        currency,
        customer_id: sub.customer_id.filter(|c| !c.is_empty()),
        current_period_end: time(sub.current_period_end, "current_period_end")?,
        updated_at: time(sub.modified_at, "modified_at")?.or(timestamp),
        version: None,
    })))
}

#[cfg(test)]
mod tests;
