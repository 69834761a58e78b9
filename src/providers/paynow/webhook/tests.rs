//! Unit tests of the PayNow normalization: conformance with PayNow's definitions (every
//! event type decided, every normalized type's payload generated from its schema), and the
//! mapping on payloads valid under those schemas.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};

use super::*;
use crate::canonical::RefundStatus;
use crate::providers::paynow::definitions;
use crate::providers::testing::schema::set;

const PAYMENT: &str = "411486491630370818";
const ORDER: &str = "411486491630370819";
const SUB: &str = "411486491630370817";

fn run(value: &Value) -> Result<Normalized, NormalizeError> {
    normalize(&serde_json::to_vec(value).unwrap())
}

/// The payload of `event_type` generated from its webhook schema, with `body` patched
/// (JSON pointers under `/body`), checked valid under that schema.
fn payload(event_type: &str, patch: &[(&str, Value)]) -> Value {
    let spec = &definitions().0;
    let schema = spec.webhook_body(event_type);
    let mut value = spec.generate(schema);
    set(&mut value, "/event_type", json!(event_type));
    for (pointer, v) in patch {
        set(&mut value, &format!("/body{pointer}"), v.clone());
    }
    let errors = spec.validate(&value, schema);
    assert!(errors.is_empty(), "{event_type}: {errors:#?}");
    value
}

fn payment(event_type: &str) -> Value {
    payload(
        event_type,
        &[
            ("/id", json!(PAYMENT)),
            ("/order_id", json!(ORDER)),
            ("/currency", json!("USD")),
            ("/amount", json!(1999)),
        ],
    )
}

fn refund(refunded: i64, status: &str) -> Value {
    payload(
        "ON_REFUND",
        &[
            ("/payment_id", json!(PAYMENT)),
            ("/order_id", json!(ORDER)),
            ("/currency", json!("EUR")),
            ("/amount", json!(999)),
            ("/store_refund_amount", json!(refunded)),
            ("/status", json!(status)),
        ],
    )
}

fn subscription(event_type: &str, status: &str) -> Value {
    payload(
        event_type,
        &[
            ("/id", json!(SUB)),
            ("/status", json!(status)),
            ("/currency", json!("EUR")),
            ("/customer_id", json!("411486491630370555")),
            ("/current_period_end", json!("2024-12-12T10:30:00Z")),
        ],
    )
}

fn one_attempt(n: &Normalized) -> &BillingAttempt {
    match n.events.as_slice() {
        [CanonicalEvent::BillingAttempt(a)] => a,
        other => panic!("expected one attempt: {other:?}"),
    }
}

/// A refund event's refund and, when it was made, the payment's attempt.
fn refund_parts(n: &Normalized) -> (&crate::canonical::Refund, Option<&BillingAttempt>) {
    match n.events.as_slice() {
        [CanonicalEvent::Refund(r)] => (r, None),
        [CanonicalEvent::Refund(r), CanonicalEvent::BillingAttempt(a)] => (r, Some(a)),
        other => panic!("expected a refund: {other:?}"),
    }
}

fn one_change(n: &Normalized) -> &SubscriptionChange {
    match n.events.as_slice() {
        [CanonicalEvent::Subscription(c)] => c,
        other => panic!("expected one change: {other:?}"),
    }
}

fn at(text: &str) -> Option<DateTime<Utc>> {
    Some(
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc),
    )
}

#[test]
fn every_event_type_of_the_definitions_is_decided() {
    let spec = &definitions().0;
    let types = spec.schema("WebhookEventType")["enum"].as_array().unwrap();
    assert_eq!(types.len(), 30);
    for name in types {
        let name = name.as_str().unwrap();
        match handling(name) {
            Some(Ignored(reason)) => assert!(reason.trim().len() > 20, "{name}: say why"),
            Some(_) => {}
            None => panic!("{name} is not in the decision table"),
        }
    }
    // The webhooks with a payload are among them.
    let names = spec.webhook_names();
    assert_eq!(names.len(), 19);
    for name in &names {
        assert!(types.contains(&json!(name)), "{name}");
    }
    for (i, (name, _)) in EVENTS.iter().enumerate() {
        assert!(
            EVENTS[i + 1..].iter().all(|(other, _)| other != name),
            "{name} twice"
        );
        assert!(
            types.contains(&json!(name)),
            "{name} is not a WebhookEventType"
        );
    }
}

#[test]
fn every_normalized_event_normalizes_its_generated_payload() {
    let spec = &definitions().0;
    for name in spec.webhook_names() {
        let generated = spec.generate(spec.webhook_body(&name));
        assert_eq!(
            generated["event_type"],
            name.as_str(),
            "the schema's own example"
        );
        let n = run(&generated).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(n.event_type, name);
        match handling(&name) {
            Some(Ignored(_)) => assert!(n.is_ignored(), "{name}"),
            Some(PaymentAttempt(status)) => assert_eq!(one_attempt(&n).status, status),
            // The schema's examples: a refund of 5000 of a payment of 5000, `status`
            // without an example.
            Some(RefundOf) => {
                let (r, a) = refund_parts(&n);
                assert_eq!(r.amount.minor, 5000);
                let a = a.expect("a made refund names its payment's attempt");
                assert_eq!(
                    (a.status, a.amount.as_ref().map(|m| m.minor)),
                    (AttemptStatus::Refunded, Some(5000))
                );
            }
            // The schema's example status is `created`.
            Some(State) => assert_eq!(one_change(&n).status, SubscriptionStatus::Pending),
            None => unreachable!("checked above"),
        }
    }
}

#[test]
fn payments_map_their_defined_fields() {
    let n = run(&payment("ON_PAYMENT_COMPLETED")).unwrap();
    assert_eq!(n.event_type, "ON_PAYMENT_COMPLETED");
    let a = one_attempt(&n);
    let body = &payment("ON_PAYMENT_COMPLETED")["body"];
    assert_eq!(
        (a.status, a.provider_status.as_str()),
        (AttemptStatus::Succeeded, body["status"].as_str().unwrap())
    );
    assert_eq!(
        (a.attempt_id.as_str(), a.cycle_id.as_deref()),
        (PAYMENT, Some(ORDER))
    );
    assert_eq!(a.subscription_id, None, "a Payment names no subscription");
    assert_eq!(
        a.amount,
        Some(Money {
            minor: 1999,
            currency: "USD".into()
        })
    );
    assert_eq!(a.attempted_at, at(body["completed_at"].as_str().unwrap()));
    assert_eq!(
        (a.error_code.as_deref(), a.attempt_count, a.next_attempt_at),
        (None, None, None)
    );

    let mut failed = payment("ON_PAYMENT_FAILED");
    failed["body"]["failure_code"] = json!("insufficient_funds");
    failed["body"]["failed_at"] = json!("2024-11-12T10:30:00Z");
    failed["body"]["currency"] = json!("jpy");
    failed["body"]["amount"] = json!(1500);
    let n = run(&failed).unwrap();
    let a = one_attempt(&n);
    assert_eq!(
        (a.status, a.provider_status.as_str()),
        (AttemptStatus::Failed, "failed")
    );
    assert_eq!(a.error_code.as_deref(), Some("insufficient_funds"));
    assert_eq!(a.error_message, None);
    assert_eq!(a.attempted_at, at("2024-11-12T10:30:00Z"));
    assert_eq!(
        (a.attempt_count, a.next_attempt_at, &a.subscription_id),
        (None, None, &None)
    );
    assert_eq!(
        a.amount,
        Some(Money {
            minor: 1500,
            currency: "JPY".into()
        })
    );
    // KWD minor units (fils).
    failed["body"]["currency"] = json!("KWD");
    failed["body"]["amount"] = json!(12345);
    let n = run(&failed).unwrap();
    assert_eq!(
        one_attempt(&n).amount.as_ref().map(|m| m.minor),
        Some(12345)
    );
}

#[test]
fn a_full_refund_refunds_the_payments_attempt_and_a_partial_one_keeps_it_collected() {
    let n = run(&refund(999, "completed")).unwrap();
    let (r, a) = refund_parts(&n);
    let body = &refund(999, "completed")["body"];
    assert_eq!(
        (
            r.refund_id.as_str(),
            r.attempt_id.as_deref().expect("a named attempt"),
            r.status
        ),
        (
            body["id"].as_str().unwrap(),
            PAYMENT,
            RefundStatus::Succeeded
        )
    );
    assert_eq!(r.cycle_id.as_deref(), Some(ORDER));
    let eur = |minor| Money {
        minor,
        currency: "EUR".into(),
    };
    assert_eq!(r.amount, eur(999), "store_refund_amount");
    let a = a.unwrap();
    assert_eq!(
        (a.attempt_id.as_str(), a.status, a.provider_status.as_str()),
        (PAYMENT, AttemptStatus::Refunded, "refunded")
    );
    assert_eq!(a.cycle_id.as_deref(), Some(ORDER));
    assert_eq!(a.amount, Some(eur(999)), "the payment's amount");
    assert_eq!(a.attempted_at, at(body["completed_at"].as_str().unwrap()));
    assert_eq!(r.refunded_at, a.attempted_at);

    // Partial: the refund books its amount; the payment stays collected.
    let n = run(&refund(400, "completed")).unwrap();
    let (r, a) = refund_parts(&n);
    assert_eq!(r.amount, eur(400));
    let a = a.unwrap();
    assert_eq!(
        (a.status, a.provider_status.as_str()),
        (AttemptStatus::Succeeded, "partially_refunded")
    );
    assert_eq!(a.amount.as_ref().map(|m| m.minor), Some(999));

    // The event is sent when the refund is completed: only `canceled` and `failed` say
    // no refund was made (a failed refund, and nothing about the payment). An unknown
    // word is counted and read as made.
    for status in ["canceled", "failed"] {
        let n = run(&refund(999, status)).unwrap();
        let (r, a) = refund_parts(&n);
        assert_eq!((r.status, a), (RefundStatus::Failed, None), "{status}");
    }
    for status in ["created", "approved", "processing", "reversed"] {
        let n = run(&refund(999, status)).unwrap();
        let (r, a) = refund_parts(&n);
        assert_eq!(r.status, RefundStatus::Succeeded, "{status}");
        assert_eq!(a.unwrap().status, AttemptStatus::Refunded, "{status}");
    }
}

#[test]
fn subscriptions_map_status_and_the_past_due_flag() {
    use SubscriptionStatus::*;
    let table = [
        ("ON_SUBSCRIPTION_ACTIVATED", "active", Active),
        ("ON_SUBSCRIPTION_RENEWED", "active", Active),
        ("ON_SUBSCRIPTION_CANCELED", "canceled", Cancelled),
        ("ON_SUBSCRIPTION_ACTIVATED", "created", Pending),
    ];
    for (event, status, expected) in table {
        let n = run(&subscription(event, status)).unwrap();
        let c = one_change(&n);
        assert_eq!(
            (c.status, c.provider_status.as_str()),
            (expected, status),
            "{event}"
        );
        assert_eq!(c.subscription_id, SUB);
        assert_eq!(c.currency.as_deref(), Some("EUR"));
        assert_eq!(c.customer_id.as_deref(), Some("411486491630370555"));
        assert_eq!(
            c.current_period_end,
            Some(Utc.with_ymd_and_hms(2024, 12, 12, 10, 30, 0).unwrap())
        );
        assert_eq!(c.updated_at, None, "the webhook body has no updated_at");
    }
    // The management DTO's flag: active and past due.
    let mut past_due = subscription("ON_SUBSCRIPTION_RENEWED", "active");
    past_due["body"]["past_due"] = json!(true);
    past_due["body"]["updated_at"] = json!("2024-11-14T10:30:00Z");
    let c = run(&past_due).unwrap();
    let c = one_change(&c);
    assert_eq!((c.status, c.provider_status.as_str()), (PastDue, "active"));
    assert_eq!(c.updated_at, at("2024-11-14T10:30:00Z"));
    past_due["body"]["past_due"] = json!(false);
    assert_eq!(one_change(&run(&past_due).unwrap()).status, Active);
    // Every SubscriptionStatusDto word is decided; only `invalid` says nothing canonical.
    let dto = &definitions().1;
    for word in dto.schema("SubscriptionStatusDto")["enum"]
        .as_array()
        .unwrap()
    {
        let word = word.as_str().unwrap();
        assert_eq!(
            subscription_status(word, false).is_none(),
            word == "invalid",
            "{word}"
        );
    }
}

#[test]
fn unknown_words_are_kept_and_the_event_decides() {
    use SubscriptionStatus::*;
    let table = [
        ("ON_SUBSCRIPTION_ACTIVATED", "invalid", false, Active),
        ("ON_SUBSCRIPTION_RENEWED", "zombie", false, Active),
        ("ON_SUBSCRIPTION_RENEWED", "zombie", true, PastDue),
        ("ON_SUBSCRIPTION_CANCELED", "cancelled", false, Cancelled),
    ];
    for (event, word, flag, expected) in table {
        let mut value = subscription(event, "active");
        value["body"]["status"] = json!(word);
        value["body"]["past_due"] = json!(flag);
        let n = run(&value).unwrap();
        let c = one_change(&n);
        assert_eq!(
            (c.status, c.provider_status.as_str()),
            (expected, word),
            "{event}"
        );
    }
    // No status at all: the event, named as the provider status.
    let mut value = subscription("ON_SUBSCRIPTION_CANCELED", "canceled");
    value["body"].as_object_mut().unwrap().remove("status");
    let c = run(&value).unwrap();
    assert_eq!(
        (
            one_change(&c).status,
            one_change(&c).provider_status.as_str()
        ),
        (Cancelled, "ON_SUBSCRIPTION_CANCELED")
    );
    // An event type outside WebhookEventType: ignored.
    let n = run(&json!({"event_type": "ON_SOMETHING_NEW", "event_id": "1", "body": {}})).unwrap();
    assert!(n.is_ignored());
}

#[test]
fn ignored_types_are_archived_without_events() {
    for t in [
        "ON_ORDER_COMPLETED",
        "ON_CHARGEBACK",
        "ON_TRIAL_ACTIVATED",
        "ON_DELIVERY_ITEM_ADDED",
    ] {
        let n = run(&payload(t, &[])).unwrap();
        assert!(n.is_ignored(), "{t}");
        assert_eq!(n.event_type, t);
    }
    let n =
        run(&json!({"event_type": "ON_CONNECTED_USER_REGISTERED", "event_id": "1", "body": {}}))
            .unwrap();
    assert!(n.is_ignored());
}

#[test]
fn malformed_payloads_are_errors() {
    assert!(normalize(b"not json").is_err());
    assert!(normalize(b"[]").is_err());
    assert!(
        run(&json!({"event_id": "1", "body": {}})).is_err(),
        "no event_type"
    );
    let mut no_id = payment("ON_PAYMENT_COMPLETED");
    no_id["body"].as_object_mut().unwrap().remove("id");
    assert!(run(&no_id).unwrap_err().to_string().contains("body.id"));
    let mut currency = payment("ON_PAYMENT_COMPLETED");
    currency["body"]["currency"] = json!("XXX1");
    assert!(
        run(&currency)
            .unwrap_err()
            .to_string()
            .contains("unknown currency")
    );
    let mut no_currency = payment("ON_PAYMENT_FAILED");
    no_currency["body"]
        .as_object_mut()
        .unwrap()
        .remove("currency");
    assert!(run(&no_currency).is_err());
    let mut decimal = payment("ON_PAYMENT_COMPLETED");
    decimal["body"]["amount"] = json!(19.99);
    assert!(run(&decimal).is_err(), "minor units are integers");
    assert!(
        run(&json!({"event_type": "ON_PAYMENT_FAILED", "event_id": "1"})).is_err(),
        "no body"
    );
    let mut no_payment = refund(999, "completed");
    no_payment["body"]
        .as_object_mut()
        .unwrap()
        .remove("payment_id");
    assert!(
        run(&no_payment)
            .unwrap_err()
            .to_string()
            .contains("payment_id")
    );
    let mut no_refunded = refund(999, "completed");
    no_refunded["body"]
        .as_object_mut()
        .unwrap()
        .remove("store_refund_amount");
    assert!(
        run(&no_refunded)
            .unwrap_err()
            .to_string()
            .contains("store_refund_amount")
    );
    let mut bad_time = subscription("ON_SUBSCRIPTION_CANCELED", "canceled");
    bad_time["body"]["current_period_end"] = json!("soon");
    assert!(run(&bad_time).is_err());
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
        let mut value = payment("ON_PAYMENT_COMPLETED");
        value["event_type"] = json!(event);
        value["body"]["currency"] = json!(currency);
        value["body"]["amount"] = json!(amount);
        value["body"]["store_refund_amount"] = json!(amount);
        value["body"]["status"] = json!(status);
        let _ = run(&value);
    }
}
