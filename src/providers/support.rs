//! Helpers shared by the connectors and their clients: secrets decoded once, headers read
//! strictly, HMAC with constant-time compares, top-level fields of a JSON body, typed
//! payloads with clear errors (ids that arrive as strings or numbers, required fields,
//! optional timestamps, an envelope whose inner object stays raw until the event type says
//! which shape it has), and what every list client renders its records with.

use crate::config::FinalAction;
use std::time::SystemTime;

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::providers::{NormalizeError, VerifyError};

/// Deserializes a payload into its typed shape, or says what is wrong with it. Typed
/// shapes (not `serde_json::Value`) keep decimal amounts exact (see `money::DecimalText`).
pub(crate) fn parse_payload<T: serde::de::DeserializeOwned>(
    body: &[u8],
    what: &str,
) -> Result<T, NormalizeError> {
    serde_json::from_slice(body)
        .map_err(|e| NormalizeError::Malformed(format!("not a {what} payload: {e}")))
}

/// An RFC 3339 timestamp, or a clear error naming the field.
pub(crate) fn parse_time(value: &str, field: &str) -> Result<DateTime<Utc>, NormalizeError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| NormalizeError::Malformed(format!("{field}: {e}")))
}

/// Unix seconds as a timestamp, or a clear error naming the field.
pub(crate) fn time_from_unix(secs: i64, field: &str) -> Result<DateTime<Utc>, NormalizeError> {
    DateTime::<Utc>::from_timestamp(secs, 0)
        .ok_or_else(|| NormalizeError::Malformed(format!("{field}: {secs} is out of range")))
}

/// Decodes the secrets of a source with `decode`, keeping them out of error messages.
pub(crate) fn decode_keys(
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
pub(crate) fn header<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
) -> Result<&'a str, VerifyError> {
    header_as(headers, name, name)
}

/// [`header`] for a name known only at run time; errors say `label` instead.
pub(crate) fn header_as<'a, K: axum::http::header::AsHeaderName>(
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
pub(crate) fn header_any<'a>(
    headers: &'a HeaderMap,
    names: &[&'static str],
) -> Result<&'a str, VerifyError> {
    match names.iter().find(|n| headers.contains_key(**n)) {
        Some(name) => header(headers, name),
        None => Err(VerifyError::MissingHeader(names[0])),
    }
}

pub(crate) type HmacSha256 = ::hmac::Hmac<sha2::Sha256>;

/// HMAC-SHA256 of the concatenation of `parts`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    use ::hmac::Mac;
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Constant-time equality (the length is not secret).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

/// Keys that are the raw UTF-8 bytes of each secret string.
pub(crate) fn utf8_keys(secrets: &[SecretString]) -> Result<Vec<Vec<u8>>, String> {
    decode_keys(
        secrets,
        |s| (!s.is_empty()).then(|| s.as_bytes().to_vec()),
        "a non-empty string",
    )
}

/// A top-level string (or number) field of a JSON body, for event ids and types.
pub(crate) fn body_field(body: &[u8], field: &str) -> Option<String> {
    let [value] = body_fields(body, [field]);
    value
}

/// Top-level string (or number) fields of a JSON body, in one pass that builds nothing
/// but them (the ingress reads ids off every webhook). All `None` if the body is not JSON;
/// a repeated key counts as its last occurrence.
pub(crate) fn body_fields<const N: usize>(body: &[u8], fields: [&str; N]) -> [Option<String>; N] {
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
pub(crate) fn body_hash_id(body: &[u8]) -> String {
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
pub(crate) fn unix_millis(now: SystemTime) -> i64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Seconds since the Unix epoch, for signing and windows.
pub(crate) fn unix_secs(now: SystemTime) -> i64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
/// An id written as a JSON string or integer (flake ids, Shopify numeric ids), kept as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Id(pub String);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Id;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an id as a string or an integer")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Id, E> {
                Ok(Id(v.trim().to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Id, E> {
                Ok(Id(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Id, E> {
                Ok(Id(v.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The first present, non-empty id of `candidates`.
pub(crate) fn first_id<'a>(candidates: impl IntoIterator<Item = Option<&'a Id>>) -> Option<String> {
    candidates
        .into_iter()
        .flatten()
        .map(|id| id.0.clone())
        .find(|id| !id.is_empty())
}

/// A required, non-empty field that is missing.
pub(crate) fn missing(event_type: &str, field: &str) -> NormalizeError {
    NormalizeError::Malformed(format!("{event_type}: no {field}"))
}

/// An optional RFC 3339 timestamp; present but unparsable is an error.
pub(crate) fn opt_time(
    value: Option<&str>,
    field: &str,
) -> Result<Option<DateTime<Utc>>, NormalizeError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        Some(v) => parse_time(v, field).map(Some),
        None => Ok(None),
    }
}

/// A non-empty trimmed string.
pub(crate) fn text(value: Option<&String>) -> Option<String> {
    value
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Parses a raw inner object (kept raw so decimals stay exact) into its typed shape.
pub(crate) fn parse_raw<T: serde::de::DeserializeOwned>(
    raw: Option<&RawValue>,
    what: &str,
) -> Result<T, NormalizeError> {
    let raw = raw.ok_or_else(|| NormalizeError::Malformed(format!("no {what} object")))?;
    serde_json::from_str(raw.get())
        .map_err(|e| NormalizeError::Malformed(format!("{what} object: {e}")))
}

/// Parses an optional raw inner object; JSON `null` counts as absent.
pub(crate) fn parse_opt_raw<T: serde::de::DeserializeOwned>(
    raw: Option<&RawValue>,
    what: &str,
) -> Result<Option<T>, NormalizeError> {
    match raw.filter(|r| r.get().trim() != "null") {
        Some(r) => parse_raw(Some(r), what).map(Some),
        None => Ok(None),
    }
}

/// A non-negative count (attempts) that fits `u32`.
pub(crate) fn count(value: Option<i64>, field: &str) -> Result<Option<u32>, NormalizeError> {
    value
        .map(|v| {
            u32::try_from(v)
                .map_err(|_| NormalizeError::Malformed(format!("{field}: {v} is not a count")))
        })
        .transpose()
}

/// A `Malformed` error with `reason`.
pub(crate) fn malformed(reason: impl Into<String>) -> NormalizeError {
    NormalizeError::Malformed(reason.into())
}

/// The upper-case ISO 4217 code of a currency, or an error naming the field.
pub(crate) fn currency_code(currency: &str, field: &str) -> Result<String, NormalizeError> {
    crate::money::exponent(currency)
        .map(|(code, _)| code)
        .map_err(|e| malformed(format!("{field}: {e}")))
}

/// Stripe's subscription statuses, which Polar uses too.
pub(crate) fn stripe_subscription_status(
    word: &str,
) -> Option<crate::canonical::SubscriptionStatus> {
    use crate::canonical::SubscriptionStatus as S;
    Some(match word {
        "incomplete" | "trialing" => S::Pending,
        "active" => S::Active,
        "past_due" | "unpaid" => S::PastDue,
        "paused" => S::Paused,
        "canceled" => S::Cancelled,
        "incomplete_expired" => S::Expired,
        _ => return None,
    })
}

/// Counts a provider word outside the vocabulary its definitions document (a new status,
/// result or type): `subsync_unknown_provider_values_total{provider, field}`. The payload is
/// still handled, in the way that cannot move state wrongly (the caller decides which);
/// the word itself is logged at debug level, never used as a label.
pub(crate) fn unknown_provider_value(provider: &'static str, field: &'static str, word: &str) {
    metrics::counter!(
        "subsync_unknown_provider_values_total",
        "provider" => provider,
        "field" => field
    )
    .increment(1);
    tracing::debug!(provider, field, word, "unknown provider value tolerated");
}

/// A page size capped to the API's documented maximum (and at least 1).
pub(crate) fn capped(page_size: u32, max: u32) -> u32 {
    page_size.clamp(1, max)
}

/// A list record's webhook body as JSON.
pub(crate) fn json_body(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("a webhook body serializes")
}

/// Why final action `action` has nothing left to do on a contract in `status` (Shopify's
/// statuses, which Appstle's contracts share): it is already in the action's `target`
/// status, or it has ended (CANCELLED, EXPIRED).
pub(crate) fn already_done(action: FinalAction, target: &str, status: &str) -> Option<String> {
    if status == target {
        Some(format!("contract {status}"))
    } else if matches!(status, "CANCELLED" | "EXPIRED") {
        Some(format!(
            "contract {status}: it has ended, nothing left to {}",
            action.as_str()
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
