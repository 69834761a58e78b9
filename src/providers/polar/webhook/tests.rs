//! Unit tests of `polar_normalize.rs`.

use serde_json::{Value, json};

use super::*;
use crate::canonical::SubscriptionStatus;

const TS: &str = "2025-01-10T09:00:00.123456Z";
const MODIFIED: &str = "2025-01-10T08:59:58Z";
const NEXT: &str = "2025-01-12T08:59:58Z";
const SUB: &str = "e5149aae-e521-42b9-b24c-abb8d71eea2e";
const CUSTOMER: &str = "992fae2a-2a17-4b7a-8d9e-e287cf90131b";

fn envelope(event_type: &str, data: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({ "type": event_type, "timestamp": TS, "data": data })).unwrap()
}

fn order(status: &str) -> Value {
    json!({
        "id": "ord_1", "created_at": "2025-01-10T08:00:00Z", "modified_at": MODIFIED,
        "status": status, "paid": status == "paid", "subtotal_amount": 1999,
        "discount_amount": 0, "net_amount": 1999, "amount": 1999, "tax_amount": 0,
        "total_amount": 1999, "refunded_amount": 0, "currency": "usd",
        "billing_reason": "subscription_cycle", "customer_id": CUSTOMER,
        "subscription_id": SUB, "next_payment_attempt_at": NEXT
    })
}

fn subscription(status: &str) -> Value {
    json!({
        "id": SUB, "created_at": "2024-12-10T08:00:00Z", "modified_at": MODIFIED,
        "amount": 1999, "currency": "usd", "recurring_interval": "month", "status": status,
        "current_period_start": "2025-01-10T08:00:00Z", "current_period_end": "2025-02-10T08:00:00Z",
        "cancel_at_period_end": false, "customer_id": CUSTOMER,
    })
}

fn t(text: &str) -> Option<DateTime<Utc>> {
    Some(
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc),
    )
}

fn one(body: &[u8]) -> CanonicalEvent {
    let n = normalize(body).unwrap();
    assert_eq!(n.events.len(), 1, "{}", n.event_type);
    n.events.into_iter().next().unwrap()
}

#[test]
fn order_events_become_attempts() {
    use AttemptStatus as A;
    let cases = [
        ("order.created", "pending", A::Pending),
        ("order.created", "draft", A::Pending),
        ("order.updated", "pending", A::Pending),
        ("order.updated", "processing", A::Pending),
        ("order.updated", "no_payment", A::Pending),
        ("order.updated", "requires_action", A::RequiresAction),
        ("order.updated", "failed", A::Failed),
        ("order.updated", "void", A::Skipped),
        ("order.updated", "canceled", A::Skipped),
        ("order.updated", "succeeded", A::Succeeded),
        ("order.paid", "paid", A::Succeeded),
        ("order.refunded", "refunded", A::Refunded),
        ("order.refunded", "partially_refunded", A::Refunded),
    ];
    for (event_type, word, status) in cases {
        let n = normalize(&envelope(event_type, order(word))).unwrap();
        assert_eq!(n.event_type, event_type);
        let [CanonicalEvent::BillingAttempt(a)] = n.events.as_slice() else {
            panic!("{event_type}: not one attempt");
        };
        assert_eq!(a.status, status, "{word}");
        assert_eq!(a.provider_status, word);
        assert_eq!(
            (a.attempt_id.as_str(), a.cycle_id.as_deref()),
            ("ord_1", Some("ord_1"))
        );
        assert_eq!(a.subscription_id.as_deref(), Some(SUB));
        assert_eq!(
            a.amount,
            Some(Money {
                minor: 1999,
                currency: "USD".into()
            })
        );
        assert_eq!(a.attempted_at, t(MODIFIED));
        assert_eq!(a.next_attempt_at, t(NEXT));
        assert_eq!((&a.error_code, a.attempt_count), (&None, None));
    }
    // A one-time order in yen, only the deprecated `amount`, no modified_at.
    let mut data = order("paid");
    let fields = data.as_object_mut().unwrap();
    for field in ["total_amount", "modified_at", "created_at"] {
        fields.remove(field);
    }
    data["amount"] = json!(1500);
    data["currency"] = json!("jpy");
    data["subscription_id"] = Value::Null;
    data["next_payment_attempt_at"] = Value::Null;
    let CanonicalEvent::BillingAttempt(a) = one(&envelope("order.paid", data)) else {
        panic!("not an attempt");
    };
    assert_eq!(
        a.amount,
        Some(Money {
            minor: 1500,
            currency: "JPY".into()
        })
    );
    assert_eq!((a.subscription_id, a.next_attempt_at), (None, None));
    assert_eq!(
        a.attempted_at,
        t(TS),
        "falls back to the envelope timestamp"
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
        ("subscription.past_due", "past_due", S::PastDue),
        ("subscription.paused", "paused", S::Paused),
    ];
    for (event_type, word, status) in cases {
        let mut data = subscription(word);
        data["cancel_at_period_end"] = json!(event_type == "subscription.canceled");
        let n = normalize(&envelope(event_type, data)).unwrap();
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
    let mut data = subscription("active");
    data["modified_at"] = Value::Null;
    data["current_period_end"] = Value::Null;
    let CanonicalEvent::Subscription(s) = one(&envelope("subscription.updated", data)) else {
        panic!("not a change");
    };
    assert_eq!((s.updated_at, s.current_period_end), (t(TS), None));
}

#[test]
fn other_types_are_ignored() {
    for event_type in [
        "checkout.created",
        "customer.state_changed",
        "refund.created",
        "benefit_grant.cycled",
    ] {
        let n = normalize(&envelope(event_type, json!({ "id": "x", "amount": 1.5 }))).unwrap();
        assert_eq!(n.event_type, event_type);
        assert!(n.is_ignored());
    }
}

#[test]
fn malformed_payloads_are_errors() {
    let reason = |r: Result<Normalized, NormalizeError>| match r {
        Err(NormalizeError::Malformed(reason)) => reason,
        Ok(n) => panic!("accepted: {n:?}"),
    };
    let with = |field: &str, value: Value| {
        let mut data = order("paid");
        data[field] = value;
        reason(normalize(&envelope("order.paid", data)))
    };
    assert!(reason(normalize(b"not json")).contains("not a Polar webhook"));
    assert!(reason(normalize(br#"{"data":{}}"#)).contains("type"));
    assert!(reason(normalize(br#"{"type":"order.paid","timestamp":"x"}"#)).contains("timestamp"));
    assert!(reason(normalize(br#"{"type":"order.paid"}"#)).contains("no data"));
    assert!(with("id", Value::Null).contains("order.paid: no order id"));
    assert!(with("id", json!("")).contains("no order id"));
    assert!(with("status", Value::Null).contains("no order status"));
    assert!(with("status", json!("bogus")).contains("unknown status"));
    assert!(with("currency", Value::Null).contains("currency"));
    assert!(with("currency", json!("zzz")).contains("unknown currency"));
    assert!(with("total_amount", json!(19.99)).contains("minor units"));
    assert!(with("total_amount", json!("19.999")).contains("minor units"));
    assert!(with("next_payment_attempt_at", json!("tomorrow")).contains("next_payment_attempt_at"));
    let sub = |data: Value| reason(normalize(&envelope("subscription.updated", data)));
    let mut data = subscription("active");
    data["id"] = Value::Null;
    assert!(sub(data).contains("no subscription id"));
    assert!(sub(subscription("bogus")).contains("unknown status"));
    let mut data = subscription("active");
    data["currency"] = json!("xx");
    assert!(sub(data).contains("currency"));
    let mut data = subscription("active");
    data["current_period_end"] = json!(1700000000);
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
        let _ = normalize(&envelope(event_type, data));
    }
}
