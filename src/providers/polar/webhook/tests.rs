//! Unit tests of the Polar normalization: conformance with Polar's definitions (every
//! webhook type decided, every normalized type's payload generated from its schema), and
//! the mapping of orders and subscriptions on payloads valid under those schemas.

use serde_json::{Value, json};

use super::*;
use crate::canonical::SubscriptionStatus;
use crate::providers::polar::definitions;
use crate::providers::testing::schema::set;

const TS: &str = "2025-01-10T09:00:00.123456Z";
const MODIFIED: &str = "2025-01-10T08:59:58Z";
const NEXT: &str = "2025-01-12T08:59:58Z";
const ORDER: &str = "8a4c1f0e-0000-4000-8000-000000000001";
const SUB: &str = "e5149aae-e521-42b9-b24c-abb8d71eea2e";
const CUSTOMER: &str = "992fae2a-2a17-4b7a-8d9e-e287cf90131b";

/// The payload of webhook `event_type` generated from its schema, with `data` patched by
/// `patch` (JSON pointers under `/data`), checked valid under that schema.
fn payload(event_type: &str, patch: &[(&str, Value)]) -> Value {
    let spec = definitions();
    let schema = spec.webhook_body(event_type);
    let mut value = spec.generate(schema);
    set(&mut value, "/timestamp", json!(TS));
    for (pointer, v) in patch {
        set(&mut value, &format!("/data{pointer}"), v.clone());
    }
    let errors = spec.validate(&value, schema);
    assert!(errors.is_empty(), "{event_type}: {errors:#?}");
    value
}

fn order(event_type: &str, status: &str, next: Option<&str>) -> Value {
    payload(
        event_type,
        &[
            ("/id", json!(ORDER)),
            ("/status", json!(status)),
            ("/modified_at", json!(MODIFIED)),
            ("/total_amount", json!(1999)),
            ("/currency", json!("usd")),
            ("/customer_id", json!(CUSTOMER)),
            ("/subscription_id", json!(SUB)),
            ("/next_payment_attempt_at", json!(next)),
        ],
    )
}

fn subscription(event_type: &str, status: &str) -> Value {
    payload(
        event_type,
        &[
            ("/id", json!(SUB)),
            ("/status", json!(status)),
            ("/modified_at", json!(MODIFIED)),
            ("/currency", json!("usd")),
            ("/customer_id", json!(CUSTOMER)),
            ("/current_period_end", json!("2025-02-10T08:00:00Z")),
            (
                "/cancel_at_period_end",
                json!(event_type == "subscription.canceled"),
            ),
        ],
    )
}

fn bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

fn t(text: &str) -> Option<DateTime<Utc>> {
    Some(
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc),
    )
}

fn one(value: &Value) -> CanonicalEvent {
    let n = normalize(&bytes(value)).unwrap();
    assert_eq!(n.events.len(), 1, "{}", n.event_type);
    n.events.into_iter().next().unwrap()
}

fn attempt(value: &Value) -> BillingAttempt {
    match one(value) {
        CanonicalEvent::BillingAttempt(a) => a,
        other => panic!("not an attempt: {other:?}"),
    }
}

#[test]
fn every_webhook_of_the_definitions_is_decided() {
    let spec = definitions();
    let names = spec.webhook_names();
    assert_eq!(names.len(), 16, "the copied definitions' webhooks");
    for name in &names {
        // What the payload's `data` is, per the definitions.
        let payload = spec.resolve(spec.webhook_body(name));
        let data = payload["properties"]["data"]["$ref"].as_str().unwrap_or("");
        match handling(name) {
            Some(OrderAttempt) => assert!(data.ends_with("/Order"), "{name}: {data}"),
            Some(SubscriptionState) => assert!(data.ends_with("/Subscription"), "{name}: {data}"),
            Some(OrderRefund) => assert!(data.ends_with("/Refund"), "{name}: {data}"),
            Some(Ignored(reason)) => assert!(reason.trim().len() > 20, "{name}: say why"),
            None => panic!("{name} is not in the decision table"),
        }
    }
    for (i, (name, decided)) in WEBHOOKS.iter().enumerate() {
        assert!(
            WEBHOOKS[i + 1..].iter().all(|(other, _)| other != name),
            "{name} twice"
        );
        if let Ignored(reason) = decided {
            assert!(reason.trim().len() > 20, "{name}: say why");
        }
    }
}

#[test]
fn every_normalized_webhook_normalizes_its_generated_payload() {
    let spec = definitions();
    for name in spec.webhook_names() {
        let mut generated = spec.generate(spec.webhook_body(&name));
        if generated["data"]["currency"] == "text" {
            // A `Refund`'s currency has no example in the schema ("Currency", ISO 4217 in
            // lower case, like the Order's example): a real code stands for it.
            generated["data"]["currency"] = json!("usd");
        }
        assert_eq!(generated["type"], name.as_str());
        let n = normalize(&bytes(&generated)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(n.event_type, name);
        match handling(&name) {
            Some(Ignored(_)) => assert!(n.is_ignored(), "{name}"),
            Some(OrderAttempt) => {
                let [CanonicalEvent::BillingAttempt(a)] = n.events.as_slice() else {
                    panic!("{name}: {n:?}");
                };
                // The schemas' own examples: a `paid` order of 9720 (usd).
                assert_eq!(
                    (a.status, a.provider_status.as_str()),
                    (AttemptStatus::Succeeded, "paid")
                );
                assert_eq!(
                    a.amount,
                    Some(Money {
                        minor: 9720,
                        currency: "USD".into()
                    })
                );
            }
            Some(SubscriptionState) => {
                let [CanonicalEvent::Subscription(s)] = n.events.as_slice() else {
                    panic!("{name}: {n:?}");
                };
                assert_eq!(s.status, SubscriptionStatus::Active, "{name}");
            }
            Some(OrderRefund) => {
                let [CanonicalEvent::Refund(r)] = n.events.as_slice() else {
                    panic!("{name}: {n:?}");
                };
                let example = spec.schema("Refund");
                assert!(r.amount.minor >= 0, "{name}: {example}");
            }
            None => unreachable!("checked above"),
        }
    }
}

#[test]
fn a_pending_order_in_dunning_is_a_failed_attempt() {
    for event_type in ["order.updated", "order.created"] {
        let a = attempt(&order(event_type, "pending", Some(NEXT)));
        assert_eq!(
            (a.status, a.provider_status.as_str()),
            (AttemptStatus::Failed, "pending"),
            "{event_type}"
        );
        assert_eq!(a.next_attempt_at, t(NEXT));
        assert_eq!(
            (a.attempt_id.as_str(), a.cycle_id.as_deref()),
            (ORDER, Some(ORDER))
        );
        assert_eq!(a.subscription_id.as_deref(), Some(SUB));
        assert_eq!(a.attempted_at, t(MODIFIED));
        assert_eq!(
            (&a.error_code, &a.error_message, a.attempt_count),
            (&None, &None, None)
        );
    }
    // Not in dunning (not charged yet, or Polar's retries exhausted): pending.
    let a = attempt(&order("order.updated", "pending", None));
    assert_eq!(
        (a.status, a.next_attempt_at),
        (AttemptStatus::Pending, None)
    );
    let mut absent = order("order.created", "pending", None);
    absent["data"]
        .as_object_mut()
        .unwrap()
        .remove("next_payment_attempt_at");
    assert_eq!(attempt(&absent).status, AttemptStatus::Pending);
}

#[test]
fn order_statuses_map() {
    use AttemptStatus as A;
    let cases = [
        ("order.created", "draft", A::Pending),
        ("order.paid", "paid", A::Succeeded),
        ("order.refunded", "refunded", A::Refunded),
        // Money was collected; the partial amount needs the ledger (see mod.rs).
        ("order.refunded", "partially_refunded", A::Succeeded),
        ("order.updated", "partially_refunded", A::Succeeded),
        ("order.updated", "void", A::Skipped),
    ];
    for (event_type, word, status) in cases {
        let a = attempt(&order(event_type, word, None));
        assert_eq!(
            (a.status, a.provider_status.as_str()),
            (status, word),
            "{event_type}"
        );
        assert_eq!(
            a.amount,
            Some(Money {
                minor: 1999,
                currency: "USD".into()
            }),
            "the order's total_amount"
        );
    }
    // Every OrderStatus of the definitions is mapped.
    for word in definitions().schema("OrderStatus")["enum"]
        .as_array()
        .unwrap()
    {
        let word = word.as_str().unwrap();
        assert!(attempt_status(word, false).is_some(), "{word}");
    }
}

#[test]
fn order_times_amounts_and_currencies() {
    // A one-time order in yen without modified_at: created_at, no subscription.
    let mut value = order("order.paid", "paid", None);
    value["data"]["currency"] = json!("jpy");
    value["data"]["total_amount"] = json!(1500);
    value["data"]["modified_at"] = Value::Null;
    value["data"]["created_at"] = json!("2025-01-10T08:00:00Z");
    value["data"]["subscription_id"] = Value::Null;
    let a = attempt(&value);
    assert_eq!(
        a.amount,
        Some(Money {
            minor: 1500,
            currency: "JPY".into()
        })
    );
    assert_eq!(a.subscription_id, None);
    assert_eq!(a.attempted_at, t("2025-01-10T08:00:00Z"));
    // Neither time on the order (beyond its schema): the envelope's timestamp.
    let fields = value["data"].as_object_mut().unwrap();
    fields.remove("created_at");
    fields.remove("modified_at");
    assert_eq!(attempt(&value).attempted_at, t(TS));
}

#[test]
fn unknown_words_are_tolerated_not_guessed() {
    // Outside OrderStatus / SubscriptionStatus: archived as ignored (and counted).
    let mut value = order("order.updated", "pending", None);
    value["data"]["status"] = json!("failed");
    let n = normalize(&bytes(&value)).unwrap();
    assert!(n.is_ignored());
    assert_eq!(n.event_type, "order.updated");
    let mut value = subscription("subscription.updated", "active");
    value["data"]["status"] = json!("zombie");
    assert!(normalize(&bytes(&value)).unwrap().is_ignored());
    // A type in no table.
    let n = normalize(br#"{"type":"payout.created","timestamp":"2025-01-10T09:00:00Z","data":{}}"#)
        .unwrap();
    assert_eq!(
        (n.event_type.as_str(), n.is_ignored()),
        ("payout.created", true)
    );
}

#[test]
fn subscription_events_become_changes() {
    use SubscriptionStatus as S;
    let cases = [
        ("subscription.created", "incomplete", S::Pending),
        ("subscription.created", "trialing", S::Pending),
        ("subscription.updated", "incomplete_expired", S::Expired),
        ("subscription.updated", "unpaid", S::PastDue),
        ("subscription.active", "active", S::Active),
        // cancel_at_period_end: still active until revoked.
        ("subscription.canceled", "active", S::Active),
        ("subscription.uncanceled", "active", S::Active),
        ("subscription.revoked", "canceled", S::Cancelled),
        ("subscription.revoked", "unpaid", S::PastDue),
        ("subscription.past_due", "past_due", S::PastDue),
        ("subscription.cycled", "active", S::Active),
        ("subscription.paused", "paused", S::Paused),
        ("subscription.resumed", "active", S::Active),
    ];
    for (event_type, word, status) in cases {
        let n = normalize(&bytes(&subscription(event_type, word))).unwrap();
        assert_eq!(n.event_type, event_type);
        let [CanonicalEvent::Subscription(s)] = n.events.as_slice() else {
            panic!("{event_type}: not one change");
        };
        assert_eq!(s.status, status, "{event_type} {word}");
        assert_eq!(s.provider_status, word);
        assert_eq!(s.subscription_id, SUB);
        assert_eq!(s.customer_id.as_deref(), Some(CUSTOMER));
        assert_eq!(s.currency.as_deref(), Some("USD"));
        assert_eq!(s.current_period_end, t("2025-02-10T08:00:00Z"));
        assert_eq!(s.updated_at, t(MODIFIED));
        assert_eq!(s.version, None);
    }
    // Every SubscriptionStatus of the definitions is mapped.
    for word in definitions().schema("SubscriptionStatus")["enum"]
        .as_array()
        .unwrap()
    {
        assert!(
            stripe_subscription_status(word.as_str().unwrap()).is_some(),
            "{word}"
        );
    }
    let mut value = subscription("subscription.updated", "active");
    value["data"]["modified_at"] = Value::Null;
    let CanonicalEvent::Subscription(s) = one(&value) else {
        panic!("not a change");
    };
    assert_eq!(s.updated_at, t(TS));
}

#[test]
fn ignored_types_are_archived_without_events() {
    for event_type in [
        "checkout.created",
        "customer.state_changed",
        "benefit_grant.cycled",
    ] {
        let body = json!({"type": event_type, "timestamp": TS, "data": {"id": "x", "amount": 1.5}});
        let n = normalize(&bytes(&body)).unwrap();
        assert!(n.is_ignored(), "{event_type}");
    }
}

#[test]
fn malformed_payloads_are_errors() {
    let reason = |r: Result<Normalized, NormalizeError>| match r {
        Err(NormalizeError::Malformed(reason)) => reason,
        Ok(n) => panic!("accepted: {n:?}"),
    };
    let with = |field: &str, value: Value| {
        let mut body = order("order.paid", "paid", None);
        body["data"][field] = value;
        reason(normalize(&bytes(&body)))
    };
    assert!(reason(normalize(b"not json")).contains("not a Polar webhook"));
    assert!(reason(normalize(br#"{"data":{}}"#)).contains("type"));
    assert!(reason(normalize(br#"{"type":"order.paid","timestamp":"x"}"#)).contains("timestamp"));
    assert!(reason(normalize(br#"{"type":"order.paid"}"#)).contains("no data"));
    assert!(with("id", Value::Null).contains("order.paid: no order id"));
    assert!(with("id", json!("")).contains("no order id"));
    assert!(with("status", Value::Null).contains("no order status"));
    assert!(with("currency", Value::Null).contains("currency"));
    assert!(with("currency", json!("zzz")).contains("unknown currency"));
    assert!(with("total_amount", json!(19.99)).contains("minor units"));
    assert!(with("total_amount", json!("19.999")).contains("minor units"));
    assert!(with("next_payment_attempt_at", json!("tomorrow")).contains("next_payment_attempt_at"));
    let sub = |data: Value| reason(normalize(&bytes(&data)));
    let mut data = subscription("subscription.updated", "active");
    data["data"]["id"] = Value::Null;
    assert!(sub(data).contains("no subscription id"));
    let mut data = subscription("subscription.updated", "active");
    data["data"]["currency"] = json!("xx");
    assert!(sub(data).contains("currency"));
    let mut data = subscription("subscription.updated", "active");
    data["data"]["current_period_end"] = json!(1700000000);
    assert!(sub(data).contains("not a Polar subscription"));
}

proptest::proptest! {
    #[test]
    fn arbitrary_bodies_never_panic(
        body in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
        event_type in proptest::sample::select(vec![
            "order.paid", "order.updated", "subscription.updated", "subscription.revoked", "x",
        ]),
        amount in proptest::num::i64::ANY, text in ".{0,24}",
    ) {
        let _ = normalize(&body);
        let data = json!({
            "id": text, "status": text, "total_amount": amount, "currency": text,
            "modified_at": text, "current_period_end": text, "next_payment_attempt_at": text,
        });
        let _ = normalize(&bytes(&json!({ "type": event_type, "timestamp": TS, "data": data })));
    }
}

fn refund(event_type: &str, status: &str, amount: i64, tax: i64) -> Value {
    payload(
        event_type,
        &[
            ("/id", json!("4f0c2f0e-0000-4000-8000-00000000000f")),
            ("/status", json!(status)),
            ("/amount", json!(amount)),
            ("/tax_amount", json!(tax)),
            ("/currency", json!("usd")),
            ("/order_id", json!(ORDER)),
            ("/subscription_id", json!(SUB)),
            ("/modified_at", json!(MODIFIED)),
        ],
    )
}

#[test]
fn a_refund_is_the_orders_refund_of_its_amount_and_tax() {
    for (status, expected) in [
        ("succeeded", RefundStatus::Succeeded),
        ("pending", RefundStatus::Pending),
        ("failed", RefundStatus::Failed),
        ("canceled", RefundStatus::Failed),
    ] {
        for event_type in ["refund.created", "refund.updated"] {
            let CanonicalEvent::Refund(r) = one(&refund(event_type, status, 500, 100)) else {
                panic!("{event_type}: not a refund");
            };
            assert_eq!(
                (
                    r.refund_id.as_str(),
                    r.attempt_id.as_deref().expect("a named attempt"),
                    r.status
                ),
                ("4f0c2f0e-0000-4000-8000-00000000000f", ORDER, expected),
                "{event_type} {status}"
            );
            assert_eq!(r.provider_status, status);
            assert_eq!(
                r.amount,
                Money {
                    minor: 600,
                    currency: "USD".into()
                },
                "the order's total included its tax"
            );
            assert_eq!(r.subscription_id.as_deref(), Some(SUB));
            assert_eq!(r.refunded_at, t(MODIFIED));
        }
    }
    // A status outside RefundStatus is tolerated and counted, never booked.
    let mut odd = refund("refund.updated", "succeeded", 500, 0);
    set(&mut odd, "/data/status", json!("reversed"));
    assert!(normalize(&bytes(&odd)).unwrap().is_ignored());
}
