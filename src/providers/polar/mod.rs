//! Polar.sh: Standard Webhooks headers and math (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature`, `{id}.{ts}.{body}`, `v1,<base64>`, ±300 s), but the HMAC key is the
//! raw UTF-8 of the WHOLE secret string as shown in the dashboard, `whsec_` prefix
//! included. Polar secrets are not base64: a stock Standard Webhooks key decoding would
//! produce the wrong key. Verification and signing are delegated to [`StandardWebhooks`].
//!
//! # Normalization (in `polar_normalize.rs`; envelope `{"type","timestamp","data"}`)
//!
//! | event type | canonical |
//! |---|---|
//! | `order.created/updated/paid/refunded` | billing attempt, status from the order |
//! | `subscription.created/updated/active/canceled/uncanceled/revoked/past_due/cycled/paused/resumed` | subscription change |
//! | anything else (`checkout.*`, `customer.*`, `refund.*`...) | ignored |
//!
//! Orders: one order is one cycle and, as far as webhooks tell, one attempt: `attempt_id` =
//! `cycle_id` = order id (Polar's order webhook has no per-try id or count, so dunning
//! retries update the same attempt; the failure itself is signalled by
//! `subscription.past_due`). `subscription_id` = `subscription_id` (null for one-time
//! orders). Status from the order's `status`: `draft`, `pending` → pending; `paid` →
//! succeeded; `refunded`, `partially_refunded` → refunded; `void` → skipped (Polar closed
//! the order without collecting: nothing more will be charged for it). The customer-portal
//! payment words (`processing`, `no_payment` → pending, `succeeded`, `requires_action`,
//! `failed`, `canceled` → skipped) are accepted too. Amount = `total_amount` (else the
//! deprecated `amount`), integer minor units + `currency`; `attempted_at` = `modified_at`,
//! else `created_at`, else the envelope `timestamp`; `next_attempt_at` =
//! `next_payment_attempt_at` (set while the order is in dunning); no error code, no count.
//!
//! Subscriptions: status from `data.status`: `active` → active (also on
//! `subscription.canceled` with `cancel_at_period_end`, which stays active until
//! `subscription.revoked`); `incomplete`, `trialing` → pending; `past_due`, `unpaid` →
//! past_due; `paused` → paused; `canceled` → cancelled; `incomplete_expired` → expired.
//! `current_period_end`, `currency`, `customer_id`; `updated_at` = `modified_at`, else the
//! envelope `timestamp`; no version.
//!
//! Malformed (dead-lettered): not JSON, no `type`, an unparsable `timestamp`; for covered
//! types no `data`, no id/status, an unknown status, no order currency, an unknown
//! currency, a non-integer amount, an unparsable time.

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
        // A renewal order paid after one failed try (order `status` `paid`).
        let at = chrono::DateTime::<chrono::Utc>::from(sample.now).to_rfc3339();
        let subscription = format!("e5149aae-e521-42b9-b24c-{:012x}", sample.subscription);
        serde_json::to_vec(&serde_json::json!({
            "type": "order.paid",
            "timestamp": at,
            "data": {
                "id": format!("ord_{}_{}", sample.cycle, sample.event_id),
                "created_at": at, "modified_at": at,
                "status": "paid", "paid": true,
                "subtotal_amount": 1999, "discount_amount": 0, "net_amount": 1999,
                "tax_amount": 0, "total_amount": 1999, "refunded_amount": 0, "currency": "usd",
                "billing_reason": "subscription_cycle",
                "customer_id": "992fae2a-2a17-4b7a-8d9e-e287cf90131b",
                "product_id": "3b6a4e5c-0e43-4a5e-9a59-5d3c0b1f9b0a",
                "subscription_id": subscription,
                "next_payment_attempt_at": null
            }
        }))
        .expect("static JSON")
    }
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
