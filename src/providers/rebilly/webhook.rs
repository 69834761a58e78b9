//! Rebilly webhook bodies (the seven request bodies of Rebilly's `#/webhooks`) → canonical
//! events. The mapping is the specification header of `mod.rs`; [`DECISIONS`] is its event
//! table in code, checked against Rebilly's definitions by the tests.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::canonical::{
    AttemptStatus, BillingAttempt, CanonicalEvent, Refund, RefundStatus, SubscriptionChange,
    SubscriptionStatus,
};
use crate::money::{DecimalText, Money};
use crate::providers::support::{
    Id, currency_code, first_id, missing, opt_time, parse_payload, parse_time, text,
    unknown_provider_value,
};
use crate::providers::{NormalizeError, Normalized};

/// The `provider` label of the unknown-value counter.
const PROVIDER: &str = "rebilly";

/// What an event type becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    /// A billing attempt of the embedded `transaction` when it is a `sale` or `capture`
    /// (any other transaction type is no charge, and the event is ignored).
    Attempt(Outcome),
    /// `invoice-paid`: the payment that paid the invoice.
    InvoicePaid,
    /// A subscription change from the embedded order (a one-time order is ignored).
    Subscription,
    /// Archived only, for this reason.
    Ignored(&'static str),
}

/// The attempt status an attempt event gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// From the transaction's `result` and `status`.
    FromTransaction,
    /// Failed: the event is the decline.
    Declined,
    /// The (parent) transaction was refunded in full.
    Refunded,
    /// Part of the (parent) transaction was refunded: the charge stands.
    PartiallyRefunded,
    /// The (parent) transaction was voided before it settled.
    Voided,
}

use Decision::{Attempt, Ignored, InvoicePaid, Subscription};

const NO_PAYMENT_OUTCOME: &str = "reports on a transaction without changing its outcome";
const INVOICE_DOCUMENT: &str = "the invoice document changed; no payment was made or failed";
const REFUND_PER_TRANSACTION: &str =
    "a refund is taken from the refunded transaction (transaction-refunded)";
const DUNNING_END: &str =
    "the invoice is given up; the order's own change arrives as a subscription event";
const SCHEDULED_PAUSE: &str =
    "a pause being scheduled; the order's transition arrives as subscription-paused/-resumed";
const REMINDER: &str = "a reminder to the customer; nothing changed";

/// Every event type in Rebilly's definitions (the `#/webhooks` keys and the `eventType`
/// enums of the webhook bodies) and what it becomes. A type not listed is ignored too.
pub(super) const DECISIONS: &[(&str, Decision)] = &[
    // TransactionWebhook
    ("transaction-processed", Attempt(Outcome::FromTransaction)),
    ("transaction-declined", Attempt(Outcome::Declined)),
    (
        "transaction-timeout-resolved",
        Attempt(Outcome::FromTransaction),
    ),
    (
        "offsite-payment-completed",
        Attempt(Outcome::FromTransaction),
    ),
    (
        "waiting-gateway-transaction-completed",
        Attempt(Outcome::FromTransaction),
    ),
    (
        "transaction-process-requested",
        Ignored("a request before processing; transaction-processed follows with the outcome"),
    ),
    ("transaction-reconciled", Ignored(NO_PAYMENT_OUTCOME)),
    ("transaction-discrepancy-found", Ignored(NO_PAYMENT_OUTCOME)),
    (
        "transaction-amount-discrepancy-found",
        Ignored(NO_PAYMENT_OUTCOME),
    ),
    ("risk-score-changed", Ignored(NO_PAYMENT_OUTCOME)),
    (
        "gateway-account-requested",
        Ignored("about a gateway account, not a payment"),
    ),
    (
        "autodeposit-lookup-performed",
        Ignored("a deposit lookup, not a payment outcome"),
    ),
    // TransactionWithChildWebhook
    ("transaction-refunded", Attempt(Outcome::Refunded)),
    (
        "transaction-partially-refunded",
        Attempt(Outcome::PartiallyRefunded),
    ),
    ("transaction-voided", Attempt(Outcome::Voided)),
    // InvoiceWebhook
    ("invoice-paid", InvoicePaid),
    (
        "invoice-partially-paid",
        Ignored("the payment arrives as its transaction's webhook; the invoice stays open"),
    ),
    (
        "invoice-past-due",
        Ignored(
            "the failed payment arrives as its transaction's webhook, the order's past-due as its billingStatus",
        ),
    ),
    ("invoice-created", Ignored(INVOICE_DOCUMENT)),
    ("invoice-issued", Ignored(INVOICE_DOCUMENT)),
    ("invoice-modified", Ignored(INVOICE_DOCUMENT)),
    ("invoice-reissued", Ignored(INVOICE_DOCUMENT)),
    ("invoice-tax-calculation-failed", Ignored(INVOICE_DOCUMENT)),
    ("invoice-past-due-reminder", Ignored(REMINDER)),
    ("invoice-voided", Ignored(DUNNING_END)),
    ("invoice-abandoned", Ignored(DUNNING_END)),
    ("invoice-refunded", Ignored(REFUND_PER_TRANSACTION)),
    (
        "invoice-partially-refunded",
        Ignored(REFUND_PER_TRANSACTION),
    ),
    // RenewalInvoiceIssued
    (
        "renewal-invoice-issued",
        Ignored("the renewal invoice is issued; no payment was tried yet"),
    ),
    // InvoiceAndTransaction
    (
        "renewal-invoice-payment-declined",
        Attempt(Outcome::Declined),
    ),
    (
        "renewal-invoice-payment-canceled",
        Attempt(Outcome::FromTransaction),
    ),
    // SubscriptionWebhook (plus subscription-created, which uses that body without being
    // in its enum, and the experimental orders variant of subscription-renewed)
    ("subscription-created", Subscription),
    ("subscription-activated", Subscription),
    ("subscription-reactivated", Subscription),
    ("subscription-renewed", Subscription),
    ("orders-experimental-subscription-renewed", Subscription),
    ("subscription-canceled", Subscription),
    ("subscription-churned", Subscription),
    ("subscription-modified", Subscription),
    ("subscription-items-changed", Subscription),
    ("subscription-upgraded", Subscription),
    ("subscription-downgraded", Subscription),
    ("subscription-trial-converted", Subscription),
    ("subscription-trial-ended", Subscription),
    ("subscription-trial-end-changed", Subscription),
    ("order-completed", Subscription),
    ("order-abandoned", Subscription),
    ("order-delinquency-reached", Subscription),
    ("subscription-renewal-reminder", Ignored(REMINDER)),
    ("subscription-trial-end-reminder", Ignored(REMINDER)),
    // SubscriptionAndSubscriptionPause
    ("subscription-paused", Subscription),
    ("subscription-resumed", Subscription),
    ("subscription-pause-created", Ignored(SCHEDULED_PAUSE)),
    ("subscription-pause-modified", Ignored(SCHEDULED_PAUSE)),
    ("subscription-pause-revoked", Ignored(SCHEDULED_PAUSE)),
];

/// The decision for `event_type`, `None` for a type Rebilly's definitions do not list.
pub(super) fn decision(event_type: &str) -> Option<Decision> {
    DECISIONS
        .iter()
        .find(|(t, _)| *t == event_type)
        .map(|(_, d)| *d)
}

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
    fn embedded(&self) -> Option<&Embedded> {
        self.embedded.as_ref()
    }

    fn transaction(&self) -> Option<&Transaction> {
        self.embedded()?.transaction.as_ref()
    }

    fn invoice(&self) -> Option<&Invoice> {
        self.embedded()?.invoice.as_ref()
    }

    fn subscription(&self) -> Option<&Order> {
        self.embedded()?.subscription.as_ref()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Embedded {
    transaction: Option<Transaction>,
    /// The refund or void of `transaction` (`TransactionWithChildWebhook`).
    child_transaction: Option<Transaction>,
    invoice: Option<Invoice>,
    subscription: Option<Order>,
    pause: Option<Pause>,
}

/// `#/components/schemas/Transaction`, the fields read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Transaction {
    id: Option<Id>,
    #[serde(rename = "type")]
    kind: Option<String>,
    result: Option<String>,
    status: Option<String>,
    amount: Option<DecimalText>,
    currency: Option<String>,
    #[serde(default)]
    invoice_ids: Option<Vec<Id>>,
    #[serde(default)]
    subscription_ids: Option<Vec<Id>>,
    parent_transaction_id: Option<Id>,
    processed_time: Option<String>,
    created_time: Option<String>,
    /// `{response: {code, message, originalCode, originalMessage}, ...}`, read leniently.
    gateway: Option<serde_json::Value>,
}

impl Transaction {
    fn first_invoice(&self) -> Option<&Id> {
        self.invoice_ids.as_ref()?.first()
    }

    fn first_subscription(&self) -> Option<&Id> {
        self.subscription_ids.as_ref()?.first()
    }

    fn attempted(&self) -> Option<&str> {
        self.processed_time
            .as_deref()
            .or(self.created_time.as_deref())
    }
}

/// `#/components/schemas/Invoice`, the fields read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Invoice {
    id: Option<Id>,
    subscription_id: Option<Id>,
    amount: Option<DecimalText>,
    currency: Option<String>,
    paid_time: Option<String>,
    #[serde(default)]
    transactions: Option<Vec<Transaction>>,
}

/// `#/components/schemas/SubscriptionOrOneTimeSale` (an order), the fields read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Order {
    id: Option<Id>,
    order_type: Option<String>,
    status: Option<String>,
    billing_status: Option<String>,
    currency: Option<String>,
    customer_id: Option<Id>,
    current_period_end: Option<String>,
    renewal_time: Option<String>,
    updated_time: Option<String>,
    revision: Option<i64>,
}

/// `#/components/schemas/SubscriptionPause`, the fields read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Pause {
    subscription_id: Option<Id>,
}

pub fn normalize(body: &[u8]) -> Result<Normalized, NormalizeError> {
    let p: Payload = parse_payload(body, "Rebilly")?;
    let events = match decision(&p.event_type) {
        Some(Attempt(outcome)) => attempt(&p, outcome)?,
        Some(InvoicePaid) => vec![invoice_paid(&p)?],
        Some(Subscription) => subscription(&p)?.into_iter().collect(),
        Some(Ignored(_)) | None => Vec::new(),
    };
    Ok(Normalized {
        event_type: p.event_type,
        events,
    })
}

/// `Transaction.type` (`#/components/schemas/Transaction/properties/type`).
pub(super) const TRANSACTION_TYPES: [&str; 8] = [
    "3ds-authentication",
    "authorize",
    "capture",
    "credit",
    "refund",
    "sale",
    "setup",
    "void",
];

/// Whether the transaction takes money from the customer (`sale`, `capture`); an unknown
/// type is counted and taken as no charge.
fn is_charge(tx: &Transaction, t: &str) -> Result<bool, NormalizeError> {
    let kind = text(tx.kind.as_ref())
        .ok_or_else(|| missing(t, "_embedded.transaction.type"))?
        .to_ascii_lowercase();
    if !TRANSACTION_TYPES.contains(&kind.as_str()) {
        unknown_provider_value(PROVIDER, "transaction.type", &kind);
    }
    Ok(matches!(kind.as_str(), "sale" | "capture"))
}

/// `Transaction.status`: every word of its enum and its status.
pub(super) const TRANSACTION_STATUSES: [(&str, AttemptStatus); 15] = {
    use AttemptStatus::*;
    [
        ("completed", Succeeded),
        ("partially-refunded", Succeeded),
        ("waiting-refund", Succeeded),
        ("disputed", Succeeded),
        ("pending", Pending),
        ("offsite", Pending),
        ("sending", Pending),
        ("waiting-approval", Pending),
        ("waiting-capture", Pending),
        ("waiting-gateway", Pending),
        ("conn-error", Failed),
        ("timeout", Failed),
        ("never-sent", Failed),
        ("voided", Failed),
        ("refunded", Refunded),
    ]
};

/// `Transaction.result`: every word of its enum and its status.
pub(super) const TRANSACTION_RESULTS: [(&str, AttemptStatus); 5] = {
    use AttemptStatus::*;
    [
        ("approved", Succeeded),
        ("declined", Failed),
        ("abandoned", Failed),
        ("canceled", Failed),
        ("unknown", Pending),
    ]
};

fn lookup<T: Copy, const N: usize>(table: &[(&str, T); N], word: &str) -> Option<T> {
    let word = word.to_ascii_lowercase();
    table.iter().find(|(w, _)| *w == word).map(|(_, v)| *v)
}

/// Canonical status of a transaction and the provider word kept beside it.
fn transaction_status(
    tx: &Transaction,
    t: &str,
) -> Result<(AttemptStatus, String), NormalizeError> {
    use AttemptStatus::*;
    let status = text(tx.status.as_ref()).map(|w| {
        let known = lookup(&TRANSACTION_STATUSES, &w);
        if known.is_none() {
            unknown_provider_value(PROVIDER, "transaction.status", &w);
        }
        (w, known)
    });
    let result = text(tx.result.as_ref()).map(|w| {
        let known = lookup(&TRANSACTION_RESULTS, &w);
        if known.is_none() {
            unknown_provider_value(PROVIDER, "transaction.result", &w);
        }
        (w, known)
    });
    Ok(match (status, result) {
        // The status says what happened after the result: refunded or voided.
        (Some((word, Some(s @ (Refunded | Failed)))), _) if s == Refunded || is_void(&word) => {
            (s, word)
        }
        // Approved, and money was taken even if part of it went back or is disputed.
        (Some((word, Some(Succeeded))), Some((_, Some(Succeeded))))
            if !word.eq_ignore_ascii_case("completed") =>
        {
            (Succeeded, word)
        }
        (_, Some((word, Some(status)))) => (status, word),
        // An unknown result word: nothing is known yet.
        (_, Some((word, None))) => (Pending, word),
        (Some((word, Some(status))), None) => (status, word),
        (Some((word, None)), None) => (Pending, word),
        (None, None) => return Err(missing(t, "transaction result or status")),
    })
}

fn is_void(word: &str) -> bool {
    word.eq_ignore_ascii_case("voided")
}

/// An attempt event: the embedded transaction when it is a charge, with the refund or
/// void of it the event carries (`childTransaction`); a refund, void or credit transaction
/// of a parent is that parent's refund.
fn attempt(p: &Payload, outcome: Outcome) -> Result<Vec<CanonicalEvent>, NormalizeError> {
    let t = p.event_type.as_str();
    let tx = p
        .transaction()
        .ok_or_else(|| missing(t, "_embedded.transaction"))?;
    if !is_charge(tx, t)? {
        return Ok(refund(tx, None, t)?.into_iter().collect());
    }
    let child = match p.embedded().and_then(|e| e.child_transaction.as_ref()) {
        Some(child) => refund(
            child,
            first_id([tx.id.as_ref(), p.transaction_id.as_ref()]),
            t,
        )?,
        None => None,
    };
    Ok(charge(p, tx, outcome)?.into_iter().chain(child).collect())
}

/// `Transaction.type`s that give money back from a parent transaction.
pub(super) const REFUND_TYPES: [&str; 3] = ["refund", "void", "credit"];

/// A `refund`, `void` or `credit` transaction of a parent charge (`parentTransactionId`, or
/// `parent` when the event names it) as that charge's refund: its own id and amount,
/// status from its result (approved → succeeded; declined, abandoned, canceled → failed;
/// else pending). Any other type, or one without a parent (a credit paid out on its
/// own), is no refund of a payment: `None`.
fn refund(
    tx: &Transaction,
    parent: Option<String>,
    t: &str,
) -> Result<Option<CanonicalEvent>, NormalizeError> {
    let kind = text(tx.kind.as_ref()).map(|k| k.to_ascii_lowercase());
    let Some(kind) = kind.filter(|k| REFUND_TYPES.contains(&k.as_str())) else {
        return Ok(None);
    };
    let Some(attempt_id) = first_id([tx.parent_transaction_id.as_ref()]).or(parent) else {
        return Ok(None);
    };
    let refund_id =
        first_id([tx.id.as_ref()]).ok_or_else(|| missing(t, "refund transaction id"))?;
    let amount = tx
        .amount
        .as_ref()
        .ok_or_else(|| missing(t, "refund transaction amount"))?;
    let (status, _) = transaction_status(tx, t)?;
    let status = match status {
        AttemptStatus::Succeeded | AttemptStatus::Refunded => RefundStatus::Succeeded,
        AttemptStatus::Failed | AttemptStatus::Skipped => RefundStatus::Failed,
        AttemptStatus::Pending | AttemptStatus::RequiresAction => RefundStatus::Pending,
    };
    Ok(Some(CanonicalEvent::Refund(Refund {
        refund_id,
        attempt_id: Some(attempt_id),
        payment_ref: None,
        subscription_id: tx.first_subscription().and_then(|id| first_id([Some(id)])),
        cycle_id: tx.first_invoice().and_then(|id| first_id([Some(id)])),
        status,
        provider_status: kind,
        amount: money(amount, tx.currency.as_ref(), t)?,
        refunded_at: opt_time(tx.attempted(), "refund transaction processedTime")?,
    })))
}

/// The billing attempt of a charge transaction.
fn charge(
    p: &Payload,
    tx: &Transaction,
    outcome: Outcome,
) -> Result<Option<CanonicalEvent>, NormalizeError> {
    let t = p.event_type.as_str();
    let attempt_id = first_id([tx.id.as_ref(), p.transaction_id.as_ref()])
        .ok_or_else(|| missing(t, "transactionId"))?;
    let (status, provider_status) = match outcome {
        Outcome::FromTransaction => transaction_status(tx, t)?,
        Outcome::Declined => {
            let word = text(tx.result.as_ref()).or(text(tx.status.as_ref()));
            (AttemptStatus::Failed, word.unwrap_or_else(|| t.to_owned()))
        }
        Outcome::Refunded => (AttemptStatus::Refunded, "refunded".to_owned()),
        Outcome::PartiallyRefunded => (AttemptStatus::Succeeded, "partially-refunded".to_owned()),
        Outcome::Voided => (AttemptStatus::Failed, "voided".to_owned()),
    };
    let invoice = p.invoice();
    let amount = match (&tx.amount, invoice.and_then(|i| i.amount.as_ref())) {
        (Some(amount), _) => Some(money(amount, tx.currency.as_ref(), t)?),
        (None, Some(amount)) => Some(money(amount, invoice.and_then(|i| i.currency.as_ref()), t)?),
        (None, None) => None,
    };
    // The gateway's answer explains a decline; a voided charge's answer is its approval.
    let declined = status == AttemptStatus::Failed && !is_void(&provider_status);
    let (error_code, error_message) = if declined {
        gateway_answer(tx)
    } else {
        (None, None)
    };
    Ok(Some(CanonicalEvent::BillingAttempt(BillingAttempt {
        attempt_id,
        subscription_id: first_id([
            invoice.and_then(|i| i.subscription_id.as_ref()),
            p.subscription_id.as_ref(),
            tx.first_subscription(),
        ]),
        cycle_id: first_id([
            p.invoice_id.as_ref(),
            invoice.and_then(|i| i.id.as_ref()),
            tx.first_invoice(),
        ]),
        status,
        provider_status,
        amount,
        error_code,
        error_message,
        attempted_at: opt_time(tx.attempted(), "transaction processedTime")?,
        next_attempt_at: None,
        attempt_count: None,
        idempotency_key: None,
    })))
}

/// `invoice-paid`: the last approved sale or capture in the invoice's `transactions` (the
/// same attempt its transaction webhook reports), else the invoice itself.
fn invoice_paid(p: &Payload) -> Result<CanonicalEvent, NormalizeError> {
    let t = p.event_type.as_str();
    let invoice = p.invoice();
    let invoice_id = first_id([p.invoice_id.as_ref(), invoice.and_then(|i| i.id.as_ref())])
        .ok_or_else(|| missing(t, "invoiceId"))?;
    let paid_by = invoice.and_then(|i| last_approved_charge(i.transactions.as_deref()?));
    let invoice_amount = |invoice: Option<&Invoice>| match invoice {
        Some(Invoice {
            amount: Some(amount),
            currency,
            ..
        }) => money(amount, currency.as_ref(), t).map(Some),
        _ => Ok(None),
    };
    let subscription_id = first_id([
        invoice.and_then(|i| i.subscription_id.as_ref()),
        p.subscription_id.as_ref(),
        paid_by.as_ref().and_then(|(_, tx)| tx.first_subscription()),
    ]);
    let (attempt_id, provider_status, amount, attempted) = match paid_by {
        Some((id, tx)) => {
            let amount = match &tx.amount {
                Some(amount) => Some(money(amount, tx.currency.as_ref(), t)?),
                None => invoice_amount(invoice)?,
            };
            let word = text(tx.result.as_ref()).unwrap_or_else(|| t.to_owned());
            let attempted = tx
                .attempted()
                .or(invoice.and_then(|i| i.paid_time.as_deref()));
            (id, word, amount, attempted)
        }
        None => (
            format!("invoice-paid:{invoice_id}"),
            t.to_owned(),
            invoice_amount(invoice)?,
            invoice.and_then(|i| i.paid_time.as_deref()),
        ),
    };
    Ok(CanonicalEvent::BillingAttempt(BillingAttempt {
        attempt_id,
        subscription_id,
        cycle_id: Some(invoice_id),
        status: AttemptStatus::Succeeded,
        provider_status,
        amount,
        error_code: None,
        error_message: None,
        attempted_at: opt_time(attempted, "invoice paidTime")?,
        next_attempt_at: None,
        attempt_count: None,
        idempotency_key: None,
    }))
}

/// The approved `sale`/`capture` with the latest `processedTime` (the later in the list on
/// a tie or without times), with its id.
fn last_approved_charge(transactions: &[Transaction]) -> Option<(String, &Transaction)> {
    transactions
        .iter()
        .enumerate()
        .filter(|(_, tx)| {
            let word = |w: &Option<String>| text(w.as_ref()).map(|w| w.to_ascii_lowercase());
            matches!(word(&tx.kind).as_deref(), Some("sale" | "capture"))
                && word(&tx.result).as_deref() == Some("approved")
        })
        .filter_map(|(i, tx)| Some((first_id([tx.id.as_ref()])?, i, tx)))
        .max_by_key(|(_, i, tx)| {
            let at: Option<DateTime<Utc>> = tx
                .processed_time
                .as_deref()
                .and_then(|s| parse_time(s, "processedTime").ok());
            (at, *i)
        })
        .map(|(id, _, tx)| (id, tx))
}

fn money(
    amount: &DecimalText,
    currency: Option<&String>,
    t: &str,
) -> Result<Money, NormalizeError> {
    let currency = text(currency).ok_or_else(|| missing(t, "currency beside the amount"))?;
    Ok(amount.to_money(&currency)?)
}

/// `gateway.response.code` / `.message`, each falling back to `originalCode` /
/// `originalMessage`.
fn gateway_answer(tx: &Transaction) -> (Option<String>, Option<String>) {
    let field = |name: &str| match tx
        .gateway
        .as_ref()
        .and_then(|g| g.pointer(&format!("/response/{name}")))
    {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    (
        field("code").or_else(|| field("originalCode")),
        field("message").or_else(|| field("originalMessage")),
    )
}

/// `Subscription.status` (`#/components/schemas/Subscription/properties/status`): every
/// word of its enum and its status.
pub(super) const ORDER_STATUSES: [(&str, SubscriptionStatus); 9] = {
    use SubscriptionStatus::*;
    [
        ("pending", Pending),
        ("active", Active),
        ("paused", Paused),
        ("canceled", Cancelled),
        ("churned", Cancelled),
        ("abandoned", Cancelled),
        ("voided", Cancelled),
        ("completed", Expired),
        ("trial-ended", Expired),
    ]
};

/// `Subscription.billingStatus`: every word of its enum.
pub(super) const BILLING_STATUSES: [&str; 10] = [
    "draft",
    "unpaid",
    "past-due",
    "abandoned",
    "paid",
    "voided",
    "refunded",
    "disputed",
    "partially-refunded",
    "partially-paid",
];

/// The status an order event names, for a body without the order's `status`.
fn implied_status(t: &str) -> Option<SubscriptionStatus> {
    use SubscriptionStatus::*;
    Some(match t {
        "subscription-canceled" | "subscription-churned" | "order-abandoned" => Cancelled,
        "subscription-paused" => Paused,
        "subscription-renewed"
        | "orders-experimental-subscription-renewed"
        | "subscription-resumed"
        | "subscription-activated"
        | "subscription-reactivated"
        | "subscription-trial-converted" => Active,
        "order-completed" | "subscription-trial-ended" => Expired,
        _ => return None,
    })
}

/// An order event: the embedded order's state, when it is a subscription order.
fn subscription(p: &Payload) -> Result<Option<CanonicalEvent>, NormalizeError> {
    use SubscriptionStatus::*;
    let t = p.event_type.as_str();
    let order = p.subscription();
    match order.and_then(|o| text(o.order_type.as_ref())).as_deref() {
        None | Some("subscription-order") => {}
        Some("one-time-order") => return Ok(None),
        Some(other) => {
            unknown_provider_value(PROVIDER, "subscription.orderType", other);
            return Ok(None);
        }
    }
    let pause = p.embedded().and_then(|e| e.pause.as_ref());
    let subscription_id = first_id([
        order.and_then(|o| o.id.as_ref()),
        p.subscription_id.as_ref(),
        pause.and_then(|p| p.subscription_id.as_ref()),
    ])
    .ok_or_else(|| missing(t, "subscriptionId"))?;
    let billing = order.and_then(|o| text(o.billing_status.as_ref()));
    if let Some(word) = &billing
        && !BILLING_STATUSES.contains(&word.to_ascii_lowercase().as_str())
    {
        unknown_provider_value(PROVIDER, "subscription.billingStatus", word);
    }
    let (status, provider_status) = match order.and_then(|o| text(o.status.as_ref())) {
        Some(word) => match lookup(&ORDER_STATUSES, &word) {
            Some(Active)
                if billing
                    .as_deref()
                    .is_some_and(|b| b.eq_ignore_ascii_case("past-due")) =>
            {
                (PastDue, "past-due".to_owned())
            }
            Some(status) => (status, word),
            None => {
                // Not knowing the state, change nothing.
                unknown_provider_value(PROVIDER, "subscription.status", &word);
                return Ok(None);
            }
        },
        None => match implied_status(t) {
            Some(status) => (status, t.to_owned()),
            None => return Err(missing(t, "_embedded.subscription.status")),
        },
    };
    let currency = order
        .and_then(|o| text(o.currency.as_ref()))
        .map(|c| currency_code(&c, "subscription.currency"))
        .transpose()?;
    let period_end = order.and_then(|o| {
        o.current_period_end
            .as_deref()
            .or(o.renewal_time.as_deref())
    });
    Ok(Some(CanonicalEvent::Subscription(SubscriptionChange {
        subscription_id,
        status,
        provider_status,
        currency,
        customer_id: first_id([order.and_then(|o| o.customer_id.as_ref())]),
        current_period_end: opt_time(period_end, "currentPeriodEnd")?,
        updated_at: opt_time(order.and_then(|o| o.updated_time.as_deref()), "updatedTime")?,
        version: order.and_then(|o| o.revision),
    })))
}

#[cfg(test)]
pub(super) mod definitions;
/// The shared OpenAPI tool, as `definitions.rs` names it.
#[cfg(test)]
use crate::providers::testing::schema;
#[cfg(test)]
mod tests;
