//! A generic HMAC-SHA256 scheme, described per source by its `[hmac]` table:
//! the signature is read from `signature_header` (after an optional `signature_prefix` such
//! as `sha256=`), encoded as `hex` (either case) or `base64`; the key is the secret as UTF-8.
//! With `timestamp_header` the signed content is `{ts}.{raw body}` (unix seconds, ±tolerance,
//! 300 s by default), else the raw body alone. The event id is the `event_id_field` of the
//! signed JSON body (top level), else the `event_id_header` value, else the SHA-256 (hex) of
//! the body. Prefer the field: a header is not signed, so a captured body re-posted under
//! fresh header ids reaches the inbox as new events (see `HmacSettings::event_id_header`).
//! Errors name the header by role (`signature`, `timestamp`, `event id`), not by its
//! configured name.

use std::time::SystemTime;

use axum::http::HeaderName;
use base64::Engine as _;
use secrecy::SecretString;

use crate::config::{HmacEncoding, HmacSettings};
use crate::envelope::Envelope;
use crate::providers::contract::{Connector, Sample};
use crate::providers::schemes::standard::StandardWebhooks;
use crate::providers::support::{
    body_fields, ct_eq, header_as, hmac_sha256, sha256_hex, unix_secs, utf8_keys,
};
use crate::providers::{Accepted, NormalizeError, Normalized, Unverified, VerifyError};

const DEFAULT_TOLERANCE_SECS: u64 = 300;
const MAX_SIGNATURE_HEADER: usize = 512;
/// Body fields tried, in order, for the event type.
const TYPE_FIELDS: [&str; 4] = ["type", "event_type", "eventType", "event"];

pub struct GenericHmac {
    keys: Vec<Vec<u8>>,
    signature: HeaderName,
    encoding: HmacEncoding,
    prefix: String,
    timestamp: Option<HeaderName>,
    event_id: EventId,
    tolerance_secs: u64,
}

/// Where a source's event id comes from, most trustworthy first.
enum EventId {
    /// A top-level field of the signed body.
    Field(String),
    /// An unsigned header.
    Header(HeaderName),
    /// The SHA-256 of the body.
    BodyHash,
}

fn header_name(name: &str, what: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("hmac.{what} {name:?} is not a header name"))
}

impl GenericHmac {
    pub fn new(
        secrets: &[SecretString],
        settings: &HmacSettings,
        tolerance_secs: Option<u64>,
    ) -> Result<Self, String> {
        let opt = |name: &Option<String>, what| name.as_deref().map(|n| header_name(n, what));
        Ok(Self {
            keys: utf8_keys(secrets)?,
            signature: header_name(&settings.signature_header, "signature_header")?,
            encoding: settings.encoding,
            prefix: settings.signature_prefix.clone().unwrap_or_default(),
            timestamp: opt(&settings.timestamp_header, "timestamp_header").transpose()?,
            event_id: match (&settings.event_id_field, &settings.event_id_header) {
                (Some(field), _) if !field.trim().is_empty() => EventId::Field(field.clone()),
                (Some(_), _) => return Err("hmac.event_id_field must not be empty".to_owned()),
                (None, Some(name)) => EventId::Header(header_name(name, "event_id_header")?),
                (None, None) => EventId::BodyHash,
            },
            tolerance_secs: tolerance_secs.unwrap_or(DEFAULT_TOLERANCE_SECS),
        })
    }

    fn mac(&self, key: &[u8], timestamp: Option<&str>, body: &[u8]) -> [u8; 32] {
        match timestamp {
            Some(ts) => hmac_sha256(key, &[ts.as_bytes(), b".", body]),
            None => hmac_sha256(key, &[body]),
        }
    }

    fn encode(&self, mac: &[u8]) -> String {
        match self.encoding {
            HmacEncoding::Hex => hex::encode(mac),
            HmacEncoding::Base64 => base64::engine::general_purpose::STANDARD.encode(mac),
        }
    }
}

impl Connector for GenericHmac {
    fn verify(&self, request: &Unverified<'_>, now: SystemTime) -> Result<Accepted, VerifyError> {
        let malformed = VerifyError::MalformedHeader("signature");
        let value = header_as(request.headers, &self.signature, "signature")?;
        if value.len() > MAX_SIGNATURE_HEADER {
            return Err(malformed);
        }
        let encoded = value.strip_prefix(self.prefix.as_str()).ok_or(malformed)?;
        let signature = match self.encoding {
            HmacEncoding::Hex => hex::decode(encoded).ok(),
            HmacEncoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok(),
        }
        .ok_or(VerifyError::MalformedHeader("signature"))?;
        let timestamp = match &self.timestamp {
            Some(name) => {
                let ts = header_as(request.headers, name, "timestamp")?;
                let secs: i64 = ts
                    .parse()
                    .ok()
                    .filter(|_| ts.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or(VerifyError::MalformedHeader("timestamp"))?;
                if unix_secs(now).abs_diff(secs) > self.tolerance_secs {
                    return Err(VerifyError::TimestampOutOfWindow);
                }
                Some(ts)
            }
            None => None,
        };
        let matched = self
            .keys
            .iter()
            .any(|key| ct_eq(&self.mac(key, timestamp, request.body), &signature));
        if !matched {
            return Err(VerifyError::SignatureMismatch);
        }
        let event_id = match &self.event_id {
            EventId::Field(field) => {
                let [id] = body_fields(request.body, [field.as_str()]);
                id.filter(|id| !id.is_empty())
                    .ok_or_else(|| VerifyError::MissingEventId(field.clone()))?
            }
            EventId::Header(name) => header_as(request.headers, name, "event id")?.to_owned(),
            EventId::BodyHash => sha256_hex(&[request.body]),
        };
        let kept_headers = match (&self.timestamp, timestamp) {
            (Some(name), Some(ts)) => vec![(name.as_str().to_owned(), ts.to_owned())],
            _ => Vec::new(),
        };
        Ok(Accepted {
            event_id,
            kept_headers,
        })
    }

    /// The body must be JSON; the event type is its first string among `type`,
    /// `event_type`, `eventType`, `event`, else `"unknown"`.
    fn normalize(&self, envelope: &Envelope) -> Result<Normalized, NormalizeError> {
        serde_json::from_slice::<serde::de::IgnoredAny>(&envelope.body)
            .map_err(|e| NormalizeError::Malformed(format!("not a JSON payload: {e}")))?;
        let event_type = body_fields(&envelope.body, TYPE_FIELDS)
            .into_iter()
            .flatten()
            .next()
            .unwrap_or_else(|| "unknown".to_owned());
        Ok(Normalized::ignored(event_type))
    }

    fn sign(&self, event_id: &str, body: &[u8], now: SystemTime) -> Vec<(String, String)> {
        let ts = self.timestamp.as_ref().map(|_| unix_secs(now).to_string());
        let mac = self.mac(&self.keys[0], ts.as_deref(), body);
        let mut headers = vec![(
            self.signature.as_str().to_owned(),
            format!("{}{}", self.prefix, self.encode(&mac)),
        )];
        if let (Some(name), Some(ts)) = (&self.timestamp, ts) {
            headers.push((name.as_str().to_owned(), ts));
        }
        if let EventId::Header(name) = &self.event_id {
            headers.push((name.as_str().to_owned(), event_id.to_owned()));
        }
        headers
    }

    fn header_names(&self) -> Vec<String> {
        let event_id = match &self.event_id {
            EventId::Header(name) => Some(name),
            EventId::Field(_) | EventId::BodyHash => None,
        };
        [Some(&self.signature), self.timestamp.as_ref(), event_id]
            .into_iter()
            .flatten()
            .map(|name| name.as_str().to_owned())
            .collect()
    }

    fn sample_body(&self, sample: &Sample<'_>) -> Vec<u8> {
        let body = StandardWebhooks::sample("subscription.renewed", sample);
        let EventId::Field(field) = &self.event_id else {
            return body;
        };
        let mut value: serde_json::Value = serde_json::from_slice(&body).expect("static JSON");
        value[field.as_str()] = sample.event_id.into();
        serde_json::to_vec(&value).expect("a JSON value")
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use axum::http::{HeaderMap, HeaderValue};
    use bytes::Bytes;

    use super::*;

    // Lemon Squeezy's derived vector (reference §8): hex HMAC of the body, no timestamp.
    const LS_SECRET: &str = "ls_secret";
    const LS_BODY: &str =
        r#"{"meta":{"event_name":"subscription_payment_failed"},"data":{"id":"1"}}"#;
    const LS_SIG: &str = "343402ee15c090a441b5fe35b0b72a7f5b8a0f58aabc8aa7d500c3fc92924b5b";
    const TS: u64 = 1_700_000_000;

    fn settings(encoding: HmacEncoding, prefix: Option<&str>, ts: bool, id: bool) -> HmacSettings {
        HmacSettings {
            signature_header: "X-Signature".into(),
            encoding,
            signature_prefix: prefix.map(str::to_owned),
            timestamp_header: ts.then(|| "X-Timestamp".to_owned()),
            event_id_field: None,
            event_id_header: id.then(|| "X-Event-Id".to_owned()),
        }
    }

    fn verifier(secrets: &[&str], s: &HmacSettings) -> GenericHmac {
        let secrets: Vec<SecretString> = secrets.iter().map(|s| SecretString::from(*s)).collect();
        GenericHmac::new(&secrets, s, None).unwrap()
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn check(
        v: &GenericHmac,
        pairs: &[(&str, &str)],
        body: &str,
        now: u64,
    ) -> Result<Accepted, VerifyError> {
        let mut h = HeaderMap::new();
        for (n, val) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(val).unwrap(),
            );
        }
        let body = Bytes::from(body.to_owned());
        let request = Unverified {
            headers: &h,
            body: &body,
            peer: None,
        };
        v.verify(&request, at(now))
    }

    #[test]
    fn lemon_squeezy_vector_verifies_with_body_hash_event_id() {
        let v = verifier(
            &[LS_SECRET],
            &settings(HmacEncoding::Hex, None, false, false),
        );
        let ok = check(&v, &[("x-signature", LS_SIG)], LS_BODY, TS).unwrap();
        assert_eq!(ok.event_id, sha256_hex(&[LS_BODY.as_bytes()]));
        // Uppercase hex is accepted too.
        let upper = LS_SIG.to_uppercase();
        check(&v, &[("x-signature", &upper)], LS_BODY, TS).unwrap();
        assert_eq!(
            v.sign("x", LS_BODY.as_bytes(), at(TS)),
            vec![("x-signature".to_owned(), LS_SIG.to_owned())]
        );
        assert_eq!(
            check(
                &v,
                &[("x-signature", LS_SIG)],
                &LS_BODY.replace('1', "2"),
                TS
            )
            .unwrap_err(),
            VerifyError::SignatureMismatch
        );
    }

    /// The event id comes from the signed body when a field is configured: a header cannot
    /// change it, and a body without the field is refused.
    #[test]
    fn event_id_field_of_the_signed_body_wins_over_any_header() {
        let s = HmacSettings {
            event_id_field: Some("id".into()),
            ..settings(HmacEncoding::Hex, None, false, true)
        };
        let v = verifier(&["k1"], &s);
        let body = r#"{"id":"evt_body_1","type":"subscription_payment_failed"}"#;
        let signed = v.sign("ignored", body.as_bytes(), at(TS));
        assert_eq!(signed.len(), 1, "no event id header is sent: {signed:?}");
        let sig = signed[0].1.as_str();
        let forged = [("x-signature", sig), ("x-event-id", "evt_fresh_replay")];
        assert_eq!(check(&v, &forged, body, TS).unwrap().event_id, "evt_body_1");
        let no_id = r#"{"type":"subscription_payment_failed"}"#;
        let sig = v.sign("x", no_id.as_bytes(), at(TS))[0].1.clone();
        assert_eq!(
            check(&v, &[("x-signature", &sig)], no_id, TS).unwrap_err(),
            VerifyError::MissingEventId("id".into())
        );
        // A sample body carries its event id in the field, so send-test round-trips.
        let sample = v.sample_body(&crate::providers::contract::Sample::new(
            "evt_sample",
            at(TS),
        ));
        let sample = std::str::from_utf8(&sample).unwrap();
        let sig = v.sign("evt_sample", sample.as_bytes(), at(TS))[0].1.clone();
        let ok = check(&v, &[("x-signature", &sig)], sample, TS).unwrap();
        assert_eq!(ok.event_id, "evt_sample");
        let empty = HmacSettings {
            event_id_field: Some(" ".into()),
            ..s
        };
        assert!(GenericHmac::new(&[SecretString::from("k1")], &empty, None).is_err());
    }

    #[test]
    fn prefix_base64_timestamp_and_event_id_header() {
        let s = settings(HmacEncoding::Base64, Some("sha256="), true, true);
        let v = verifier(&["k1"], &s);
        let signed = v.sign("evt-7", LS_BODY.as_bytes(), at(TS));
        assert!(signed[0].1.starts_with("sha256="));
        let pairs: Vec<(&str, &str)> = signed
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let ok = check(&v, &pairs, LS_BODY, TS).unwrap();
        assert_eq!(ok.event_id, "evt-7");
        assert_eq!(
            ok.kept_headers,
            vec![("x-timestamp".to_owned(), TS.to_string())]
        );
        // Two-sided window.
        check(&v, &pairs, LS_BODY, TS + 300).unwrap();
        check(&v, &pairs, LS_BODY, TS - 300).unwrap();
        for now in [TS + 301, TS - 301] {
            assert_eq!(
                check(&v, &pairs, LS_BODY, now).unwrap_err(),
                VerifyError::TimestampOutOfWindow
            );
        }
        // The timestamp is signed.
        let moved = (TS + 1).to_string();
        let mut tampered = pairs.clone();
        tampered[1].1 = &moved;
        assert_eq!(
            check(&v, &tampered, LS_BODY, TS).unwrap_err(),
            VerifyError::SignatureMismatch
        );
        // Missing prefix, missing timestamp, missing event id.
        let bare = signed[0].1.trim_start_matches("sha256=");
        let mut no_prefix = pairs.clone();
        no_prefix[0].1 = bare;
        assert_eq!(
            check(&v, &no_prefix, LS_BODY, TS).unwrap_err(),
            VerifyError::MalformedHeader("signature")
        );
        assert_eq!(
            check(&v, &[pairs[0], pairs[2]], LS_BODY, TS).unwrap_err(),
            VerifyError::MissingHeader("timestamp")
        );
        assert_eq!(
            check(&v, &[pairs[0], pairs[1]], LS_BODY, TS).unwrap_err(),
            VerifyError::MissingHeader("event id")
        );
        // Rotation and wrong secret.
        check(&verifier(&["k0", "k1"], &s), &pairs, LS_BODY, TS).unwrap();
        assert_eq!(
            check(&verifier(&["k0"], &s), &pairs, LS_BODY, TS).unwrap_err(),
            VerifyError::SignatureMismatch
        );
    }

    #[test]
    fn malformed_headers_and_settings_are_rejected() {
        let v = verifier(
            &[LS_SECRET],
            &settings(HmacEncoding::Hex, None, true, false),
        );
        let ts = TS.to_string();
        let huge = "a".repeat(10_000);
        for (sig, stamp, err) in [
            ("zz", ts.as_str(), VerifyError::MalformedHeader("signature")),
            (
                huge.as_str(),
                ts.as_str(),
                VerifyError::MalformedHeader("signature"),
            ),
            (LS_SIG, "17x", VerifyError::MalformedHeader("timestamp")),
            (LS_SIG, "-1", VerifyError::MalformedHeader("timestamp")),
            (LS_SIG, "", VerifyError::MissingHeader("timestamp")),
            ("", ts.as_str(), VerifyError::MissingHeader("signature")),
        ] {
            let got = check(
                &v,
                &[("x-signature", sig), ("x-timestamp", stamp)],
                LS_BODY,
                TS,
            );
            assert_eq!(got.unwrap_err(), err, "{sig:.20} {stamp}");
        }
        let dup = [
            ("x-signature", LS_SIG),
            ("x-signature", LS_SIG),
            ("x-timestamp", &ts),
        ];
        assert_eq!(
            check(&v, &dup, LS_BODY, TS).unwrap_err(),
            VerifyError::MalformedHeader("signature")
        );
        let mut bad = settings(HmacEncoding::Hex, None, false, false);
        bad.signature_header = "bad header".into();
        assert!(GenericHmac::new(&[SecretString::from("k")], &bad, None).is_err());
        let good = settings(HmacEncoding::Hex, None, false, false);
        assert!(GenericHmac::new(&[], &good, None).is_err());
    }

    #[test]
    fn sample_body_sign_round_trip_and_normalize() {
        let v = verifier(&["k"], &settings(HmacEncoding::Hex, None, false, false));
        let body = v.sample_body(&crate::providers::contract::Sample::new("e1", at(TS)));
        let signed = v.sign("e1", &body, at(TS));
        let body = String::from_utf8(body).unwrap();
        let ok = check(&v, &[("x-signature", &signed[0].1)], &body, TS).unwrap();
        let envelope = Envelope {
            source_id: "g".into(),
            provider: crate::config::ProviderKind::Hmac,
            event_id: ok.event_id,
            received_at: chrono::Utc::now(),
            content_type: None,
            headers: vec![],
            body: Bytes::from(body),
        };
        assert_eq!(
            v.normalize(&envelope).unwrap().event_type,
            "subscription.renewed"
        );
        let untyped = Envelope {
            body: Bytes::from_static(br#"{"a":1}"#),
            ..envelope.clone()
        };
        assert_eq!(v.normalize(&untyped).unwrap().event_type, "unknown");
        let not_json = Envelope {
            body: Bytes::from_static(b"a=1"),
            ..envelope
        };
        assert!(v.normalize(&not_json).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_headers_and_bodies_never_panic(
            sig in ".{0,300}", ts in ".{0,24}", id in ".{0,40}",
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)
        ) {
            let v = verifier(&["k"], &settings(HmacEncoding::Base64, Some("v1="), true, true));
            let mut h = HeaderMap::new();
            for (name, value) in [("x-signature", sig), ("x-timestamp", ts), ("x-event-id", id)] {
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
