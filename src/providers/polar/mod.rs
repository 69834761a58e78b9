//! Polar.sh: Standard Webhooks headers and math (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature`, `{id}.{ts}.{body}`, `v1,<base64>`, ±300 s), but the HMAC key is the
//! raw UTF-8 of the WHOLE secret string as shown in the dashboard, `whsec_` prefix
//! included. Polar secrets are not base64: a stock Standard Webhooks key decoding would
//! produce the wrong key. Verification and signing are delegated to [`StandardWebhooks`].
//!
//! The mapping below follows Polar's own definitions: its OpenAPI document, API version
//! 2026-10 (identical to 2026-04 but for its version and code samples). The parts the tests
//! use are copied in `tests/fixtures/polar/` (provenance in `tests/fixtures/README.md`).
//!
//! # Webhooks (envelope `{"type", "timestamp", "data"}`, all three required)
//!
//! Every type is in the decision table `webhook::WEBHOOKS`, normalized or ignored with its
//! reason: `order.created|updated|paid|refunded` (data: `Order`) → one billing attempt;
//! `subscription.created|updated|active|canceled|uncanceled|cycled|revoked|past_due|
//! paused|resumed` (data: `Subscription`) → one subscription change; `refund.created|
//! updated` (data: `Refund`) → the order's refund; the types Polar sends beyond its
//! definitions (`checkout.*`, `customer.*`, `benefit_grant.*`, ...) → ignored. A type not in the table is ignored and counted
//! (`subsync_unknown_provider_values_total{provider="polar",field="type"}`).
//!
//! # Orders → billing attempts
//!
//! One order is one billing cycle and, as far as webhooks tell, one attempt: `attempt_id`
//! = `cycle_id` = order `id` (an order has no per-try id or count: Polar's own retries and
//! ours update the same attempt). `subscription_id` = `subscription_id` (null for one-time
//! orders). Status from the order's `status` (`OrderStatus`) and `next_payment_attempt_at`
//! ("When the next automatic payment retry is scheduled. `null` if the order is not in
//! dunning or all retries have been exhausted"):
//!
//! | `status` | `next_payment_attempt_at` | attempt |
//! |---|---|---|
//! | `pending` | set | **failed**, `next_attempt_at` = that time |
//! | `pending` | null or absent | pending |
//! | `draft` | - | pending |
//! | `paid` | - | succeeded |
//! | `partially_refunded` | - | succeeded (see below) |
//! | `refunded` | - | refunded |
//! | `void` | - | skipped (closed without collecting) |
//! | any other word | - | event ignored, counted (`field="order.status"`) |
//!
//! `provider_status` is always the order's own word (`pending` for a failed renewal).
//!
//! Assumption: Polar's definitions have no failed order state and no payment-failed
//! webhook. A renewal whose charge failed stays `pending` and Polar schedules its next
//! automatic retry in `next_payment_attempt_at`, so `pending` with that time set is read as
//! a failed attempt that dunning can act on (Polar's confirm-payment accepts exactly such
//! orders). `subscription.past_due` ("a subscription payment fails") names no order and
//! stays a subscription change; the failed attempt comes from the `order.updated` (or
//! `order.created`) of the renewal. When Polar's retries are exhausted the field is null
//! again: that `pending` reads as pending, and the exhaustion itself is the
//! `subscription.revoked` / `unpaid` status change.
//!
//! Refunds: each `Refund` (`refund.created|updated`) is a refund of its `order_id`'s attempt
//! with its own id, amount `amount + tax_amount` (the collected `total_amount` includes
//! tax) and status (`pending`; `succeeded`; `failed`, `canceled` → failed; another word is
//! counted and ignored). A `partially_refunded` order is read as succeeded (the money was
//! collected; the part given back is its refunds'); `refunded` is a full refund, so the
//! ledger gives back whatever its refunds have not.
//!
//! Amount = `total_amount` ("Amount in cents, after discounts and taxes"), integer minor
//! units, with `currency` (lowercase in Polar, e.g. `usd`); `attempted_at` = `modified_at`,
//! else `created_at`, else the envelope `timestamp`; no error code or message (an order
//! carries none), no count.
//!
//! # Subscriptions → subscription changes
//!
//! Status from `data.status` (`SubscriptionStatus`, Stripe's words): `active` → active
//! (also on `subscription.canceled` with `cancel_at_period_end`, which stays active until
//! `subscription.revoked`); `incomplete`, `trialing` → pending; `past_due`, `unpaid` →
//! past_due; `paused` → paused; `canceled` → cancelled; `incomplete_expired` → expired; any
//! other word → event ignored, counted (`field="subscription.status"`). `current_period_end`,
//! `currency`, `customer_id`; `updated_at` = `modified_at`, else the envelope `timestamp`;
//! no version. `subscription.cycled` fires before the renewal order exists and whatever
//! its payment does: it is a period change, never a payment.
//!
//! Malformed (dead-lettered): not JSON, no `type`, an unparsable `timestamp`; for covered
//! types no `data`, no id or status, no order currency, an unknown currency, a non-integer
//! amount, an unparsable time.
//!
//! # API (`[sources.api]`)
//!
//! `api.token` is an **organization access token** (security scheme `oat`), used for
//! `GET /v1/orders/` (sync, `list.rs`), `GET /v1/orders/{id}` and `POST
//! /v1/customer-sessions/` (retries, `retry.rs`); confirm-payment takes a customer-session
//! token, which the retry client mints with it. `api.payment_method_id` is optional: without
//! it each order's customer's default payment method is used.

mod list;
mod retry;
mod webhook;

pub(super) use list::PolarList;
pub(super) use retry::PolarClient;

use std::time::SystemTime;

use secrecy::SecretString;

use crate::envelope::Envelope;
use crate::providers::contract::{Connector, Sample};
use crate::providers::schemes::standard::{STANDARD_NAMES, StandardWebhooks};
use crate::providers::support::utf8_keys;
use crate::providers::{Accepted, NormalizeError, Normalized, Unverified, VerifyError};

pub struct Polar {
    verifier: StandardWebhooks,
}

pub fn new(secrets: &[SecretString], tolerance_secs: Option<u64>) -> Result<Polar, String> {
    Ok(Polar {
        verifier: StandardWebhooks::with(
            utf8_keys(secrets)?,
            tolerance_secs,
            &STANDARD_NAMES,
            "order.paid",
        ),
    })
}

impl Connector for Polar {
    fn verify(&self, request: &Unverified<'_>, now: SystemTime) -> Result<Accepted, VerifyError> {
        self.verifier.verify(request, now)
    }

    fn normalize(&self, envelope: &Envelope) -> Result<Normalized, NormalizeError> {
        webhook::normalize(&envelope.body)
    }

    fn sign(&self, event_id: &str, body: &[u8], now: SystemTime) -> Vec<(String, String)> {
        self.verifier.sign(event_id, body, now)
    }

    fn header_names(&self) -> Vec<String> {
        self.verifier.header_names()
    }

    fn sample_body(&self, sample: &Sample<'_>) -> Vec<u8> {
        // A renewal order paid (`order.paid`, every field its schema requires); the order
        // id is a uuid made of the cycle and a hash of the event id.
        let at = chrono::DateTime::<chrono::Utc>::from(sample.now)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let subscription = format!("e5149aae-e521-42b9-b24c-{:012x}", sample.subscription);
        let event = crate::providers::support::sha256_hex(&[sample.event_id.as_bytes()]);
        let order = format!(
            "{:08x}-{}-4{}-8{}-{}",
            sample.cycle & 0xffff_ffff,
            &event[0..4],
            &event[4..7],
            &event[7..10],
            &event[10..22]
        );
        let customer = "992fae2a-2a17-4b7a-8d9e-e287cf90131b";
        let customer_object = serde_json::json!({
            "id": customer, "created_at": at, "modified_at": null, "metadata": {},
            "email_verified": true, "type": "individual", "name": null,
            "billing_name": null, "billing_address": null, "tax_id": null,
            "organization_id": "1dbfc517-0bbf-4301-9ba8-555ca42b9737",
            "default_payment_method_id": null, "deleted_at": null,
            "first_user_event_at": null, "avatar_url": null
        });
        serde_json::to_vec(&serde_json::json!({
            "type": "order.paid",
            "timestamp": at,
            "data": {
                "id": order, "created_at": at, "modified_at": at,
                "status": "paid", "paid": true,
                "subtotal_amount": 1999, "discount_amount": 0, "net_amount": 1999,
                "tax_amount": 0, "total_amount": 1999, "applied_balance_amount": 0,
                "due_amount": 0, "refunded_amount": 0, "refunded_tax_amount": 0,
                "refundable_amount": 1999, "refundable_tax_amount": 0,
                "platform_fee_amount": 0, "platform_fee_currency": null,
                "currency": "usd", "billing_reason": "subscription_cycle",
                "billing_name": null, "billing_address": null, "invoice_number": null,
                "is_invoice_generated": false, "receipt_number": null,
                "customer_id": customer, "product_id": null, "discount_id": null,
                "subscription_id": subscription, "checkout_id": null,
                "next_payment_attempt_at": null, "metadata": {},
                "customer": customer_object,
                "product": null, "discount": null, "subscription": null, "items": [],
                "description": "Pro"
            }
        }))
        .expect("static JSON")
    }
}

/// Polar's definitions as copied for the tests (`tests/fixtures/polar/`).
#[cfg(test)]
pub(super) fn definitions() -> &'static crate::providers::testing::schema::Spec {
    static SPEC: std::sync::OnceLock<crate::providers::testing::schema::Spec> =
        std::sync::OnceLock::new();
    SPEC.get_or_init(|| {
        crate::providers::testing::schema::Spec::parse(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/polar/polar-openapi-2026-10.subset.json"
        )))
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use axum::http::{HeaderMap, HeaderName, HeaderValue};
    use bytes::Bytes;

    use super::*;

    // Derived vectors of reference §2 (key = the full string).
    const SECRET_A: &str = "test-secret";
    const SIG_A: &str = "v1,YF1E4aAATIsxQWB6pNl80sKcUpcEeSdrQGetqfbalKg=";
    const SECRET_B: &str = "whsec_ExampleExampleExampleExampleExampl0AbCdE";
    const SIG_B: &str = "v1,OdNl8oo5abp3RFHxulHwol4VUwXMZ4HivtviiOQ9D4o=";
    const ID: &str = "test-webhook";
    const TS: u64 = 1700000000;
    const BODY: &str = r#"{"type":"dummy.event","value":"payload"}"#;

    fn verifier(secrets: &[&str]) -> Polar {
        let secrets: Vec<SecretString> = secrets.iter().map(|s| SecretString::from(*s)).collect();
        new(&secrets, None).unwrap()
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn headers(id: &str, ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("webhook-id", HeaderValue::from_str(id).unwrap());
        h.insert("webhook-timestamp", HeaderValue::from_str(ts).unwrap());
        h.insert("webhook-signature", HeaderValue::from_str(sig).unwrap());
        h
    }

    fn check(
        v: &dyn Connector,
        h: &HeaderMap,
        body: &str,
        now: u64,
    ) -> Result<Accepted, VerifyError> {
        let body = Bytes::from(body.to_owned());
        let request = Unverified {
            headers: h,
            body: &body,
            peer: None,
        };
        v.verify(&request, at(now))
    }

    #[test]
    fn derived_vectors_verify_and_sign() {
        let ts = TS.to_string();
        for (secret, sig) in [(SECRET_A, SIG_A), (SECRET_B, SIG_B)] {
            let v = verifier(&[secret]);
            let ok = check(&v, &headers(ID, &ts, sig), BODY, TS).unwrap();
            assert_eq!(ok.event_id, ID);
            assert_eq!(v.sign(ID, BODY.as_bytes(), at(TS))[2].1, sig);
        }
    }

    #[test]
    fn standard_key_decoding_would_not_match() {
        // The whsec_ Polar secret read the Standard Webhooks way gives another key.
        let standard =
            StandardWebhooks::new(&[SecretString::from(SECRET_B)], None).expect("valid base64");
        assert_eq!(
            check(&standard, &headers(ID, &TS.to_string(), SIG_B), BODY, TS).unwrap_err(),
            VerifyError::SignatureMismatch
        );
    }

    #[test]
    fn tampered_wrong_secret_rotation_and_window() {
        let ts = TS.to_string();
        let h = headers(ID, &ts, SIG_B);
        assert_eq!(
            check(
                &verifier(&[SECRET_B]),
                &h,
                &BODY.replace("payload", "x"),
                TS
            )
            .unwrap_err(),
            VerifyError::SignatureMismatch
        );
        assert_eq!(
            check(&verifier(&[SECRET_A]), &h, BODY, TS).unwrap_err(),
            VerifyError::SignatureMismatch
        );
        check(&verifier(&[SECRET_A, SECRET_B]), &h, BODY, TS).unwrap();
        check(&verifier(&[SECRET_B, SECRET_A]), &h, BODY, TS).unwrap();
        let v = verifier(&[SECRET_B]);
        check(&v, &h, BODY, TS + 300).unwrap();
        check(&v, &h, BODY, TS - 300).unwrap();
        for now in [TS + 301, TS - 301] {
            assert_eq!(
                check(&v, &h, BODY, now).unwrap_err(),
                VerifyError::TimestampOutOfWindow
            );
        }
    }

    #[test]
    fn malformed_headers_and_empty_secret_are_rejected() {
        let v = verifier(&[SECRET_B]);
        let ts = TS.to_string();
        let mut dup = headers(ID, &ts, SIG_B);
        dup.append("webhook-id", HeaderValue::from_static("other"));
        assert_eq!(
            check(&v, &dup, BODY, TS).unwrap_err(),
            VerifyError::MalformedHeader("webhook-id")
        );
        let mut h = headers(ID, &ts, SIG_B);
        h.remove("webhook-timestamp");
        assert_eq!(
            check(&v, &h, BODY, TS).unwrap_err(),
            VerifyError::MissingHeader("webhook-timestamp")
        );
        for sig in ["", "v1,%%%", "garbage"] {
            let h = headers(ID, &ts, sig);
            assert!(check(&v, &h, BODY, TS).is_err(), "{sig:?}");
        }
        let huge = format!("v1,{}", "A".repeat(10_000));
        assert_eq!(
            check(&v, &headers(ID, &ts, &huge), BODY, TS).unwrap_err(),
            VerifyError::MalformedHeader("webhook-signature")
        );
        assert!(new(&[SecretString::from("")], None).is_err());
        assert!(new(&[], None).is_err());
    }

    #[test]
    fn sample_body_sign_round_trip() {
        let v = verifier(&[SECRET_B]);
        let body = v.sample_body(&crate::providers::contract::Sample::new("evt_1", at(TS)));
        let mut h = HeaderMap::new();
        for (n, val) in v.sign("evt_1", &body, at(TS)) {
            h.insert(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(&val).unwrap(),
            );
        }
        let body = String::from_utf8(body).unwrap();
        assert_eq!(check(&v, &h, &body, TS).unwrap().event_id, "evt_1");
        let envelope = Envelope {
            source_id: "polar".into(),
            provider: crate::config::ProviderKind::Polar,
            event_id: "evt_1".into(),
            received_at: chrono::Utc::now(),
            content_type: None,
            headers: vec![],
            body: Bytes::from(body),
        };
        let normalized = v.normalize(&envelope).unwrap();
        assert_eq!(normalized.event_type, "order.paid");
        assert_eq!(normalized.events.len(), 1);
    }

    #[test]
    fn sample_body_is_valid_under_the_definitions() {
        let v = verifier(&[SECRET_B]);
        let spec = definitions();
        for (event_id, cycle) in [("evt_1", 0), ("msg_2Kx", 7), ("", u64::MAX)] {
            let sample = crate::providers::contract::Sample {
                cycle,
                ..crate::providers::contract::Sample::new(event_id, at(TS))
            };
            let body: serde_json::Value = serde_json::from_slice(&v.sample_body(&sample)).unwrap();
            let errors = spec.validate(&body, spec.webhook_body("order.paid"));
            assert!(errors.is_empty(), "{errors:#?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_headers_and_bodies_never_panic(
            id in ".{0,64}", ts in ".{0,24}", sig in ".{0,300}",
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)
        ) {
            let v = verifier(&[SECRET_B]);
            let mut h = HeaderMap::new();
            for (name, value) in [("webhook-id", id), ("webhook-timestamp", ts), ("webhook-signature", sig)] {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    h.insert(name, value);
                }
            }
            let body = Bytes::from(body);
            let request = Unverified { headers: &h, body: &body, peer: None };
            proptest::prop_assert!(v.verify(&request, at(TS)).is_err());
        }
    }
}
