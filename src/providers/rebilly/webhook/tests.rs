//! Unit tests of the Rebilly normalizer, every body generated from (or checked against)
//! Rebilly's definitions in `tests/fixtures/rebilly/`.

use std::collections::BTreeSet;

use chrono::{TimeZone, Utc};
use serde_json::{Value, json};

use super::definitions::{SOME_TIME, Want, definitions};
use super::*;

fn run(value: &Value) -> Result<Normalized, NormalizeError> {
    normalize(&serde_json::to_vec(value).unwrap())
}

/// A body of `event_type` generated from its schema with `fields` set (each checked
/// against the schema), checked as a whole.
fn body(event_type: &str, fields: &[(String, Value)]) -> Value {
    let wanted: Vec<Want<'_>> = fields
        .iter()
        .map(|(p, v)| (p.as_str(), Some(v.clone())))
        .collect();
    let body = definitions().generate(event_type, &wanted);
    if let Err(errors) = definitions().check(event_type, &body) {
        panic!("{event_type}: {errors:?}");
    }
    body
}

/// `pairs` under the JSON pointer `prefix`.
fn at(prefix: &str, pairs: &[(&str, Value)]) -> Vec<(String, Value)> {
    pairs
        .iter()
        .map(|(p, v)| (format!("{prefix}/{p}"), v.clone()))
        .collect()
}

/// A `sale` of 49.95 USD for invoice `in_1` of subscription `sub_1`, with `result` and
/// `status`, under `prefix`.
fn sale(prefix: &str, id: &str, result: &str, status: &str) -> Vec<(String, Value)> {
    at(
        prefix,
        &[
            ("id", json!(id)),
            ("type", json!("sale")),
            ("result", json!(result)),
            ("status", json!(status)),
            ("amount", json!(49.95)),
            ("currency", json!("USD")),
            ("invoiceIds", json!(["in_1"])),
            ("subscriptionIds", json!(["sub_1"])),
            ("processedTime", json!("2019-08-24T14:15:22Z")),
            ("createdTime", json!("2019-08-24T14:15:00Z")),
            ("revision", json!(3)),
            (
                "gateway",
                json!({"response": {"code": "insufficient-funds", "message": "Insufficient funds",
                    "originalCode": "51", "originalMessage": "NSF"}}),
            ),
        ],
    )
}

/// A transaction webhook of a sale (`transactionId` = its id).
fn sale_event(event_type: &str, id: &str, result: &str, status: &str) -> Value {
    let mut fields = vec![("/transactionId".to_owned(), json!(id))];
    fields.extend(sale("/_embedded/transaction", id, result, status));
    body(event_type, &fields)
}

/// An `InvoiceAndTransaction` webhook: the sale beside its renewal invoice.
fn invoice_and_transaction(event_type: &str, result: &str) -> Value {
    let mut fields = vec![
        ("/transactionId".to_owned(), json!("txn_2")),
        ("/invoiceId".to_owned(), json!("in_1")),
    ];
    fields.extend(sale("/_embedded/transaction", "txn_2", result, "completed"));
    fields.extend(at(
        "/_embedded/invoice",
        &[
            ("id", json!("in_1")),
            ("subscriptionId", json!("sub_1")),
            ("type", json!("renewal")),
            ("status", json!("past-due")),
            ("amount", json!(49.95)),
            ("currency", json!("USD")),
        ],
    ));
    body(event_type, &fields)
}

/// An order webhook of subscription `sub_1` in `status`.
fn order_event(event_type: &str, status: &str, extra: &[(&str, Value)]) -> Value {
    let mut fields = vec![("/subscriptionId".to_owned(), json!("sub_1"))];
    fields.extend(at(
        "/_embedded/subscription",
        &[
            ("id", json!("sub_1")),
            ("orderType", json!("subscription-order")),
            ("status", json!(status)),
            ("billingStatus", json!("paid")),
            ("currency", json!("USD")),
            ("customerId", json!("cus_1")),
            ("currentPeriodEnd", json!("2019-09-24T14:15:22Z")),
            ("renewalTime", json!("2019-09-25T00:00:00Z")),
            ("updatedTime", json!("2019-08-24T14:15:22Z")),
            ("revision", json!(7)),
        ],
    ));
    fields.extend(at("/_embedded/subscription", extra));
    body(event_type, &fields)
}

fn one_attempt(n: &Normalized) -> BillingAttempt {
    match n.events.as_slice() {
        [CanonicalEvent::BillingAttempt(a)] => a.clone(),
        other => panic!("expected one attempt: {other:?}"),
    }
}

fn one_change(n: &Normalized) -> SubscriptionChange {
    match n.events.as_slice() {
        [CanonicalEvent::Subscription(c)] => c.clone(),
        other => panic!("expected one subscription change: {other:?}"),
    }
}

fn usd(minor: i64) -> Option<Money> {
    Some(Money {
        minor,
        currency: "USD".into(),
    })
}

/// Every event type the definitions name: the `#/webhooks` keys and the `eventType` enum
/// values of the webhook bodies.
fn defined_event_types() -> BTreeSet<&'static str> {
    let d = definitions();
    d.webhook_keys()
        .into_iter()
        .chain(d.event_type_enums().into_iter().map(|(_, t)| t))
        .collect()
}

#[test]
fn every_event_type_in_the_definitions_is_decided_and_the_table_has_nothing_else() {
    let defined = defined_event_types();
    assert_eq!(
        defined.len(),
        55,
        "43 webhooks + 12 types only in the enums"
    );
    for t in &defined {
        match decision(t) {
            Some(Decision::Ignored(reason)) => assert!(!reason.trim().is_empty(), "{t}"),
            Some(_) => {}
            None => panic!("{t} is in the definitions but not decided"),
        }
    }
    let decided: BTreeSet<&str> = DECISIONS.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        decided.len(),
        DECISIONS.len(),
        "an event type decided twice"
    );
    let extra: Vec<_> = decided.difference(&defined).collect();
    assert!(
        extra.is_empty(),
        "decided but not in the definitions: {extra:?}"
    );
    // A type the definitions do not know is archived as ignored.
    let n = run(&json!({"eventType": "payout-requested"})).unwrap();
    assert!(n.is_ignored());
}

/// The fields the normalizer reads, filled from the schema where a body defines them
/// (the transaction's type and the order's type set to ones that are acted on).
fn generated(event_type: &str) -> Value {
    const READS: &[&str] = &[
        "/transactionId",
        "/invoiceId",
        "/subscriptionId",
        "/subscriptionPauseId",
        "/_embedded/transaction/id",
        "/_embedded/transaction/result",
        "/_embedded/transaction/status",
        "/_embedded/transaction/amount",
        "/_embedded/transaction/currency",
        "/_embedded/transaction/invoiceIds/0",
        "/_embedded/transaction/subscriptionIds/0",
        "/_embedded/transaction/processedTime",
        "/_embedded/transaction/createdTime",
        "/_embedded/transaction/gateway/response/code",
        "/_embedded/transaction/gateway/response/message",
        "/_embedded/childTransaction/id",
        "/_embedded/invoice/id",
        "/_embedded/invoice/subscriptionId",
        "/_embedded/invoice/amount",
        "/_embedded/invoice/currency",
        "/_embedded/invoice/paidTime",
        "/_embedded/subscription/id",
        "/_embedded/subscription/status",
        "/_embedded/subscription/billingStatus",
        "/_embedded/subscription/currency",
        "/_embedded/subscription/customerId",
        "/_embedded/subscription/currentPeriodEnd",
        "/_embedded/subscription/renewalTime",
        "/_embedded/subscription/updatedTime",
        "/_embedded/subscription/revision",
        "/_embedded/pause/subscriptionId",
    ];
    let d = definitions();
    let mut wanted: Vec<Want<'_>> = READS
        .iter()
        .filter(|p| d.defines(event_type, p))
        .map(|p| (*p, None))
        .collect();
    for (pointer, value) in [
        ("/_embedded/transaction/type", json!("sale")),
        (
            "/_embedded/subscription/orderType",
            json!("subscription-order"),
        ),
    ] {
        if d.defines(event_type, pointer) {
            wanted.push((pointer, Some(value)));
        }
    }
    let body = d.generate(event_type, &wanted);
    if let Err(errors) = d.check(event_type, &body) {
        panic!("{event_type}: generated body is not as defined: {errors:?}");
    }
    body
}

#[test]
fn every_normalized_type_normalizes_a_body_generated_from_its_schema() {
    for t in defined_event_types() {
        let body = generated(t);
        let n = run(&body).unwrap_or_else(|e| panic!("{t}: {e} in {body}"));
        assert_eq!(n.event_type, t);
        match decision(t).unwrap() {
            Decision::Attempt(_) | Decision::InvoicePaid => {
                let a = one_attempt(&n);
                assert!(!a.attempt_id.is_empty(), "{t}");
                assert_eq!(a.amount, usd(0), "{t}: the schema's amount 0 in its USD");
            }
            Decision::Subscription => {
                let c = one_change(&n);
                assert_eq!(
                    (c.subscription_id.as_str(), c.status),
                    (
                        "sub_01HRF27SATGE4Z6PBJE6PD8328",
                        SubscriptionStatus::Pending
                    ),
                    "{t}: the schema's example id and first status"
                );
            }
            Decision::Ignored(_) => assert!(n.is_ignored(), "{t}"),
        }
    }
}

#[test]
fn the_vocabularies_are_exactly_the_enums_of_the_definitions() {
    let d = definitions();
    fn set(words: Vec<&str>) -> BTreeSet<&str> {
        words.into_iter().collect()
    }
    fn keys<'a, T>(table: &[(&'a str, T)]) -> Vec<&'a str> {
        table.iter().map(|(w, _)| *w).collect()
    }
    let tx = "/components/schemas/Transaction/properties";
    assert_eq!(
        set(d.enum_at(&format!("{tx}/type"))),
        set(TRANSACTION_TYPES.to_vec())
    );
    assert_eq!(
        set(d.enum_at(&format!("{tx}/status"))),
        set(keys(&TRANSACTION_STATUSES))
    );
    assert_eq!(
        set(d.enum_at(&format!("{tx}/result"))),
        set(keys(&TRANSACTION_RESULTS))
    );
    let order = "/components/schemas/Subscription/properties";
    assert_eq!(
        set(d.enum_at(&format!("{order}/status"))),
        set(keys(&ORDER_STATUSES))
    );
    assert_eq!(
        set(d.enum_at(&format!("{order}/billingStatus"))),
        set(BILLING_STATUSES.to_vec())
    );
}

#[test]
fn attempt_events_map_status_ids_amount_times_and_the_gateway_answer() {
    use AttemptStatus::*;
    let at = Some(Utc.with_ymd_and_hms(2019, 8, 24, 14, 15, 22).unwrap());
    let table = [
        ("transaction-processed", "approved", Succeeded),
        ("transaction-processed", "declined", Failed),
        ("transaction-processed", "abandoned", Failed),
        ("transaction-processed", "canceled", Failed),
        ("transaction-processed", "unknown", Pending),
        ("transaction-timeout-resolved", "approved", Succeeded),
        ("offsite-payment-completed", "approved", Succeeded),
        ("waiting-gateway-transaction-completed", "declined", Failed),
        ("transaction-declined", "declined", Failed),
    ];
    for (event, result, expected) in table {
        let a = one_attempt(&run(&sale_event(event, "txn_2", result, "completed")).unwrap());
        assert_eq!(
            (a.status, a.provider_status.as_str()),
            (expected, result),
            "{event}"
        );
        assert_eq!(a.attempt_id, "txn_2");
        assert_eq!(
            a.cycle_id.as_deref(),
            Some("in_1"),
            "the transaction's invoiceIds"
        );
        assert_eq!(a.subscription_id.as_deref(), Some("sub_1"));
        assert_eq!(a.amount, usd(4995), "49.95 USD");
        assert_eq!(a.attempted_at, at);
        assert_eq!((a.next_attempt_at, a.attempt_count), (None, None));
        if expected == Failed {
            assert_eq!(
                (a.error_code.as_deref(), a.error_message.as_deref()),
                (Some("insufficient-funds"), Some("Insufficient funds"))
            );
        } else {
            assert_eq!((a.error_code, a.error_message), (None, None));
        }
    }
    for (event, result, expected) in [
        ("renewal-invoice-payment-declined", "declined", Failed),
        ("renewal-invoice-payment-canceled", "canceled", Failed),
        ("renewal-invoice-payment-canceled", "approved", Succeeded),
    ] {
        let a = one_attempt(&run(&invoice_and_transaction(event, result)).unwrap());
        assert_eq!((a.status, a.provider_status.as_str()), (expected, result));
        assert_eq!(
            (
                a.attempt_id.as_str(),
                a.cycle_id.as_deref(),
                a.subscription_id.as_deref()
            ),
            ("txn_2", Some("in_1"), Some("sub_1")),
            "{event}: the subscription from the invoice"
        );
    }
    // Without code and message the gateway's original ones are taken.
    let mut original = sale_event("transaction-declined", "txn_3", "declined", "completed");
    let response = &mut original["_embedded"]["transaction"]["gateway"]["response"];
    response["code"] = Value::Null;
    response["message"] = Value::Null;
    definitions()
        .check("transaction-declined", &original)
        .unwrap();
    let a = one_attempt(&run(&original).unwrap());
    assert_eq!(
        (a.error_code.as_deref(), a.error_message.as_deref()),
        (Some("51"), Some("NSF"))
    );
    // Amounts are exact in the currency's exponent.
    let mut kwd = sale_event("transaction-processed", "txn_4", "approved", "completed");
    kwd["_embedded"]["transaction"]["currency"] = json!("KWD");
    kwd["_embedded"]["transaction"]["amount"] = json!(12.345);
    definitions().check("transaction-processed", &kwd).unwrap();
    assert_eq!(
        one_attempt(&run(&kwd).unwrap()).amount,
        Some(Money {
            minor: 12345,
            currency: "KWD".into()
        })
    );
}

#[test]
fn transaction_statuses_and_results_map_per_the_definitions() {
    use AttemptStatus::*;
    // Without a result: the status decides, every word of its enum.
    for (word, expected) in TRANSACTION_STATUSES {
        let mut event = sale_event("transaction-processed", "txn_1", "approved", word);
        event["_embedded"]["transaction"]
            .as_object_mut()
            .unwrap()
            .remove("result");
        let a = one_attempt(&run(&event).unwrap());
        assert_eq!((a.status, a.provider_status.as_str()), (expected, word));
    }
    // With a result: refunded and voided statuses come after it; money taken and partly
    // returned or disputed is still a success, under the status word.
    for (result, status, expected, word) in [
        ("approved", "completed", Succeeded, "approved"),
        ("approved", "refunded", Refunded, "refunded"),
        ("approved", "voided", Failed, "voided"),
        (
            "approved",
            "partially-refunded",
            Succeeded,
            "partially-refunded",
        ),
        ("approved", "disputed", Succeeded, "disputed"),
        ("approved", "waiting-refund", Succeeded, "waiting-refund"),
        ("declined", "completed", Failed, "declined"),
        ("unknown", "timeout", Pending, "unknown"),
        ("approved", "pending", Succeeded, "approved"),
    ] {
        let event = sale_event("transaction-processed", "txn_1", result, status);
        let a = one_attempt(&run(&event).unwrap());
        assert_eq!(
            (a.status, a.provider_status.as_str()),
            (expected, word),
            "{result}/{status}"
        );
        if word == "voided" {
            assert_eq!(
                (a.error_code, a.error_message),
                (None, None),
                "a void's gateway answer is no decline"
            );
        }
    }
}

/// Renders what `f` counts in `subsync_unknown_provider_values_total`.
fn counted(f: impl FnOnce()) -> String {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, f);
    handle
        .render()
        .lines()
        .filter(|l| l.starts_with("subsync_unknown_provider_values_total{"))
        .map(str::to_owned)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Bodies of the definitions with one word replaced by a word outside its enum.
#[test]
fn unknown_words_are_tolerated_and_counted() {
    let mut result = sale_event("transaction-processed", "txn_1", "approved", "completed");
    result["_embedded"]["transaction"]["result"] = json!("maybe");
    let mut status = sale_event("transaction-processed", "txn_1", "approved", "completed");
    status["_embedded"]["transaction"]
        .as_object_mut()
        .unwrap()
        .remove("result");
    status["_embedded"]["transaction"]["status"] = json!("frozen");
    let mut kind = sale_event("transaction-processed", "txn_1", "approved", "completed");
    kind["_embedded"]["transaction"]["type"] = json!("payout");
    let mut order = order_event("subscription-modified", "active", &[]);
    order["_embedded"]["subscription"]["status"] = json!("hibernating");
    let mut billing = order_event("subscription-modified", "active", &[]);
    billing["_embedded"]["subscription"]["billingStatus"] = json!("overdue");
    let mut order_type = order_event("subscription-modified", "active", &[]);
    order_type["_embedded"]["subscription"]["orderType"] = json!("gift-order");

    let mut outcomes = Vec::new();
    let metrics = counted(|| {
        for body in [&result, &status, &kind, &order, &billing, &order_type] {
            outcomes.push(run(body).expect("tolerated, not an error"));
        }
    });
    // An unknown result or status: pending (never moves an attempt backwards), word kept.
    for (n, word) in [(&outcomes[0], "maybe"), (&outcomes[1], "frozen")] {
        let a = one_attempt(n);
        assert_eq!(
            (a.status, a.provider_status.as_str()),
            (AttemptStatus::Pending, word)
        );
    }
    // An unknown transaction type is no charge; an unknown order status or type changes
    // nothing; an unknown billing status leaves the order's status as it is.
    assert!(outcomes[2].is_ignored());
    assert!(outcomes[3].is_ignored());
    assert_eq!(one_change(&outcomes[4]).status, SubscriptionStatus::Active);
    assert!(outcomes[5].is_ignored());
    for field in [
        "transaction.result",
        "transaction.status",
        "transaction.type",
        "subscription.status",
        "subscription.billingStatus",
        "subscription.orderType",
    ] {
        let line = format!(
            "subsync_unknown_provider_values_total{{provider=\"rebilly\",field=\"{field}\"}} 1"
        );
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}

#[test]
fn only_sales_and_captures_are_attempts() {
    for kind in TRANSACTION_TYPES {
        for event in [
            "transaction-processed",
            "transaction-declined",
            "transaction-refunded",
        ] {
            let mut fields = vec![("/transactionId".to_owned(), json!("txn_1"))];
            fields.extend(sale(
                "/_embedded/transaction",
                "txn_1",
                "approved",
                "completed",
            ));
            fields.retain(|(p, _)| !p.ends_with("/type"));
            fields.push(("/_embedded/transaction/type".to_owned(), json!(kind)));
            let n = run(&body(event, &fields)).unwrap();
            let charge = kind == "sale" || kind == "capture";
            assert_eq!(!n.is_ignored(), charge, "{event} of a {kind}");
        }
    }
    // A processed refund is never a collected sale.
    let mut fields = vec![("/transactionId".to_owned(), json!("txn_r"))];
    fields.extend(sale(
        "/_embedded/transaction",
        "txn_r",
        "approved",
        "completed",
    ));
    fields.retain(|(p, _)| !p.ends_with("/type"));
    fields.push(("/_embedded/transaction/type".to_owned(), json!("refund")));
    assert!(
        run(&body("transaction-processed", &fields))
            .unwrap()
            .is_ignored()
    );
    // Without a type nothing tells a charge from a refund: malformed.
    let mut untyped = sale_event("transaction-processed", "txn_1", "approved", "completed");
    untyped["_embedded"]["transaction"]
        .as_object_mut()
        .unwrap()
        .remove("type");
    let err = run(&untyped).unwrap_err().to_string();
    assert!(err.contains("type"), "{err}");
}

/// A `TransactionWithChildWebhook`: the parent `sale` (now in `status`) and its child.
fn with_child(event_type: &str, parent_type: &str, status: &str, child_type: &str) -> Value {
    with_child_of(event_type, parent_type, status, child_type, json!(49.95))
}

fn with_child_of(
    event_type: &str,
    parent_type: &str,
    status: &str,
    child_type: &str,
    child_amount: Value,
) -> Value {
    let mut fields = vec![("/transactionId".to_owned(), json!("txn_1"))];
    fields.extend(sale("/_embedded/transaction", "txn_1", "approved", status));
    fields.retain(|(p, _)| !p.ends_with("/transaction/type"));
    fields.push(("/_embedded/transaction/type".to_owned(), json!(parent_type)));
    fields.extend(at(
        "/_embedded/childTransaction",
        &[
            ("id", json!("txn_child")),
            ("type", json!(child_type)),
            ("status", json!("completed")),
            ("result", json!("approved")),
            ("amount", child_amount),
            ("currency", json!("USD")),
            ("parentTransactionId", json!("txn_1")),
            ("processedTime", json!("2019-08-25T10:00:00Z")),
        ],
    ));
    body(event_type, &fields)
}

#[test]
fn refunds_voids_and_partial_refunds_move_the_parent_attempt_and_book_the_child() {
    use AttemptStatus::*;
    for (event, parent, status, child, child_amount, expected, word, refunded) in [
        (
            "transaction-refunded",
            "sale",
            "refunded",
            "refund",
            json!(49.95),
            Refunded,
            "refunded",
            4995,
        ),
        (
            "transaction-refunded",
            "capture",
            "refunded",
            "refund",
            json!(49.95),
            Refunded,
            "refunded",
            4995,
        ),
        (
            "transaction-partially-refunded",
            "sale",
            "partially-refunded",
            "refund",
            json!(20),
            Succeeded,
            "partially-refunded",
            2000,
        ),
        (
            "transaction-voided",
            "sale",
            "voided",
            "void",
            json!(49.95),
            Failed,
            "voided",
            4995,
        ),
    ] {
        let n = run(&with_child_of(event, parent, status, child, child_amount)).unwrap();
        let [CanonicalEvent::BillingAttempt(a), CanonicalEvent::Refund(r)] = n.events.as_slice()
        else {
            panic!(
                "{event}: the parent's attempt and the child's refund: {:?}",
                n.events
            );
        };
        assert_eq!(
            (a.attempt_id.as_str(), a.status, a.provider_status.as_str()),
            ("txn_1", expected, word),
            "{event}: the parent's attempt, never the child's"
        );
        assert_eq!(a.amount, usd(4995), "the parent's amount");
        assert_eq!((&a.error_code, &a.error_message), (&None, &None), "{event}");
        assert_eq!(
            (
                r.refund_id.as_str(),
                r.attempt_id.as_deref().expect("a named attempt"),
                r.status,
                r.provider_status.as_str()
            ),
            ("txn_child", "txn_1", RefundStatus::Succeeded, child),
            "{event}: the child is the parent's refund"
        );
        assert_eq!(
            Some(r.amount.clone()),
            usd(refunded),
            "{event}: the child's amount"
        );
        assert_eq!(
            r.refunded_at,
            Some(Utc.with_ymd_and_hms(2019, 8, 25, 10, 0, 0).unwrap())
        );
    }
    // A voided authorization was never a charge, and its void gives nothing back.
    let auth = with_child("transaction-voided", "authorize", "voided", "void");
    assert!(run(&auth).unwrap().is_ignored());
}

/// A processed `refund`, `void` or `credit` transaction of a parent is the parent's refund;
/// a declined one is a failed refund; a credit without a parent is no refund of a payment.
#[test]
fn refund_transactions_are_refunds_of_their_parent() {
    let processed = |kind: &str, result: &str, parent: Option<&str>| {
        let mut fields = vec![("/transactionId".to_owned(), json!("txn_r"))];
        let mut tx = vec![
            ("id", json!("txn_r")),
            ("type", json!(kind)),
            ("result", json!(result)),
            ("status", json!("completed")),
            ("amount", json!(10.5)),
            ("currency", json!("USD")),
        ];
        if let Some(parent) = parent {
            tx.push(("parentTransactionId", json!(parent)));
        }
        fields.extend(at("/_embedded/transaction", &tx));
        run(&body("transaction-processed", &fields)).unwrap()
    };
    for kind in ["refund", "void", "credit"] {
        let n = processed(kind, "approved", Some("txn_1"));
        let [CanonicalEvent::Refund(r)] = n.events.as_slice() else {
            panic!("{kind}: one refund: {:?}", n.events);
        };
        assert_eq!(
            (
                r.refund_id.as_str(),
                r.attempt_id.as_deref().expect("a named attempt"),
                r.status
            ),
            ("txn_r", "txn_1", RefundStatus::Succeeded),
            "{kind}"
        );
        assert_eq!(Some(r.amount.clone()), usd(1050));
        let declined = processed(kind, "declined", Some("txn_1"));
        let [CanonicalEvent::Refund(r)] = declined.events.as_slice() else {
            panic!("{kind}: one refund");
        };
        assert_eq!(r.status, RefundStatus::Failed, "{kind} declined");
    }
    assert!(processed("credit", "approved", None).is_ignored());
}

/// An `invoice-paid` webhook of invoice `in_1` with these transactions.
fn invoice_paid_with(transactions: Vec<Vec<(String, Value)>>) -> Value {
    let mut fields = vec![("/invoiceId".to_owned(), json!("in_1"))];
    fields.extend(at(
        "/_embedded/invoice",
        &[
            ("id", json!("in_1")),
            ("subscriptionId", json!("sub_1")),
            ("status", json!("paid")),
            ("amount", json!(49.95)),
            ("currency", json!("USD")),
            ("paidTime", json!("2024-01-02T03:04:05Z")),
        ],
    ));
    if transactions.is_empty() {
        fields.push(("/_embedded/invoice/transactions".to_owned(), json!([])));
    }
    for tx in transactions {
        fields.extend(tx);
    }
    body("invoice-paid", &fields)
}

#[test]
fn invoice_paid_names_the_payment_its_transaction_webhook_reports() {
    let tx = |i: usize, id: &str, kind: &str, result: &str, processed: &str, amount: f64| {
        let mut fields = sale(
            &format!("/_embedded/invoice/transactions/{i}"),
            id,
            result,
            "completed",
        );
        for (p, v) in &mut fields {
            if p.ends_with("/type") {
                *v = json!(kind);
            } else if p.ends_with("/processedTime") {
                *v = json!(processed);
            } else if p.ends_with("/amount") {
                *v = json!(amount);
            }
        }
        fields
    };
    let paid = invoice_paid_with(vec![
        tx(
            0,
            "txn_late",
            "sale",
            "approved",
            "2024-01-02T03:04:00Z",
            40.00,
        ),
        tx(
            1,
            "txn_early",
            "sale",
            "approved",
            "2024-01-01T00:00:00Z",
            9.95,
        ),
        tx(
            2,
            "txn_declined",
            "sale",
            "declined",
            "2024-01-03T00:00:00Z",
            49.95,
        ),
        tx(
            3,
            "txn_refund",
            "refund",
            "approved",
            "2024-01-04T00:00:00Z",
            1.00,
        ),
    ]);
    let a = one_attempt(&run(&paid).unwrap());
    assert_eq!(
        (a.attempt_id.as_str(), a.status, a.provider_status.as_str()),
        ("txn_late", AttemptStatus::Succeeded, "approved"),
        "the approved sale processed last"
    );
    assert_eq!(a.amount, usd(4000), "that transaction's amount");
    assert_eq!(
        a.attempted_at,
        Some(Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 0).unwrap())
    );
    assert_eq!(
        (a.cycle_id.as_deref(), a.subscription_id.as_deref()),
        (Some("in_1"), Some("sub_1"))
    );
    // It is the attempt the transaction's own webhook reports.
    let own = sale_event("transaction-processed", "txn_late", "approved", "completed");
    assert_eq!(one_attempt(&run(&own).unwrap()).attempt_id, a.attempt_id);

    // No approved sale or capture among them (or none at all): the invoice's own id.
    for transactions in [
        vec![],
        vec![tx(0, "txn_declined", "sale", "declined", SOME_TIME, 49.95)],
        vec![tx(0, "txn_refund", "refund", "approved", SOME_TIME, 49.95)],
    ] {
        let a = one_attempt(&run(&invoice_paid_with(transactions)).unwrap());
        assert_eq!(a.attempt_id, "invoice-paid:in_1");
        assert_eq!(
            (a.status, a.provider_status.as_str()),
            (AttemptStatus::Succeeded, "invoice-paid")
        );
        assert_eq!(a.amount, usd(4995), "the invoice's amount");
        assert_eq!(
            a.attempted_at,
            Some(Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap())
        );
    }
}

#[test]
fn order_statuses_map_per_the_definitions() {
    use SubscriptionStatus::*;
    for (word, expected) in ORDER_STATUSES {
        let c = one_change(&run(&order_event("subscription-modified", word, &[])).unwrap());
        assert_eq!((c.status, c.provider_status.as_str()), (expected, word));
        assert_eq!(
            (c.subscription_id.as_str(), c.customer_id.as_deref()),
            ("sub_1", Some("cus_1"))
        );
        assert_eq!(c.currency.as_deref(), Some("USD"));
        assert_eq!(c.version, Some(7), "revision");
        assert_eq!(
            c.current_period_end,
            Some(Utc.with_ymd_and_hms(2019, 9, 24, 14, 15, 22).unwrap()),
            "currentPeriodEnd before renewalTime"
        );
        assert_eq!(
            c.updated_at,
            Some(Utc.with_ymd_and_hms(2019, 8, 24, 14, 15, 22).unwrap())
        );
    }
    // Past due is the billing status of an active order.
    let past_due = order_event(
        "order-delinquency-reached",
        "active",
        &[("billingStatus", json!("past-due"))],
    );
    let c = one_change(&run(&past_due).unwrap());
    assert_eq!(
        (c.status, c.provider_status.as_str()),
        (PastDue, "past-due")
    );
    let canceled = order_event(
        "subscription-canceled",
        "canceled",
        &[("billingStatus", json!("past-due"))],
    );
    assert_eq!(one_change(&run(&canceled).unwrap()).status, Cancelled);
    // Without currentPeriodEnd the renewal time is the period end.
    let mut renewal = order_event("subscription-renewed", "active", &[]);
    renewal["_embedded"]["subscription"]
        .as_object_mut()
        .unwrap()
        .remove("currentPeriodEnd");
    assert_eq!(
        one_change(&run(&renewal).unwrap()).current_period_end,
        Some(Utc.with_ymd_and_hms(2019, 9, 25, 0, 0, 0).unwrap())
    );
    // Every order event of a one-time sale is ignored.
    for (t, d) in DECISIONS {
        if *d != Decision::Subscription {
            continue;
        }
        let one_time = body(
            t,
            &[
                ("/subscriptionId".to_owned(), json!("ots_1")),
                (
                    "/_embedded/subscription/orderType".to_owned(),
                    json!("one-time-order"),
                ),
                ("/_embedded/subscription/id".to_owned(), json!("ots_1")),
                (
                    "/_embedded/subscription/status".to_owned(),
                    json!("completed"),
                ),
            ],
        );
        assert!(run(&one_time).unwrap().is_ignored(), "{t}");
    }
}

#[test]
fn pause_bodies_and_bodies_without_the_order_status() {
    use SubscriptionStatus::*;
    let mut fields = vec![
        ("/subscriptionId".to_owned(), json!("sub_1")),
        ("/subscriptionPauseId".to_owned(), json!("sub_pau_1")),
    ];
    fields.extend(at(
        "/_embedded/pause",
        &[
            ("id", json!("sub_pau_1")),
            ("subscriptionId", json!("sub_1")),
            ("status", json!("ongoing")),
        ],
    ));
    fields.extend(at(
        "/_embedded/subscription",
        &[("id", json!("sub_1")), ("status", json!("paused"))],
    ));
    let c = one_change(&run(&body("subscription-paused", &fields)).unwrap());
    assert_eq!((c.subscription_id.as_str(), c.status), ("sub_1", Paused));
    // The event names the status when the order has none.
    for (event, expected) in [
        ("subscription-renewed", Active),
        ("subscription-resumed", Active),
        ("subscription-reactivated", Active),
        ("subscription-canceled", Cancelled),
        ("subscription-churned", Cancelled),
        ("subscription-paused", Paused),
        ("order-completed", Expired),
    ] {
        let n = run(&body(
            event,
            &[("/subscriptionId".to_owned(), json!("sub_2"))],
        ))
        .unwrap();
        let c = one_change(&n);
        assert_eq!(
            (
                c.status,
                c.provider_status.as_str(),
                c.subscription_id.as_str()
            ),
            (expected, event, "sub_2")
        );
    }
    // One that does not name it cannot be normalized without the status.
    let modified = body(
        "subscription-modified",
        &[("/subscriptionId".to_owned(), json!("sub_2"))],
    );
    assert!(run(&modified).unwrap_err().to_string().contains("status"));
}

#[test]
fn malformed_payloads_are_errors() {
    assert!(normalize(b"not json").is_err());
    assert!(run(&json!({"transactionId": "t"})).is_err(), "no eventType");
    let mut precise = sale_event("transaction-declined", "t", "declined", "completed");
    precise["_embedded"]["transaction"]["amount"] = json!(49.955);
    assert!(
        run(&precise)
            .unwrap_err()
            .to_string()
            .contains("more decimals")
    );
    let mut jpy = sale_event("transaction-processed", "t", "approved", "completed");
    jpy["_embedded"]["transaction"]["currency"] = json!("JPY");
    jpy["_embedded"]["transaction"]["amount"] = json!(1500.5);
    assert!(run(&jpy).is_err());
    let mut currency = sale_event("transaction-processed", "t", "approved", "completed");
    currency["_embedded"]["transaction"]["currency"] = json!("ZZZ");
    assert!(
        run(&currency)
            .unwrap_err()
            .to_string()
            .contains("unknown currency")
    );
    let exponent = br#"{"eventType":"transaction-processed","_embedded":{"transaction":
        {"id":"t","type":"sale","result":"approved","amount":4.995e1,"currency":"USD"}}}"#;
    assert!(normalize(exponent).is_err(), "exponent notation is refused");
    let mut no_currency = sale_event("transaction-declined", "t", "declined", "completed");
    no_currency["_embedded"]["transaction"]
        .as_object_mut()
        .unwrap()
        .remove("currency");
    assert!(run(&no_currency).is_err());
    let mut no_id = sale_event("transaction-declined", "t", "declined", "completed");
    no_id.as_object_mut().unwrap().remove("transactionId");
    no_id["_embedded"]["transaction"]
        .as_object_mut()
        .unwrap()
        .remove("id");
    assert!(
        run(&no_id)
            .unwrap_err()
            .to_string()
            .contains("transactionId")
    );
    let mut neither = sale_event("transaction-processed", "t", "approved", "completed");
    let tx = neither["_embedded"]["transaction"].as_object_mut().unwrap();
    tx.remove("result");
    tx.remove("status");
    assert!(run(&neither).is_err(), "neither result nor status");
    assert!(
        run(&body("transaction-processed", &[]))
            .unwrap_err()
            .to_string()
            .contains("_embedded.transaction")
    );
    assert!(run(&body("invoice-paid", &[])).is_err(), "no invoice id");
    assert!(
        run(&body("subscription-canceled", &[])).is_err(),
        "no subscription id"
    );
}

proptest::proptest! {
    #[test]
    fn arbitrary_bodies_never_panic(
        body in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
        event in proptest::sample::select(vec!["transaction-processed", "transaction-declined",
            "transaction-refunded", "renewal-invoice-payment-declined", "invoice-paid",
            "subscription-renewed", "x"]),
        result in "[a-z-]{0,12}", status in "[a-z-]{0,12}", kind in "[a-z-]{0,8}",
        amount in "[0-9.e-]{1,10}", currency in "[A-Za-z]{0,4}",
    ) {
        let _ = normalize(&body);
        let text = format!(
            r#"{{"transactionId":"t","invoiceId":"i","eventType":"{event}","_embedded":{{
            "transaction":{{"id":"t","type":"{kind}","result":"{result}","status":"{status}",
            "amount":{amount},"currency":"{currency}"}},
            "invoice":{{"id":"i","transactions":[{{"id":"u","type":"{kind}","result":"{result}",
            "amount":{amount},"currency":"{currency}"}}]}},
            "subscription":{{"id":"s","status":"{status}","billingStatus":"{result}"}}}}}}"#
        );
        let _ = normalize(text.as_bytes());
    }
}

/// The check the bodies above pass is not vacuous: it refuses what the definitions do not
/// define (the fields and words the old normalizer read included).
#[test]
fn the_definitions_check_refuses_what_they_do_not_define() {
    let good = invoice_and_transaction("renewal-invoice-payment-declined", "declined");
    definitions()
        .check("renewal-invoice-payment-declined", &good)
        .unwrap();
    let broken = |pointer: &str, value: Option<Value>| {
        let mut body = good.clone();
        let (parent, name) = pointer.rsplit_once('/').unwrap();
        let object = body.pointer_mut(parent).unwrap().as_object_mut().unwrap();
        match value {
            Some(value) => object.insert(name.to_owned(), value),
            None => object.remove(name),
        };
        definitions()
            .check("renewal-invoice-payment-declined", &body)
            .unwrap_err()
    };
    for (pointer, value) in [
        (
            "/_embedded/transaction/declineCode",
            Some(json!("insufficient-funds")),
        ),
        (
            "/_embedded/transaction/gatewayResponse",
            Some(json!({"code": "51"})),
        ),
        ("/subscriptionId", Some(json!("sub_1"))),
        (
            "/_embedded/transaction/status",
            Some(json!("sending-to-gateway")),
        ),
        ("/_embedded/transaction/result", Some(json!("maybe"))),
        ("/_embedded/transaction/amount", Some(json!("49.95"))),
        (
            "/_embedded/transaction/processedTime",
            Some(json!("yesterday")),
        ),
        ("/_embedded/invoice/websiteId", None),
    ] {
        let errors = broken(pointer, value);
        // A value is refused at its pointer; a property the object may not have, or one
        // it lacks, at the object, naming the property.
        let (parent, name) = pointer.rsplit_once('/').unwrap();
        assert!(
            errors.iter().any(|e| e.starts_with(pointer)
                || (e.starts_with(&format!("{parent}:"))
                    && (e.contains(&format!("'{name}'")) || e.contains(&format!("\"{name}\""))))),
            "{pointer}: {errors:?}"
        );
    }
    assert!(
        definitions()
            .check("renewal-invoice-payment-canceled", &good)
            .is_err(),
        "another event type"
    );
    let order = order_event("subscription-renewed", "active", &[]);
    let mut suspended = order.clone();
    suspended["_embedded"]["subscription"]["status"] = json!("suspended");
    assert!(
        definitions()
            .check("subscription-renewed", &suspended)
            .is_err()
    );
    let mut no_items = order;
    no_items["_embedded"]["subscription"]["items"] = json!([]);
    assert!(
        definitions()
            .check("subscription-renewed", &no_items)
            .is_err()
    );
}
