//! Rebilly: no signature scheme. Rebilly sends the webhook credentials configured for the
//! host as `Authorization: Basic base64(user:pass)`; we compare them in constant time
//! (SHA-256 of both sides, so not even the length leaks) with the source's `basic_auth`.
//! When `allow_ips` is set the TCP peer must be one of those addresses or CIDR blocks
//! (IPv4-mapped IPv6 peers are compared as IPv4).
//!
//! Rebilly sends no event id: ours is the SHA-256 (hex) of `eventType` and the top-level
//! resource ids present in the body ([`EVENT_ID_FIELDS`], in that order), or of `eventType` and
//! the whole body when none is present. The Authorization header is never kept.
//!
//! Normalization (event → canonical mapping) is documented in `rebilly_normalize.rs`.

mod list;
mod webhook;

pub(super) use list::RebillyList;

use std::{net::IpAddr, time::SystemTime};

use base64::Engine as _;
use secrecy::ExposeSecret;

use crate::config::BasicAuthSettings;
use crate::envelope::Envelope;
use crate::providers::contract::{Connector, Sample};
use crate::providers::support::{body_fields, body_hash_id, ct_eq, header, sha256_hex};
use crate::providers::{Accepted, NormalizeError, Normalized, Unverified, VerifyError};

const AUTHORIZATION: &str = "authorization";
/// What the event id is made of: `eventType`, then the top-level resource ids that
/// identify what an event is about.
const EVENT_ID_FIELDS: [&str; 8] = [
    "eventType",
    "transactionId",
    "invoiceId",
    "subscriptionId",
    "orderId",
    "customerId",
    "paymentInstrumentId",
    "disputeId",
];

/// An address or a CIDR block, e.g. `1.2.3.4`, `10.0.0.0/8`, `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IpBlock {
    addr: IpAddr,
    prefix: u8,
}

impl IpBlock {
    fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.trim().parse::<IpAddr>().ok()?, None),
        };
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

pub struct Rebilly {
    /// SHA-256 of `username:password`.
    credentials_digest: [u8; 32],
    /// The Authorization value `sign` produces.
    authorization: String,
    allow: Option<Vec<IpBlock>>,
}

impl Rebilly {
    pub fn new(
        auth: Option<&BasicAuthSettings>,
        allow_ips: Option<&[String]>,
    ) -> Result<Self, String> {
        let auth = auth.ok_or("basic_auth is required")?;
        let password = auth.password.expose_secret();
        if auth.username.is_empty() || auth.username.contains(':') || password.is_empty() {
            return Err("basic_auth needs a username without ':' and a non-empty password".into());
        }
        let credentials = format!("{}:{password}", auth.username);
        let allow = allow_ips
            .map(|list| {
                list.iter()
                    .enumerate()
                    .map(|(i, s)| {
                        IpBlock::parse(s)
                            .ok_or_else(|| format!("allow_ips #{} is not an IP or CIDR", i + 1))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        Ok(Self {
            credentials_digest: digest(credentials.as_bytes()),
            authorization: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(&credentials)
            ),
            allow,
        })
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// The event id described in the module documentation.
fn event_id(body: &[u8]) -> String {
    let [event_type, ids @ ..] = body_fields(body, EVENT_ID_FIELDS);
    let Some(event_type) = event_type else {
        return body_hash_id(body);
    };
    let mut material = format!("eventType={event_type}");
    for (field, value) in EVENT_ID_FIELDS[1..].iter().zip(ids) {
        if let Some(value) = value {
            material.push_str(&format!("\n{field}={value}"));
        }
    }
    if !material.contains('\n') {
        return sha256_hex(&[material.as_bytes(), b"\nbody=", body]);
    }
    sha256_hex(&[material.as_bytes()])
}

impl Connector for Rebilly {
    fn verify(&self, request: &Unverified<'_>, _now: SystemTime) -> Result<Accepted, VerifyError> {
        if let Some(allow) = &self.allow {
            let peer = request.peer.ok_or(VerifyError::PeerNotAllowed)?;
            if !allow.iter().any(|block| block.contains(peer)) {
                return Err(VerifyError::PeerNotAllowed);
            }
        }
        let value = header(request.headers, AUTHORIZATION)?;
        let (scheme, token) = value
            .split_once(' ')
            .ok_or(VerifyError::MalformedHeader(AUTHORIZATION))?;
        if !scheme.eq_ignore_ascii_case("basic") || token.len() > 1024 {
            return Err(VerifyError::MalformedHeader(AUTHORIZATION));
        }
        let presented = base64::engine::general_purpose::STANDARD
            .decode(token.trim())
            .map_err(|_| VerifyError::MalformedHeader(AUTHORIZATION))?;
        if !ct_eq(&digest(&presented), &self.credentials_digest) {
            return Err(VerifyError::BadCredentials);
        }
        Ok(Accepted {
            event_id: event_id(request.body),
            kept_headers: Vec::new(),
        })
    }

    fn normalize(&self, envelope: &Envelope) -> Result<Normalized, NormalizeError> {
        webhook::normalize(&envelope.body)
    }

    fn sign(&self, _event_id: &str, _body: &[u8], _now: SystemTime) -> Vec<(String, String)> {
        vec![(AUTHORIZATION.to_owned(), self.authorization.clone())]
    }

    fn header_names(&self) -> Vec<String> {
        vec![AUTHORIZATION.to_owned()]
    }

    fn sample_body(&self, sample: &Sample<'_>) -> Vec<u8> {
        let (event_id, invoice) = (sample.event_id, format!("inv_{}", sample.cycle));
        let (subscription, customer) = (
            format!("sub_{}", sample.subscription),
            format!("cus_{}", sample.subscription),
        );
        let at = chrono::DateTime::<chrono::Utc>::from(sample.now)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        serde_json::to_vec(&serde_json::json!({
            "eventType": "renewal-invoice-payment-declined",
            "transactionId": event_id,
            "invoiceId": invoice,
            "subscriptionId": subscription,
            "_embedded": {
                "transaction": {
                    "id": event_id, "type": "sale", "status": "completed", "result": "declined",
                    "amount": 49.95, "currency": "USD", "customerId": customer,
                    "invoiceIds": [invoice], "subscriptionIds": [subscription],
                    "processedTime": at, "createdTime": at,
                    "gatewayResponse": { "code": "05", "message": "Do not honor" }
                },
                "invoice": {
                    "id": invoice, "subscriptionId": subscription, "customerId": customer,
                    "currency": "USD", "amount": 49.95, "status": "past-due"
                }
            }
        }))
        .expect("static JSON")
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};
    use bytes::Bytes;
    use secrecy::SecretString;

    use super::*;

    const BODY: &str = r#"{"transactionId":"txn_1","invoiceId":"inv_1","eventType":"renewal-invoice-payment-declined","_embedded":{}}"#;

    fn verifier(user: &str, pass: &str, allow: Option<&[&str]>) -> Rebilly {
        let auth = BasicAuthSettings {
            username: user.into(),
            password: SecretString::from(pass),
        };
        let allow: Option<Vec<String>> = allow.map(|a| a.iter().map(|s| s.to_string()).collect());
        Rebilly::new(Some(&auth), allow.as_deref()).unwrap()
    }

    fn basic(credentials: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        )
    }

    fn check(
        v: &Rebilly,
        authorization: Option<&str>,
        body: &str,
        peer: Option<&str>,
    ) -> Result<Accepted, VerifyError> {
        let mut h = HeaderMap::new();
        if let Some(a) = authorization {
            h.insert("Authorization", HeaderValue::from_str(a).unwrap());
        }
        let body = Bytes::from(body.to_owned());
        let request = Unverified {
            headers: &h,
            body: &body,
            peer: peer.map(|p| p.parse().unwrap()),
        };
        v.verify(&request, SystemTime::UNIX_EPOCH)
    }

    #[test]
    fn right_credentials_pass_and_event_id_is_stable() {
        let v = verifier("rebilly", "s3cret", None);
        let ok = check(&v, Some(&basic("rebilly:s3cret")), BODY, None).unwrap();
        assert!(ok.kept_headers.is_empty(), "Authorization is never kept");
        assert_eq!(ok.event_id.len(), 64);
        let expected = sha256_hex(&[
            b"eventType=renewal-invoice-payment-declined\ntransactionId=txn_1\ninvoiceId=inv_1",
        ]);
        assert_eq!(ok.event_id, expected);
        // Key order and _embedded changes do not matter; another transaction does.
        let reordered = r#"{"eventType":"renewal-invoice-payment-declined","invoiceId":"inv_1","transactionId":"txn_1","_embedded":{"x":1}}"#;
        assert_eq!(
            check(&v, Some(&basic("rebilly:s3cret")), reordered, None)
                .unwrap()
                .event_id,
            expected
        );
        let other = BODY.replace("txn_1", "txn_2");
        assert_ne!(
            check(&v, Some(&basic("rebilly:s3cret")), &other, None)
                .unwrap()
                .event_id,
            expected
        );
        let other_type = BODY.replace("declined", "canceled");
        assert_ne!(
            check(&v, Some(&basic("rebilly:s3cret")), &other_type, None)
                .unwrap()
                .event_id,
            expected
        );
        // Without resource ids the body itself is hashed, so distinct events stay distinct.
        let a = check(
            &v,
            Some(&basic("rebilly:s3cret")),
            r#"{"eventType":"x","n":1}"#,
            None,
        );
        let b = check(
            &v,
            Some(&basic("rebilly:s3cret")),
            r#"{"eventType":"x","n":2}"#,
            None,
        );
        assert_ne!(a.unwrap().event_id, b.unwrap().event_id);
    }

    #[test]
    fn wrong_or_malformed_credentials_are_rejected() {
        let v = verifier("rebilly", "s3cret", None);
        for wrong in [
            "rebilly:s3creT",
            "rebilly:",
            "rebilly:s3cret ",
            "Rebilly:s3cret",
        ] {
            assert_eq!(
                check(&v, Some(&basic(wrong)), BODY, None).unwrap_err(),
                VerifyError::BadCredentials,
                "{wrong}"
            );
        }
        // The scheme name is case-insensitive.
        let lower = basic("rebilly:s3cret").replace("Basic", "basic");
        check(&v, Some(&lower), BODY, None).unwrap();
        assert_eq!(
            check(&v, None, BODY, None).unwrap_err(),
            VerifyError::MissingHeader(AUTHORIZATION)
        );
        let huge = format!("Basic {}", "A".repeat(10_000));
        for bad in [
            "",
            "Bearer abc",
            "Basic",
            "Basic !!!",
            "basicxyz",
            huge.as_str(),
        ] {
            assert!(check(&v, Some(bad), BODY, None).is_err(), "{bad}");
        }
        // Good credentials, body without eventType.
        let kept = check(&v, Some(&basic("rebilly:s3cret")), "{}", None).unwrap();
        assert_eq!(
            kept.event_id,
            body_hash_id(b"{}"),
            "kept under a body-hash id"
        );
    }

    #[test]
    fn allow_ips_accepts_plain_ips_and_cidr_blocks() {
        let v = verifier("u", "p", Some(&["1.2.3.4", "10.0.0.0/8", "2001:db8::/32"]));
        let auth = basic("u:p");
        for ok in ["1.2.3.4", "10.200.0.1", "::ffff:10.1.1.1", "2001:db8::1"] {
            check(&v, Some(&auth), BODY, Some(ok)).unwrap();
        }
        for denied in ["1.2.3.5", "11.0.0.1", "2001:db9::1", "::1"] {
            assert_eq!(
                check(&v, Some(&auth), BODY, Some(denied)).unwrap_err(),
                VerifyError::PeerNotAllowed,
                "{denied}"
            );
        }
        assert_eq!(
            check(&v, Some(&auth), BODY, None).unwrap_err(),
            VerifyError::PeerNotAllowed
        );
        let everyone = verifier("u", "p", Some(&["0.0.0.0/0"]));
        check(&everyone, Some(&auth), BODY, Some("8.8.8.8")).unwrap();
    }

    #[test]
    fn bad_settings_are_config_errors_without_secrets() {
        let auth = BasicAuthSettings {
            username: "u".into(),
            password: SecretString::from("hunter2"),
        };
        assert!(Rebilly::new(None, None).is_err());
        for bad in ["1.2.3.4/33", "not-an-ip", "10.0.0.0/x"] {
            let err = Rebilly::new(Some(&auth), Some(&[bad.to_string()]))
                .err()
                .unwrap();
            assert!(!err.contains("hunter2"), "{err}");
        }
        let empty = BasicAuthSettings {
            username: "u".into(),
            password: SecretString::from(""),
        };
        assert!(Rebilly::new(Some(&empty), None).is_err());
    }

    #[test]
    fn sample_body_sign_round_trip_and_normalize() {
        let v = verifier("user", "pass", None);
        let body = v.sample_body(&crate::providers::contract::Sample::new(
            "txn_9",
            SystemTime::UNIX_EPOCH,
        ));
        let signed = v.sign("txn_9", &body, SystemTime::UNIX_EPOCH);
        let body = String::from_utf8(body).unwrap();
        let ok = check(&v, Some(&signed[0].1), &body, None).unwrap();
        let envelope = Envelope {
            source_id: "r".into(),
            provider: crate::config::ProviderKind::Rebilly,
            event_id: ok.event_id,
            received_at: chrono::Utc::now(),
            content_type: None,
            headers: ok.kept_headers,
            body: Bytes::from(body),
        };
        assert_eq!(
            v.normalize(&envelope).unwrap().event_type,
            "renewal-invoice-payment-declined"
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_headers_and_bodies_never_panic(
            auth in ".{0,300}", body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)
        ) {
            let v = verifier("user", "pass", Some(&["10.0.0.0/8"]));
            let mut h = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_str(&auth) {
                h.insert(AUTHORIZATION, value);
            }
            let body = Bytes::from(body);
            let request = Unverified { headers: &h, body: &body, peer: Some([10, 0, 0, 1].into()) };
            proptest::prop_assert!(v.verify(&request, SystemTime::UNIX_EPOCH).is_err());
        }
    }
}
