//! Rebilly normalization: `{eventType, transactionId?, invoiceId?, subscriptionId?,
//! _embedded: {transaction?, invoice?, subscription?}}`.
//!
//! Amounts are decimals in major units (`49.95`) read exactly ([`DecimalText`]) with the
//! object's `currency`; more decimals than the currency has, an unknown currency, or an
//! amount without a currency is an error.
//!
//! Billing attempts (`attempt_id` = the transaction id, top-level `transactionId` or
//! `_embedded.transaction.id`: each retry is a new transaction; `cycle_id` = `invoiceId`,
//! else the embedded invoice's `id`, else the transaction's first `invoiceIds`;
//! `subscription_id` = the invoice's `subscriptionId`, else top-level `subscriptionId`,
//! else the transaction's first `subscriptionIds`; `amount` = the transaction's
//! `amount`/`currency`, else the invoice's; `attempted_at` = the transaction's
//! `processedTime`/`createdTime`, else the invoice's `paidTime`. Rebilly sends no retry
//! schedule or count in these payloads, so `next_attempt_at`/`attempt_count` stay `None`):
//! - `transaction-processed` → status from the transaction: `status` `refunded` → refunded;
//!   else `result` approved → succeeded, declined/abandoned/canceled → failed, unknown →
//!   pending; with no `result`, `status` completed → succeeded, pending/waiting-*/offsite/
//!   sending-to-gateway → pending, conn-error/timeout/never-sent/voided/declined → failed.
//!   Another word is an error. `provider_status` = `result`, else `status`.
//! - `transaction-declined`, `renewal-invoice-payment-declined` → failed.
//! - `invoice-paid` → succeeded; without any transaction the attempt id is
//!   `invoice-paid:{invoiceId}` (an invoice is paid once, so the id is stable).
//! - For failed attempts, `error_code` = the transaction's `declineCode`, else
//!   `gatewayResponse.code`; `error_message` = `gatewayResponse.message` (or
//!   `gatewayResponse` itself when it is a string), else `message`.
//!
//! Subscription changes (`subscription-renewed|canceled|paused|resumed`): `subscription_id`
//! = `_embedded.subscription.id`, else `subscriptionId`; status from the subscription's
//! `status` (pending → pending, active → active, paused → paused, canceled/churned/abandoned
//! → cancelled, suspended → past_due, completed/trial-ended → expired; another word is an
//! error), else from the event (renewed/resumed → active, canceled → cancelled, paused →
//! paused); `currency`, `customerId`, `renewalTime` as `current_period_end`, `updatedTime`.
//!
//! Every other type is ignored.

use serde::Deserialize;

use crate::canonical::{
    AttemptStatus, BillingAttempt, CanonicalEvent, SubscriptionChange, SubscriptionStatus,
};
use crate::money::{DecimalText, Money};
use crate::providers::support::parse_payload;
use crate::providers::support::{Id, currency_code, first_id, missing, opt_time, text};
use crate::providers::{NormalizeError, Normalized};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    event_type: String,
    transaction_id: Option<Id>,
    invoice_id: Option<Id>,
    subscription_id: Option<Id>,
    #[serde(rename = "_embedded", default)]
    embedded: Option<Embedded>,
}

impl Payload {
    fn transaction(&self) -> Option<&Transaction> {
        self.embedded.as_ref()?.transaction.as_ref()
    }

    fn invoice(&self) -> Option<&Invoice> {
        self.embedded.as_ref()?.invoice.as_ref()
    }

    fn subscription(&self) -> Option<&Subscription> {
        self.embedded.as_ref()?.subscription.as_ref()
    }
}

#[derive(Deserialize)]
struct Embedded {
    transaction: Option<Transaction>,
    invoice: Option<Invoice>,
    subscription: Option<Subscription>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Transaction {
    id: Option<Id>,
    result: Option<String>,
    status: Option<String>,
    amount: Option<DecimalText>,
    currency: Option<String>,
    #[serde(default)]
    invoice_ids: Vec<Id>,
    #[serde(default)]
    subscription_ids: Vec<Id>,
    processed_time: Option<String>,
    created_time: Option<String>,
    decline_code: Option<String>,
    gateway_response: Option<serde_json::Value>,
    message: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Invoice {
    id: Option<Id>,
    subscription_id: Option<Id>,
    amount: Option<DecimalText>,
    currency: Option<String>,
    paid_time: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Subscription {
    id: Option<Id>,
    status: Option<String>,
    currency: Option<String>,
    customer_id: Option<Id>,
    renewal_time: Option<String>,
    updated_time: Option<String>,
}

pub fn normalize(body: &[u8]) -> Result<Normalized, NormalizeError> {
    let p: Payload = parse_payload(body, "Rebilly")?;
    let t = p.event_type.as_str();
    let event = match t {
        "transaction-processed" => attempt(t, &p, None)?,
        "transaction-declined" | "renewal-invoice-payment-declined" => {
            attempt(t, &p, Some(AttemptStatus::Failed))?
        }
        "invoice-paid" => attempt(t, &p, Some(AttemptStatus::Succeeded))?,
        "subscription-renewed"
        | "subscription-canceled"
        | "subscription-paused"
        | "subscription-resumed" => CanonicalEvent::Subscription(subscription(t, &p)?),
        _ => return Ok(Normalized::ignored(p.event_type)),
    };
    Ok(Normalized {
        event_type: p.event_type,
        events: vec![event],
    })
}

/// Canonical status of a transaction, from its `result`, or its `status` when it has none.
fn transaction_status(tx: &Transaction) -> Result<(AttemptStatus, String), NormalizeError> {
    use AttemptStatus::*;
    let status = text(tx.status.as_ref()).map(|s| s.to_ascii_lowercase());
    if status.as_deref() == Some("refunded") {
        return Ok((Refunded, "refunded".to_owned()));
    }
    let unknown =
        |w: &str| NormalizeError::Malformed(format!("unknown Rebilly transaction word {w:?}"));
    if let Some(result) = text(tx.result.as_ref()) {
        let mapped = match result.to_ascii_lowercase().as_str() {
            "approved" => Succeeded,
            "declined" | "abandoned" | "canceled" => Failed,
            "unknown" => Pending,
            _ => return Err(unknown(&result)),
        };
        return Ok((mapped, result));
    }
    let status =
        status.ok_or_else(|| missing("transaction-processed", "transaction result or status"))?;
    let mapped = match status.as_str() {
        "completed" => Succeeded,
        "pending" | "offsite" | "sending-to-gateway" => Pending,
        s if s.starts_with("waiting-") => Pending,
        "conn-error" | "timeout" | "never-sent" | "voided" | "declined" => Failed,
        _ => return Err(unknown(&status)),
    };
    Ok((mapped, status))
}

fn attempt(
    t: &str,
    p: &Payload,
    fixed: Option<AttemptStatus>,
) -> Result<CanonicalEvent, NormalizeError> {
    let tx = p.transaction();
    let invoice = p.invoice();
    let invoice_id = first_id([
        p.invoice_id.as_ref(),
        invoice.and_then(|i| i.id.as_ref()),
        tx.and_then(|tx| tx.invoice_ids.first()),
    ]);
    let tx_id = first_id([p.transaction_id.as_ref(), tx.and_then(|tx| tx.id.as_ref())]);
    let attempt_id = match (tx_id, t, &invoice_id) {
        (Some(id), _, _) => id,
        (None, "invoice-paid", Some(invoice)) => format!("invoice-paid:{invoice}"),
        _ => return Err(missing(t, "transactionId")),
    };
    let (status, provider_status) = match (fixed, tx) {
        (None, Some(tx)) => transaction_status(tx)?,
        (None, None) => return Err(missing(t, "_embedded.transaction")),
        (Some(status), Some(tx)) => {
            let word = text(tx.result.as_ref()).or(text(tx.status.as_ref()));
            (status, word.unwrap_or_else(|| t.to_owned()))
        }
        (Some(status), None) => (status, t.to_owned()),
    };
    let amount = match (
        tx.and_then(|tx| tx.amount.as_ref()),
        invoice.and_then(|i| i.amount.as_ref()),
    ) {
        (Some(amount), _) => Some(money(amount, tx.and_then(|tx| tx.currency.as_ref()), t)?),
        (None, Some(amount)) => Some(money(amount, invoice.and_then(|i| i.currency.as_ref()), t)?),
        (None, None) => None,
    };
    let failed = status == AttemptStatus::Failed;
    let (error_code, error_message) = match tx {
        Some(tx) if failed => decline(tx),
        _ => (None, None),
    };
    let attempted = match tx {
        Some(tx) => tx.processed_time.as_deref().or(tx.created_time.as_deref()),
        None => invoice.and_then(|i| i.paid_time.as_deref()),
    };
    Ok(CanonicalEvent::BillingAttempt(BillingAttempt {
        attempt_id,
        subscription_id: first_id([
            invoice.and_then(|i| i.subscription_id.as_ref()),
            p.subscription_id.as_ref(),
            tx.and_then(|tx| tx.subscription_ids.first()),
        ]),
        cycle_id: invoice_id,
        status,
        provider_status,
        amount,
        error_code,
        error_message,
        attempted_at: opt_time(attempted, "transaction processedTime")?,
        next_attempt_at: None,
        attempt_count: None,
        idempotency_key: None,
    }))
}

fn money(
    amount: &DecimalText,
    currency: Option<&String>,
    t: &str,
) -> Result<Money, NormalizeError> {
    let currency = text(currency).ok_or_else(|| missing(t, "currency beside the amount"))?;
    Ok(amount.to_money(&currency)?)
}

fn decline(tx: &Transaction) -> (Option<String>, Option<String>) {
    let gateway = tx.gateway_response.as_ref();
    let field = |name: &str| match gateway.and_then(|g| g.get(name)) {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let code = text(tx.decline_code.as_ref()).or_else(|| field("code"));
    let gateway_text = match gateway {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        _ => field("message"),
    };
    (code, gateway_text.or(text(tx.message.as_ref())))
}

fn subscription(t: &str, p: &Payload) -> Result<SubscriptionChange, NormalizeError> {
    use SubscriptionStatus::*;
    let sub = p.subscription();
    let subscription_id = first_id([sub.and_then(|s| s.id.as_ref()), p.subscription_id.as_ref()])
        .ok_or_else(|| missing(t, "subscriptionId"))?;
    let (status, provider_status) = match sub.and_then(|s| text(s.status.as_ref())) {
        Some(word) => {
            let status = match word.to_ascii_lowercase().as_str() {
                "pending" => Pending,
                "active" => Active,
                "paused" => Paused,
                "canceled" | "cancelled" | "churned" | "abandoned" => Cancelled,
                "suspended" => PastDue,
                "completed" | "trial-ended" => Expired,
                _ => {
                    let reason = format!("{t}: unknown Rebilly subscription status {word:?}");
                    return Err(NormalizeError::Malformed(reason));
                }
            };
            (status, word)
        }
        None => {
            let implied = match t {
                "subscription-canceled" => Cancelled,
                "subscription-paused" => Paused,
                _ => Active,
            };
            (implied, t.to_owned())
        }
    };
    let currency = sub
        .and_then(|s| text(s.currency.as_ref()))
        .map(|c| currency_code(&c, "subscription.currency"))
        .transpose()?;
    Ok(SubscriptionChange {
        subscription_id,
        status,
        provider_status,
        currency,
        customer_id: first_id([sub.and_then(|s| s.customer_id.as_ref())]),
        current_period_end: opt_time(sub.and_then(|s| s.renewal_time.as_deref()), "renewalTime")?,
        updated_at: opt_time(sub.and_then(|s| s.updated_time.as_deref()), "updatedTime")?,
        version: None,
    })
}

#[cfg(test)]
mod tests;
