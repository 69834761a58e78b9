//! PayNow normalization: `{"event_type", "event_id", "timestamp"?, "body": {...}}`.
//!
//! Ids are flake ids, kept as strings (JSON numbers are accepted too). Amounts are integer
//! minor units with the ISO `currency` beside them; an amount without a currency is an error.
//!
//! - `ON_PAYMENT_COMPLETED` → attempt `succeeded`, `ON_PAYMENT_FAILED` → attempt `failed`.
//!   `body` = the payment: `attempt_id` = `id` (required), `subscription_id` =
//!   `subscription_id` (or `subscription.id`), `cycle_id` = `order_id`, `provider_status` =
//!   body `status` or else the event type, `amount` = `total_amount` (else `amount`) in
//!   `currency`, `error_code` = `failure_code`/`decline_code`/`error_code`,
//!   `error_message` = `failure_reason`/`failure_message`/`error_message` (failed only),
//!   `attempted_at` = `failed_at`/`completed_at`/`created_at`/envelope `timestamp`, and
//!   `next_attempt_at`/`attempt_count` from the body or its `subscription` (PayNow retries
//!   on its side and says when).
//! - `ON_SUBSCRIPTION_ACTIVATED|RENEWED|CANCELED` → subscription change. `body` = the store
//!   subscription DTO: `subscription_id` = `id` (required); `status` = body `status`
//!   (`created` → pending, `active` → active, `canceled`/`cancelled` → cancelled; another
//!   word is an error), else implied by the event (active, active, cancelled);
//!   `customer_id` = `customer_id` or `customer.id`; `current_period_end`; `updated_at`.
//!   `RENEWED` also yields a succeeded attempt when the body embeds the renewal `payment`
//!   object (mapped as above). The subscription DTO itself has no payment id, and the
//!   renewal charge arrives as its own `ON_PAYMENT_COMPLETED`, so no attempt is invented.
//! - Every other type is ignored.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::canonical::{
    AttemptStatus, BillingAttempt, CanonicalEvent, SubscriptionChange, SubscriptionStatus,
};
use crate::money::Money;
use crate::providers::support::parse_payload;
use crate::providers::support::{
    Id, currency_code, first_id, missing, opt_time, parse_opt_raw, parse_raw, text,
};
use crate::providers::{NormalizeError, Normalized};

#[derive(Deserialize)]
struct Payload {
    event_type: String,
    timestamp: Option<String>,
    body: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct Payment {
    id: Option<Id>,
    status: Option<String>,
    subscription_id: Option<Id>,
    subscription: Option<Subscription>,
    order_id: Option<Id>,
    total_amount: Option<i64>,
    amount: Option<i64>,
    currency: Option<String>,
    failure_code: Option<String>,
    decline_code: Option<String>,
    error_code: Option<String>,
    failure_reason: Option<String>,
    failure_message: Option<String>,
    error_message: Option<String>,
    failed_at: Option<String>,
    completed_at: Option<String>,
    created_at: Option<String>,
    next_attempt_at: Option<String>,
    attempt_count: Option<i64>,
}

#[derive(Deserialize)]
struct Customer {
    id: Option<Id>,
}

#[derive(Deserialize)]
struct Subscription {
    id: Option<Id>,
    status: Option<String>,
    currency: Option<String>,
    customer_id: Option<Id>,
    customer: Option<Customer>,
    current_period_end: Option<String>,
    updated_at: Option<String>,
    next_attempt_at: Option<String>,
    attempt_count: Option<i64>,
    payment: Option<Box<RawValue>>,
}

pub fn normalize(body: &[u8]) -> Result<Normalized, NormalizeError> {
    let payload: Payload = parse_payload(body, "PayNow")?;
    let t = payload.event_type.as_str();
    let inner = payload.body.as_deref();
    let at = payload.timestamp.as_deref();
    let events = match t {
        "ON_PAYMENT_COMPLETED" => vec![attempt(
            t,
            parse_raw(inner, t)?,
            AttemptStatus::Succeeded,
            at,
            None,
        )?],
        "ON_PAYMENT_FAILED" => vec![attempt(
            t,
            parse_raw(inner, t)?,
            AttemptStatus::Failed,
            at,
            None,
        )?],
        "ON_SUBSCRIPTION_ACTIVATED" | "ON_SUBSCRIPTION_RENEWED" | "ON_SUBSCRIPTION_CANCELED" => {
            let sub: Subscription = parse_raw(inner, t)?;
            let change = subscription(t, &sub)?;
            let mut events = Vec::new();
            if t == "ON_SUBSCRIPTION_RENEWED" {
                let what = "ON_SUBSCRIPTION_RENEWED body.payment";
                if let Some(payment) = parse_opt_raw::<Payment>(sub.payment.as_deref(), what)? {
                    let sub_id = Some(change.subscription_id.clone());
                    events.push(attempt(
                        what,
                        payment,
                        AttemptStatus::Succeeded,
                        at,
                        sub_id,
                    )?);
                }
            }
            events.insert(0, CanonicalEvent::Subscription(change));
            events
        }
        _ => return Ok(Normalized::ignored(payload.event_type)),
    };
    Ok(Normalized {
        event_type: payload.event_type,
        events,
    })
}

fn attempt(
    what: &str,
    p: Payment,
    status: AttemptStatus,
    envelope_time: Option<&str>,
    subscription_id: Option<String>,
) -> Result<CanonicalEvent, NormalizeError> {
    let attempt_id = first_id([p.id.as_ref()]).ok_or_else(|| missing(what, "body.id"))?;
    let sub = p.subscription.as_ref();
    let amount = match (p.total_amount.or(p.amount), text(p.currency.as_ref())) {
        (Some(minor), Some(currency)) => Some(Money::from_minor(minor, &currency)?),
        (Some(_), None) => return Err(missing(what, "body.currency beside the amount")),
        (None, _) => None,
    };
    let failed = status == AttemptStatus::Failed;
    let error_code = [&p.failure_code, &p.decline_code, &p.error_code]
        .into_iter()
        .find_map(|c| text(c.as_ref()))
        .filter(|_| failed);
    let error_message = [&p.failure_reason, &p.failure_message, &p.error_message]
        .into_iter()
        .find_map(|c| text(c.as_ref()))
        .filter(|_| failed);
    let attempted = [&p.failed_at, &p.completed_at, &p.created_at]
        .into_iter()
        .find_map(|c| text(c.as_ref()))
        .or(envelope_time.map(str::to_owned));
    let next = p
        .next_attempt_at
        .as_deref()
        .or(sub.and_then(|s| s.next_attempt_at.as_deref()));
    let count = p.attempt_count.or(sub.and_then(|s| s.attempt_count));
    Ok(CanonicalEvent::BillingAttempt(BillingAttempt {
        attempt_id,
        subscription_id: first_id([p.subscription_id.as_ref(), sub.and_then(|s| s.id.as_ref())])
            .or(subscription_id),
        cycle_id: first_id([p.order_id.as_ref()]),
        status,
        provider_status: text(p.status.as_ref()).unwrap_or_else(|| what.to_owned()),
        amount,
        error_code,
        error_message,
        attempted_at: opt_time(attempted.as_deref(), "body attempt time")?,
        next_attempt_at: opt_time(next, "body.next_attempt_at")?,
        attempt_count: crate::providers::support::count(count, "body.attempt_count")?,
        idempotency_key: None,
    }))
}

fn subscription(t: &str, s: &Subscription) -> Result<SubscriptionChange, NormalizeError> {
    let subscription_id = first_id([s.id.as_ref()]).ok_or_else(|| missing(t, "body.id"))?;
    let (status, provider_status) = match text(s.status.as_ref()) {
        Some(word) => {
            let status = match word.to_ascii_lowercase().as_str() {
                "created" => SubscriptionStatus::Pending,
                "active" => SubscriptionStatus::Active,
                "canceled" | "cancelled" => SubscriptionStatus::Cancelled,
                _ => {
                    let reason = format!("{t}: unknown PayNow subscription status {word:?}");
                    return Err(NormalizeError::Malformed(reason));
                }
            };
            (status, word)
        }
        None if t == "ON_SUBSCRIPTION_CANCELED" => (SubscriptionStatus::Cancelled, t.to_owned()),
        None => (SubscriptionStatus::Active, t.to_owned()),
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
