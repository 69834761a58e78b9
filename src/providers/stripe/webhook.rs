//! Stripe event → canonical events. The mapping is documented in `stripe.rs`.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::canonical::{AttemptStatus, BillingAttempt, CanonicalEvent, SubscriptionChange};
use crate::money::{DecimalText, Money};
use crate::providers::support::{currency_code, malformed, stripe_subscription_status};
use crate::providers::support::{parse_payload, time_from_unix};
use crate::providers::{NormalizeError, Normalized};

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    event_type: String,
    created: Option<i64>,
    data: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct Data<T> {
    object: T,
}

/// A Stripe reference: an id, or the expanded object.
#[derive(Deserialize)]
#[serde(untagged)]
enum Expandable<T> {
    Id(String),
    Object(T),
}

#[derive(Deserialize)]
struct Object {
    id: String,
}

#[derive(Deserialize)]
struct PaymentIntent {
    last_payment_error: Option<PaymentError>,
}

#[derive(Deserialize)]
struct PaymentError {
    code: Option<String>,
    decline_code: Option<String>,
    message: Option<String>,
}

#[derive(Deserialize)]
struct Invoice {
    id: Option<String>,
    subscription: Option<Expandable<Object>>,
    /// API versions from 2025-03 move the subscription to `parent.subscription_details`.
    parent: Option<InvoiceParent>,
    amount_due: Option<DecimalText>,
    amount_paid: Option<DecimalText>,
    currency: Option<String>,
    attempt_count: Option<u32>,
    next_payment_attempt: Option<i64>,
    payment_intent: Option<Expandable<PaymentIntent>>,
}

#[derive(Deserialize)]
struct InvoiceParent {
    subscription_details: Option<SubscriptionDetails>,
}

#[derive(Deserialize)]
struct SubscriptionDetails {
    subscription: Option<Expandable<Object>>,
}

#[derive(Deserialize)]
struct Subscription {
    id: Option<String>,
    status: Option<String>,
    customer: Option<Expandable<Object>>,
    currency: Option<String>,
    current_period_end: Option<i64>,
    /// API versions from 2025-03 move `current_period_end` to the items.
    items: Option<Items>,
}

#[derive(Deserialize)]
struct Items {
    data: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    current_period_end: Option<i64>,
}

fn id_of(reference: Option<Expandable<Object>>) -> Option<String> {
    match reference? {
        Expandable::Id(id) => Some(id),
        Expandable::Object(object) => Some(object.id),
    }
}

/// An integer amount in minor units (Stripe never sends decimals).
pub(super) fn minor_units(text: &DecimalText, field: &str) -> Result<i64, NormalizeError> {
    text.0.parse().map_err(|_| {
        malformed(format!(
            "{field}: {:?} is not an integer of minor units",
            text.0
        ))
    })
}

pub(super) fn normalize(body: &[u8]) -> Result<Normalized, NormalizeError> {
    let event: Event = parse_payload(body, "Stripe event")?;
    let attempt = match event.event_type.as_str() {
        "invoice.paid" | "invoice.payment_succeeded" => Some(AttemptStatus::Succeeded),
        "invoice.payment_failed" => Some(AttemptStatus::Failed),
        "invoice.payment_action_required" => Some(AttemptStatus::RequiresAction),
        _ => None,
    };
    let subscription = matches!(
        event.event_type.as_str(),
        "customer.subscription.created"
            | "customer.subscription.updated"
            | "customer.subscription.deleted"
            | "customer.subscription.paused"
            | "customer.subscription.resumed"
    );
    if attempt.is_none() && !subscription {
        return Ok(Normalized::ignored(event.event_type));
    }
    let created = event
        .created
        .ok_or_else(|| malformed(format!("{}: no created time", event.event_type)))?;
    let created = time_from_unix(created, "created")?;
    let data = event
        .data
        .ok_or_else(|| malformed(format!("{}: no data.object", event.event_type)))?;
    let canonical = match attempt {
        Some(status) => {
            let data: Data<Invoice> = parse_payload(data.get().as_bytes(), "Stripe invoice")?;
            CanonicalEvent::BillingAttempt(invoice_attempt(
                data.object,
                status,
                &event.event_type,
                created,
            )?)
        }
        None => {
            let data: Data<Subscription> =
                parse_payload(data.get().as_bytes(), "Stripe subscription")?;
            CanonicalEvent::Subscription(subscription_change(data.object, created)?)
        }
    };
    Ok(Normalized {
        event_type: event.event_type,
        events: vec![canonical],
    })
}

fn invoice_attempt(
    invoice: Invoice,
    status: AttemptStatus,
    event_type: &str,
    created: DateTime<Utc>,
) -> Result<BillingAttempt, NormalizeError> {
    let invoice_id = invoice
        .id
        .filter(|id| !id.is_empty())
        .ok_or_else(|| malformed(format!("{event_type}: invoice has no id")))?;
    let attempt_count = invoice
        .attempt_count
        .ok_or_else(|| malformed(format!("{event_type}: invoice has no attempt_count")))?;
    let currency = invoice
        .currency
        .ok_or_else(|| malformed(format!("{event_type}: invoice has no currency")))?;
    let (amount, field) = match (status, &invoice.amount_paid, &invoice.amount_due) {
        (AttemptStatus::Succeeded, Some(paid), _) => (Some(paid), "amount_paid"),
        (_, _, Some(due)) => (Some(due), "amount_due"),
        _ => (None, "amount_due"),
    };
    let amount = match amount {
        Some(text) => Some(Money::from_minor(minor_units(text, field)?, &currency)?),
        None => {
            currency_code(&currency, "currency")?;
            None
        }
    };
    let subscription_id = id_of(invoice.subscription)
        .or_else(|| id_of(invoice.parent?.subscription_details?.subscription));
    let error = match invoice.payment_intent {
        Some(Expandable::Object(PaymentIntent {
            last_payment_error: Some(e),
        })) if status == AttemptStatus::Failed => Some(e),
        _ => None,
    };
    let next_attempt_at = invoice
        .next_payment_attempt
        .map(|t| time_from_unix(t, "next_payment_attempt"))
        .transpose()?;
    Ok(BillingAttempt {
        attempt_id: format!("{invoice_id}:{attempt_count}"),
        subscription_id,
        cycle_id: Some(invoice_id),
        status,
        provider_status: event_type.to_owned(),
        amount,
        error_code: error
            .as_ref()
            .and_then(|e| e.decline_code.clone().or(e.code.clone())),
        error_message: error.and_then(|e| e.message),
        attempted_at: Some(created),
        next_attempt_at,
        attempt_count: Some(attempt_count),
        idempotency_key: None,
    })
}

fn subscription_change(
    subscription: Subscription,
    created: DateTime<Utc>,
) -> Result<SubscriptionChange, NormalizeError> {
    let id = subscription
        .id
        .filter(|id| !id.is_empty())
        .ok_or_else(|| malformed("subscription has no id"))?;
    let provider_status = subscription
        .status
        .ok_or_else(|| malformed(format!("subscription {id} has no status")))?;
    let status = stripe_subscription_status(&provider_status).ok_or_else(|| {
        malformed(format!(
            "subscription {id}: unknown status {provider_status:?}"
        ))
    })?;
    let currency = subscription
        .currency
        .map(|c| currency_code(&c, "currency"))
        .transpose()?;
    let period_end = subscription.current_period_end.or_else(|| {
        subscription
            .items?
            .data
            .iter()
            .filter_map(|item| item.current_period_end)
            .max()
    });
    Ok(SubscriptionChange {
        subscription_id: id,
        status,
        provider_status,
        currency,
        customer_id: id_of(subscription.customer),
        current_period_end: period_end
            .map(|t| time_from_unix(t, "current_period_end"))
            .transpose()?,
        updated_at: Some(created),
        version: None,
    })
}

#[cfg(test)]
mod tests;
