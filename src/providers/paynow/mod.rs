//! PayNow (paynow.gg): `PayNow-Signature` = base64(HMAC-SHA256(key = signing secret as
//! UTF-8, msg = `{PayNow-Timestamp}.{raw body}`)), the timestamp in unix MILLISECONDS.
//! Tolerance is age-only, 300 000 ms by default (`tolerance_secs` × 1000), as in PayNow's
//! official example. Event id = body `event_id`, read only after the signature passed.
//!
//! The mapping below follows PayNow's own definitions (paynow-gg/openapi, v1): the webhook
//! definitions (envelope `{"event_type", "event_id", "body"}`, all three required; no
//! timestamp) and the management API's `SubscriptionDto`. The parts the tests use are
//! copied in `tests/fixtures/paynow/` (provenance in `tests/fixtures/README.md`).
//!
//! # Event types
//!
//! Every value of `WebhookEventType` (30; 19 with a payload) is in the decision table
//! `webhook::EVENTS`, normalized or ignored with its reason: `ON_PAYMENT_COMPLETED`,
//! `ON_PAYMENT_FAILED` and `ON_REFUND` → a billing attempt; `ON_SUBSCRIPTION_ACTIVATED|
//! RENEWED|CANCELED` → a subscription change; orders, chargebacks, deliveries, trials,
//! Discord links, connected users and follow-up e-mails → ignored. A type not in the table
//! is ignored and counted (`subsync_unknown_provider_values_total{provider="paynow",
//! field="event_type"}`). Ids are flake ids, kept as strings (JSON numbers are accepted
//! too). Amounts are integer minor units ("represented in cents") with the ISO 4217
//! `currency` beside them; an amount without a currency is an error.
//!
//! # Payments → billing attempts
//!
//! `ON_PAYMENT_COMPLETED` → succeeded, `ON_PAYMENT_FAILED` → failed; `body` = the Payment:
//! `attempt_id` = `id`, `cycle_id` = `order_id`, `provider_status` = `status` (a plain
//! string; else the event type), `amount` = `amount` in `currency`, `error_code` =
//! `failure_code` ("The reason the payment was declined"; failed only), no message,
//! `attempted_at` = `failed_at` / `completed_at`, else `created_at`.
//! The Payment carries no subscription id, attempt count or next-attempt time (only the
//! management API's `SubscriptionDto` has `attempt_count`/`next_attempt_at`, and its
//! `OrderDto` the `subscription_id`): `subscription_id`, `attempt_count` and
//! `next_attempt_at` are `None`. Linking a payment to its subscription would take a call to
//! `GET /v1/stores/{store}/orders/{order_id}`, which normalization (no I/O) does not make;
//! so PayNow's failed payments are tracked per order, and the retry row has no due time.
//!
//! # Refunds
//!
//! `ON_REFUND` ("Triggered when a refund is completed") names the refunded payment
//! (`payment_id`, our attempt id), the payment's `amount` ("The initial payment amount")
//! and `store_refund_amount` ("The amount refunded to the store"). Equal amounts → the
//! attempt `payment_id` refunded (`provider_status` `refunded`, PayNow's payment status
//! for it), amount = the payment's; different amounts, a partial refund → succeeded with
//! `provider_status` `partially_refunded` (subsync's word: PayNow has none). Beside it the
//! refund itself: id = the Refund's `id`, amount = `store_refund_amount`, so the ledger
//! books what was given back. The refund's `status` (`RefundStatus`): `canceled` and
//! `failed` say no refund was made → a failed refund, and no attempt;
//! the event is sent "when a refund is completed" (its schema's example status is
//! `created`), so the other words (and none) read as made; an unknown word is counted and
//! read as made too. `cycle_id` = `order_id`, `attempted_at` = `completed_at`, else
//! `created_at`.
//!
//! # Subscriptions
//!
//! `ON_SUBSCRIPTION_ACTIVATED|RENEWED|CANCELED` (and the list's rendering of a
//! `SubscriptionDto`, see `list.rs`): `subscription_id` = `id`; status from `status`
//! (`SubscriptionStatusDto`: `invalid`, `created`, `active`, `canceled`; the webhook
//! documents "created, active, canceled") and the DTO's `past_due` flag ("past due, and is
//! in a dunning (retrying) state"): `created` → pending; `active` → active, or past_due
//! with `past_due: true`; `canceled` → cancelled. Any other word (`invalid` included: it
//! is undescribed) is kept as `provider_status` and counted, and the status is the one the
//! event implies (`CANCELED` → cancelled, else active, or past_due with the flag); without
//! a `status` the same, with the event type as `provider_status`. `customer_id` =
//! `customer_id`, else `customer.id`; `current_period_end`; `updated_at` = the DTO's
//! `updated_at` (the webhook body has none: the receipt time orders it).

mod list;
mod payments;
mod webhook;

pub(super) use list::PayNowList;

use std::time::SystemTime;

use base64::Engine as _;
use secrecy::SecretString;

use crate::envelope::Envelope;
use crate::providers::contract::{Connector, Sample};
use crate::providers::support::{
    body_field, body_hash_id, ct_eq, header, hmac_sha256, unix_millis, utf8_keys,
};
use crate::providers::{Accepted, NormalizeError, Normalized, Unverified, VerifyError};

const SIGNATURE: &str = "paynow-signature";
const TIMESTAMP: &str = "paynow-timestamp";
const DEFAULT_TOLERANCE_SECS: u64 = 300;

pub struct PayNow {
    keys: Vec<Vec<u8>>,
    tolerance_ms: i64,
}

impl PayNow {
    pub fn new(secrets: &[SecretString], tolerance_secs: Option<u64>) -> Result<Self, String> {
        let secs = tolerance_secs.unwrap_or(DEFAULT_TOLERANCE_SECS);
        Ok(Self {
            keys: utf8_keys(secrets)?,
            tolerance_ms: i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX),
        })
    }

    fn mac(key: &[u8], timestamp: &str, body: &[u8]) -> [u8; 32] {
        hmac_sha256(key, &[timestamp.as_bytes(), b".", body])
    }
}

impl Connector for PayNow {
    fn verify(&self, request: &Unverified<'_>, now: SystemTime) -> Result<Accepted, VerifyError> {
        let signature = header(request.headers, SIGNATURE)?;
        let timestamp = header(request.headers, TIMESTAMP)?;
        if !timestamp.bytes().all(|b| b.is_ascii_digit()) {
            return Err(VerifyError::MalformedHeader(TIMESTAMP));
        }
        let ts: i64 = timestamp
            .parse()
            .map_err(|_| VerifyError::MalformedHeader(TIMESTAMP))?;
        if unix_millis(now).saturating_sub(ts) > self.tolerance_ms {
            return Err(VerifyError::TimestampOutOfWindow);
        }
        if signature.len() > 64 {
            return Err(VerifyError::MalformedHeader(SIGNATURE));
        }
        let signature = base64::engine::general_purpose::STANDARD
            .decode(signature)
            .map_err(|_| VerifyError::MalformedHeader(SIGNATURE))?;
        let matched = self
            .keys
            .iter()
            .any(|key| ct_eq(&Self::mac(key, timestamp, request.body), &signature));
        if !matched {
            return Err(VerifyError::SignatureMismatch);
        }
        let event_id =
            body_field(request.body, "event_id").unwrap_or_else(|| body_hash_id(request.body));
        Ok(Accepted {
            event_id,
            kept_headers: vec![(TIMESTAMP.to_owned(), timestamp.to_owned())],
        })
    }

    fn normalize(&self, envelope: &Envelope) -> Result<Normalized, NormalizeError> {
        webhook::normalize(&envelope.body)
    }

    fn sign(&self, _event_id: &str, body: &[u8], now: SystemTime) -> Vec<(String, String)> {
        // The event id travels in the body (`event_id`), see `sample_body`.
        let timestamp = unix_millis(now).to_string();
        let mac = Self::mac(&self.keys[0], &timestamp, body);
        vec![
            (
                SIGNATURE.to_owned(),
                base64::engine::general_purpose::STANDARD.encode(mac),
            ),
            (TIMESTAMP.to_owned(), timestamp),
        ]
    }

    fn header_names(&self) -> Vec<String> {
        vec![SIGNATURE.to_owned(), TIMESTAMP.to_owned()]
    }

    fn sample_body(&self, sample: &Sample<'_>) -> Vec<u8> {
        // A declined payment (ON_PAYMENT_FAILED, every field its definition requires):
        // flake ids of the payment and of the order of the cycle; the store.
        let (payment, order) = (
            411_486_491_630_370_818 + 2 * sample.cycle,
            411_486_491_630_370_819 + 2 * sample.cycle,
        );
        let at = chrono::DateTime::<chrono::Utc>::from(sample.now)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        serde_json::to_vec(&serde_json::json!({
            "event_type": "ON_PAYMENT_FAILED",
            "event_id": sample.event_id,
            "body": {
                "id": payment.to_string(), "store_id": "411486491630370000",
                "order_id": order.to_string(), "customer": null, "gateway": "stripe",
                "currency": "USD", "tax_inclusive": false, "amount": 1999,
                "gateway_fee_amount": 88, "tax_amount": 0, "platform_fee_amount": 100,
                "store_net_amount": 1811, "status": "failed",
                "failure_code": "insufficient_funds", "created_at": at, "pending_at": null,
                "failed_at": at,
            }
        }))
        .expect("static JSON")
    }
}

/// PayNow's definitions as copied for the tests (`tests/fixtures/paynow/`): the webhooks,
/// and the management API's subscription listing.
#[cfg(test)]
fn definitions() -> &'static (
    crate::providers::testing::schema::Spec,
    crate::providers::testing::schema::Spec,
) {
    use crate::providers::testing::schema::Spec;
    static SPECS: std::sync::OnceLock<(Spec, Spec)> = std::sync::OnceLock::new();
    SPECS.get_or_init(|| {
        (
            Spec::parse(include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/paynow/webhook-definitions.json"
            ))),
            Spec::parse(include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/paynow/management-api.subset.json"
            ))),
        )
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use axum::http::{HeaderMap, HeaderValue};
    use bytes::Bytes;

    use super::*;

    // PN-1 (derived).
    const SECRET: &str = "test_secret";
    const OTHER: &str = "other_secret";
    const TS_MS: u64 = 1700000000000;
    const BODY: &str =
        r#"{"event_type":"ON_SUBSCRIPTION_RENEWED","event_id":"411486491630370816","body":{}}"#;
    const SIG: &str = "0K//1hdKCs7uMS1b2UIKy9YSISU3+Zmr5gyx3FVSp8A=";

    fn verifier(secrets: &[&str]) -> PayNow {
        let secrets: Vec<SecretString> = secrets.iter().map(|s| SecretString::from(*s)).collect();
        PayNow::new(&secrets, None).unwrap()
    }

    fn at_ms(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn headers(sig: &str, ts: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("PayNow-Signature", HeaderValue::from_str(sig).unwrap());
        h.insert("PayNow-Timestamp", HeaderValue::from_str(ts).unwrap());
        h
    }

    fn check(v: &PayNow, h: &HeaderMap, body: &str, now_ms: u64) -> Result<Accepted, VerifyError> {
        let body = Bytes::from(body.to_owned());
        let request = Unverified {
            headers: h,
            body: &body,
            peer: None,
        };
        v.verify(&request, at_ms(now_ms))
    }

    #[test]
    fn derived_vector_verifies_signs_and_normalizes() {
        let v = verifier(&[SECRET]);
        let ok = check(&v, &headers(SIG, &TS_MS.to_string()), BODY, TS_MS).unwrap();
        assert_eq!(ok.event_id, "411486491630370816");
        assert_eq!(
            v.sign("x", BODY.as_bytes(), at_ms(TS_MS)),
            vec![
                (SIGNATURE.to_owned(), SIG.to_owned()),
                (TIMESTAMP.to_owned(), TS_MS.to_string())
            ]
        );
        let envelope = Envelope {
            source_id: "p".into(),
            provider: crate::config::ProviderKind::Paynow,
            event_id: ok.event_id,
            received_at: chrono::Utc::now(),
            content_type: None,
            headers: ok.kept_headers,
            body: Bytes::from_static(BODY.as_bytes()),
        };
        // A covered type whose body lacks the subscription id is dead-lettered.
        assert!(
            v.normalize(&envelope)
                .unwrap_err()
                .to_string()
                .contains("body.id")
        );
        let bad = Envelope {
            body: Bytes::from_static(b"[]"),
            ..envelope
        };
        assert!(v.normalize(&bad).is_err());
    }

    #[test]
    fn tampered_wrong_secret_and_rotation() {
        let h = headers(SIG, &TS_MS.to_string());
        assert_eq!(
            check(&verifier(&[SECRET]), &h, &BODY.replace("816", "817"), TS_MS).unwrap_err(),
            VerifyError::SignatureMismatch
        );
        // The timestamp is signed: seconds instead of milliseconds do not verify.
        let secs = headers(SIG, &(TS_MS / 1000).to_string());
        assert!(check(&verifier(&[SECRET]), &secs, BODY, TS_MS).is_err());
        assert_eq!(
            check(&verifier(&[OTHER]), &h, BODY, TS_MS).unwrap_err(),
            VerifyError::SignatureMismatch
        );
        check(&verifier(&[OTHER, SECRET]), &h, BODY, TS_MS).unwrap();
        check(&verifier(&[SECRET, OTHER]), &h, BODY, TS_MS).unwrap();
    }

    #[test]
    fn tolerance_is_300_000_ms_age_only() {
        let v = verifier(&[SECRET]);
        let h = headers(SIG, &TS_MS.to_string());
        check(&v, &h, BODY, TS_MS + 300_000).unwrap();
        assert_eq!(
            check(&v, &h, BODY, TS_MS + 300_001).unwrap_err(),
            VerifyError::TimestampOutOfWindow
        );
        // Age-only, as in PayNow's example: a timestamp ahead of our clock passes.
        check(&v, &h, BODY, TS_MS - 3_600_000).unwrap();
    }

    #[test]
    fn malformed_headers_and_missing_event_id_are_rejected() {
        let v = verifier(&[SECRET]);
        let ts = TS_MS.to_string();
        let mut h = headers(SIG, &ts);
        h.remove("paynow-timestamp");
        assert_eq!(
            check(&v, &h, BODY, TS_MS).unwrap_err(),
            VerifyError::MissingHeader(TIMESTAMP)
        );
        h.insert("paynow-timestamp", HeaderValue::from_static(""));
        assert_eq!(
            check(&v, &h, BODY, TS_MS).unwrap_err(),
            VerifyError::MissingHeader(TIMESTAMP)
        );
        for bad_ts in ["17x", "-5", "1e12", "99999999999999999999999"] {
            assert_eq!(
                check(&v, &headers(SIG, bad_ts), BODY, TS_MS).unwrap_err(),
                VerifyError::MalformedHeader(TIMESTAMP),
                "{bad_ts}"
            );
        }
        let huge = "A".repeat(10_000);
        for bad_sig in ["%%%not base64%%%", huge.as_str()] {
            assert_eq!(
                check(&v, &headers(bad_sig, &ts), BODY, TS_MS).unwrap_err(),
                VerifyError::MalformedHeader(SIGNATURE)
            );
        }
        let mut dup = headers(SIG, &ts);
        dup.append("paynow-signature", HeaderValue::from_static(SIG));
        assert_eq!(
            check(&v, &dup, BODY, TS_MS).unwrap_err(),
            VerifyError::MalformedHeader(SIGNATURE)
        );
        let no_id = r#"{"event_type":"ON_REFUND","body":{}}"#;
        let signed = v.sign("x", no_id.as_bytes(), at_ms(TS_MS));
        let kept = check(&v, &headers(&signed[0].1, &signed[1].1), no_id, TS_MS).unwrap();
        assert_eq!(
            kept.event_id,
            body_hash_id(no_id.as_bytes()),
            "kept under a body-hash id"
        );
    }

    #[test]
    fn sample_body_sign_round_trip() {
        let v = verifier(&[SECRET]);
        let body = v.sample_body(&crate::providers::contract::Sample::new(
            "flake-1",
            at_ms(TS_MS),
        ));
        let signed = v.sign("flake-1", &body, at_ms(TS_MS));
        let body = String::from_utf8(body).unwrap();
        let ok = check(&v, &headers(&signed[0].1, &signed[1].1), &body, TS_MS + 1).unwrap();
        assert_eq!(ok.event_id, "flake-1");
    }

    #[test]
    fn sample_body_is_valid_under_the_definitions_and_a_failed_attempt() {
        let v = verifier(&[SECRET]);
        let spec = &definitions().0;
        let body = v.sample_body(&crate::providers::contract::Sample::new(
            "411486491630370900",
            at_ms(TS_MS),
        ));
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let errors = spec.validate(&value, spec.webhook_body("ON_PAYMENT_FAILED"));
        assert!(errors.is_empty(), "{errors:#?}");
        let normalized = webhook::normalize(&body).unwrap();
        let [crate::canonical::CanonicalEvent::BillingAttempt(a)] = normalized.events.as_slice()
        else {
            panic!("{normalized:?}");
        };
        assert_eq!(a.status, crate::canonical::AttemptStatus::Failed);
        assert_eq!(
            (a.error_code.as_deref(), a.next_attempt_at),
            (Some("insufficient_funds"), None)
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_headers_and_bodies_never_panic(
            sig in ".{0,300}", ts in ".{0,24}",
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)
        ) {
            let v = verifier(&[SECRET]);
            let mut h = HeaderMap::new();
            for (name, value) in [(SIGNATURE, sig), (TIMESTAMP, ts)] {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    h.insert(name, value);
                }
            }
            let body = Bytes::from(body);
            let request = Unverified { headers: &h, body: &body, peer: None };
            proptest::prop_assert!(v.verify(&request, at_ms(TS_MS)).is_err());
        }
    }
}
