//! Shopify webhook (topic + body) → canonical events. The mapping is documented in
//! `mod.rs`.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::attempt::enum_case;
use crate::canonical::{
    AttemptStatus, BillingAttempt, CanonicalEvent, SubscriptionChange, SubscriptionStatus,
};
use crate::envelope::Envelope;
use crate::money::exponent;
use crate::providers::support::malformed;
use crate::providers::support::{parse_payload, parse_time};
use crate::providers::{NormalizeError, Normalized};

const TOPIC: &str = "x-shopify-topic";
const TRIGGERED_AT: &str = "x-shopify-triggered-at";

/// A numeric id, as a JSON number or a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum Id {
    Number(u64),
    Text(String),
}

impl Id {
    fn text(&self) -> String {
        match self {
            Id::Number(n) => n.to_string(),
            Id::Text(s) => s.clone(),
        }
    }
}

#[derive(Deserialize)]
struct Attempt {
    id: Option<Id>,
    admin_graphql_api_id: Option<String>,
    subscription_contract_id: Option<Id>,
    admin_graphql_api_subscription_contract_id: Option<String>,
    /// Typed a string; a number is read as its text.
    idempotency_key: Option<Id>,
    error_code: Option<String>,
    error_message: Option<String>,
}

#[derive(Deserialize)]
struct Contract {
    id: Option<Id>,
    admin_graphql_api_id: Option<String>,
    status: Option<String>,
    currency_code: Option<String>,
    revision_id: Option<Id>,
    customer_id: Option<Id>,
    admin_graphql_api_customer_id: Option<String>,
    updated_at: Option<String>,
}

#[derive(Deserialize)]
struct Skip {
    subscription_contract_id: Option<Id>,
    admin_graphql_api_subscription_contract_id: Option<String>,
    cycle_index: Option<u64>,
    billing_attempt_expected_date: Option<String>,
    skipped: Option<bool>,
}

/// The admin GraphQL id of an object: the payload's `admin_graphql_api_*` gid, else the
/// gid Shopify would give its numeric id (`gid://shopify/{kind}/{id}`), so every topic names
/// a contract the same way.
fn gid(gid: Option<String>, id: Option<Id>, kind: &str) -> Option<String> {
    gid.filter(|g| !g.trim().is_empty()).or_else(|| {
        let id = id?.text();
        (!id.trim().is_empty()).then(|| format!("gid://shopify/{kind}/{id}"))
    })
}

fn kept<'a>(envelope: &'a Envelope, name: &str) -> Option<&'a str> {
    envelope
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

pub(super) fn normalize(envelope: &Envelope) -> Result<Normalized, NormalizeError> {
    let body = &envelope.body;
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map_err(|e| malformed(format!("not a Shopify JSON payload: {e}")))?;
    let topic = kept(envelope, TOPIC)
        .ok_or_else(|| malformed("no x-shopify-topic kept"))?
        .to_owned();
    let triggered_at = kept(envelope, TRIGGERED_AT)
        .map(|t| parse_time(t, TRIGGERED_AT))
        .transpose()?;
    let event = match topic.split_once('/') {
        Some(("subscription_billing_attempts", action)) => {
            let (status, word) = match action {
                "success" => (AttemptStatus::Succeeded, "success"),
                "failure" => (AttemptStatus::Failed, "failure"),
                "challenged" => (AttemptStatus::RequiresAction, "challenged"),
                _ => return Ok(Normalized::ignored(topic)),
            };
            let attempt: Attempt = parse_payload(body, "Shopify billing attempt")?;
            agrees_with_topic(&attempt, status, &topic)?;
            billing_attempt(attempt, status, word, triggered_at)?
        }
        Some(("subscription_contracts", action)) => {
            let fallback = match action {
                "create" | "update" => None,
                "activate" => Some("active"),
                "pause" => Some("paused"),
                "cancel" => Some("cancelled"),
                "expire" => Some("expired"),
                "fail" => Some("failed"),
                _ => return Ok(Normalized::ignored(topic)),
            };
            let contract: Contract = parse_payload(body, "Shopify subscription contract")?;
            contract_change(contract, &topic, fallback, triggered_at)?
        }
        Some(("subscription_billing_cycles", "skip")) => {
            let skip: Skip = parse_payload(body, "Shopify billing cycle skip")?;
            skipped_cycle(skip, triggered_at)?
        }
        _ => return Ok(Normalized::ignored(topic)),
    };
    Ok(Normalized {
        event_type: topic,
        events: vec![event],
    })
}

/// `X-Shopify-Topic` is not signed (the HMAC covers the body only), so the signed body must
/// agree with the status the topic claims: a success never carries an error, and a failure
/// always does (Shopify's failure payload types `error_code` and `error_message` as
/// required strings). Otherwise a captured failure re-posted under the success topic
/// would book a payment that never happened. `challenged` has no published payload type,
/// so nothing is required of it. A body that contradicts its topic is dead-lettered.
fn agrees_with_topic(
    attempt: &Attempt,
    status: AttemptStatus,
    topic: &str,
) -> Result<(), NormalizeError> {
    let present = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.trim().is_empty());
    let has_error = present(&attempt.error_code) || present(&attempt.error_message);
    let contradiction = match status {
        AttemptStatus::Succeeded if has_error => "carries error_code/error_message",
        AttemptStatus::Failed if !has_error => "carries no error_code or error_message",
        _ => return Ok(()),
    };
    Err(malformed(format!(
        "the signed body contradicts its unsigned topic {topic}: it {contradiction}"
    )))
}

fn billing_attempt(
    attempt: Attempt,
    status: AttemptStatus,
    word: &str,
    triggered_at: Option<DateTime<Utc>>,
) -> Result<CanonicalEvent, NormalizeError> {
    let attempt_id = gid(
        attempt.admin_graphql_api_id,
        attempt.id,
        "SubscriptionBillingAttempt",
    )
    .ok_or_else(|| malformed("billing attempt has no id"))?;
    let contract = gid(
        attempt.admin_graphql_api_subscription_contract_id,
        attempt.subscription_contract_id,
        "SubscriptionContract",
    )
    .ok_or_else(|| malformed(format!("billing attempt {attempt_id} has no contract id")))?;
    Ok(CanonicalEvent::BillingAttempt(BillingAttempt {
        attempt_id,
        subscription_id: Some(contract),
        cycle_id: None,
        status,
        provider_status: word.to_owned(),
        amount: None,
        error_code: attempt.error_code.as_deref().map(enum_case),
        error_message: attempt.error_message,
        attempted_at: triggered_at,
        next_attempt_at: None,
        attempt_count: None,
        idempotency_key: (attempt.idempotency_key)
            .map(|k| k.text())
            .filter(|k| !k.is_empty()),
    }))
}

fn contract_change(
    contract: Contract,
    topic: &str,
    fallback: Option<&str>,
    triggered_at: Option<DateTime<Utc>>,
) -> Result<CanonicalEvent, NormalizeError> {
    let id = gid(
        contract.admin_graphql_api_id,
        contract.id,
        "SubscriptionContract",
    )
    .ok_or_else(|| malformed(format!("{topic}: contract has no id")))?;
    let provider_status = contract
        .status
        .or_else(|| fallback.map(str::to_owned))
        .ok_or_else(|| malformed(format!("{topic}: contract {id} has no status")))?;
    let status = match provider_status.to_ascii_lowercase().as_str() {
        "active" => SubscriptionStatus::Active,
        "paused" => SubscriptionStatus::Paused,
        "cancelled" => SubscriptionStatus::Cancelled,
        // `stale`: "expired due to inactivity" (deprecated since 2024-01).
        "expired" | "stale" => SubscriptionStatus::Expired,
        "failed" => SubscriptionStatus::Failed,
        other => {
            return Err(malformed(format!(
                "{topic}: contract {id}: unknown status {other:?}"
            )));
        }
    };
    let currency = contract
        .currency_code
        .map(|c| exponent(&c).map(|(code, _)| code))
        .transpose()
        .map_err(|e| malformed(format!("currency_code: {e}")))?;
    let version = contract
        .revision_id
        .map(|r| {
            let text = r.text();
            text.parse::<i64>()
                .map_err(|_| malformed(format!("revision_id: {text:?} is not an integer")))
        })
        .transpose()?;
    let updated_at = match contract.updated_at {
        Some(t) => Some(parse_time(&t, "updated_at")?),
        None => triggered_at,
    };
    Ok(CanonicalEvent::Subscription(SubscriptionChange {
        subscription_id: id,
        status,
        provider_status,
        currency,
        customer_id: gid(
            contract.admin_graphql_api_customer_id,
            contract.customer_id,
            "Customer",
        ),
        current_period_end: None,
        updated_at,
        version,
    }))
}

fn skipped_cycle(
    skip: Skip,
    triggered_at: Option<DateTime<Utc>>,
) -> Result<CanonicalEvent, NormalizeError> {
    let contract = gid(
        skip.admin_graphql_api_subscription_contract_id,
        skip.subscription_contract_id,
        "SubscriptionContract",
    )
    .ok_or_else(|| malformed("skipped billing cycle has no subscription_contract_id"))?;
    let index = skip
        .cycle_index
        .ok_or_else(|| malformed(format!("skipped cycle of {contract} has no cycle_index")))?;
    if skip.skipped == Some(false) {
        return Err(malformed(format!(
            "subscription_billing_cycles/skip for cycle {index} of {contract} says skipped: false"
        )));
    }
    let attempted_at = match skip.billing_attempt_expected_date {
        Some(t) => Some(parse_time(&t, "billing_attempt_expected_date")?),
        None => triggered_at,
    };
    let cycle_id = format!("{contract}/cycles/{index}");
    Ok(CanonicalEvent::BillingAttempt(BillingAttempt {
        attempt_id: format!("{cycle_id}/skip"),
        subscription_id: Some(contract),
        cycle_id: Some(cycle_id),
        status: AttemptStatus::Skipped,
        provider_status: "skipped".to_owned(),
        amount: None,
        error_code: None,
        error_message: None,
        attempted_at,
        next_attempt_at: None,
        attempt_count: None,
        idempotency_key: None,
    }))
}

#[cfg(test)]
mod tests;
