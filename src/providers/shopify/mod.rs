//! Shopify: `X-Shopify-Hmac-Sha256` = base64(HMAC-SHA256(key = app client secret as UTF-8,
//! msg = raw body)). No timestamp is signed. The unprefixed names of Shopify's newer
//! "Events" delivery (`shopify-hmac-sha256`, `shopify-topic`, ...) are accepted too; the
//! prefixed name wins when both are present. Event id = `X-Shopify-Webhook-Id`. Shopify
//! sends one signature: rotation is done by configuring the old and the new secret.
//!
//! # Normalization (in `webhook.rs`; the topic is the kept `x-shopify-topic`)
//!
//! | topic | canonical |
//! |---|---|
//! | `subscription_billing_attempts/success` | attempt `succeeded` |
//! | `subscription_billing_attempts/failure` | attempt `failed` |
//! | `subscription_billing_attempts/challenged` | attempt `requires_action` (3-D Secure) |
//! | `subscription_contracts/create/update/activate/pause/cancel/expire/fail` | subscription change |
//! | `subscription_billing_cycles/skip` | attempt `skipped` |
//! | any other topic | ignored |
//!
//! Ids are admin GraphQL gids everywhere (`admin_graphql_api_*`, else the gid built from the
//! numeric id, `gid://shopify/SubscriptionContract/1`), so every topic names a contract the
//! same way.
//!
//! Billing attempts: `attempt_id` = the attempt's gid, `subscription_id` = the contract gid
//! (required), `provider_status` = the topic's action (`success`, `failure`, `challenged`),
//! `error_code` in the spelling of the GraphQL enum `SubscriptionBillingAttemptErrorCode`
//! (upper case: the webhooks write the same values in lower case, `insufficient_funds`,
//! the API `INSUFFICIENT_FUNDS`; one vocabulary whichever path reported the attempt),
//! `error_message` verbatim, `idempotency_key` = the body's `idempotency_key` (the key
//! the attempt was created with), `attempted_at` = the `X-Shopify-Triggered-At` header when
//! kept. The payload has no amount, next attempt or count: all null.
//!
//! Cycles: `cycle_id` is null, since neither the payload nor the GraphQL attempt names its
//! billing cycle (no index; `paymentGroupId` is undocumented). Dunning keys a cycle
//! without id by its first failed attempt's gid. The attempt a retry creates is a new
//! attempt (a new gid) with subsync's key, so reconciliation links it: an attempt without a
//! cycle id whose `idempotency_key` is one of subsync's retry calls of the same source
//! (`retry_calls`) takes that retry's cycle key as its `cycle_id`, and its outcome lands
//! on the retried cycle's row (the count goes on, exhaustion at `max_attempts`). Keys of
//! other callers (the merchant app's renewal) match nothing and change nothing; the key is
//! never used to group attempts by itself (Shopify returns the existing attempt for a
//! reused key, so every retry carries its own).
//!
//! The HMAC covers the body only: `X-Shopify-Topic` and `X-Shopify-Webhook-Id` are not
//! signed. So the status the topic claims must agree with the signed body: a `success`
//! with an `error_code` or `error_message`, or a `failure` with neither (Shopify's failure
//! payload types both as required strings), is dead-lettered with that reason. A body
//! re-posted under a fresh webhook id is a new inbox event but the same attempt (its gid is
//! in the body), which only moves forward, so it changes nothing.
//!
//! Contracts: status from the body's `status` (case-insensitive): `active` → active,
//! `paused` → paused, `cancelled` → cancelled, `expired` and `stale` ("expired due to
//! inactivity") → expired, `failed` → failed; without a `status`, the topic's action gives
//! it (`activate` → active, `pause` → paused, `cancel` → cancelled, `expire` → expired,
//! `fail` → failed; `create`/`update` without status are malformed). `currency_code`,
//! `revision_id` as version, customer = `admin_graphql_api_customer_id` (or the gid of
//! `customer_id`), `updated_at` = the body's `updated_at` if any, else the triggered-at header.
//!
//! Skipped cycles: `cycle_id` = `{contract gid}/cycles/{cycle_index}` (the index alone is only
//! unique within a contract), `attempt_id` = `{cycle_id}/skip`, `attempted_at` =
//! `billing_attempt_expected_date` (else the triggered-at header); `skipped: false` on the
//! skip topic is malformed.
//!
//! Malformed (dead-lettered): not JSON, no topic kept, an unparsable triggered-at; for
//! covered topics a missing attempt/contract id, an unknown status or currency, a
//! non-integer `revision_id`, a skip without `cycle_index`.
//!
//! # Admin GraphQL (`retry.rs`, `list.rs`, `money.rs`; plumbing in `admin.rs`)
//!
//! `POST {base_url}/admin/api/{api_version}/graphql.json` with `X-Shopify-Access-Token`.
//! `api.api_version` defaults to `2026-04`, a supported version whose schema (copied in
//! `tests/fixtures/shopify/`) has every field used here. Shopify serves a retired version
//! as its oldest supported one, so a version pinned past its support silently gets a
//! newer schema (deprecated fields may come back null): keep it within support.
//!
//! An attempt's outcome is read in the configured version's shape (`attempt.rs`): one
//! query cannot serve both, since `state` does not exist before 2026-04 and the flat
//! fields are deprecated from it on. Answers in either shape are read the same way.
//!
//! | before 2026-04 (flat) | 2026-04 and later (`state`) | outcome |
//! |---|---|---|
//! | `ready: false` | `SubscriptionBillingAttemptPendingState` | processing |
//! | `ready`, an `order` | `SuccessState { order }` (`order` null if deleted) | succeeded |
//! | `ready`, a `nextActionUrl` | `ActionRequiredState` (either challenge status) | challenged |
//! | `ready`, `processingError { code message }` | `FailedState { error }`: `PaymentError`, `GeneralError`, `InventoryError` (a code, no message), `UnexpectedError` (a message, no code: `UNEXPECTED_ERROR`) | failed |
//! | `ready` and nothing else | another `__typename` (counted in `subsync_shopify_unknown_attempt_states_total`) | unknown |
//!
//! A `FailedState` whose error is a member this code does not know is still a failure
//! (counted the same way), with the member's type name as its message and no code (the
//! bucket of a failure without code, `retry_soon`).
//! Error codes are kept in the enum's upper case; the 2026-04 split enums (payment, general,
//! inventory) use the names of the flat enum. Their decline buckets are in
//! `dunning/decline.rs`. The retry client maps the outcome to its answer, the list client
//! renders the webhook the outcome would have sent (see their headers). The money client
//! reads a succeeded attempt's order total, which the webhooks do not carry (`money.rs`).

mod admin;
mod attempt;
mod list;
mod money;
mod retry;
#[cfg(test)]
mod schema;
mod webhook;

pub(super) use list::ShopifyList;
pub(super) use money::ShopifyMoney;
pub(super) use retry::ShopifyClient;

use std::time::SystemTime;

use base64::Engine as _;
use secrecy::SecretString;

use crate::envelope::Envelope;
use crate::providers::contract::{Connector, Sample};
use crate::providers::support::{ct_eq, header_any, hmac_sha256, utf8_keys};
use crate::providers::{Accepted, NormalizeError, Normalized, Unverified, VerifyError};

const HMAC: [&str; 2] = ["x-shopify-hmac-sha256", "shopify-hmac-sha256"];
const TOPIC: [&str; 2] = ["x-shopify-topic", "shopify-topic"];
const WEBHOOK_ID: [&str; 2] = ["x-shopify-webhook-id", "shopify-webhook-id"];
/// Optional headers kept beside the body, under their prefixed name.
const KEPT: [[&str; 2]; 4] = [
    ["x-shopify-shop-domain", "shopify-shop-domain"],
    ["x-shopify-api-version", "shopify-api-version"],
    ["x-shopify-triggered-at", "shopify-triggered-at"],
    ["x-shopify-event-id", "shopify-event-id"],
];
/// Longest kept header value; longer ones are dropped, not truncated.
const MAX_KEPT_VALUE: usize = 256;

pub struct Shopify {
    keys: Vec<Vec<u8>>,
}

impl Shopify {
    pub fn new(secrets: &[SecretString]) -> Result<Self, String> {
        Ok(Self {
            keys: utf8_keys(secrets)?,
        })
    }
}

impl Connector for Shopify {
    fn verify(&self, request: &Unverified<'_>, _now: SystemTime) -> Result<Accepted, VerifyError> {
        let signature = header_any(request.headers, &HMAC)?;
        let topic = header_any(request.headers, &TOPIC)?;
        let webhook_id = header_any(request.headers, &WEBHOOK_ID)?;
        // base64 of 32 bytes is 44 characters.
        if signature.len() > 64 || topic.len() > MAX_KEPT_VALUE {
            return Err(VerifyError::MalformedHeader(if signature.len() > 64 {
                HMAC[0]
            } else {
                TOPIC[0]
            }));
        }
        let signature = base64::engine::general_purpose::STANDARD
            .decode(signature)
            .map_err(|_| VerifyError::MalformedHeader(HMAC[0]))?;
        let matched = self
            .keys
            .iter()
            .any(|key| ct_eq(&hmac_sha256(key, &[request.body]), &signature));
        if !matched {
            return Err(VerifyError::SignatureMismatch);
        }
        let mut kept_headers = vec![(TOPIC[0].to_owned(), topic.to_owned())];
        for names in KEPT {
            if let Ok(value) = header_any(request.headers, &names)
                && value.len() <= MAX_KEPT_VALUE
            {
                kept_headers.push((names[0].to_owned(), value.to_owned()));
            }
        }
        kept_headers.push((WEBHOOK_ID[0].to_owned(), webhook_id.to_owned()));
        Ok(Accepted {
            event_id: webhook_id.to_owned(),
            kept_headers,
        })
    }

    fn normalize(&self, envelope: &Envelope) -> Result<Normalized, NormalizeError> {
        webhook::normalize(envelope)
    }

    fn sign(&self, event_id: &str, body: &[u8], now: SystemTime) -> Vec<(String, String)> {
        let mac = hmac_sha256(&self.keys[0], &[body]);
        let triggered_at = chrono::DateTime::<chrono::Utc>::from(now).to_rfc3339();
        vec![
            (
                HMAC[0].to_owned(),
                base64::engine::general_purpose::STANDARD.encode(mac),
            ),
            (
                TOPIC[0].to_owned(),
                "subscription_billing_attempts/success".to_owned(),
            ),
            (WEBHOOK_ID[0].to_owned(), event_id.to_owned()),
            (KEPT[0][0].to_owned(), "demo.myshopify.com".to_owned()),
            (KEPT[1][0].to_owned(), admin::DEFAULT_API_VERSION.to_owned()),
            (KEPT[2][0].to_owned(), triggered_at),
        ]
    }

    fn header_names(&self) -> Vec<String> {
        [HMAC, TOPIC, WEBHOOK_ID]
            .iter()
            .chain(KEPT.iter())
            .flatten()
            .map(|name| (*name).to_owned())
            .collect()
    }

    fn sample_body(&self, sample: &Sample<'_>) -> Vec<u8> {
        // The billing-attempt success fixture of Shopify's subscriptions reference app
        // (attempt, order and contract 1 for subscription and cycle 0).
        let (attempt, contract) = (sample.cycle + 1, sample.subscription + 1);
        serde_json::to_vec(&serde_json::json!({
            "id": attempt,
            "admin_graphql_api_id": format!("gid://shopify/SubscriptionBillingAttempt/{attempt}"),
            "idempotency_key": sample.event_id,
            "order_id": attempt,
            "admin_graphql_api_order_id": format!("gid://shopify/Order/{attempt}"),
            "subscription_contract_id": contract,
            "admin_graphql_api_subscription_contract_id":
                format!("gid://shopify/SubscriptionContract/{contract}"),
            "ready": true,
            "error_message": null,
            "error_code": null
        }))
        .expect("static JSON")
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use axum::http::{HeaderMap, HeaderName, HeaderValue};
    use bytes::Bytes;

    use super::*;

    const SECRET: &str = "test_secret_key";
    const OTHER: &str = "another_secret_key";
    // SH-1 (shopify-app-js validate.test.ts).
    const SH1_BODY: &str = r#"{"foo": "bar"}"#;
    const SH1_HMAC: &str = "B23tXN681gZ0qIWNRrgtzBE9XSDo5yaUu6wfmhu3a7g=";
    // SH-2 (derived): the minified billing-attempt success fixture.
    const SH2_BODY: &str = r#"{"id":1,"admin_graphql_api_id":"gid://shopify/SubscriptionBillingAttempt/1","idempotency_key":"foo-bar-baz","order_id":1,"admin_graphql_api_order_id":"gid://shopify/Order/1","subscription_contract_id":1,"admin_graphql_api_subscription_contract_id":"gid://shopify/SubscriptionContract/1","ready":true,"error_message":null,"error_code":null}"#;
    const SH2_HMAC: &str = "NV+CzXU8NAjRBS5E5Zuu7UWI2qvHh9wA7mCWZU8VitY=";

    fn verifier(secrets: &[&str]) -> Shopify {
        let secrets: Vec<SecretString> = secrets.iter().map(|s| SecretString::from(*s)).collect();
        Shopify::new(&secrets).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// The SH-1 request headers, as the test in shopify-app-js sends them.
    fn sh1_headers(hmac: &str) -> HeaderMap {
        headers(&[
            ("X-Shopify-Hmac-Sha256", hmac),
            ("X-Shopify-API-Version", "2023-01"),
            ("X-Shopify-Shop-Domain", "shop1.myshopify.io"),
            ("X-Shopify-Topic", "products/create"),
            ("X-Shopify-Webhook-Id", "123456789"),
        ])
    }

    fn check(v: &Shopify, h: &HeaderMap, body: &str) -> Result<Accepted, VerifyError> {
        let body = Bytes::from(body.to_owned());
        let request = Unverified {
            headers: h,
            body: &body,
            peer: None,
        };
        v.verify(&request, UNIX_EPOCH + Duration::from_secs(1_700_000_000))
    }

    fn envelope(headers: Vec<(String, String)>, body: &str) -> Envelope {
        Envelope {
            source_id: "shop".into(),
            provider: crate::config::ProviderKind::Shopify,
            event_id: "1".into(),
            received_at: chrono::Utc::now(),
            content_type: None,
            headers,
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn published_vectors_verify_keep_headers_and_normalize() {
        let v = verifier(&[SECRET]);
        let ok = check(&v, &sh1_headers(SH1_HMAC), SH1_BODY).unwrap();
        assert_eq!(ok.event_id, "123456789");
        let kept = |name: &str| {
            ok.kept_headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(kept("x-shopify-topic"), Some("products/create"));
        assert_eq!(kept("x-shopify-shop-domain"), Some("shop1.myshopify.io"));
        assert_eq!(kept("x-shopify-api-version"), Some("2023-01"));
        assert_eq!(kept("x-shopify-webhook-id"), Some("123456789"));
        assert_eq!(kept("x-shopify-hmac-sha256"), None);
        let normalized = v
            .normalize(&envelope(ok.kept_headers.clone(), SH1_BODY))
            .unwrap();
        assert_eq!(normalized.event_type, "products/create");
        assert!(
            v.normalize(&envelope(ok.kept_headers, "{not json"))
                .is_err()
        );
        assert!(v.normalize(&envelope(vec![], SH1_BODY)).is_err());

        let ok = check(&v, &sh1_headers(SH2_HMAC), SH2_BODY).unwrap();
        assert_eq!(ok.event_id, "123456789");
        assert_eq!(v.sign("1", SH1_BODY.as_bytes(), UNIX_EPOCH)[0].1, SH1_HMAC);
        assert_eq!(v.sign("1", SH2_BODY.as_bytes(), UNIX_EPOCH)[0].1, SH2_HMAC);
    }

    #[test]
    fn unprefixed_event_delivery_names_are_accepted() {
        let v = verifier(&[SECRET]);
        let h = headers(&[
            ("shopify-hmac-sha256", SH1_HMAC),
            ("shopify-topic", "orders/create"),
            ("shopify-webhook-id", "wh-1"),
            ("shopify-triggered-at", "2025-01-01T00:00:00Z"),
        ]);
        let ok = check(&v, &h, SH1_BODY).unwrap();
        assert_eq!(ok.event_id, "wh-1");
        assert!(
            ok.kept_headers
                .contains(&("x-shopify-topic".into(), "orders/create".into()))
        );
        assert!(ok.kept_headers.contains(&(
            "x-shopify-triggered-at".into(),
            "2025-01-01T00:00:00Z".into()
        )));
    }

    #[test]
    fn tampered_wrong_secret_and_rotation() {
        let h = sh1_headers(SH1_HMAC);
        assert_eq!(
            check(&verifier(&[SECRET]), &h, r#"{"foo":"bar"}"#).unwrap_err(),
            VerifyError::SignatureMismatch
        );
        assert_eq!(
            check(&verifier(&[OTHER]), &h, SH1_BODY).unwrap_err(),
            VerifyError::SignatureMismatch
        );
        check(&verifier(&[OTHER, SECRET]), &h, SH1_BODY).unwrap();
        check(&verifier(&[SECRET, OTHER]), &h, SH1_BODY).unwrap();
    }

    #[test]
    fn malformed_headers_are_rejected() {
        let v = verifier(&[SECRET]);
        let mut h = sh1_headers(SH1_HMAC);
        h.remove("x-shopify-hmac-sha256");
        assert_eq!(
            check(&v, &h, SH1_BODY).unwrap_err(),
            VerifyError::MissingHeader("x-shopify-hmac-sha256")
        );
        h.insert("x-shopify-hmac-sha256", HeaderValue::from_static(""));
        assert_eq!(
            check(&v, &h, SH1_BODY).unwrap_err(),
            VerifyError::MissingHeader("x-shopify-hmac-sha256")
        );
        let mut no_id = sh1_headers(SH1_HMAC);
        no_id.remove("x-shopify-webhook-id");
        assert_eq!(
            check(&v, &no_id, SH1_BODY).unwrap_err(),
            VerifyError::MissingHeader("x-shopify-webhook-id")
        );
        let mut dup = sh1_headers(SH1_HMAC);
        dup.append("x-shopify-hmac-sha256", HeaderValue::from_static(SH1_HMAC));
        assert_eq!(
            check(&v, &dup, SH1_BODY).unwrap_err(),
            VerifyError::MalformedHeader("x-shopify-hmac-sha256")
        );
        let malformed = VerifyError::MalformedHeader("x-shopify-hmac-sha256");
        let huge = "A".repeat(10_000);
        for bad in ["!!!not base64!!!", huge.as_str()] {
            assert_eq!(
                check(&v, &sh1_headers(bad), SH1_BODY).unwrap_err(),
                malformed
            );
        }
        // Decodable but the wrong length.
        assert_eq!(
            check(&v, &sh1_headers("AAAA"), SH1_BODY).unwrap_err(),
            VerifyError::SignatureMismatch
        );
    }

    #[test]
    fn sample_body_sign_round_trip() {
        let v = verifier(&[SECRET]);
        let body = v.sample_body(&crate::providers::contract::Sample::new(
            "idem-1", UNIX_EPOCH,
        ));
        let signed = v.sign("wh-42", &body, UNIX_EPOCH);
        let pairs: Vec<(&str, &str)> = signed
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let body = String::from_utf8(body).unwrap();
        let ok = check(&v, &headers(&pairs), &body).unwrap();
        assert_eq!(ok.event_id, "wh-42");
        let n = v.normalize(&envelope(ok.kept_headers, &body)).unwrap();
        assert_eq!(n.event_type, "subscription_billing_attempts/success");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_headers_and_bodies_never_panic(
            sig in ".{0,300}", topic in ".{0,40}", id in ".{0,40}",
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)
        ) {
            let v = verifier(&[SECRET]);
            let mut h = HeaderMap::new();
            for (name, value) in [(HMAC[0], sig), (TOPIC[1], topic), (WEBHOOK_ID[0], id)] {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    h.insert(name, value);
                }
            }
            let body = String::from_utf8_lossy(&body).into_owned();
            proptest::prop_assert!(check(&v, &h, &body).is_err());
        }
    }
}
