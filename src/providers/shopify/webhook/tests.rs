//! Unit tests of Shopify's normalization (`webhook.rs`).

use bytes::Bytes;
use serde_json::{Value, json};

use super::*;

const TRIGGERED: &str = "2025-01-02T03:04:05.123456789Z";
const CONTRACT: &str = "gid://shopify/SubscriptionContract/7";

fn envelope(topic: Option<&str>, body: &[u8]) -> Envelope {
    let mut headers = vec![(TRIGGERED_AT.to_owned(), TRIGGERED.to_owned())];
    headers.extend(topic.map(|t| (TOPIC.to_owned(), t.to_owned())));
    Envelope {
        source_id: "shop".into(),
        provider: crate::config::ProviderKind::Shopify,
        event_id: "wh-1".into(),
        received_at: Utc::now(),
        content_type: None,
        headers,
        body: Bytes::copy_from_slice(body),
    }
}

fn run(topic: &str, body: &Value) -> Result<Normalized, NormalizeError> {
    normalize(&envelope(Some(topic), &serde_json::to_vec(body).unwrap()))
}

fn one(topic: &str, body: &Value) -> CanonicalEvent {
    let n = run(topic, body).unwrap();
    assert_eq!(n.event_type, topic);
    assert_eq!(n.events.len(), 1, "{topic}");
    n.events.into_iter().next().unwrap()
}

fn t(text: &str) -> Option<DateTime<Utc>> {
    Some(
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc),
    )
}

fn attempt_body(error: Option<(&str, &str)>) -> Value {
    json!({
        "id": 11, "admin_graphql_api_id": "gid://shopify/SubscriptionBillingAttempt/11",
        "idempotency_key": "foo-bar-baz", "order_id": null, "admin_graphql_api_order_id": null,
        "subscription_contract_id": 7, "admin_graphql_api_subscription_contract_id": CONTRACT,
        "ready": true, "error_code": error.map(|e| e.0), "error_message": error.map(|e| e.1)
    })
}

fn contract_body(status: Option<&str>) -> Value {
    let mut body = json!({
        "admin_graphql_api_customer_id": "gid://shopify/Customer/3",
        "admin_graphql_api_id": CONTRACT,
        "admin_graphql_api_origin_order_id": "gid://shopify/Order/1",
        "billing_policy": { "interval": "month", "interval_count": 1, "max_cycles": null, "min_cycles": null },
        "currency_code": "CAD", "customer_id": 3,
        "delivery_policy": { "interval": "month", "interval_count": 1 },
        "id": 7, "origin_order_id": 1, "revision_id": "42"
    });
    if let Some(status) = status {
        body["status"] = json!(status);
    }
    body
}

#[test]
fn billing_attempt_topics_become_attempts() {
    let cases = [
        ("success", None, AttemptStatus::Succeeded),
        (
            "failure",
            Some(("insufficient_inventory", "insufficient_inventory")),
            AttemptStatus::Failed,
        ),
        (
            "failure",
            Some((
                "unexpected_error",
                "The payment couldn't be processed for technical reasons",
            )),
            AttemptStatus::Failed,
        ),
        ("challenged", None, AttemptStatus::RequiresAction),
    ];
    for (action, error, status) in cases {
        let topic = format!("subscription_billing_attempts/{action}");
        let CanonicalEvent::BillingAttempt(a) = one(&topic, &attempt_body(error)) else {
            panic!("{topic}: not an attempt");
        };
        assert_eq!(a.status, status, "{topic}");
        assert_eq!(a.provider_status, action);
        assert_eq!(a.attempt_id, "gid://shopify/SubscriptionBillingAttempt/11");
        assert_eq!(a.subscription_id.as_deref(), Some(CONTRACT));
        assert_eq!(a.cycle_id, None);
        assert_eq!(a.amount, None);
        let upper = error.map(|e| e.0.to_ascii_uppercase());
        assert_eq!(a.error_code, upper, "the GraphQL enum's spelling");
        assert_eq!(a.error_message.as_deref(), error.map(|e| e.1));
        assert_eq!(a.idempotency_key.as_deref(), Some("foo-bar-baz"));
        assert_eq!(a.attempted_at, t(TRIGGERED));
        assert_eq!((a.next_attempt_at, a.attempt_count), (None, None));
    }
    // Only numeric ids: the same gids are built.
    let body = json!({ "id": 11, "subscription_contract_id": "7", "idempotency_key": "k" });
    let CanonicalEvent::BillingAttempt(a) = one("subscription_billing_attempts/success", &body)
    else {
        panic!("not an attempt");
    };
    assert_eq!(a.attempt_id, "gid://shopify/SubscriptionBillingAttempt/11");
    assert_eq!(a.subscription_id.as_deref(), Some(CONTRACT));
}

/// The webhook payloads of Shopify's reference app (`tests/fixtures/shopify/`), each
/// under the topic of its fixture file.
const REFERENCE_PAYLOADS: &str = include_str!(
    "../../../../tests/fixtures/shopify/webhook-payloads.subscription_billing_attempts.json"
);

/// Every payload of the reference app normalizes without error under its topic into the
/// attempt it describes, and carries every field its payload type declares.
#[test]
fn every_reference_app_payload_normalizes_for_its_topic() {
    let reference: Value = serde_json::from_str(REFERENCE_PAYLOADS).unwrap();
    let mut seen = 0;
    for (file, fixtures) in reference["fixtures"].as_object().unwrap() {
        let (action, status) = if file.ends_with("_FAILURE.ts") {
            ("failure", AttemptStatus::Failed)
        } else if file.ends_with("_SUCCESS.ts") {
            ("success", AttemptStatus::Succeeded)
        } else {
            panic!("a fixture file of no known topic: {file}");
        };
        let topic = format!("subscription_billing_attempts/{action}");
        let type_name = reference["topics"][&topic]["payload_type"]
            .as_str()
            .unwrap();
        let declared = reference["payload_types"][type_name]["properties"]
            .as_object()
            .unwrap();
        for (name, payload) in fixtures.as_object().unwrap() {
            for field in declared.keys() {
                assert!(payload.get(field).is_some(), "{name} lacks {field}");
            }
            let CanonicalEvent::BillingAttempt(a) = one(&topic, payload) else {
                panic!("{name}: not an attempt");
            };
            assert_eq!(a.status, status, "{name}");
            assert_eq!(a.attempt_id, payload["admin_graphql_api_id"], "{name}");
            assert_eq!(
                a.subscription_id.as_deref(),
                payload["admin_graphql_api_subscription_contract_id"].as_str()
            );
            assert_eq!(
                a.idempotency_key.as_deref(),
                payload["idempotency_key"].as_str()
            );
            let code = payload["error_code"].as_str().map(str::to_ascii_uppercase);
            assert_eq!(a.error_code, code, "{name}");
            assert_eq!(a.cycle_id, None, "the payload names no cycle");
            seen += 1;
        }
    }
    assert_eq!(seen, 4, "three failures and a success");
}

/// The webhook's lower-case code and the API's upper-case one normalize to one code.
#[test]
fn error_codes_take_the_enum_spelling_whatever_their_case() {
    let codes = [
        "insufficient_funds",
        "INSUFFICIENT_FUNDS",
        " Insufficient_Funds ",
    ];
    for code in codes {
        let body = attempt_body(Some((code, "Insufficient funds")));
        let CanonicalEvent::BillingAttempt(a) = one("subscription_billing_attempts/failure", &body)
        else {
            panic!("not an attempt");
        };
        assert_eq!(
            a.error_code.as_deref(),
            Some("INSUFFICIENT_FUNDS"),
            "{code:?}"
        );
    }
}

/// Shopify's own fixtures (Shopify/subscriptions-reference-app @ c558ae04,
/// `app/jobs/dunning/tests/fixtures/SUBSCRIPTION_BILLING_ATTEMPTS_{FAILURE,SUCCESS}.ts`)
/// under the other topic: the unsigned topic cannot turn a failure into a success, nor
/// the reverse; the reason names the contradiction.
#[test]
fn a_body_that_contradicts_its_topic_is_refused() {
    let failure = json!({
        "admin_graphql_api_id": "gid://shopify/SubscriptionBillingAttempt/1",
        "admin_graphql_api_order_id": "gid://shopify/Order/1",
        "admin_graphql_api_subscription_contract_id": "gid://shopify/SubscriptionContract/1",
        "error_code": "insufficient_inventory", "error_message": "insufficient_inventory",
        "id": 1, "idempotency_key": "foo-bar-baz", "order_id": 1, "ready": true,
        "subscription_contract_id": 1
    });
    let success = json!({
        "id": 1, "admin_graphql_api_id": "gid://shopify/SubscriptionBillingAttempt/1",
        "idempotency_key": "foo-bar-baz", "order_id": 1,
        "admin_graphql_api_order_id": "gid://shopify/Order/1", "subscription_contract_id": 1,
        "admin_graphql_api_subscription_contract_id": "gid://shopify/SubscriptionContract/1",
        "ready": true, "error_message": null, "error_code": null
    });
    let as_topic = |action: &str, body: &Value| {
        let topic = format!("subscription_billing_attempts/{action}");
        match run(&topic, body) {
            Err(NormalizeError::Malformed(reason)) => reason,
            other => panic!(
                "{topic}: expected a refusal, got {:?}",
                other.map(|n| n.events)
            ),
        }
    };
    let reason = as_topic("success", &failure);
    assert!(
        reason.contains("contradicts") && reason.contains("success"),
        "{reason}"
    );
    let reason = as_topic("failure", &success);
    assert!(reason.contains("no error_code"), "{reason}");
    // Each under its own topic is fine, and so is an empty error on a success.
    one("subscription_billing_attempts/failure", &failure);
    one("subscription_billing_attempts/success", &success);
    let mut blank = success.clone();
    blank["error_code"] = json!("");
    one("subscription_billing_attempts/success", &blank);
}

#[test]
fn contract_topics_become_changes() {
    use SubscriptionStatus as S;
    let cases = [
        ("create", Some("active"), S::Active, "active"),
        ("update", Some("PAUSED"), S::Paused, "PAUSED"),
        ("update", Some("stale"), S::Expired, "stale"),
        ("activate", Some("active"), S::Active, "active"),
        ("activate", None, S::Active, "active"),
        ("pause", Some("paused"), S::Paused, "paused"),
        ("pause", None, S::Paused, "paused"),
        ("cancel", Some("cancelled"), S::Cancelled, "cancelled"),
        ("cancel", None, S::Cancelled, "cancelled"),
        ("expire", Some("expired"), S::Expired, "expired"),
        ("expire", None, S::Expired, "expired"),
        ("fail", Some("failed"), S::Failed, "failed"),
        ("fail", None, S::Failed, "failed"),
    ];
    for (action, body_status, status, word) in cases {
        let topic = format!("subscription_contracts/{action}");
        let CanonicalEvent::Subscription(s) = one(&topic, &contract_body(body_status)) else {
            panic!("{topic}: not a change");
        };
        assert_eq!(s.status, status, "{topic} {body_status:?}");
        assert_eq!(s.provider_status, word);
        assert_eq!(s.subscription_id, CONTRACT);
        assert_eq!(s.currency.as_deref(), Some("CAD"));
        assert_eq!(s.customer_id.as_deref(), Some("gid://shopify/Customer/3"));
        assert_eq!(s.version, Some(42));
        assert_eq!(s.updated_at, t(TRIGGERED));
        assert_eq!(s.current_period_end, None);
    }
    let body = json!({ "id": 7, "status": "active", "customer_id": 3, "revision_id": 5,
        "updated_at": "2025-02-01T00:00:00-05:00" });
    let CanonicalEvent::Subscription(s) = one("subscription_contracts/update", &body) else {
        panic!("not a change");
    };
    assert_eq!(s.subscription_id, CONTRACT);
    assert_eq!(s.customer_id.as_deref(), Some("gid://shopify/Customer/3"));
    assert_eq!((s.version, s.currency), (Some(5), None));
    assert_eq!(s.updated_at, t("2025-02-01T05:00:00Z"));
}

#[test]
fn skipped_cycle_becomes_a_skipped_attempt() {
    let body = json!({
        "subscription_contract_id": 7, "cycle_start_at": "2025-03-01T00:00:00Z",
        "cycle_end_at": "2025-04-01T00:00:00Z", "cycle_index": 3, "contract_edit": null,
        "billing_attempt_expected_date": "2025-03-01T12:00:00Z", "skipped": true, "edited": false
    });
    let CanonicalEvent::BillingAttempt(a) = one("subscription_billing_cycles/skip", &body) else {
        panic!("not an attempt");
    };
    assert_eq!(a.status, AttemptStatus::Skipped);
    assert_eq!(a.provider_status, "skipped");
    assert_eq!(
        a.cycle_id.as_deref(),
        Some("gid://shopify/SubscriptionContract/7/cycles/3")
    );
    assert_eq!(
        a.attempt_id,
        "gid://shopify/SubscriptionContract/7/cycles/3/skip"
    );
    assert_eq!(a.subscription_id.as_deref(), Some(CONTRACT));
    assert_eq!(a.attempted_at, t("2025-03-01T12:00:00Z"));
    assert_eq!((a.amount, a.error_code), (None, None));
}

#[test]
fn other_topics_are_ignored() {
    for topic in [
        "orders/create",
        "subscription_billing_cycles/unskip",
        "subscription_billing_attempts/other",
        "subscription_contracts/delete",
        "app/uninstalled",
    ] {
        let n = run(topic, &json!({ "id": 1 })).unwrap();
        assert_eq!(n.event_type, topic);
        assert!(n.is_ignored(), "{topic}");
    }
}

#[test]
fn malformed_payloads_are_errors() {
    let reason = |r: Result<Normalized, NormalizeError>| match r {
        Err(NormalizeError::Malformed(reason)) => reason,
        Ok(n) => panic!("accepted: {n:?}"),
    };
    let success = "subscription_billing_attempts/success";
    assert!(reason(normalize(&envelope(Some(success), b"{not json"))).contains("JSON"));
    assert!(reason(normalize(&envelope(None, b"{}"))).contains("topic"));
    let mut bad_time = envelope(
        Some(success),
        &serde_json::to_vec(&attempt_body(None)).unwrap(),
    );
    bad_time.headers[0].1 = "yesterday".into();
    assert!(reason(normalize(&bad_time)).contains(TRIGGERED_AT));
    let mut body = attempt_body(None);
    body["admin_graphql_api_id"] = Value::Null;
    body.as_object_mut().unwrap().remove("id");
    assert!(reason(run(success, &body)).contains("no id"));
    let body = json!({ "id": 11 });
    assert!(reason(run(success, &body)).contains("contract id"));
    assert!(reason(run(success, &json!({ "id": -1 }))).contains("billing attempt"));
    let update = "subscription_contracts/update";
    assert!(reason(run(update, &contract_body(None))).contains("no status"));
    assert!(reason(run(update, &contract_body(Some("bogus")))).contains("unknown status"));
    assert!(reason(run(update, &json!({ "status": "active" }))).contains("no id"));
    let mut body = contract_body(Some("active"));
    body["currency_code"] = json!("XYZ");
    assert!(reason(run(update, &body)).contains("unknown currency"));
    body["currency_code"] = json!("USD");
    body["revision_id"] = json!("v2");
    assert!(reason(run(update, &body)).contains("revision_id"));
    let skip = "subscription_billing_cycles/skip";
    assert!(reason(run(skip, &json!({ "subscription_contract_id": 7 }))).contains("cycle_index"));
    assert!(reason(run(skip, &json!({ "cycle_index": 1 }))).contains("subscription_contract_id"));
    let unskipped = json!({ "subscription_contract_id": 7, "cycle_index": 1, "skipped": false });
    assert!(reason(run(skip, &unskipped)).contains("skipped: false"));
    let bad_date = json!({ "subscription_contract_id": 7, "cycle_index": 1,
        "billing_attempt_expected_date": "soon" });
    assert!(reason(run(skip, &bad_date)).contains("billing_attempt_expected_date"));
}

proptest::proptest! {
    #[test]
    fn arbitrary_topics_and_bodies_never_panic(
        topic in proptest::prop_oneof![
            ".{0,40}",
            proptest::sample::select(vec![
                "subscription_billing_attempts/success".to_owned(),
                "subscription_billing_attempts/failure".to_owned(),
                "subscription_contracts/update".to_owned(),
                "subscription_contracts/pause".to_owned(),
                "subscription_billing_cycles/skip".to_owned(),
            ]),
        ],
        body in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
        id in proptest::num::i64::ANY, text in ".{0,16}",
    ) {
        let _ = normalize(&envelope(Some(&topic), &body));
        let fields = json!({
            "id": id, "admin_graphql_api_id": text, "subscription_contract_id": text,
            "status": text, "currency_code": text, "revision_id": text, "cycle_index": id,
            "billing_attempt_expected_date": text, "error_code": id,
        });
        let _ = run(&topic, &fields);
    }
}
