//! Unit tests of Stripe's normalization (`webhook.rs`): conformance with Stripe's
//! definitions (every event type of the SDK's types decided, every normalized type's
//! event generated from its type, the official examples), and the mapping on the current
//! API version's shapes and on the older ones still read.

use serde_json::{Value, json};

use super::*;
use crate::canonical::SubscriptionStatus;
use crate::providers::stripe::{definitions, event_interface, examples};

const CREATED: i64 = 1_700_000_000;

fn event(event_type: &str, object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": "evt_1", "object": "event", "api_version": "2024-06-20",
        "created": CREATED, "type": event_type, "livemode": false,
        "data": { "object": object }
    }))
    .unwrap()
}

/// An invoice in the shape of API versions before 2025-03 (top-level `subscription` and
/// `payment_intent`), still read.
fn invoice(attempt_count: u32) -> Value {
    json!({
        "id": "in_1", "object": "invoice", "customer": "cus_1", "subscription": "sub_1",
        "amount_due": 1999, "amount_paid": 0, "currency": "usd", "status": "open",
        "attempt_count": attempt_count, "next_payment_attempt": CREATED + 86_400,
        "payment_intent": "pi_1"
    })
}

/// A subscription in the shape of API versions before 2025-03 (its own
/// `current_period_end`), still read.
fn subscription(status: &str) -> Value {
    json!({
        "id": "sub_1", "object": "subscription", "customer": "cus_1", "status": status,
        "currency": "eur", "current_period_end": CREATED + 30 * 86_400,
        "items": { "object": "list", "data": [] }
    })
}

fn t(secs: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(secs, 0)
}

fn one(body: &[u8]) -> CanonicalEvent {
    let n = normalize(body).unwrap();
    assert_eq!(n.events.len(), 1, "{}", n.event_type);
    n.events.into_iter().next().unwrap()
}

/// The SDK's event interface whose `type` is `event_type` (`InvoicePaidEvent`, ...).
/// The type of `data.object` of `event_type`'s interface.
fn data_object(event_type: &str) -> String {
    let spec = definitions();
    let data = spec.properties(&event_interface(event_type))["data"]["type"]
        .as_str()
        .unwrap()
        .to_owned();
    spec.properties(&data)["object"]["type"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn valid(value: &Value, type_name: &str, what: &str) {
    let errors = definitions().validate(value, type_name);
    assert!(errors.is_empty(), "{what}: {errors:#?}");
}

/// An `Invoice` of the current API version generated from its type: `in_1` of 1999 usd of
/// `sub_1` (in `parent.subscription_details`), tried `attempt_count` times.
fn current_invoice(attempt_count: u32) -> Value {
    let spec = definitions();
    let mut invoice = spec.generate("Invoice");
    let mut parent = spec.generate("Invoice.Parent");
    parent["type"] = json!("subscription_details");
    parent["subscription_details"] = spec.generate("Invoice.Parent.SubscriptionDetails");
    parent["subscription_details"]["subscription"] = json!("sub_1");
    for (key, value) in [
        ("id", json!("in_1")),
        ("customer", json!("cus_1")),
        ("currency", json!("usd")),
        ("amount_due", json!(1999)),
        ("attempt_count", json!(attempt_count)),
        ("attempted", json!(true)),
        ("status", json!("open")),
        ("next_payment_attempt", json!(CREATED + 86_400)),
        ("parent", parent),
    ] {
        invoice[key] = value;
    }
    valid(&invoice, "Invoice", "generated invoice");
    invoice
}

/// A `Subscription` of the current API version generated from its type, with one item
/// whose period ends at `CREATED + 30 days`.
fn current_subscription(status: &str) -> Value {
    let spec = definitions();
    let mut subscription = spec.generate("Subscription");
    let mut item = spec.generate("SubscriptionItem");
    item["id"] = json!("si_1");
    item["subscription"] = json!("sub_1");
    item["current_period_end"] = json!(CREATED + 30 * 86_400);
    for (key, value) in [
        ("id", json!("sub_1")),
        ("customer", json!("cus_1")),
        ("currency", json!("eur")),
        ("status", json!(status)),
    ] {
        subscription[key] = value;
    }
    subscription["items"]["data"] = json!([item]);
    valid(&subscription, "Subscription", "generated subscription");
    subscription
}

/// `object` in the SDK's event of `event_type`, generated from its interface.
fn current_event(event_type: &str, object: Value) -> Value {
    crate::providers::stripe::event("evt_1", event_type, CREATED, object)
}

#[test]
fn every_event_type_of_the_definitions_is_decided() {
    let spec = definitions();
    let types = spec.enum_values("Event.Type");
    assert_eq!(types.len(), 265, "the copied definitions' event types");
    for name in &types {
        match handling(name) {
            Some(Attempt(_)) => assert_eq!(data_object(name), "Invoice", "{name}"),
            Some(SubscriptionState) => assert_eq!(data_object(name), "Subscription", "{name}"),
            Some(RefundOf) => assert_eq!(data_object(name), "Refund", "{name}"),
            Some(Ignored(reason)) => assert!(reason.trim().len() > 20, "{name}: say why"),
            None => panic!("{name} is not in the decision table"),
        }
    }
    for (i, (name, _)) in EVENTS.iter().enumerate() {
        assert!(
            EVENTS[i + 1..].iter().all(|(other, _)| other != name),
            "{name} twice"
        );
        assert!(types.contains(&name.to_string()), "{name}: not Stripe's");
    }
    // Refunds are booked from the Refund's own events; the Charge carries only a running
    // total, and neither it nor the PaymentIntent names the invoice (so the ledger links
    // the payment through invoice_payments).
    for name in [
        "refund.created",
        "refund.updated",
        "refund.failed",
        "charge.refund.updated",
    ] {
        assert_eq!(handling(name), Some(RefundOf), "{name}");
    }
    for name in ["charge.refunded", "credit_note.created"] {
        let Some(Ignored(reason)) = handling(name) else {
            panic!("{name} is booked");
        };
        assert!(
            reason.contains("refund.*") || reason.contains("refund.created"),
            "{name}"
        );
    }
    assert!(!spec.properties("Charge").contains_key("invoice"));
    assert!(!spec.properties("PaymentIntent").contains_key("invoice"));
    assert_eq!(data_object("refund.created"), "Refund");
    assert!(definitions().doc()["types"].get("Refund").is_none());
}

#[test]
fn every_normalized_type_normalizes_its_generated_event() {
    for (name, decided) in EVENTS {
        let body = match decided {
            Attempt(_) => current_event(name, current_invoice(2)),
            SubscriptionState => current_event(name, current_subscription("active")),
            RefundOf => current_event(name, examples().0["resources"]["refund"].clone()),
            Ignored(_) => continue,
        };
        let n = normalize(&serde_json::to_vec(&body).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(n.event_type, *name);
        match (decided, n.events.as_slice()) {
            (Attempt(status), [CanonicalEvent::BillingAttempt(a)]) => {
                assert_eq!(a.status, *status, "{name}");
                assert_eq!(a.attempt_id, "in_1:2");
                assert_eq!(a.subscription_id.as_deref(), Some("sub_1"), "{name}");
                let expected = match status {
                    AttemptStatus::Succeeded => 0, // the generated amount_paid
                    _ => 1999,
                };
                assert_eq!(a.amount.as_ref().map(|m| m.minor), Some(expected), "{name}");
                assert_eq!((&a.error_code, &a.error_message), (&None, &None));
            }
            // Stripe's example Refund: 100 usd, succeeded, of a Charge (no PaymentIntent).
            (RefundOf, [CanonicalEvent::Refund(r)]) => {
                assert_eq!(r.refund_id, "re_1Pgc72B7WZ01zgkWqPvrRrPE");
                assert_eq!(r.attempt_id, None, "{name}: linked by the ledger");
                assert_eq!(
                    r.payment_ref.as_deref(),
                    Some("ch_1PgafuB7WZ01zgkWXYmPNZs8")
                );
                assert_eq!(r.status, RefundStatus::Succeeded);
                assert_eq!((r.amount.minor, r.amount.currency.as_str()), (100, "USD"));
                assert_eq!(r.refunded_at, t(1_234_567_890));
            }
            (SubscriptionState, [CanonicalEvent::Subscription(s)]) => {
                assert_eq!(s.status, SubscriptionStatus::Active, "{name}");
                assert_eq!(s.current_period_end, t(CREATED + 30 * 86_400), "{name}");
                assert_eq!(s.customer_id.as_deref(), Some("cus_1"));
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    // The older shapes still read are not the current Invoice's.
    let older = definitions().validate(&invoice(1), "Invoice");
    for field in ["subscription", "payment_intent"] {
        let error = format!("$.{field}: Invoice has no property {field}");
        assert!(older.contains(&error), "{older:#?}");
    }
    // Every status of the definitions is mapped.
    for word in definitions().enum_values("Subscription.Status") {
        assert!(stripe_subscription_status(&word).is_some(), "{word}");
    }
}

#[test]
fn the_payments_of_a_current_invoice_bring_the_decline() {
    let spec = definitions();
    let mut error = spec.generate("PaymentIntent.LastPaymentError");
    error["code"] = json!("card_declined");
    error["decline_code"] = json!("insufficient_funds");
    error["message"] = json!("Your card has insufficient funds.");
    let mut intent = spec.generate("PaymentIntent");
    intent["id"] = json!("pi_1");
    intent["status"] = json!("requires_payment_method");
    intent["last_payment_error"] = error;
    let mut payment = spec.generate("InvoicePayment");
    payment["id"] = json!("inpay_1");
    payment["invoice"] = json!("in_1");
    payment["is_default"] = json!(true);
    payment["payment"]["type"] = json!("payment_intent");
    payment["payment"]["payment_intent"] = intent;
    let mut other = spec.generate("InvoicePayment");
    other["payment"]["payment_intent"] = json!("pi_0");
    let mut invoice = current_invoice(1);
    invoice["payments"] = json!({"object": "list", "url": "/v1/invoice_payments",
        "has_more": false, "data": [other, payment]});
    let body = current_event("invoice.payment_failed", invoice);
    let CanonicalEvent::BillingAttempt(a) = one(&serde_json::to_vec(&body).unwrap()) else {
        panic!("not an attempt");
    };
    assert_eq!(a.error_code.as_deref(), Some("insufficient_funds"));
    assert_eq!(
        a.error_message.as_deref(),
        Some("Your card has insufficient funds.")
    );
}

#[test]
fn official_examples_normalize_or_are_ignored_by_decision() {
    let (fixtures, _) = examples();
    let resources = &fixtures["resources"];
    // The invoice example in every invoice event: attempts, or ignored by decision.
    let invoice = &resources["invoice"];
    for (name, decided) in EVENTS.iter().filter(|(n, _)| n.starts_with("invoice.")) {
        let n = normalize(&event(name, invoice.clone())).unwrap_or_else(|e| panic!("{name}: {e}"));
        match decided {
            Attempt(status) => {
                let [CanonicalEvent::BillingAttempt(a)] = n.events.as_slice() else {
                    panic!("{name}: {n:?}");
                };
                assert_eq!(a.status, *status);
                assert_eq!(a.attempt_id, "in_1Pgc6tB7WZ01zgkWu9fdqL6I:0");
                // The example's stale `subscription: null` is no subscription; its parent is.
                assert_eq!(a.subscription_id.as_deref(), Some("subscription"));
                assert_eq!(
                    a.amount,
                    Some(Money {
                        minor: if *status == AttemptStatus::Succeeded {
                            0
                        } else {
                            1000
                        },
                        currency: "USD".into()
                    })
                );
            }
            _ => assert!(n.is_ignored(), "{name}"),
        }
    }
    // The subscription example in every subscription event.
    for (name, _) in EVENTS.iter().filter(|(_, d)| *d == SubscriptionState) {
        let CanonicalEvent::Subscription(s) = one(&event(name, resources["subscription"].clone()))
        else {
            panic!("{name}: not a change");
        };
        assert_eq!(s.subscription_id, "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw");
        assert_eq!(s.status, SubscriptionStatus::Active);
        assert_eq!(s.customer_id.as_deref(), Some("cus_QXg1o8vcGmoR32"));
        assert_eq!(
            s.current_period_end,
            t(976_287_773),
            "its item's period end"
        );
    }
    // The event example (a plan.created) and the InvoicePayment example: ignored.
    let n = normalize(&serde_json::to_vec(&resources["event"]).unwrap()).unwrap();
    assert_eq!(
        (n.event_type.as_str(), n.is_ignored()),
        ("plan.created", true)
    );
    let n = normalize(&event(
        "invoice_payment.paid",
        resources["invoice_payment"].clone(),
    ))
    .unwrap();
    assert!(n.is_ignored());
    // Examples, not field-presence authority: the invoice still has the older top-level
    // `subscription`, which the current Invoice does not.
    let spec = definitions();
    assert_eq!(
        spec.validate(invoice, "Invoice"),
        ["$.subscription: Invoice has no property subscription"]
    );
    // The other examples are exactly of their types.
    valid(
        &resources["subscription"],
        "Subscription",
        "subscription example",
    );
    valid(
        &resources["invoice_payment"],
        "InvoicePayment",
        "invoice_payment example",
    );
    valid(
        &resources["event"],
        &event_interface("plan.created"),
        "event example",
    );
}

#[test]
fn the_cli_triggers_are_decided_and_pay_as_the_definitions_allow() {
    let (_, triggers) = examples();
    let triggers = triggers.as_object().unwrap();
    assert_eq!(triggers.len(), 35);
    for (file, recipe) in triggers {
        let name = file.trim_end_matches(".json");
        // Two recipes are the CLI's own names for a subscription's first invoice failing or
        // succeeding: Stripe then sends customer.subscription.created and invoice.* events.
        if !matches!(
            name,
            "subscription.payment_failed" | "subscription.payment_succeeded"
        ) {
            assert!(handling(name).is_some(), "{file}: undecided");
        }
        for step in recipe["fixtures"].as_array().unwrap() {
            let path = step["path"].as_str().unwrap();
            if path.starts_with("/v1/invoices/") && path.ends_with("/pay") {
                let errors = definitions().validate(&step["params"], "InvoicePayParams");
                assert!(errors.is_empty(), "{file}: {errors:?}");
            }
        }
    }
    for name in [
        "invoice.paid",
        "invoice.payment_failed",
        "invoice.payment_action_required",
    ] {
        assert!(triggers.contains_key(&format!("{name}.json")));
        assert!(matches!(handling(name), Some(Attempt(_))));
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

#[test]
fn unknown_words_are_tolerated_and_counted() {
    let mut outcomes = Vec::new();
    let metrics = counted(|| {
        // `Subscription.Status` is open: a new word changes nothing.
        let zombie = current_event(
            "customer.subscription.updated",
            current_subscription("zombie"),
        );
        outcomes.push(normalize(&serde_json::to_vec(&zombie).unwrap()).unwrap());
        outcomes.push(normalize(&event("invoice.teleported", invoice(1))).unwrap());
    });
    for n in &outcomes {
        assert!(n.is_ignored(), "{}", n.event_type);
    }
    for field in ["subscription.status", "type"] {
        let line = format!(
            "subsync_unknown_provider_values_total{{provider=\"stripe\",field=\"{field}\"}} 1"
        );
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}

#[test]
fn invoice_events_become_attempts() {
    let mut paid = invoice(2);
    paid["amount_paid"] = json!(1999);
    paid["status"] = json!("paid");
    paid["next_payment_attempt"] = Value::Null;
    let cases = [
        (
            "invoice.paid",
            paid.clone(),
            AttemptStatus::Succeeded,
            "in_1:2",
            None,
        ),
        (
            "invoice.payment_succeeded",
            paid,
            AttemptStatus::Succeeded,
            "in_1:2",
            None,
        ),
        (
            "invoice.payment_failed",
            invoice(1),
            AttemptStatus::Failed,
            "in_1:1",
            t(CREATED + 86_400),
        ),
        (
            "invoice.payment_action_required",
            invoice(3),
            AttemptStatus::RequiresAction,
            "in_1:3",
            t(CREATED + 86_400),
        ),
    ];
    for (event_type, object, status, attempt_id, next) in cases {
        let count = object["attempt_count"].as_u64().map(|c| c as u32);
        let CanonicalEvent::BillingAttempt(a) = one(&event(event_type, object)) else {
            panic!("{event_type}: not an attempt");
        };
        assert_eq!(a.status, status, "{event_type}");
        assert_eq!(a.provider_status, event_type);
        assert_eq!(a.attempt_id, attempt_id);
        assert_eq!(a.cycle_id.as_deref(), Some("in_1"));
        assert_eq!(a.subscription_id.as_deref(), Some("sub_1"));
        assert_eq!(
            a.amount,
            Some(Money {
                minor: 1999,
                currency: "USD".into()
            })
        );
        assert_eq!(a.attempted_at, t(CREATED));
        assert_eq!(a.next_attempt_at, next, "{event_type}");
        assert_eq!(a.attempt_count, count);
        assert_eq!(
            (a.error_code, a.error_message),
            (None, None),
            "not expanded"
        );
    }
}

#[test]
fn expanded_payment_intent_and_new_api_shapes() {
    let mut object = invoice(1);
    object["currency"] = json!("jpy");
    object["amount_due"] = json!(500);
    object["subscription"] = Value::Null;
    object["parent"] = json!({ "subscription_details": { "subscription": "sub_9" } });
    object["payment_intent"] = json!({ "id": "pi_1", "last_payment_error": {
        "code": "card_declined", "decline_code": "insufficient_funds",
        "message": "Your card has insufficient funds." } });
    let CanonicalEvent::BillingAttempt(a) = one(&event("invoice.payment_failed", object.clone()))
    else {
        panic!("not an attempt");
    };
    assert_eq!(
        a.amount,
        Some(Money {
            minor: 500,
            currency: "JPY".into()
        })
    );
    assert_eq!(a.subscription_id.as_deref(), Some("sub_9"));
    assert_eq!(a.error_code.as_deref(), Some("insufficient_funds"));
    assert_eq!(
        a.error_message.as_deref(),
        Some("Your card has insufficient funds.")
    );
    object["payment_intent"]["last_payment_error"]["decline_code"] = Value::Null;
    let CanonicalEvent::BillingAttempt(a) = one(&event("invoice.payment_failed", object)) else {
        panic!("not an attempt");
    };
    assert_eq!(a.error_code.as_deref(), Some("card_declined"));
}

#[test]
fn subscription_events_become_changes() {
    let cases = [
        (
            "customer.subscription.created",
            "incomplete",
            SubscriptionStatus::Pending,
        ),
        (
            "customer.subscription.created",
            "trialing",
            SubscriptionStatus::Pending,
        ),
        (
            "customer.subscription.updated",
            "active",
            SubscriptionStatus::Active,
        ),
        (
            "customer.subscription.updated",
            "past_due",
            SubscriptionStatus::PastDue,
        ),
        (
            "customer.subscription.updated",
            "unpaid",
            SubscriptionStatus::PastDue,
        ),
        (
            "customer.subscription.updated",
            "incomplete_expired",
            SubscriptionStatus::Expired,
        ),
        (
            "customer.subscription.deleted",
            "canceled",
            SubscriptionStatus::Cancelled,
        ),
        (
            "customer.subscription.paused",
            "paused",
            SubscriptionStatus::Paused,
        ),
        (
            "customer.subscription.resumed",
            "active",
            SubscriptionStatus::Active,
        ),
    ];
    for (event_type, word, status) in cases {
        let n = normalize(&event(event_type, subscription(word))).unwrap();
        assert_eq!(n.event_type, event_type);
        let [CanonicalEvent::Subscription(s)] = n.events.as_slice() else {
            panic!("{event_type}: not one subscription change");
        };
        assert_eq!(s.status, status, "{word}");
        assert_eq!(s.provider_status, word);
        assert_eq!(s.subscription_id, "sub_1");
        assert_eq!(s.customer_id.as_deref(), Some("cus_1"));
        assert_eq!(s.currency.as_deref(), Some("EUR"));
        assert_eq!(s.current_period_end, t(CREATED + 30 * 86_400));
        assert_eq!(s.updated_at, t(CREATED));
        assert_eq!(s.version, None);
    }
    // API versions from 2025-03: the period end is on the items.
    let mut object = subscription("active");
    object["current_period_end"] = Value::Null;
    object["customer"] = json!({ "id": "cus_2", "object": "customer" });
    object["items"]["data"] = json!([{ "current_period_end": CREATED + 7 }]);
    let CanonicalEvent::Subscription(s) = one(&event("customer.subscription.updated", object))
    else {
        panic!("not a change");
    };
    assert_eq!(s.current_period_end, t(CREATED + 7));
    assert_eq!(s.customer_id.as_deref(), Some("cus_2"));
}

#[test]
fn other_types_are_ignored() {
    for event_type in [
        "invoice.created",
        "charge.succeeded",
        "customer.subscription.trial_will_end",
    ] {
        let n = normalize(&event(event_type, json!({ "id": "x", "amount": 1.5 }))).unwrap();
        assert_eq!(n.event_type, event_type);
        assert!(n.is_ignored());
    }
    let n = normalize(br#"{"type":"ping"}"#).unwrap();
    assert!(n.is_ignored());
}

#[test]
fn malformed_payloads_are_errors() {
    let failed = |object: Value| normalize(&event("invoice.payment_failed", object));
    let without = |field: &str| {
        let mut object = invoice(1);
        object.as_object_mut().unwrap().remove(field);
        failed(object)
    };
    let with = |field: &str, value: Value| {
        let mut object = invoice(1);
        object[field] = value;
        failed(object)
    };
    let reason = |r: Result<Normalized, NormalizeError>| match r {
        Err(NormalizeError::Malformed(reason)) => reason,
        Ok(n) => panic!("accepted: {n:?}"),
    };
    assert!(reason(normalize(b"not json")).contains("not a Stripe event"));
    assert!(reason(normalize(br#"{"id":"evt_1"}"#)).contains("type"));
    assert!(reason(without("id")).contains("no id"));
    assert!(reason(with("id", json!(""))).contains("no id"));
    assert!(reason(without("attempt_count")).contains("attempt_count"));
    assert!(reason(without("currency")).contains("currency"));
    assert!(reason(with("currency", json!("zzz"))).contains("unknown currency"));
    assert!(reason(with("amount_due", json!(19.99))).contains("minor units"));
    assert!(reason(with("amount_due", json!("19.99"))).contains("minor units"));
    assert!(reason(with("next_payment_attempt", json!(i64::MAX))).contains("out of range"));
    let mut body: Value = serde_json::from_slice(&event("invoice.paid", invoice(1))).unwrap();
    body.as_object_mut().unwrap().remove("created");
    assert!(reason(normalize(&serde_json::to_vec(&body).unwrap())).contains("created"));
    body.as_object_mut().unwrap().remove("data");
    body["created"] = json!(CREATED);
    assert!(reason(normalize(&serde_json::to_vec(&body).unwrap())).contains("data.object"));
    let sub = |object: Value| reason(normalize(&event("customer.subscription.updated", object)));
    assert!(sub(json!({ "status": "active" })).contains("no id"));
    assert!(sub(json!({ "id": "sub_1" })).contains("no status"));
    let mut object = subscription("active");
    object["currency"] = json!("xx");
    assert!(sub(object).contains("currency"));
}

proptest::proptest! {
    #[test]
    fn arbitrary_bodies_never_panic(
        body in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
        event_type in proptest::sample::select(vec![
            "invoice.paid", "invoice.payment_failed", "customer.subscription.updated", "x",
        ]),
        amount in proptest::num::i64::ANY, count in proptest::num::i64::ANY,
        next in proptest::num::i64::ANY, currency in ".{0,4}", status in ".{0,12}",
    ) {
        let _ = normalize(&body);
        let object = json!({
            "id": "in_1", "amount_due": amount, "attempt_count": count, "currency": currency,
            "next_payment_attempt": next, "status": status, "current_period_end": next,
        });
        let _ = normalize(&event(event_type, object));
    }
}

/// Every status word of Stripe's Refund (its OpenAPI `refund.status`: `pending`,
/// `requires_action`, `succeeded`, `failed`, `canceled`) is mapped; the PaymentIntent is
/// preferred to the Charge; another word is counted and changes nothing.
#[test]
fn refund_statuses_and_payments_are_read_from_the_refund() {
    let (fixtures, _) = examples();
    let of = |status: Value, payment_intent: Value| {
        let mut refund = fixtures["resources"]["refund"].clone();
        refund["status"] = status;
        refund["payment_intent"] = payment_intent;
        let body = current_event("refund.updated", refund);
        normalize(&serde_json::to_vec(&body).unwrap())
            .unwrap()
            .events
    };
    for (word, status) in [
        ("pending", RefundStatus::Pending),
        ("requires_action", RefundStatus::Pending),
        ("succeeded", RefundStatus::Succeeded),
        ("failed", RefundStatus::Failed),
        ("canceled", RefundStatus::Failed),
    ] {
        let events = of(json!(word), json!("pi_1"));
        let [CanonicalEvent::Refund(r)] = events.as_slice() else {
            panic!("{word}: {events:?}");
        };
        assert_eq!((r.status, r.provider_status.as_str()), (status, word));
        assert_eq!(r.payment_ref.as_deref(), Some("pi_1"));
    }
    assert_eq!(of(json!("reversed"), json!("pi_1")), vec![]);
    assert_eq!(of(Value::Null, json!("pi_1")), vec![]);
    // A refund naming no payment cannot be booked: dead-lettered with its reason.
    let mut refund = fixtures["resources"]["refund"].clone();
    refund["charge"] = Value::Null;
    let body = current_event("refund.created", refund);
    let error = normalize(&serde_json::to_vec(&body).unwrap()).unwrap_err();
    assert!(error.to_string().contains("names no payment"), "{error}");
}
