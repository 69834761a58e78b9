//! Unit tests of Appstle's connector and normalization.

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use serde_json::json;

use super::*;
use crate::envelope::Envelope;
use crate::providers::Unverified;
use crate::providers::appstle::Appstle;
use crate::providers::contract::Connector;
use secrecy::SecretString;

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn provider() -> Appstle {
    Appstle::new(&[SecretString::from(SECRET)], None).unwrap()
}

fn envelope(body: Vec<u8>) -> Envelope {
    Envelope {
        source_id: "appstle".into(),
        provider: crate::config::ProviderKind::Appstle,
        event_id: "msg_1".into(),
        received_at: Utc::now(),
        content_type: None,
        headers: Vec::new(),
        body: Bytes::from(body),
    }
}

fn normalize(value: serde_json::Value) -> Result<Normalized, NormalizeError> {
    provider().normalize(&envelope(serde_json::to_vec(&value).unwrap()))
}

fn attempt(value: serde_json::Value) -> BillingAttempt {
    match normalize(value).unwrap().events.as_slice() {
        [CanonicalEvent::BillingAttempt(a)] => a.clone(),
        other => panic!("expected one attempt, got {other:?}"),
    }
}

fn change(value: serde_json::Value) -> SubscriptionChange {
    match normalize(value).unwrap().events.as_slice() {
        [CanonicalEvent::Subscription(c)] => c.clone(),
        other => panic!("expected one change, got {other:?}"),
    }
}

fn billing(event: &str, status: &str) -> serde_json::Value {
    json!({"type": event, "data": {
        "id": 88001, "billingAttemptId": "gid://shopify/SubscriptionBillingAttempt/42",
        "contractId": 5550001, "status": status, "billingDate": "2024-03-01T09:00:00Z",
        "attemptTime": "2024-03-01T09:00:05Z", "attemptCount": 2, "orderId": 7001,
        "orderAmount": 49.95, "currency": "USD", "shop": "demo.myshopify.com",
    }})
}

#[test]
fn all_23_statuses_and_prose_words_map() {
    use AttemptStatus::*;
    let table = [
        ("QUEUED", Pending),
        ("REQUESTING", Pending),
        ("PROGRESS", Pending),
        ("IMMEDIATE_TRIGGERED", Pending),
        ("PENDING_CONSOLIDATION", Pending),
        ("SECURITY_CHALLENGE", RequiresAction),
        ("SUCCESS", Succeeded),
        ("FAILURE", Failed),
        ("SHOPIFY_EXCEPTION", Failed),
        ("REFUNDED", Refunded),
        ("SKIPPED", Skipped),
        ("SKIPPED_DUNNING_MGMT", Skipped),
        ("SKIPPED_INVENTORY_MGMT", Skipped),
        ("SKIPPED_DEMO_SHOP", Skipped),
        ("SKIPPED_SHOP_INFO_NOT_FOUND", Skipped),
        ("SKIPPED_BILLING_DATE_STALE", Skipped),
        ("SKIPPED_DUNNING_NOT_CONFIGURED", Skipped),
        ("CONTRACT_CANCELLED", Skipped),
        ("CONTRACT_ENDED", Skipped),
        ("CONTRACT_PAUSED", Skipped),
        ("CONTRACT_PAUSED_MAX_CYCLES", Skipped),
        ("AUTO_CHARGE_DISABLED", Skipped),
        ("SOCIAL_CONNECTION_NULL", Skipped),
        // Prose words of Appstle's docs.
        ("FAILED", Failed),
        ("PROCESSING", Pending),
        ("SCHEDULED", Pending),
    ];
    assert_eq!(table.len(), 23 + 3);
    for (word, expected) in table {
        let a = attempt(billing("subscription.billing-failure", word));
        assert_eq!(a.status, expected, "{word}");
        assert_eq!(a.provider_status, word);
    }
    // Case-insensitive, and the word is kept as sent.
    let a = attempt(billing("subscription.billing-success", "success"));
    assert_eq!(
        (a.status, a.provider_status.as_str()),
        (Succeeded, "success")
    );
}

#[test]
fn billing_events_map_every_field() {
    let t = |s: &str| Utc.from_utc_datetime(&s.parse().unwrap());
    let a = attempt(billing("subscription.billing-success", "SUCCESS"));
    assert_eq!(a.attempt_id, "88001");
    assert_eq!(a.subscription_id.as_deref(), Some("5550001"));
    assert_eq!(a.cycle_id.as_deref(), Some("5550001@2024-03-01T09:00:00Z"));
    assert_eq!(
        a.amount,
        Some(Money {
            minor: 4995,
            currency: "USD".into()
        })
    );
    assert_eq!(a.attempted_at, Some(t("2024-03-01T09:00:05")));
    assert_eq!((a.attempt_count, a.next_attempt_at), (Some(2), None));
    assert_eq!((a.error_code, a.error_message), (None, None));

    // The event name is not the status: a failure event carrying a dunning skip.
    let mut failure = billing("subscription.billing-failure", "SKIPPED_DUNNING_MGMT");
    let shopify = json!({"id": 42, "idempotency_key": "k", "error_code": "insufficient_funds",
        "error_message": "Your card has insufficient funds."});
    failure["data"]["billingAttemptResponseMessage"] = json!(shopify.to_string());
    let a = attempt(failure);
    assert_eq!(a.status, AttemptStatus::Skipped);
    assert_eq!(a.error_code.as_deref(), Some("insufficient_funds"));
    assert_eq!(
        a.error_message.as_deref(),
        Some("Your card has insufficient funds.")
    );

    // A plain-text response message is kept verbatim.
    let mut skipped = billing("subscription.billing-skipped", "SKIPPED_INVENTORY_MGMT");
    skipped["data"]["billingAttemptResponseMessage"] = json!("Out of stock: SKU-1");
    let a = attempt(skipped);
    assert_eq!(a.status, AttemptStatus::Skipped);
    assert_eq!(
        (a.error_code, a.error_message.as_deref()),
        (None, Some("Out of stock: SKU-1"))
    );

    // JPY via currencyCode, string ids; KWD via the contract-currency object.
    let mut jpy = billing("subscription.billing-success", "SUCCESS");
    jpy["data"]["id"] = json!("88002");
    jpy["data"]["currency"] = serde_json::Value::Null;
    jpy["data"]["currencyCode"] = json!("jpy");
    jpy["data"]["orderAmount"] = json!(1500);
    let a = attempt(jpy);
    assert_eq!(a.attempt_id, "88002");
    assert_eq!(
        a.amount,
        Some(Money {
            minor: 1500,
            currency: "JPY".into()
        })
    );
    let mut kwd = billing("subscription.billing-success", "SUCCESS");
    kwd["data"]["orderAmountContractCurrency"] = json!({"amount": "12.345", "currencyCode": "KWD"});
    assert_eq!(
        attempt(kwd).amount,
        Some(Money {
            minor: 12345,
            currency: "KWD".into()
        })
    );

    // No currency anywhere: no amount rather than a guess.
    let mut bare = billing("subscription.billing-success", "SUCCESS");
    bare["data"].as_object_mut().unwrap().remove("currency");
    bare["data"]["orderAmountContractCurrency"] = json!(49.95);
    assert_eq!(attempt(bare).amount, None);
}

#[test]
fn contract_events_map_status_ids_and_times() {
    use SubscriptionStatus::*;
    let contract = |event: &str, status: serde_json::Value| {
        json!({"type": event, "data": {
            "id": 901, "subscriptionContractId": 5550001, "status": status,
            "currencyCode": "USD", "customerId": 777, "nextBillingDate": "2024-04-01T09:00:00Z",
            "updatedAt": "2024-03-02T10:00:00Z",
        }})
    };
    let table = [
        ("subscription.created", json!("ACTIVE"), Active, "ACTIVE"),
        ("subscription.updated", json!("paused"), Paused, "paused"),
        ("subscription.activated", json!("active"), Active, "active"),
        ("subscription.paused", json!("PAUSED"), Paused, "PAUSED"),
        (
            "subscription.cancelled",
            json!("CANCELLED"),
            Cancelled,
            "CANCELLED",
        ),
        ("subscription.updated", json!("expired"), Expired, "expired"),
        ("subscription.updated", json!("FAILED"), Failed, "FAILED"),
        (
            "subscription.cancelled",
            json!(null),
            Cancelled,
            "subscription.cancelled",
        ),
        (
            "subscription.paused",
            json!(null),
            Paused,
            "subscription.paused",
        ),
        (
            "subscription.activated",
            json!(null),
            Active,
            "subscription.activated",
        ),
    ];
    for (event, status, expected, word) in table {
        let c = change(contract(event, status));
        assert_eq!(
            (c.status, c.provider_status.as_str()),
            (expected, word),
            "{event}"
        );
        assert_eq!(c.subscription_id, "5550001");
        assert_eq!(c.currency.as_deref(), Some("USD"));
        assert_eq!(c.customer_id.as_deref(), Some("777"));
        assert_eq!(
            c.current_period_end,
            Some(Utc.with_ymd_and_hms(2024, 4, 1, 9, 0, 0).unwrap())
        );
        assert_eq!(
            c.updated_at,
            Some(Utc.with_ymd_and_hms(2024, 3, 2, 10, 0, 0).unwrap())
        );
    }
    // A Shopify GID is reduced to the numeric id the billing attempts use.
    let gid = json!({"type": "subscription.updated", "data": {
        "id": "gid://shopify/SubscriptionContract/5550001", "status": "ACTIVE",
        "lastModifiedDate": "2024-03-02T10:00:00+02:00"}});
    let c = change(gid);
    assert_eq!(c.subscription_id, "5550001");
    assert_eq!(
        c.updated_at,
        Some(Utc.with_ymd_and_hms(2024, 3, 2, 8, 0, 0).unwrap())
    );
}

#[test]
fn other_types_are_ignored() {
    for t in [
        "subscription.next-order-date-changed",
        "membership.billing-success",
        "x",
    ] {
        let n = normalize(json!({"type": t, "data": {"whatever": [1, 2]}})).unwrap();
        assert!(n.is_ignored(), "{t}");
        assert_eq!(n.event_type, t);
    }
}

#[test]
fn malformed_payloads_are_errors() {
    let p = provider();
    let bad = |value: serde_json::Value| normalize(value).unwrap_err();
    assert!(p.normalize(&envelope(b"not json".to_vec())).is_err());
    assert!(
        p.normalize(&envelope(b"{\"data\":{}}".to_vec())).is_err(),
        "no type"
    );
    let mut no_id = billing("subscription.billing-success", "SUCCESS");
    no_id["data"].as_object_mut().unwrap().remove("id");
    assert!(bad(no_id).to_string().contains("data.id"));
    let unknown = bad(billing(
        "subscription.billing-failure",
        "SKIPPED_SOMETHING_NEW",
    ));
    assert!(
        unknown.to_string().contains("SKIPPED_SOMETHING_NEW"),
        "{unknown}"
    );
    let mut no_status = billing("subscription.billing-failure", "x");
    no_status["data"]["status"] = serde_json::Value::Null;
    bad(no_status);
    let mut currency = billing("subscription.billing-success", "SUCCESS");
    currency["data"]["currency"] = json!("XYZ");
    assert!(bad(currency).to_string().contains("unknown currency"));
    let mut precise = billing("subscription.billing-success", "SUCCESS");
    precise["data"]["orderAmount"] = json!(49.955);
    assert!(bad(precise).to_string().contains("more decimals"));
    let mut time = billing("subscription.billing-success", "SUCCESS");
    time["data"]["attemptTime"] = json!("yesterday");
    bad(time);
    bad(json!({"type": "subscription.billing-success"}));
    bad(json!({"type": "subscription.updated", "data": {"id": 1}}));
    bad(json!({"type": "subscription.updated", "data": {"id": 1, "status": "ZOMBIE"}}));
    bad(json!({"type": "subscription.paused", "data": {"status": "PAUSED"}}));
}

#[test]
fn sample_body_is_signed_verified_and_normalized() {
    let p = provider();
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let body = p.sample_body(&crate::providers::contract::Sample::new("msg_sample", now));
    let mut headers = axum::http::HeaderMap::new();
    for (name, value) in p.sign("msg_sample", &body, now) {
        let name = axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        headers.insert(name, value.parse().unwrap());
    }
    let body = Bytes::from(body);
    let request = Unverified {
        headers: &headers,
        body: &body,
        peer: None,
    };
    assert_eq!(p.verify(&request, now).unwrap().event_id, "msg_sample");
    let a = match p
        .normalize(&envelope(body.to_vec()))
        .unwrap()
        .events
        .as_slice()
    {
        [CanonicalEvent::BillingAttempt(a)] => a.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (a.status, a.error_code.as_deref()),
        (AttemptStatus::Failed, Some("insufficient_funds"))
    );
    assert_eq!(
        a.amount,
        Some(Money {
            minor: 4995,
            currency: "USD".into()
        })
    );
}

proptest::proptest! {
    #[test]
    fn arbitrary_bodies_never_panic(
        body in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
        status in ".{0,24}", amount in "[0-9.]{0,8}", currency in ".{0,4}", msg in ".{0,40}",
    ) {
        let p = provider();
        let _ = p.normalize(&envelope(body));
        let mut value = billing("subscription.billing-failure", &status);
        value["data"]["orderAmount"] = json!(amount);
        value["data"]["currency"] = json!(currency);
        value["data"]["billingAttemptResponseMessage"] = json!(msg);
        let _ = normalize(value);
    }
}

#[test]
fn attempt_and_contract_events_name_a_gid_contract_the_same_way() {
    let mut value = billing("subscription.billing-failure", "FAILURE");
    value["data"]["contractId"] = json!("gid://shopify/SubscriptionContract/5550001");
    let a = attempt(value);
    assert_eq!(a.subscription_id.as_deref(), Some("5550001"));
    assert_eq!(a.cycle_id.as_deref(), Some("5550001@2024-03-01T09:00:00Z"));
}
