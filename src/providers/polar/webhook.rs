//! Polar webhook `{"type","timestamp","data"}` → canonical events. The mapping is documented
//! in `polar.rs`.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::canonical::{AttemptStatus, BillingAttempt, CanonicalEvent, SubscriptionChange};
use crate::money::{DecimalText, Money, exponent};
use crate::providers::support::{malformed, stripe_subscription_status};
use crate::providers::support::{parse_payload, parse_time};
use crate::providers::{NormalizeError, Normalized};

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    event_type: String,
    timestamp: Option<String>,
    data: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct Order {
    id: Option<String>,
    status: Option<String>,
    subscription_id: Option<String>,
    total_amount: Option<DecimalText>,
    /// Deprecated alias of the amount on older payloads.
    amount: Option<DecimalText>,
    currency: Option<String>,
    created_at: Option<String>,
    modified_at: Option<String>,
    next_payment_attempt_at: Option<String>,
}

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
    let is_order = matches!(
        event.event_type.as_str(),
        "order.created" | "order.updated" | "order.paid" | "order.refunded"
    );
    let is_subscription = matches!(
        event.event_type.as_str(),
        "subscription.created"
            | "subscription.updated"
            | "subscription.active"
            | "subscription.canceled"
            | "subscription.uncanceled"
            | "subscription.revoked"
            | "subscription.past_due"
            | "subscription.cycled"
            | "subscription.paused"
            | "subscription.resumed"
    );
    if !is_order && !is_subscription {
        return Ok(Normalized::ignored(event.event_type));
    }
    let what = &event.event_type;
    let timestamp = time(event.timestamp, "timestamp")?;
    let data = event
        .data
        .ok_or_else(|| malformed(format!("{what}: no data")))?;
    let canonical = if is_order {
        let order: Order = parse_payload(data.get().as_bytes(), "Polar order")?;
        order_attempt(order, timestamp).map_err(|e| prefix(what, e))?
    } else {
        let sub: Subscription = parse_payload(data.get().as_bytes(), "Polar subscription")?;
        subscription_change(sub, timestamp).map_err(|e| prefix(what, e))?
    };
    Ok(Normalized {
        event_type: event.event_type,
        events: vec![canonical],
    })
}

fn prefix(what: &str, error: NormalizeError) -> NormalizeError {
    let NormalizeError::Malformed(reason) = error;
    malformed(format!("{what}: {reason}"))
}

fn order_attempt(
    order: Order,
    timestamp: Option<DateTime<Utc>>,
) -> Result<CanonicalEvent, NormalizeError> {
    let id = required(order.id, "order id")?;
    let provider_status = required(order.status, "order status")?;
    let status = match provider_status.as_str() {
        "draft" | "pending" | "processing" | "no_payment" => AttemptStatus::Pending,
        "paid" | "succeeded" => AttemptStatus::Succeeded,
        "requires_action" => AttemptStatus::RequiresAction,
        "failed" => AttemptStatus::Failed,
        "refunded" | "partially_refunded" => AttemptStatus::Refunded,
        "void" | "canceled" => AttemptStatus::Skipped,
        other => return Err(malformed(format!("order {id}: unknown status {other:?}"))),
    };
    let currency = required(order.currency, "order currency")?;
    let amount = match order.total_amount.as_ref().or(order.amount.as_ref()) {
        Some(text) => {
            let minor = text.0.parse().map_err(|_| {
                malformed(format!(
                    "total_amount: {:?} is not an integer of minor units",
                    text.0
                ))
            })?;
            Some(Money::from_minor(minor, &currency)?)
        }
        None => {
            exponent(&currency)?;
            None
        }
    };
    let modified = time(order.modified_at, "modified_at")?;
    let created = time(order.created_at, "created_at")?;
    Ok(CanonicalEvent::BillingAttempt(BillingAttempt {
        attempt_id: id.clone(),
        subscription_id: order.subscription_id.filter(|s| !s.is_empty()),
        cycle_id: Some(id),
        status,
        provider_status,
        amount,
        error_code: None,
        error_message: None,
        attempted_at: modified.or(created).or(timestamp),
        next_attempt_at: time(order.next_payment_attempt_at, "next_payment_attempt_at")?,
        attempt_count: None,
        idempotency_key: None,
    }))
}

fn subscription_change(
    sub: Subscription,
    timestamp: Option<DateTime<Utc>>,
) -> Result<CanonicalEvent, NormalizeError> {
    let id = required(sub.id, "subscription id")?;
    let provider_status = required(sub.status, "subscription status")?;
    let status = stripe_subscription_status(&provider_status).ok_or_else(|| {
        malformed(format!(
            "subscription {id}: unknown status {provider_status:?}"
        ))
    })?;
    let currency = sub
        .currency
        .map(|c| exponent(&c).map(|(code, _)| code))
        .transpose()
        .map_err(|e| malformed(format!("currency: {e}")))?;
    Ok(CanonicalEvent::Subscription(SubscriptionChange {
        subscription_id: id,
        status,
        provider_status,
        currency,
        customer_id: sub.customer_id.filter(|c| !c.is_empty()),
        current_period_end: time(sub.current_period_end, "current_period_end")?,
        updated_at: time(sub.modified_at, "modified_at")?.or(timestamp),
        version: None,
    }))
}

#[cfg(test)]
mod tests;
