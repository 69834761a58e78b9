//! Unit tests of Stripe's normalization (`webhook.rs`).

use serde_json::{Value, json};

use super::*;
use crate::canonical::SubscriptionStatus;

const CREATED: i64 = 1_700_000_000;

fn event(event_type: &str, object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": "evt_1", "object": "event", "api_version": "2024-06-20",
        "created": CREATED, "type": event_type, "livemode": false,
        "data": { "object": object }
    }))
    .unwrap()
}

fn invoice(attempt_count: u32) -> Value {
    json!({
        "id": "in_1", "object": "invoice", "customer": "cus_1", "subscription": "sub_1",
        "amount_due": 1999, "amount_paid": 0, "currency": "usd", "status": "open",
        "attempt_count": attempt_count, "next_payment_attempt": CREATED + 86_400,
        "payment_intent": "pi_1"
    })
}

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
    assert!(sub(subscription("bogus")).contains("unknown status"));
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
