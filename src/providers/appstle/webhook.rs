//! Appstle's webhook wire types and their normalization (the mapping is in `mod.rs`).

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::canonical::{
    AttemptStatus, BillingAttempt, CanonicalEvent, SubscriptionChange, SubscriptionStatus,
};
use crate::money::{DecimalText, Money};
use crate::providers::support::{
    Id, first_id, missing, opt_time, parse_opt_raw, parse_payload, parse_raw, text,
};
use crate::providers::{NormalizeError, Normalized};

/// Appstle's billing-attempt status word (23 enum values plus the prose words `FAILED`,
/// `PROCESSING`, `SCHEDULED`), case-insensitive; `None` for an unknown word.
///
/// `SOCIAL_CONNECTION_NULL` (the shop's Shopify connection is missing, so Appstle could not
/// call Shopify) is `skipped`: no charge was tried, and the customer was not declined.
pub(super) fn attempt_status(word: &str) -> Option<AttemptStatus> {
    use AttemptStatus::*;
    Some(match word.trim().to_ascii_uppercase().as_str() {
        "QUEUED"
        | "REQUESTING"
        | "PROGRESS"
        | "IMMEDIATE_TRIGGERED"
        | "PENDING_CONSOLIDATION"
        | "PROCESSING"
        | "SCHEDULED" => Pending,
        "SECURITY_CHALLENGE" => RequiresAction,
        "SUCCESS" => Succeeded,
        "FAILURE" | "SHOPIFY_EXCEPTION" | "FAILED" => Failed,
        "REFUNDED" => Refunded,
        "SKIPPED"
        | "SKIPPED_DUNNING_MGMT"
        | "SKIPPED_INVENTORY_MGMT"
        | "SKIPPED_DEMO_SHOP"
        | "SKIPPED_SHOP_INFO_NOT_FOUND"
        | "SKIPPED_BILLING_DATE_STALE"
        | "SKIPPED_DUNNING_NOT_CONFIGURED"
        | "CONTRACT_CANCELLED"
        | "CONTRACT_ENDED"
        | "CONTRACT_PAUSED"
        | "CONTRACT_PAUSED_MAX_CYCLES"
        | "AUTO_CHARGE_DISABLED"
        | "SOCIAL_CONNECTION_NULL" => Skipped,
        _ => return None,
    })
}

/// A contract status word, case-insensitive.
fn contract_status(word: &str) -> Option<SubscriptionStatus> {
    use SubscriptionStatus::*;
    Some(match word.trim().to_ascii_uppercase().as_str() {
        "ACTIVE" => Active,
        "PAUSED" => Paused,
        "CANCELLED" | "CANCELED" => Cancelled,
        "EXPIRED" => Expired,
        "FAILED" => Failed,
        _ => return None,
    })
}

#[derive(Deserialize)]
struct Payload {
    #[serde(rename = "type")]
    event_type: String,
    data: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Attempt {
    id: Option<Id>,
    contract_id: Option<Id>,
    status: Option<String>,
    billing_date: Option<String>,
    attempt_time: Option<String>,
    attempt_count: Option<i64>,
    order_amount: Option<DecimalText>,
    order_amount_contract_currency: Option<Box<RawValue>>,
    currency: Option<String>,
    currency_code: Option<String>,
    billing_attempt_response_message: Option<String>,
}

/// `orderAmountContractCurrency` when it is an object naming its currency.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContractAmount {
    amount: Option<DecimalText>,
    currency_code: Option<String>,
    currency: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Contract {
    id: Option<Id>,
    subscription_contract_id: Option<Id>,
    status: Option<String>,
    currency_code: Option<String>,
    currency: Option<String>,
    customer_id: Option<Id>,
    next_billing_date: Option<String>,
    updated_at: Option<String>,
    last_modified_date: Option<String>,
}

fn billing_attempt(
    event_type: &str,
    data: Option<&RawValue>,
) -> Result<BillingAttempt, NormalizeError> {
    let a: Attempt = parse_raw(data, event_type)?;
    let attempt_id = first_id([a.id.as_ref()]).ok_or_else(|| missing(event_type, "data.id"))?;
    let word = text(a.status.as_ref()).ok_or_else(|| missing(event_type, "data.status"))?;
    let status = attempt_status(&word).ok_or_else(|| {
        NormalizeError::Malformed(format!("{event_type}: unknown Appstle status {word:?}"))
    })?;
    let subscription_id = first_id([a.contract_id.as_ref()]).map(contract_number);
    let billing_date = text(a.billing_date.as_ref());
    opt_time(billing_date.as_deref(), "data.billingDate")?;
    let cycle_id = match (&subscription_id, &billing_date) {
        (Some(c), Some(d)) => Some(format!("{c}@{d}")),
        _ => None,
    };
    let contract_amount = match a.order_amount_contract_currency.as_deref() {
        Some(raw) if raw.get().trim_start().starts_with('{') => {
            parse_opt_raw::<ContractAmount>(Some(raw), "data.orderAmountContractCurrency")?
        }
        _ => None,
    };
    let contract_money = contract_amount.and_then(|c| {
        let code = text(c.currency_code.as_ref()).or(text(c.currency.as_ref()))?;
        Some((c.amount?, code))
    });
    let currency = text(a.currency.as_ref()).or(text(a.currency_code.as_ref()));
    let amount = match (contract_money, a.order_amount, currency) {
        (Some((amount, code)), _, _) => Some(amount.to_money(&code)?),
        (None, Some(amount), Some(code)) => Some(Money::from_decimal(&amount.0, &code)?),
        _ => None,
    };
    let (error_code, error_message) =
        response_errors(a.billing_attempt_response_message.as_deref());
    Ok(BillingAttempt {
        attempt_id,
        subscription_id,
        cycle_id,
        status,
        provider_status: word,
        amount,
        error_code,
        error_message,
        attempted_at: opt_time(a.attempt_time.as_deref(), "data.attemptTime")?,
        next_attempt_at: None,
        attempt_count: crate::providers::support::count(a.attempt_count, "data.attemptCount")?,
        idempotency_key: None,
    })
}

/// `billingAttemptResponseMessage`: Shopify's body as a JSON string, or plain text.
fn response_errors(message: Option<&str>) -> (Option<String>, Option<String>) {
    let Some(message) = message.map(str::trim).filter(|m| !m.is_empty()) else {
        return (None, None);
    };
    match serde_json::from_str::<serde_json::Value>(message) {
        Ok(serde_json::Value::Object(body)) => {
            let field = |name: &str| match body.get(name) {
                Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
                Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            (field("error_code"), field("error_message"))
        }
        _ => (None, Some(message.to_owned())),
    }
}

/// A contract id as Appstle's numeric `contractId`: a Shopify gid
/// (`gid://shopify/SubscriptionContract/N`) is reduced to `N`, so attempts and contract
/// events name the same contract the same way.
fn contract_number(id: String) -> String {
    match id.rsplit_once('/') {
        Some((prefix, tail)) if prefix.starts_with("gid://") => tail.to_owned(),
        _ => id,
    }
}

fn contract_change(
    event_type: &str,
    data: Option<&RawValue>,
) -> Result<SubscriptionChange, NormalizeError> {
    let c: Contract = parse_raw(data, event_type)?;
    let subscription_id = first_id([c.subscription_contract_id.as_ref(), c.id.as_ref()])
        .map(contract_number)
        .ok_or_else(|| missing(event_type, "data.subscriptionContractId or data.id"))?;
    let (status, provider_status) = match text(c.status.as_ref()) {
        Some(word) => {
            let status = contract_status(&word).ok_or_else(|| {
                NormalizeError::Malformed(format!("{event_type}: unknown contract status {word:?}"))
            })?;
            (status, word)
        }
        None => {
            let implied = match event_type {
                "subscription.activated" => SubscriptionStatus::Active,
                "subscription.paused" => SubscriptionStatus::Paused,
                "subscription.cancelled" => SubscriptionStatus::Cancelled,
                _ => return Err(missing(event_type, "data.status")),
            };
            (implied, event_type.to_owned())
        }
    };
    let updated = c.updated_at.as_deref().or(c.last_modified_date.as_deref());
    Ok(SubscriptionChange {
        subscription_id,
        status,
        provider_status,
        currency: text(c.currency_code.as_ref())
            .or(text(c.currency.as_ref()))
            .map(|code| crate::money::exponent(&code).map(|(code, _)| code))
            .transpose()?,
        customer_id: first_id([c.customer_id.as_ref()]),
        current_period_end: opt_time(c.next_billing_date.as_deref(), "data.nextBillingDate")?,
        updated_at: opt_time(updated, "data.updatedAt")?,
        version: None,
    })
}

pub(super) fn normalize(body: &[u8]) -> Result<Normalized, NormalizeError> {
    let payload: Payload = parse_payload(body, "Appstle")?;
    let t = payload.event_type.as_str();
    let event = match t {
        "subscription.billing-success"
        | "subscription.billing-failure"
        | "subscription.billing-skipped" => {
            CanonicalEvent::BillingAttempt(billing_attempt(t, payload.data.as_deref())?)
        }
        "subscription.created"
        | "subscription.updated"
        | "subscription.activated"
        | "subscription.paused"
        | "subscription.cancelled" => {
            CanonicalEvent::Subscription(contract_change(t, payload.data.as_deref())?)
        }
        _ => return Ok(Normalized::ignored(payload.event_type)),
    };
    Ok(Normalized {
        event_type: payload.event_type,
        events: vec![event],
    })
}

#[cfg(test)]
mod tests;
