//! Unit tests of `paynow_normalize.rs`.

use chrono::{TimeZone, Utc};
use serde_json::{Value, json};

use super::*;

fn run(value: Value) -> Result<Normalized, NormalizeError> {
    normalize(&serde_json::to_vec(&value).unwrap())
}

fn payment(event: &str) -> Value {
    json!({"event_type": event, "event_id": "411486491630370900",
    "timestamp": "2024-11-12T10:30:00Z",
    "body": {
        "id": "411486491630370818", "status": "completed", "currency": "USD",
        "total_amount": 1999, "subscription_id": 411486491630370817u64,
        "order_id": "411486491630370819", "completed_at": "2024-11-12T10:29:59Z",
    }})
}

fn subscription(event: &str, status: Value) -> Value {
    json!({"event_type": event, "event_id": "411486491630370901", "body": {
        "id": "411486491630370817", "pretty_id": "SUB-1", "store_id": "411486491630370000",
        "status": status, "currency": "EUR", "customer": {"id": "411486491630370555"},
        "interval_value": 1, "interval_scale": "month", "total_amount": 999,
        "current_period_end": "2024-12-12T10:30:00Z", "updated_at": "2024-11-12T10:30:00Z",
        "next_attempt_at": null, "attempt_count": 0,
    }})
}

fn one_attempt(n: &Normalized) -> &BillingAttempt {
    match n.events.as_slice() {
        [CanonicalEvent::BillingAttempt(a)] => a,
        other => panic!("expected one attempt: {other:?}"),
    }
}

#[test]
fn payment_events_map_status_ids_amount_and_times() {
    let t = |h: u32, m: u32, s: u32| Some(Utc.with_ymd_and_hms(2024, 11, 12, h, m, s).unwrap());
    let n = run(payment("ON_PAYMENT_COMPLETED")).unwrap();
    assert_eq!(n.event_type, "ON_PAYMENT_COMPLETED");
    let a = one_attempt(&n);
    assert_eq!(
        (a.status, a.provider_status.as_str()),
        (AttemptStatus::Succeeded, "completed")
    );
    assert_eq!(a.attempt_id, "411486491630370818");
    assert_eq!(
        a.subscription_id.as_deref(),
        Some("411486491630370817"),
        "a number id is kept as text"
    );
    assert_eq!(a.cycle_id.as_deref(), Some("411486491630370819"));
    assert_eq!(
        a.amount,
        Some(Money {
            minor: 1999,
            currency: "USD".into()
        })
    );
    assert_eq!(a.attempted_at, t(10, 29, 59));
    assert_eq!(
        (a.error_code.as_deref(), a.attempt_count, a.next_attempt_at),
        (None, None, None)
    );

    let mut failed = payment("ON_PAYMENT_FAILED");
    let body = failed["body"].as_object_mut().unwrap();
    body.remove("status");
    body.remove("completed_at");
    body.insert("currency".into(), json!("jpy"));
    body.insert("total_amount".into(), json!(1500));
    body.insert("decline_code".into(), json!("insufficient_funds"));
    body.insert("failure_reason".into(), json!("Insufficient funds"));
    body.insert("attempt_count".into(), json!(2));
    body.insert("next_attempt_at".into(), json!("2024-11-15T10:30:00Z"));
    let n = run(failed).unwrap();
    let a = one_attempt(&n);
    assert_eq!(
        (a.status, a.provider_status.as_str()),
        (AttemptStatus::Failed, "ON_PAYMENT_FAILED")
    );
    assert_eq!(
        a.amount,
        Some(Money {
            minor: 1500,
            currency: "JPY".into()
        })
    );
    assert_eq!(a.error_code.as_deref(), Some("insufficient_funds"));
    assert_eq!(a.error_message.as_deref(), Some("Insufficient funds"));
    assert_eq!(
        a.attempted_at,
        t(10, 30, 0),
        "falls back to the envelope timestamp"
    );
    assert_eq!(a.attempt_count, Some(2));
    assert_eq!(
        a.next_attempt_at,
        Some(Utc.with_ymd_and_hms(2024, 11, 15, 10, 30, 0).unwrap())
    );

    // Retry data carried by the embedded subscription; KWD minor units (fils).
    let mut nested = payment("ON_PAYMENT_FAILED");
    nested["body"]["currency"] = json!("KWD");
    nested["body"]["total_amount"] = json!(12345);
    nested["body"]["subscription"] = json!({"id": "411486491630370817", "attempt_count": 3, "next_attempt_at": "2024-11-16T00:00:00Z"});
    let n = run(nested).unwrap();
    let a = one_attempt(&n);
    assert_eq!(
        a.amount,
        Some(Money {
            minor: 12345,
            currency: "KWD".into()
        })
    );
    assert_eq!(a.attempt_count, Some(3));
    assert_eq!(
        a.next_attempt_at,
        Some(Utc.with_ymd_and_hms(2024, 11, 16, 0, 0, 0).unwrap())
    );
}

#[test]
fn subscription_events_map_status_and_fields() {
    use SubscriptionStatus::*;
    let table = [
        (
            "ON_SUBSCRIPTION_ACTIVATED",
            json!("active"),
            Active,
            "active",
        ),
        ("ON_SUBSCRIPTION_RENEWED", json!("active"), Active, "active"),
        (
            "ON_SUBSCRIPTION_CANCELED",
            json!("canceled"),
            Cancelled,
            "canceled",
        ),
        (
            "ON_SUBSCRIPTION_ACTIVATED",
            json!("created"),
            Pending,
            "created",
        ),
        (
            "ON_SUBSCRIPTION_ACTIVATED",
            json!(null),
            Active,
            "ON_SUBSCRIPTION_ACTIVATED",
        ),
        (
            "ON_SUBSCRIPTION_RENEWED",
            json!(null),
            Active,
            "ON_SUBSCRIPTION_RENEWED",
        ),
        (
            "ON_SUBSCRIPTION_CANCELED",
            json!(null),
            Cancelled,
            "ON_SUBSCRIPTION_CANCELED",
        ),
    ];
    for (event, status, expected, word) in table {
        let n = run(subscription(event, status)).unwrap();
        let [CanonicalEvent::Subscription(c)] = n.events.as_slice() else {
            panic!("{n:?}")
        };
        assert_eq!(
            (c.status, c.provider_status.as_str()),
            (expected, word),
            "{event}"
        );
        assert_eq!(c.subscription_id, "411486491630370817");
        assert_eq!(c.currency.as_deref(), Some("EUR"));
        assert_eq!(c.customer_id.as_deref(), Some("411486491630370555"));
        assert_eq!(
            c.current_period_end,
            Some(Utc.with_ymd_and_hms(2024, 12, 12, 10, 30, 0).unwrap())
        );
        assert_eq!(
            c.updated_at,
            Some(Utc.with_ymd_and_hms(2024, 11, 12, 10, 30, 0).unwrap())
        );
    }
}

#[test]
fn renewal_with_embedded_payment_also_yields_a_succeeded_attempt() {
    let mut renewed = subscription("ON_SUBSCRIPTION_RENEWED", json!("active"));
    renewed["body"]["payment"] = json!({"id": "411486491630370999", "currency": "EUR",
        "total_amount": 999, "completed_at": "2024-11-12T10:30:01Z"});
    let n = run(renewed).unwrap();
    let [
        CanonicalEvent::Subscription(c),
        CanonicalEvent::BillingAttempt(a),
    ] = n.events.as_slice()
    else {
        panic!("{n:?}")
    };
    assert_eq!(c.status, SubscriptionStatus::Active);
    assert_eq!(
        (a.status, a.attempt_id.as_str()),
        (AttemptStatus::Succeeded, "411486491630370999")
    );
    assert_eq!(a.subscription_id.as_deref(), Some("411486491630370817"));
    assert_eq!(
        a.amount,
        Some(Money {
            minor: 999,
            currency: "EUR".into()
        })
    );
}

#[test]
fn other_types_are_ignored() {
    for t in [
        "ON_ORDER_COMPLETED",
        "ON_REFUND",
        "ON_TRIAL_ACTIVATED",
        "ON_DELIVERY_ITEM_ADDED",
    ] {
        let n = run(json!({"event_type": t, "event_id": "1", "body": {"id": "2"}})).unwrap();
        assert!(n.is_ignored(), "{t}");
        assert_eq!(n.event_type, t);
    }
}

#[test]
fn malformed_payloads_are_errors() {
    assert!(normalize(b"not json").is_err());
    assert!(normalize(b"[]").is_err());
    assert!(
        run(json!({"event_id": "1", "body": {}})).is_err(),
        "no event_type"
    );
    let mut no_id = payment("ON_PAYMENT_COMPLETED");
    no_id["body"].as_object_mut().unwrap().remove("id");
    assert!(run(no_id).unwrap_err().to_string().contains("body.id"));
    let mut currency = payment("ON_PAYMENT_COMPLETED");
    currency["body"]["currency"] = json!("XXX1");
    assert!(
        run(currency)
            .unwrap_err()
            .to_string()
            .contains("unknown currency")
    );
    let mut no_currency = payment("ON_PAYMENT_FAILED");
    no_currency["body"]
        .as_object_mut()
        .unwrap()
        .remove("currency");
    assert!(run(no_currency).is_err());
    let mut decimal = payment("ON_PAYMENT_COMPLETED");
    decimal["body"]["total_amount"] = json!(19.99);
    assert!(run(decimal).is_err(), "minor units are integers");
    assert!(
        run(json!({"event_type": "ON_PAYMENT_FAILED", "event_id": "1"})).is_err(),
        "no body"
    );
    assert!(run(subscription("ON_SUBSCRIPTION_RENEWED", json!("zombie"))).is_err());
    let mut bad_time = subscription("ON_SUBSCRIPTION_CANCELED", json!("canceled"));
    bad_time["body"]["updated_at"] = json!("soon");
    assert!(run(bad_time).is_err());
    let mut negative = payment("ON_PAYMENT_FAILED");
    negative["body"]["attempt_count"] = json!(-1);
    assert!(run(negative).is_err());
}

proptest::proptest! {
    #[test]
    fn arbitrary_bodies_never_panic(
        body in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
        event in proptest::sample::select(vec!["ON_PAYMENT_COMPLETED", "ON_PAYMENT_FAILED",
            "ON_SUBSCRIPTION_RENEWED", "ON_SUBSCRIPTION_CANCELED", "ON_REFUND"]),
        currency in ".{0,4}", amount in proptest::num::i64::ANY, status in ".{0,10}",
    ) {
        let _ = normalize(&body);
        let mut value = payment(event);
        value["body"]["currency"] = json!(currency);
        value["body"]["total_amount"] = json!(amount);
        value["body"]["status"] = json!(status);
        let _ = run(value);
    }
}
