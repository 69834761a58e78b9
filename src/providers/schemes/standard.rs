//! Standard Webhooks v1 (also what Svix sends under `webhook-*` names).
//!
//! Signed content: `{webhook-id}.{webhook-timestamp}.{raw body}`, HMAC-SHA256, key =
//! base64-decoded secret after an optional `whsec_` prefix, signature `v1,<base64>`,
//! several space-separated signatures (rotation), ±300 s window both ways.
//!
//! The same verifier serves Svix/Appstle (other header names, see `schemes/svix.rs`) and Polar
//! (another key decoding, see `polar.rs`): they build it with [`StandardWebhooks::with`].

use std::time::SystemTime;

use base64::Engine as _;
use secrecy::SecretString;

use crate::envelope::Envelope;
use crate::providers::contract::{Connector, Sample};
use crate::providers::support::{ct_eq, decode_keys, header, hmac_sha256, unix_secs};
use crate::providers::{Accepted, NormalizeError, Normalized, Unverified, VerifyError};

const ID: &str = "webhook-id";
const TIMESTAMP: &str = "webhook-timestamp";
const SIGNATURE: &str = "webhook-signature";
const DEFAULT_TOLERANCE_SECS: u64 = 300;
/// A signature header longer than this is not a list of signatures.
const MAX_SIGNATURE_HEADER: usize = 4096;

/// Header names of one branding of the scheme, with an optional fallback branding that is
/// read, header by header, when the preferred name is absent.
pub(crate) struct HeaderNames {
    pub id: &'static str,
    pub timestamp: &'static str,
    pub signature: &'static str,
    pub fallback: Option<&'static HeaderNames>,
}

/// The unbranded `webhook-*` names.
pub(crate) const STANDARD_NAMES: HeaderNames = HeaderNames {
    id: ID,
    timestamp: TIMESTAMP,
    signature: SIGNATURE,
    fallback: None,
};

impl HeaderNames {
    fn read<'a>(
        &self,
        headers: &'a axum::http::HeaderMap,
        pick: fn(&HeaderNames) -> &'static str,
    ) -> Result<&'a str, VerifyError> {
        match self.fallback {
            Some(fallback) if !headers.contains_key(pick(self)) => {
                header(headers, pick(fallback)).map_err(|e| match e {
                    // Report the preferred name when neither is there.
                    VerifyError::MissingHeader(_) => VerifyError::MissingHeader(pick(self)),
                    other => other,
                })
            }
            _ => header(headers, pick(self)),
        }
    }
}

/// Standard base64 that accepts secrets with or without padding (as the Python reference
/// library does); the Rust reference library is strict, which rejects real secrets pasted
/// without their `=`.
const LENIENT_B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

pub struct StandardWebhooks {
    keys: Vec<Vec<u8>>,
    tolerance_secs: i64,
    names: &'static HeaderNames,
    sample_type: &'static str,
}

impl StandardWebhooks {
    pub fn new(secrets: &[SecretString], tolerance_secs: Option<u64>) -> Result<Self, String> {
        let keys = Self::whsec_keys(secrets)?;
        Ok(Self::with(
            keys,
            tolerance_secs,
            &STANDARD_NAMES,
            "subscription.billing_attempt.succeeded",
        ))
    }

    /// `whsec_` + base64 secrets (the prefix is optional), decoded once.
    pub(super) fn whsec_keys(secrets: &[SecretString]) -> Result<Vec<Vec<u8>>, String> {
        let decode = |s: &str| {
            LENIENT_B64
                .decode(s.strip_prefix("whsec_").unwrap_or(s))
                .ok()
                .filter(|k| !k.is_empty())
        };
        decode_keys(secrets, decode, "whsec_ base64")
    }

    /// The scheme with already decoded keys, its header names and the event type used by
    /// [`Connector::sample_body`].
    pub(crate) fn with(
        keys: Vec<Vec<u8>>,
        tolerance_secs: Option<u64>,
        names: &'static HeaderNames,
        sample_type: &'static str,
    ) -> Self {
        let tolerance = tolerance_secs.unwrap_or(DEFAULT_TOLERANCE_SECS);
        Self {
            keys,
            tolerance_secs: i64::try_from(tolerance).unwrap_or(i64::MAX),
            names,
            sample_type,
        }
    }

    fn mac(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> [u8; 32] {
        hmac_sha256(
            key,
            &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
        )
    }
}

impl Connector for StandardWebhooks {
    fn verify(&self, request: &Unverified<'_>, now: SystemTime) -> Result<Accepted, VerifyError> {
        let names = self.names;
        let id = names.read(request.headers, |n| n.id)?;
        let timestamp = names.read(request.headers, |n| n.timestamp)?;
        let signatures = names.read(request.headers, |n| n.signature)?;
        if signatures.len() > MAX_SIGNATURE_HEADER {
            return Err(VerifyError::MalformedHeader(names.signature));
        }
        let ts: i64 = timestamp
            .parse()
            .map_err(|_| VerifyError::MalformedHeader(names.timestamp))?;
        if unix_secs(now).abs_diff(ts) > self.tolerance_secs as u64 {
            return Err(VerifyError::TimestampOutOfWindow);
        }
        // Decode every v1 candidate once; other versions (v1a, v2...) are skipped.
        let candidates: Vec<Vec<u8>> = signatures
            .split_ascii_whitespace()
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .collect();
        for key in &self.keys {
            let mac = Self::mac(key, id, timestamp, request.body);
            // Constant-time equality on each candidate.
            if candidates.iter().any(|c| ct_eq(&mac, c)) {
                return Ok(Accepted {
                    event_id: id.to_owned(),
                    kept_headers: vec![(names.timestamp.to_owned(), timestamp.to_owned())],
                });
            }
        }
        Err(VerifyError::SignatureMismatch)
    }

    fn normalize(&self, envelope: &Envelope) -> Result<Normalized, NormalizeError> {
        #[derive(serde::Deserialize)]
        struct Payload {
            #[serde(rename = "type")]
            event_type: String,
        }
        let payload: Payload = serde_json::from_slice(&envelope.body).map_err(|e| {
            NormalizeError::Malformed(format!("not a Standard Webhooks payload: {e}"))
        })?;
        // A generic scheme: the payload's meaning is not known, so it is archived only.
        Ok(Normalized::ignored(payload.event_type))
    }

    fn sign(&self, event_id: &str, body: &[u8], now: SystemTime) -> Vec<(String, String)> {
        let timestamp = unix_secs(now).to_string();
        let mac = Self::mac(&self.keys[0], event_id, &timestamp, body);
        let signature = format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac)
        );
        vec![
            (self.names.id.to_owned(), event_id.to_owned()),
            (self.names.timestamp.to_owned(), timestamp),
            (self.names.signature.to_owned(), signature),
        ]
    }

    fn header_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        let mut branding = Some(self.names);
        while let Some(b) = branding {
            names.extend([b.id, b.timestamp, b.signature].map(str::to_owned));
            branding = b.fallback;
        }
        names
    }

    fn sample_body(&self, sample: &Sample<'_>) -> Vec<u8> {
        Self::sample(self.sample_type, sample)
    }
}

impl StandardWebhooks {
    /// The recommended payload shape `{"type", "timestamp", "data"}`.
    pub(super) fn sample(event_type: &str, sample: &Sample<'_>) -> Vec<u8> {
        let timestamp = chrono::DateTime::<chrono::Utc>::from(sample.now).to_rfc3339();
        let subscription = format!("sub_{}", sample.subscription);
        serde_json::to_vec(&serde_json::json!({
            "type": event_type,
            "timestamp": timestamp,
            "data": {
                "id": sample.event_id, "subscription_id": subscription,
                "amount": 1999, "currency": "USD"
            }
        }))
        .expect("static JSON")
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use axum::http::{HeaderMap, HeaderValue};
    use bytes::Bytes;

    use super::*;

    fn verifier(secrets: &[&str]) -> StandardWebhooks {
        let secrets: Vec<SecretString> = secrets.iter().map(|s| SecretString::from(*s)).collect();
        StandardWebhooks::new(&secrets, None).unwrap()
    }

    fn headers(id: &str, ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ID, HeaderValue::from_str(id).unwrap());
        h.insert(TIMESTAMP, HeaderValue::from_str(ts).unwrap());
        h.insert(SIGNATURE, HeaderValue::from_str(sig).unwrap());
        h
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn check(
        v: &StandardWebhooks,
        h: &HeaderMap,
        body: &str,
        now: u64,
    ) -> Result<Accepted, VerifyError> {
        let body = Bytes::from(body.to_owned());
        v.verify(
            &Unverified {
                headers: h,
                body: &body,
                peer: None,
            },
            at(now),
        )
    }

    // SW-1: libraries/rust test_sign (also svix-webhooks).
    const SW1_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const SW1_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const SW1_TS: u64 = 1649367553;
    const SW1_BODY: &str = r#"{"email":"test@example.com","username":"test_user"}"#;
    const SW1_SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    // SW-2: libraries/python test_sign_function (note the space after the colon).
    const SW2_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SW2_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SW2_TS: u64 = 1614265330;
    const SW2_BODY: &str = r#"{"test": 2432232314}"#;
    const SW2_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn published_vectors_verify_and_sign() {
        let v = verifier(&[SW1_SECRET]);
        let ok = check(
            &v,
            &headers(SW1_ID, &SW1_TS.to_string(), SW1_SIG),
            SW1_BODY,
            SW1_TS,
        )
        .unwrap();
        assert_eq!(ok.event_id, SW1_ID);
        let signed = v.sign(SW1_ID, SW1_BODY.as_bytes(), at(SW1_TS));
        assert_eq!(signed[2].1, SW1_SIG);

        let v = verifier(&[SW2_SECRET]);
        check(
            &v,
            &headers(SW2_ID, &SW2_TS.to_string(), SW2_SIG),
            SW2_BODY,
            SW2_TS,
        )
        .unwrap();
        assert_eq!(
            v.sign(SW2_ID, SW2_BODY.as_bytes(), at(SW2_TS))[2].1,
            SW2_SIG
        );
    }

    #[test]
    fn near_miss_signatures_are_rejected() {
        let v = verifier(&[SW1_SECRET]);
        let ts = SW1_TS.to_string();
        let near = "v1,R3PTzyfHASBKHH98a7yexTwaJ4yNIcGhFQc1yuN+BPU=";
        assert_eq!(
            check(&v, &headers(SW1_ID, &ts, near), SW1_BODY, SW1_TS).unwrap_err(),
            VerifyError::SignatureMismatch
        );
        let v = verifier(&[SW2_SECRET]);
        let near = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=";
        let ts = SW2_TS.to_string();
        assert_eq!(
            check(&v, &headers(SW2_ID, &ts, near), SW2_BODY, SW2_TS).unwrap_err(),
            VerifyError::SignatureMismatch
        );
    }

    #[test]
    fn multi_signature_header_with_fillers_and_other_versions() {
        let v = verifier(&[SW1_SECRET]);
        let ts = SW1_TS.to_string();
        let fillers = "v1,tFtCZ5RDCPxzWQRWXWPgrCgE2frDBe9gjpbWQxnVfsQ= v2,abc v1a,hnO3== v1,Mm7xgUVICxZfQ3bgf0h0Dof65L/IFx+PnZvnDWPCX6Q=";
        let with_real =
            format!("{fillers} {SW1_SIG} v1,9DfC1c3eeOrXB6w/5dIDydLNQaEyww5KalE5jLBZucE=");
        check(&v, &headers(SW1_ID, &ts, &with_real), SW1_BODY, SW1_TS).unwrap();
        assert_eq!(
            check(&v, &headers(SW1_ID, &ts, fillers), SW1_BODY, SW1_TS).unwrap_err(),
            VerifyError::SignatureMismatch
        );
    }

    #[test]
    fn rotated_secrets_both_accepted_wrong_secret_rejected() {
        let ts = SW1_TS.to_string();
        let h = headers(SW1_ID, &ts, SW1_SIG);
        check(&verifier(&[SW2_SECRET, SW1_SECRET]), &h, SW1_BODY, SW1_TS).unwrap();
        check(&verifier(&[SW1_SECRET, SW2_SECRET]), &h, SW1_BODY, SW1_TS).unwrap();
        assert_eq!(
            check(&verifier(&[SW2_SECRET]), &h, SW1_BODY, SW1_TS).unwrap_err(),
            VerifyError::SignatureMismatch
        );
    }

    #[test]
    fn tampered_body_and_id_are_rejected() {
        let v = verifier(&[SW1_SECRET]);
        let ts = SW1_TS.to_string();
        let tampered = SW1_BODY.replace("test_user", "test_usex");
        assert!(check(&v, &headers(SW1_ID, &ts, SW1_SIG), &tampered, SW1_TS).is_err());
        assert!(check(&v, &headers("msg_other", &ts, SW1_SIG), SW1_BODY, SW1_TS).is_err());
    }

    #[test]
    fn window_is_300_seconds_both_ways() {
        let v = verifier(&[SW1_SECRET]);
        let h = headers(SW1_ID, &SW1_TS.to_string(), SW1_SIG);
        check(&v, &h, SW1_BODY, SW1_TS + 300).unwrap();
        check(&v, &h, SW1_BODY, SW1_TS - 300).unwrap();
        assert_eq!(
            check(&v, &h, SW1_BODY, SW1_TS + 301).unwrap_err(),
            VerifyError::TimestampOutOfWindow
        );
        assert_eq!(
            check(&v, &h, SW1_BODY, SW1_TS - 301).unwrap_err(),
            VerifyError::TimestampOutOfWindow
        );
    }

    #[test]
    fn missing_empty_duplicated_and_garbage_headers_are_rejected() {
        let v = verifier(&[SW1_SECRET]);
        let ts = SW1_TS.to_string();
        for name in [ID, TIMESTAMP, SIGNATURE] {
            let mut h = headers(SW1_ID, &ts, SW1_SIG);
            h.remove(name);
            assert_eq!(
                check(&v, &h, SW1_BODY, SW1_TS).unwrap_err(),
                VerifyError::MissingHeader(name)
            );
            h.insert(name, HeaderValue::from_static(""));
            assert_eq!(
                check(&v, &h, SW1_BODY, SW1_TS).unwrap_err(),
                VerifyError::MissingHeader(name)
            );
        }
        let mut dup = headers(SW1_ID, &ts, SW1_SIG);
        dup.append(SIGNATURE, HeaderValue::from_static(SW1_SIG));
        assert_eq!(
            check(&v, &dup, SW1_BODY, SW1_TS).unwrap_err(),
            VerifyError::MalformedHeader(SIGNATURE)
        );
        let garbage = headers(SW1_ID, "16493675x3", SW1_SIG);
        assert_eq!(
            check(&v, &garbage, SW1_BODY, SW1_TS).unwrap_err(),
            VerifyError::MalformedHeader(TIMESTAMP)
        );
        let huge = "v1,".to_owned() + &"A".repeat(10_000);
        assert_eq!(
            check(&v, &headers(SW1_ID, &ts, &huge), SW1_BODY, SW1_TS).unwrap_err(),
            VerifyError::MalformedHeader(SIGNATURE)
        );
        let bad_b64 = headers(SW1_ID, &ts, "v1,!!!not-base64!!!");
        assert_eq!(
            check(&v, &bad_b64, SW1_BODY, SW1_TS).unwrap_err(),
            VerifyError::SignatureMismatch
        );
    }

    #[test]
    fn unpadded_secret_decodes_and_bad_secret_is_a_config_error() {
        // The python reference library accepts this unpadded variant of the SW-2 secret.
        assert!(
            StandardWebhooks::new(
                &[SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS")],
                None
            )
            .is_ok()
        );
        let err = StandardWebhooks::new(&[SecretString::from("whsec_***not base64***")], None)
            .err()
            .unwrap();
        assert!(
            !err.contains("not base64***"),
            "error must not echo the secret: {err}"
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_headers_and_bodies_never_panic(
            id in ".{0,64}", ts in ".{0,24}", sig in ".{0,300}", body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)
        ) {
            let v = verifier(&[SW1_SECRET]);
            let mut h = HeaderMap::new();
            for (name, value) in [(ID, id), (TIMESTAMP, ts), (SIGNATURE, sig)] {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    h.insert(name, value);
                }
            }
            let body = Bytes::from(body);
            let request = Unverified { headers: &h, body: &body, peer: None };
            let result = v.verify(&request, at(SW1_TS));
            proptest::prop_assert!(result.is_err());
        }
    }
}
