//! Stripe: `Stripe-Signature: t=<unix s>,v1=<hex>[,v1=<hex>...][,v0=<hex>]`.
//!
//! Signed content `{t}.{raw body}`, HMAC-SHA256, key = the raw UTF-8 bytes of the whole
//! secret string (`whsec_...`, no base64 decoding), lowercase hex. Only `v1` is checked;
//! several `v1` entries are allowed (Stripe sends two while a secret is rolled) and
//! undecodable ones are ignored. Tolerance is age-only (`now - t > 300 s` is rejected, a
//! timestamp in the future is not), as in stripe-go and stripe-node. The event id is the
//! body's `id` (`evt_...`), read only after the signature passed.
//!
//! The mapping below follows Stripe's own definitions for API version `2026-07-29.dahlia`:
//! the types the official SDK (`stripe-node`) generates from Stripe's OpenAPI spec (the
//! current OpenAPI document itself could not be copied), Stripe's example objects
//! (`fixtures3.json`) and the Stripe CLI's trigger recipes. The parts the tests use are
//! copied in `tests/fixtures/stripe/` (provenance in `tests/fixtures/README.md`).
//!
//! # Events (`{"id", "type", "created", "data": {"object"}}`)
//!
//! Every type of the SDK's `Event.Type` (265) is in the decision table `webhook::EVENTS`,
//! normalized or ignored with its reason:
//!
//! | event type | canonical |
//! |---|---|
//! | `invoice.paid`, `invoice.payment_succeeded` | attempt `succeeded` |
//! | `invoice.payment_failed` | attempt `failed` |
//! | `invoice.payment_action_required` | attempt `requires_action` |
//! | `customer.subscription.created\|updated\|deleted\|paused\|resumed\|pending_update_applied\|pending_update_expired` | subscription change |
//! | `invoice.created\|deleted\|finalized\|finalization_failed\|sent\|updated\|upcoming\|overdue\|will_be_due\|overpaid\|voided\|marked_uncollectible\|payment_attempt_required` | ignored: no payment tried by the event, or its attempt arrives as one of the invoice events above |
//! | `invoice_payment.paid` | ignored: the same payment arrives as `invoice.paid` |
//! | `refund.created\|updated\|failed`, `charge.refund.updated` | refund of the payment it names (below) |
//! | `charge.refunded` | ignored: the Charge carries only the running total; each refund arrives as `refund.*` |
//! | `credit_note.*` | ignored: the money a credit note returns is a Refund (`refund.*`); a balance credit moves no collected money |
//! | `charge.*`, `payment_intent.*` | ignored: they name no invoice on the current API version; the invoice's events carry the attempt |
//! | `customer.subscription.trial_will_end`, the catalogue, customers, payment methods, the account, payouts, other Stripe products, ... | ignored, each with its reason in the table |
//!
//! A type not in the table is ignored and counted
//! (`subsync_unknown_provider_values_total{provider="stripe",field="type"}`).
//!
//! # Invoices → billing attempts
//!
//! `attempt_id` = `{invoice id}:{attempt_count}` (distinct per try, so a retry's success
//! never overwrites an earlier failure; `invoice.paid` and `invoice.payment_succeeded` of
//! one try share it), `cycle_id` = invoice id, `subscription_id` =
//! `parent.subscription_details.subscription` (the current Invoice has no top-level
//! `subscription`; older API versions' top-level one is still read), amount = `amount_paid`
//! on success else `amount_due` (integer minor units) + `currency`, `attempted_at` = event
//! `created`, `next_attempt_at` = `next_payment_attempt`, `attempt_count` =
//! `attempt_count`. `provider_status` is the event type: the invoice's own `status`
//! (`open`) does not tell a failure from a challenge. Error code/message, on a failure
//! only: `last_payment_error.decline_code` (else `.code`) and `.message` of the
//! PaymentIntent when the invoice carries it expanded: in `payments` (the current Invoice's
//! includable list of `InvoicePayment`; the default payment's, else the first) or, on older
//! API versions, in the top-level `payment_intent`. A webhook's invoice carries neither
//! expanded, so its error is null.
//!
//! # Subscriptions
//!
//! Status from the object's `status` (`Subscription.Status`): `active` → active;
//! `trialing`, `incomplete` → pending; `past_due`, `unpaid` (retries exhausted, invoice
//! still open) → past_due; `paused` → paused; `canceled` → cancelled;
//! `incomplete_expired` → expired. The enum is open (the SDK adds `OtherString`): another
//! word is tolerated, counted (`field="subscription.status"`) and changes nothing.
//! `current_period_end` from the latest of the items' (the current Subscription has none of
//! its own; an older version's top-level one is read first), `currency`, `customer`;
//! `updated_at` = event `created`; no version.
//!
//! # Refunds
//!
//! `refund.created|updated|failed` and `charge.refund.updated` carry a `Refund` (its type
//! is outside the SDK digest copied; its fields and status words are those of Stripe's
//! OpenAPI `refund` schema, API version 2023-08-16, the newest complete document, and of
//! its example object in `fixtures3.json`): `refund_id` = `id`, amount = `amount` +
//! `currency` (this refund's own, not a running total), `refunded_at` = `created`,
//! `provider_status` = `status`: `succeeded` → succeeded; `pending`, `requires_action` →
//! pending; `failed`, `canceled` → failed (no money went back); another word, or none, is
//! counted (`field="refund.status"`) and changes nothing.
//!
//! On the current API version neither the Refund, its Charge nor its PaymentIntent names
//! the invoice, so the refund names its payment (`payment_ref` = `payment_intent`, else
//! `charge`) and no attempt. The ledger holds it until it has linked that payment to its
//! attempt (`ledger/payments.rs`): the lookup role asks Stripe once per payment
//! (`payment.rs`: `GET /v1/invoice_payments` by PaymentIntent, through the Charge when the
//! refund names only that), and every refund of the payment is then booked for its own
//! amount, capped at what the payment still holds. A payment of no invoice (a one-off
//! charge) books nothing. A refund naming no payment at all is malformed.
//!
//! # Assumptions where the definitions are silent
//!
//! - `invoice.paid` and `invoice.payment_succeeded` of one try are the same attempt (both
//!   are sent for a successful payment; the definitions do not say they come together).
//! - `customer.subscription.pending_update_applied|expired` carry the Subscription after
//!   the change, so they are read as any other subscription change (state, idempotent).
//! - `invoice.voided` and `invoice.marked_uncollectible` change no attempt: the failed
//!   attempts before them stay failed, and the subscription's state arrives on its own.
//! - A paid invoice is not tried again, so its `attempt_count` when a refund is linked is
//!   the count of the try that paid it (the attempt `{invoice}:{attempt_count}`).
//! - A refund that fails after it succeeded (Stripe sends `refund.failed` when the issuer
//!   returns the money) stays booked: a refund's `succeeded` outranks its `failed`, as for
//!   every provider. Reversing it needs every payment's refunds re-totalled in any order
//!   (a refund capped while another still held the money would have to grow back); not
//!   built.
//! - A refund leaves its attempt `succeeded` even when it returns all of it: the
//!   definitions give no event that says the invoice's payment was refunded in full, and
//!   the journal shows what went back.
//!
//! Malformed (dead-lettered): not JSON, no `type`; for normalized types no `created`, no
//! `data.object`, no invoice `id`/`attempt_count`/`currency`, a non-integer amount, an
//! unknown currency, no subscription `id`/`status`, no refund `id`/`amount`/`currency` or
//! payment.

mod list;
mod payment;
mod retry;
mod webhook;

pub(super) use list::StripeList;
pub(super) use payment::StripePayments;
pub(super) use retry::StripeClient;

use std::time::SystemTime;

use secrecy::SecretString;

use crate::envelope::Envelope;
use crate::providers::contract::{Connector, Sample};
use crate::providers::support::{
    body_field, body_hash_id, ct_eq, header, hmac_sha256, unix_secs, utf8_keys,
};
use crate::providers::{Accepted, NormalizeError, Normalized, Unverified, VerifyError};

const SIGNATURE: &str = "stripe-signature";
const DEFAULT_TOLERANCE_SECS: u64 = 300;
const MAX_SIGNATURE_HEADER: usize = 4096;

pub struct Stripe {
    keys: Vec<Vec<u8>>,
    tolerance_secs: i64,
}

impl Stripe {
    pub fn new(secrets: &[SecretString], tolerance_secs: Option<u64>) -> Result<Self, String> {
        Ok(Self {
            keys: utf8_keys(secrets)?,
            tolerance_secs: i64::try_from(tolerance_secs.unwrap_or(DEFAULT_TOLERANCE_SECS))
                .unwrap_or(i64::MAX),
        })
    }

    fn mac(key: &[u8], timestamp: &str, body: &[u8]) -> [u8; 32] {
        hmac_sha256(key, &[timestamp.as_bytes(), b".", body])
    }
}

/// `t` and the decodable `v1` signatures of a `Stripe-Signature` header.
fn parse(value: &str) -> Result<(&str, Vec<Vec<u8>>), VerifyError> {
    let malformed = VerifyError::MalformedHeader(SIGNATURE);
    let mut timestamp = None;
    let mut v1 = Vec::new();
    for pair in value.split(',') {
        let Some((key, val)) = pair.split_once('=') else {
            continue;
        };
        match key.trim() {
            "t" if timestamp.is_some() => return Err(malformed),
            "t" => timestamp = Some(val.trim()),
            "v1" => v1.extend(hex::decode(val.trim()).ok()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(malformed)?;
    if timestamp.is_empty() || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::MalformedHeader(SIGNATURE));
    }
    Ok((timestamp, v1))
}

impl Connector for Stripe {
    fn verify(&self, request: &Unverified<'_>, now: SystemTime) -> Result<Accepted, VerifyError> {
        let value = header(request.headers, SIGNATURE)?;
        if value.len() > MAX_SIGNATURE_HEADER {
            return Err(VerifyError::MalformedHeader(SIGNATURE));
        }
        let (timestamp, candidates) = parse(value)?;
        let t: i64 = timestamp
            .parse()
            .map_err(|_| VerifyError::MalformedHeader(SIGNATURE))?;
        if unix_secs(now).saturating_sub(t) > self.tolerance_secs {
            return Err(VerifyError::TimestampOutOfWindow);
        }
        let matched = self.keys.iter().any(|key| {
            let mac = Self::mac(key, timestamp, request.body);
            candidates.iter().any(|c| ct_eq(&mac, c))
        });
        if !matched {
            return Err(VerifyError::SignatureMismatch);
        }
        let event_id = body_field(request.body, "id").unwrap_or_else(|| body_hash_id(request.body));
        Ok(Accepted {
            event_id,
            kept_headers: Vec::new(),
        })
    }

    fn normalize(&self, envelope: &Envelope) -> Result<Normalized, NormalizeError> {
        webhook::normalize(&envelope.body)
    }

    fn sign(&self, _event_id: &str, body: &[u8], now: SystemTime) -> Vec<(String, String)> {
        // The event id travels in the body (`id`), see `sample_body`.
        let t = unix_secs(now).to_string();
        let mac = Self::mac(&self.keys[0], &t, body);
        vec![(
            SIGNATURE.to_owned(),
            format!("t={t},v1={}", hex::encode(mac)),
        )]
    }

    fn header_names(&self) -> Vec<String> {
        vec![SIGNATURE.to_owned()]
    }

    fn sample_body(&self, sample: &Sample<'_>) -> Vec<u8> {
        let created = unix_secs(sample.now);
        let (invoice, subscription, customer) = (
            format!("in_{}", sample.cycle),
            format!("sub_{}", sample.subscription),
            format!("cus_{}", sample.subscription),
        );
        serde_json::to_vec(&serde_json::json!({
            "id": sample.event_id,
            "object": "event",
            "api_version": "2026-07-29.dahlia",
            "created": created,
            "type": "invoice.payment_failed",
            "livemode": false,
            "data": { "object": {
                "id": invoice, "object": "invoice", "customer": customer,
                "parent": { "type": "subscription_details",
                    "subscription_details": { "subscription": subscription } },
                "amount_due": 1999, "currency": "usd",
                "amount_paid": 0, "attempt_count": 1, "status": "open",
                "next_payment_attempt": created + 3 * 86_400
            } }
        }))
        .expect("static JSON")
    }
}

/// Stripe's definitions as copied for the tests (`tests/fixtures/stripe/`): the SDK's types.
#[cfg(test)]
pub(super) fn definitions() -> &'static crate::providers::testing::digest::Digest {
    static DIGEST: std::sync::OnceLock<crate::providers::testing::digest::Digest> =
        std::sync::OnceLock::new();
    DIGEST.get_or_init(|| {
        crate::providers::testing::digest::Digest::parse(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/stripe/stripe-node-types.2026-07-29.dahlia.subset.json"
        )))
    })
}

#[cfg(test)]
/// An invoice of the current API version generated from its type, of `sub_1`.
pub(super) fn invoice(id: &str, status: &str, count: u64) -> serde_json::Value {
    use serde_json::json;
    let spec = definitions();
    let mut invoice = spec.generate("Invoice");
    let paid = status == "paid";
    let mut parent = spec.generate("Invoice.Parent");
    parent["type"] = json!("subscription_details");
    parent["subscription_details"] = spec.generate("Invoice.Parent.SubscriptionDetails");
    parent["subscription_details"]["subscription"] = json!("sub_1");
    for (key, value) in [
        ("id", json!(id)),
        ("status", json!(status)),
        ("attempt_count", json!(count)),
        ("attempted", json!(count > 0)),
        ("amount_due", json!(1500)),
        ("amount_paid", json!(if paid { 1500 } else { 0 })),
        ("currency", json!("usd")),
        ("created", json!(1_700_000_000)),
        ("parent", parent),
    ] {
        invoice[key] = value;
    }
    invoice["status_transitions"]["paid_at"] = if paid {
        json!(1_700_000_100)
    } else {
        serde_json::Value::Null
    };
    let errors = spec.validate(&invoice, "Invoice");
    assert!(errors.is_empty(), "{id}: {errors:#?}");
    invoice
}

/// The problems of a list request's query under `params` (a parameters type of the
/// definitions), every `expand[]` a path to an object of the `listed` type (empty: Stripe
/// accepts it).
#[cfg(test)]
pub(super) fn query_problems(url: &reqwest::Url, params: &str, listed: &str) -> Vec<String> {
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let spec = definitions();
    let mut problems =
        spec.validate_form(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())), params);
    for (key, value) in &pairs {
        let on_listed = value.strip_prefix("data.");
        if key.starts_with("expand[") && !on_listed.is_some_and(|p| spec.names_an_object(listed, p))
        {
            problems.push(format!(
                "expand {value}: no such object on the {listed}s listed"
            ));
        }
    }
    problems
}

/// The SDK's interface of the events of `event_type` (`InvoicePaidEvent`, ...).
#[cfg(test)]
pub(super) fn event_interface(event_type: &str) -> String {
    let types = definitions().doc()["types"].as_object().unwrap();
    types
        .iter()
        .find(|(name, ty)| {
            name.ends_with("Event")
                && ty["properties"]["type"]["enum"] == serde_json::json!([event_type])
        })
        .map(|(name, _)| name.clone())
        .unwrap_or_else(|| panic!("no event interface for {event_type}"))
}

/// An event `id` of `event_type` created at `created` (unix seconds) carrying `object`,
/// generated from its SDK interface and checked against it.
#[cfg(test)]
pub(super) fn event(
    id: &str,
    event_type: &str,
    created: i64,
    object: serde_json::Value,
) -> serde_json::Value {
    use serde_json::json;
    let interface = event_interface(event_type);
    let mut event = definitions().generate(&interface);
    event["id"] = json!(id);
    event["created"] = json!(created);
    event["api_version"] = json!("2026-07-29.dahlia");
    event["data"]["object"] = object;
    let errors = definitions().validate(&event, &interface);
    assert!(errors.is_empty(), "{event_type}: {errors:#?}");
    event
}

/// Stripe's official example objects (`fixtures3.json`, cut) and CLI trigger recipes.
#[cfg(test)]
pub(super) fn examples() -> (&'static serde_json::Value, &'static serde_json::Value) {
    static EXAMPLES: std::sync::OnceLock<(serde_json::Value, serde_json::Value)> =
        std::sync::OnceLock::new();
    let (fixtures, triggers) = EXAMPLES.get_or_init(|| {
        let parse = |text: &str| serde_json::from_str(text).expect("JSON");
        (
            parse(include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/stripe/fixtures3.subset.json"
            ))),
            parse(include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/stripe/stripe-cli-triggers.json"
            ))),
        )
    });
    (fixtures, triggers)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use axum::http::{HeaderMap, HeaderValue};
    use bytes::Bytes;

    use super::*;

    // ST-1 and ST-2 (arlyon/async-stripe), exact payload bytes (tests/fixtures/README.md).
    const PAYLOAD_A: &[u8] = include_bytes!("../../../tests/fixtures/stripe/stripe_payload_A.json");
    const PAYLOAD_B: &[u8] = include_bytes!("../../../tests/fixtures/stripe/stripe_payload_B.json");
    const SECRET_12: &str = "webhook_secret";
    const T_12: u64 = 1533204620;
    const ST1_HEADER: &str = "t=1533204620,v1=f0bdba6d4eacbd8ad8a3bbadd7248e633ec1477f7899c124c51b39405fa36613,v0=63f3a72374a733066c4be69ed7f8e5ac85c22c9f0a6a612ab9a025a9e4ee7eef";
    const ST1_V1: &str = "f0bdba6d4eacbd8ad8a3bbadd7248e633ec1477f7899c124c51b39405fa36613";
    const ST2_V1: &str = "82216eca827bcb7b34b8055eb2d2d9e6bc13b9ac39ded14a61e69f70c565f53a";
    // ST-3 (derived).
    const SECRET_3: &str = "whsec_test_secret";
    const T_3: u64 = 1700000000;
    const BODY_3: &[u8] =
        br#"{"id":"evt_test_webhook","object":"event","type":"invoice.payment_failed"}"#;
    const ST3_V1: &str = "330df18f9f35d767af5081e9e1b60050485d95160bde834b899ab7ed54b13d85";

    fn verifier(secrets: &[&str]) -> Stripe {
        let secrets: Vec<SecretString> = secrets.iter().map(|s| SecretString::from(*s)).collect();
        Stripe::new(&secrets, None).unwrap()
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn check(v: &Stripe, sig: &str, body: &[u8], now: u64) -> Result<Accepted, VerifyError> {
        let mut h = HeaderMap::new();
        h.insert(SIGNATURE, HeaderValue::from_str(sig).unwrap());
        check_headers(v, &h, body, now)
    }

    fn check_headers(
        v: &Stripe,
        h: &HeaderMap,
        body: &[u8],
        now: u64,
    ) -> Result<Accepted, VerifyError> {
        let body = Bytes::copy_from_slice(body);
        let request = Unverified {
            headers: h,
            body: &body,
            peer: None,
        };
        v.verify(&request, at(now))
    }

    #[test]
    fn payload_files_are_the_exact_bytes() {
        assert_eq!(PAYLOAD_A.len(), 807);
        assert_eq!(PAYLOAD_B.len(), 756);
        assert_eq!(
            crate::providers::support::sha256_hex(&[PAYLOAD_A]),
            "00589da53d8c43f7cabd6f30ecd2db5f0e746c5b99507b4776e4493bf21c27cf"
        );
    }

    #[test]
    fn published_vectors_verify_and_sign() {
        let v = verifier(&[SECRET_12]);
        let ok = check(&v, ST1_HEADER, PAYLOAD_A, T_12).unwrap();
        assert_eq!(ok.event_id, "evt_123");
        assert!(ok.kept_headers.is_empty());
        let st2 = format!("t={T_12},v1={ST2_V1}");
        assert_eq!(
            check(&v, &st2, PAYLOAD_B, T_12).unwrap().event_id,
            "evt_123"
        );
        // ST-1's signature does not fit ST-2's body.
        assert_eq!(
            check(&v, ST1_HEADER, PAYLOAD_B, T_12).unwrap_err(),
            VerifyError::SignatureMismatch
        );
        assert_eq!(
            v.sign("ignored", PAYLOAD_A, at(T_12))[0].1,
            format!("t={T_12},v1={ST1_V1}")
        );

        let v = verifier(&[SECRET_3]);
        let st3 = format!("t={T_3},v1={ST3_V1}");
        assert_eq!(
            check(&v, &st3, BODY_3, T_3).unwrap().event_id,
            "evt_test_webhook"
        );
        assert_eq!(
            v.sign("x", BODY_3, at(T_3)),
            vec![(SIGNATURE.to_owned(), st3)]
        );
    }

    #[test]
    fn several_v1_entries_rotation_and_ignored_entries() {
        let v = verifier(&[SECRET_3]);
        let bogus = "5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd";
        let header = format!("t={T_3}, v1={bogus},v1=zz-not-hex,v1={ST3_V1},v0={ST3_V1},junk");
        check(&v, &header, BODY_3, T_3).unwrap();
        // Only v0 carries the right value: not accepted.
        let only_v0 = format!("t={T_3},v1={bogus},v0={ST3_V1}");
        assert_eq!(
            check(&v, &only_v0, BODY_3, T_3).unwrap_err(),
            VerifyError::SignatureMismatch
        );
        let st3 = format!("t={T_3},v1={ST3_V1}");
        check(&verifier(&[SECRET_12, SECRET_3]), &st3, BODY_3, T_3).unwrap();
        check(&verifier(&[SECRET_3, SECRET_12]), &st3, BODY_3, T_3).unwrap();
        assert_eq!(
            check(&verifier(&[SECRET_12]), &st3, BODY_3, T_3).unwrap_err(),
            VerifyError::SignatureMismatch
        );
        // The key is the whole string: "test_secret" alone is another key.
        assert!(check(&verifier(&["test_secret"]), &st3, BODY_3, T_3).is_err());
    }

    #[test]
    fn tampered_body_and_timestamp_are_rejected() {
        let v = verifier(&[SECRET_3]);
        let tampered = String::from_utf8(BODY_3.to_vec())
            .unwrap()
            .replace("failed", "succeeded");
        let st3 = format!("t={T_3},v1={ST3_V1}");
        assert_eq!(
            check(&v, &st3, tampered.as_bytes(), T_3).unwrap_err(),
            VerifyError::SignatureMismatch
        );
        let moved = format!("t={},v1={ST3_V1}", T_3 + 1);
        assert_eq!(
            check(&v, &moved, BODY_3, T_3).unwrap_err(),
            VerifyError::SignatureMismatch
        );
    }

    #[test]
    fn tolerance_is_age_only() {
        let v = verifier(&[SECRET_3]);
        let st3 = format!("t={T_3},v1={ST3_V1}");
        check(&v, &st3, BODY_3, T_3 + 300).unwrap();
        assert_eq!(
            check(&v, &st3, BODY_3, T_3 + 301).unwrap_err(),
            VerifyError::TimestampOutOfWindow
        );
        // Stripe's libraries do not reject timestamps ahead of the local clock.
        check(&v, &st3, BODY_3, T_3 - 3600).unwrap();
        let strict = Stripe::new(&[SecretString::from(SECRET_3)], Some(10)).unwrap();
        assert_eq!(
            check(&strict, &st3, BODY_3, T_3 + 11).unwrap_err(),
            VerifyError::TimestampOutOfWindow
        );
    }

    #[test]
    fn malformed_headers_and_missing_id_are_rejected() {
        let v = verifier(&[SECRET_3]);
        let malformed = VerifyError::MalformedHeader(SIGNATURE);
        for bad in [
            format!("v1={ST3_V1}"),
            format!("t=,v1={ST3_V1}"),
            format!("t=17x,v1={ST3_V1}"),
            format!("t=-1,v1={ST3_V1}"),
            format!("t={T_3},t={T_3},v1={ST3_V1}"),
            format!("t=99999999999999999999999,v1={ST3_V1}"),
            format!("t={T_3},v1={}", "a".repeat(5000)),
        ] {
            assert_eq!(
                check(&v, &bad, BODY_3, T_3).unwrap_err(),
                malformed,
                "{bad}"
            );
        }
        assert_eq!(
            check(&v, &format!("t={T_3}"), BODY_3, T_3).unwrap_err(),
            VerifyError::SignatureMismatch
        );
        let mut h = HeaderMap::new();
        assert_eq!(
            check_headers(&v, &h, BODY_3, T_3).unwrap_err(),
            VerifyError::MissingHeader(SIGNATURE)
        );
        h.insert(SIGNATURE, HeaderValue::from_static(""));
        assert_eq!(
            check_headers(&v, &h, BODY_3, T_3).unwrap_err(),
            VerifyError::MissingHeader(SIGNATURE)
        );
        let st3 = format!("t={T_3},v1={ST3_V1}");
        h.insert(SIGNATURE, HeaderValue::from_str(&st3).unwrap());
        h.append(SIGNATURE, HeaderValue::from_str(&st3).unwrap());
        assert_eq!(check_headers(&v, &h, BODY_3, T_3).unwrap_err(), malformed);
        // A correctly signed body without an id.
        let no_id = br#"{"object":"event","type":"invoice.paid"}"#;
        let signed = v.sign("x", no_id, at(T_3));
        let kept = check(&v, &signed[0].1, no_id, T_3).unwrap();
        assert_eq!(
            kept.event_id,
            body_hash_id(no_id),
            "kept under a body-hash id"
        );
    }

    #[test]
    fn sample_body_round_trips_and_normalizes() {
        let v = verifier(&[SECRET_3]);
        let body = v.sample_body(&crate::providers::contract::Sample::new(
            "evt_sample",
            at(T_3),
        ));
        let signed = v.sign("evt_sample", &body, at(T_3));
        let ok = check(&v, &signed[0].1, &body, T_3 + 5).unwrap();
        assert_eq!(ok.event_id, "evt_sample");
        let envelope = Envelope {
            source_id: "s".into(),
            provider: crate::config::ProviderKind::Stripe,
            event_id: ok.event_id,
            received_at: chrono::Utc::now(),
            content_type: None,
            headers: vec![],
            body: Bytes::from(body),
        };
        let normalized = v.normalize(&envelope).unwrap();
        assert_eq!(normalized.event_type, "invoice.payment_failed");
        // The current API version's shape: the subscription under `parent`.
        let [crate::canonical::CanonicalEvent::BillingAttempt(a)] = normalized.events.as_slice()
        else {
            panic!("not one attempt: {normalized:?}");
        };
        assert!(
            a.subscription_id
                .as_deref()
                .is_some_and(|s| s.starts_with("sub_"))
        );
        let bad = Envelope {
            body: Bytes::from_static(b"not json"),
            ..envelope
        };
        assert!(v.normalize(&bad).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_headers_and_bodies_never_panic(
            sig in ".{0,300}", body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)
        ) {
            let v = verifier(&[SECRET_3]);
            let mut h = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_str(&sig) {
                h.insert(SIGNATURE, value);
            }
            proptest::prop_assert!(check_headers(&v, &h, &body, T_3).is_err());
        }
    }
}
