//! Providers: verification of inbound webhooks (in the ingress) and normalization of the
//! queued payloads (in the worker). One trait for all providers; each provider overrides a
//! few small methods. Providers know nothing of the queue or the database.
//!
//! Verification is a type boundary: an [`Unverified`] request becomes a [`Verified`] one only
//! through [`Source::verify`], and only a `Verified` request can be turned into an
//! [`Envelope`] for publishing.

mod appstle;
mod hmac;
mod normalize_util;
mod paynow;
mod polar;
mod rebilly;
mod shopify;
mod standard;
mod stripe;
mod svix;

use std::{net::IpAddr, time::SystemTime};

use axum::http::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use secrecy::SecretString;

use crate::canonical::CanonicalEvent;
use crate::config::{ProviderKind, SourceSettings};
use crate::envelope::Envelope;

/// Longest provider event id we accept (it becomes a database key and a message header).
pub const MAX_EVENT_ID_LEN: usize = 200;

/// Why a request failed verification. Messages are safe to return to the caller: they
/// name headers and rules, never secrets or expected signatures.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("malformed {0} header")]
    MalformedHeader(&'static str),
    #[error("timestamp outside the allowed window")]
    TimestampOutOfWindow,
    #[error("no signature matches")]
    SignatureMismatch,
    #[error("credentials do not match")]
    BadCredentials,
    #[error("sender address not allowed")]
    PeerNotAllowed,
    #[error("the signed body has no {0:?} field (its event id)")]
    MissingEventId(String),
}

impl VerifyError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            VerifyError::MissingHeader(_) => "missing_header",
            VerifyError::MalformedHeader(_) => "malformed_header",
            VerifyError::TimestampOutOfWindow => "timestamp",
            VerifyError::SignatureMismatch => "signature",
            VerifyError::BadCredentials => "credentials",
            VerifyError::PeerNotAllowed => "peer",
            VerifyError::MissingEventId(_) => "event_id",
        }
    }
}

/// A correctly signed payload that the worker cannot turn into events: it is dead-lettered
/// with this reason, never dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NormalizeError {
    #[error("malformed payload: {0}")]
    Malformed(String),
}

impl From<crate::money::MoneyError> for NormalizeError {
    fn from(error: crate::money::MoneyError) -> Self {
        NormalizeError::Malformed(format!("amount: {error}"))
    }
}

/// Deserializes a payload into its typed shape, or says what is wrong with it. Typed
/// shapes (not `serde_json::Value`) keep decimal amounts exact (see `money::DecimalText`).
fn parse_payload<T: serde::de::DeserializeOwned>(
    body: &[u8],
    what: &str,
) -> Result<T, NormalizeError> {
    serde_json::from_slice(body)
        .map_err(|e| NormalizeError::Malformed(format!("not a {what} payload: {e}")))
}

/// An RFC 3339 timestamp, or a clear error naming the field.
fn parse_time(value: &str, field: &str) -> Result<DateTime<Utc>, NormalizeError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| NormalizeError::Malformed(format!("{field}: {e}")))
}

/// Unix seconds as a timestamp, or a clear error naming the field.
fn time_from_unix(secs: i64, field: &str) -> Result<DateTime<Utc>, NormalizeError> {
    DateTime::<Utc>::from_timestamp(secs, 0)
        .ok_or_else(|| NormalizeError::Malformed(format!("{field}: {secs} is out of range")))
}

/// What the worker learned from a payload: its type, and the canonical events it carries.
/// No events means "ignored": an event type we do not use, archived and counted, never
/// dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    pub event_type: String,
    pub events: Vec<CanonicalEvent>,
}

impl Normalized {
    /// An event type we archive but do not act on.
    pub fn ignored(event_type: impl Into<String>) -> Self {
        Self {
            event_type: event_type.into(),
            events: Vec::new(),
        }
    }

    pub fn is_ignored(&self) -> bool {
        self.events.is_empty()
    }
}

/// The parts of a request a verifier looks at, before anyone trusts them.
pub struct Unverified<'a> {
    pub headers: &'a HeaderMap,
    pub body: &'a Bytes,
    /// The TCP peer, for sources that restrict senders by IP.
    pub peer: Option<IpAddr>,
}

/// What a provider's verifier extracts from a request it accepted.
#[derive(Debug)]
pub struct Accepted {
    pub event_id: String,
    /// Non-secret provider headers worth keeping beside the body (topic, timestamps...).
    pub kept_headers: Vec<(String, String)>,
}

/// A request whose signature was checked. Fields are private so that nothing outside this
/// module can forge one.
#[derive(Debug)]
pub struct Verified {
    envelope: Envelope,
}

impl Verified {
    pub fn event_id(&self) -> &str {
        &self.envelope.event_id
    }

    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }
}

/// One provider's scheme. Keys are decoded once, when the source is built.
trait Provider: Send + Sync {
    fn verify(&self, request: &Unverified<'_>, now: SystemTime) -> Result<Accepted, VerifyError>;

    fn normalize(&self, envelope: &Envelope) -> Result<Normalized, NormalizeError>;

    /// Headers that make `body` pass `verify`, signed with the source's first secret.
    /// Used by `subsync send-test`, the tests and the benchmarks.
    fn sign(&self, event_id: &str, body: &[u8], now: SystemTime) -> Vec<(String, String)>;

    /// A realistic payload of this provider, for `subsync send-test`.
    fn sample_body(&self, event_id: &str, now: SystemTime) -> Vec<u8>;
}

/// A configured webhook source: its id, its provider and its keys.
pub struct Source {
    id: String,
    kind: ProviderKind,
    provider: Box<dyn Provider>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .finish()
    }
}

impl Source {
    /// Builds a source from its settings; fails on secrets the provider cannot use.
    pub fn new(settings: &SourceSettings) -> Result<Self, String> {
        let tolerance = settings.tolerance_secs;
        let secrets = &settings.secrets;
        let built: Result<Box<dyn Provider>, String> =
            match settings.provider {
                ProviderKind::Standard => standard::StandardWebhooks::new(secrets, tolerance)
                    .map(|p| Box::new(p) as Box<dyn Provider>),
                ProviderKind::Svix => {
                    svix::new(secrets, tolerance).map(|p| Box::new(p) as Box<dyn Provider>)
                }
                ProviderKind::Appstle => appstle::Appstle::new(secrets, tolerance)
                    .map(|p| Box::new(p) as Box<dyn Provider>),
                ProviderKind::Polar => {
                    polar::new(secrets, tolerance).map(|p| Box::new(p) as Box<dyn Provider>)
                }
                ProviderKind::Stripe => stripe::Stripe::new(secrets, tolerance)
                    .map(|p| Box::new(p) as Box<dyn Provider>),
                ProviderKind::Shopify => {
                    shopify::Shopify::new(secrets).map(|p| Box::new(p) as Box<dyn Provider>)
                }
                ProviderKind::Paynow => paynow::PayNow::new(secrets, tolerance)
                    .map(|p| Box::new(p) as Box<dyn Provider>),
                ProviderKind::Rebilly => rebilly::Rebilly::new(
                    settings.basic_auth.as_ref(),
                    settings.allow_ips.as_deref(),
                )
                .map(|p| Box::new(p) as Box<dyn Provider>),
                ProviderKind::Hmac => match &settings.hmac {
                    Some(hmac) => hmac::GenericHmac::new(secrets, hmac, tolerance)
                        .map(|p| Box::new(p) as Box<dyn Provider>),
                    None => Err("the hmac provider needs an [hmac] table".to_owned()),
                },
            };
        let provider = built.map_err(|e| format!("source {:?}: {e}", settings.id))?;
        Ok(Self {
            id: settings.id.clone(),
            kind: settings.provider,
            provider,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn kind(&self) -> ProviderKind {
        self.kind
    }

    /// The only way to obtain a [`Verified`] request.
    pub fn verify(
        &self,
        request: Unverified<'_>,
        content_type: Option<String>,
        now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        let accepted = self.provider.verify(&request, now)?;
        if accepted.event_id.is_empty() || accepted.event_id.len() > MAX_EVENT_ID_LEN {
            return Err(VerifyError::MalformedHeader("event id"));
        }
        Ok(Verified {
            envelope: Envelope {
                source_id: self.id.clone(),
                provider: self.kind,
                event_id: accepted.event_id,
                received_at: DateTime::<Utc>::from(now),
                content_type,
                headers: accepted.kept_headers,
                body: request.body.clone(),
            },
        })
    }

    pub fn normalize(&self, envelope: &Envelope) -> Result<Normalized, NormalizeError> {
        self.provider.normalize(envelope)
    }

    pub fn sign(&self, event_id: &str, body: &[u8], now: SystemTime) -> Vec<(String, String)> {
        self.provider.sign(event_id, body, now)
    }

    pub fn sample_body(&self, event_id: &str, now: SystemTime) -> Vec<u8> {
        self.provider.sample_body(event_id, now)
    }
}

/// All configured sources, by id.
#[derive(Debug, Default)]
pub struct Sources {
    by_id: std::collections::HashMap<String, Source>,
}

impl Sources {
    pub fn from_settings(settings: &[SourceSettings]) -> Result<Self, String> {
        let by_id = settings
            .iter()
            .map(|s| Source::new(s).map(|src| (s.id.clone(), src)))
            .collect::<Result<_, _>>()?;
        Ok(Self { by_id })
    }

    pub fn get(&self, id: &str) -> Option<&Source> {
        self.by_id.get(id)
    }
}

/// Decodes the secrets of a source with `decode`, keeping them out of error messages.
fn decode_keys(
    secrets: &[SecretString],
    decode: impl Fn(&str) -> Option<Vec<u8>>,
    what: &str,
) -> Result<Vec<Vec<u8>>, String> {
    use secrecy::ExposeSecret;
    if secrets.is_empty() {
        return Err("no secrets configured".to_owned());
    }
    secrets
        .iter()
        .enumerate()
        .map(|(i, s)| {
            decode(s.expose_secret()).ok_or_else(|| format!("secret #{} is not {what}", i + 1))
        })
        .collect()
}

/// A header as a string, or `MissingHeader` / `MalformedHeader`.
fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, VerifyError> {
    header_as(headers, name, name)
}

/// [`header`] for a name known only at run time; errors say `label` instead.
fn header_as<'a, K: axum::http::header::AsHeaderName>(
    headers: &'a HeaderMap,
    name: K,
    label: &'static str,
) -> Result<&'a str, VerifyError> {
    let mut values = headers.get_all(name).iter();
    let value = values.next().ok_or(VerifyError::MissingHeader(label))?;
    if values.next().is_some() {
        return Err(VerifyError::MalformedHeader(label));
    }
    let value = value
        .to_str()
        .map_err(|_| VerifyError::MalformedHeader(label))?
        .trim();
    if value.is_empty() {
        return Err(VerifyError::MissingHeader(label));
    }
    Ok(value)
}

/// The first of `names` that is present, read with [`header`]; a missing header is reported
/// under the first (preferred) name.
fn header_any<'a>(headers: &'a HeaderMap, names: &[&'static str]) -> Result<&'a str, VerifyError> {
    match names.iter().find(|n| headers.contains_key(**n)) {
        Some(name) => header(headers, name),
        None => Err(VerifyError::MissingHeader(names[0])),
    }
}

type HmacSha256 = ::hmac::Hmac<sha2::Sha256>;

/// HMAC-SHA256 of the concatenation of `parts`.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    use ::hmac::Mac;
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Constant-time equality (the length is not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

/// Keys that are the raw UTF-8 bytes of each secret string.
fn utf8_keys(secrets: &[SecretString]) -> Result<Vec<Vec<u8>>, String> {
    decode_keys(
        secrets,
        |s| (!s.is_empty()).then(|| s.as_bytes().to_vec()),
        "a non-empty string",
    )
}

/// A top-level string (or number) field of a JSON body, for event ids and types.
fn body_field(body: &[u8], field: &str) -> Option<String> {
    let [value] = body_fields(body, [field]);
    value
}

/// Top-level string (or number) fields of a JSON body, in one pass that builds nothing
/// but them (the ingress reads ids off every webhook). All `None` if the body is not JSON;
/// a repeated key counts as its last occurrence.
fn body_fields<const N: usize>(body: &[u8], fields: [&str; N]) -> [Option<String>; N] {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

    struct Fields<'f, const N: usize>(&'f [&'f str; N]);

    impl<'de, const N: usize> DeserializeSeed<'de> for Fields<'_, N> {
        type Value = [Option<String>; N];

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de, const N: usize> Visitor<'de> for Fields<'_, N> {
        type Value = [Option<String>; N];

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = [const { None }; N];
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                match self.0.iter().position(|field| *field == key) {
                    Some(i) => {
                        found[i] = match map.next_value::<serde_json::Value>()? {
                            serde_json::Value::String(s) => Some(s),
                            serde_json::Value::Number(n) => Some(n.to_string()),
                            _ => None,
                        }
                    }
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(found)
        }
    }

    let mut de = serde_json::Deserializer::from_slice(body);
    match Fields(&fields)
        .deserialize(&mut de)
        .and_then(|found| de.end().map(|()| found))
    {
        Ok(found) => found,
        Err(_) => [const { None }; N],
    }
}

/// The event id of a correctly signed payload that carries none of its own: stable across
/// the provider's redeliveries of the same bytes, so dedupe still holds, and the payload is
/// queued (then dead-lettered with its reason if it cannot be normalized), never refused.
fn body_hash_id(body: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(&[body]))
}

/// Lowercase hex SHA-256.
pub(crate) fn sha256_hex(parts: &[&[u8]]) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hex::encode(hasher.finalize())
}

/// Milliseconds since the Unix epoch.
fn unix_millis(now: SystemTime) -> i64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Seconds since the Unix epoch, for signing and windows.
fn unix_secs(now: SystemTime) -> i64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BasicAuthSettings, HmacEncoding, HmacSettings};

    /// Every registered kind signs its own sample, verifies it through [`Source`] and
    /// normalizes it.
    #[test]
    fn every_kind_is_registered_and_round_trips() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        for kind in ProviderKind::ALL {
            let settings = SourceSettings {
                id: format!("src-{}", kind.as_str()),
                provider: kind,
                secrets: vec![SecretString::from("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")],
                tolerance_secs: None,
                basic_auth: Some(BasicAuthSettings {
                    username: "user".into(),
                    password: SecretString::from("pass"),
                }),
                allow_ips: None,
                hmac: Some(HmacSettings {
                    signature_header: "x-signature".into(),
                    encoding: HmacEncoding::Hex,
                    signature_prefix: Some("sha256=".into()),
                    timestamp_header: Some("x-timestamp".into()),
                    event_id_field: None,
                    event_id_header: None,
                }),
                retry: Default::default(),
                api: None,
                sync: None,
            };
            let source = Source::new(&settings).unwrap();
            assert_eq!(source.kind(), kind);
            let body = Bytes::from(source.sample_body("evt_roundtrip", now));
            let mut headers = HeaderMap::new();
            for (name, value) in source.sign("evt_roundtrip", &body, now) {
                let name = axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
                headers.insert(name, value.parse().unwrap());
            }
            let request = Unverified {
                headers: &headers,
                body: &body,
                peer: None,
            };
            let verified = source.verify(request, None, now).unwrap();
            assert!(!verified.event_id().is_empty(), "{kind:?}");
            let normalized = source.normalize(verified.envelope()).unwrap();
            assert!(!normalized.event_type.is_empty(), "{kind:?}");
            // An unsigned request is refused by every kind.
            let empty = HeaderMap::new();
            let unsigned = Unverified {
                headers: &empty,
                body: &body,
                peer: None,
            };
            assert!(source.verify(unsigned, None, now).is_err(), "{kind:?}");
        }
    }

    #[test]
    fn missing_kind_specific_settings_are_errors() {
        let base = SourceSettings {
            id: "x".into(),
            provider: ProviderKind::Hmac,
            secrets: vec![SecretString::from("k")],
            tolerance_secs: None,
            basic_auth: None,
            allow_ips: None,
            hmac: None,
            retry: Default::default(),
            api: None,
            sync: None,
        };
        assert!(Source::new(&base).unwrap_err().contains("[hmac]"));
        let rebilly = SourceSettings {
            provider: ProviderKind::Rebilly,
            ..base.clone()
        };
        assert!(Source::new(&rebilly).unwrap_err().contains("basic_auth"));
        let stripe = SourceSettings {
            provider: ProviderKind::Stripe,
            secrets: vec![],
            ..base
        };
        assert!(Source::new(&stripe).is_err());
    }

    /// Top-level strings and numbers only, the last of a repeated key, nothing from a body
    /// that is not exactly one JSON object.
    #[test]
    fn body_fields_read_top_level_scalars_only() {
        let body = br#"{"id":"evt_1","n":42,"nested":{"id":"no"},"list":[1],"null":null,"n":7}"#;
        assert_eq!(
            body_fields(body, ["id", "n", "nested", "list", "null", "absent"]),
            [
                Some("evt_1".into()),
                Some("7".into()),
                None,
                None,
                None,
                None
            ]
        );
        assert_eq!(
            body_field(br#"{"id":"a\u00e9"}"#, "id").as_deref(),
            Some("a\u{e9}")
        );
        for not_an_object in [
            &b"[1]"[..],
            b"\"id\"",
            b"{\"id\":\"x\"} trailing",
            b"{\"id\":",
            b"",
        ] {
            assert_eq!(body_field(not_an_object, "id"), None, "{not_an_object:?}");
        }
    }
}
