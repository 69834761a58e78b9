//! Small helpers shared by the normalizers: ids that arrive as strings or numbers, required fields with clear
//! errors, optional timestamps, and a typed envelope whose inner object stays raw until
//! the event type says which shape it has.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{NormalizeError, parse_time};

/// An id written as a JSON string or integer (flake ids, Shopify numeric ids), kept as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Id(pub String);

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
pub fn first_id<'a>(candidates: impl IntoIterator<Item = Option<&'a Id>>) -> Option<String> {
    candidates
        .into_iter()
        .flatten()
        .map(|id| id.0.clone())
        .find(|id| !id.is_empty())
}

/// A required, non-empty field that is missing.
pub fn missing(event_type: &str, field: &str) -> NormalizeError {
    NormalizeError::Malformed(format!("{event_type}: no {field}"))
}

/// An optional RFC 3339 timestamp; present but unparsable is an error.
pub fn opt_time(value: Option<&str>, field: &str) -> Result<Option<DateTime<Utc>>, NormalizeError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        Some(v) => parse_time(v, field).map(Some),
        None => Ok(None),
    }
}

/// A non-empty trimmed string.
pub fn text(value: Option<&String>) -> Option<String> {
    value
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Parses a raw inner object (kept raw so decimals stay exact) into its typed shape.
pub fn parse_raw<T: serde::de::DeserializeOwned>(
    raw: Option<&RawValue>,
    what: &str,
) -> Result<T, NormalizeError> {
    let raw = raw.ok_or_else(|| NormalizeError::Malformed(format!("no {what} object")))?;
    serde_json::from_str(raw.get())
        .map_err(|e| NormalizeError::Malformed(format!("{what} object: {e}")))
}

/// Parses an optional raw inner object; JSON `null` counts as absent.
pub fn parse_opt_raw<T: serde::de::DeserializeOwned>(
    raw: Option<&RawValue>,
    what: &str,
) -> Result<Option<T>, NormalizeError> {
    match raw.filter(|r| r.get().trim() != "null") {
        Some(r) => parse_raw(Some(r), what).map(Some),
        None => Ok(None),
    }
}

/// A non-negative count (attempts) that fits `u32`.
pub fn count(value: Option<i64>, field: &str) -> Result<Option<u32>, NormalizeError> {
    value
        .map(|v| {
            u32::try_from(v)
                .map_err(|_| NormalizeError::Malformed(format!("{field}: {v} is not a count")))
        })
        .transpose()
}

/// A `Malformed` error with `reason`.
pub fn malformed(reason: impl Into<String>) -> NormalizeError {
    NormalizeError::Malformed(reason.into())
}

/// The upper-case ISO 4217 code of a currency, or an error naming the field.
pub fn currency_code(currency: &str, field: &str) -> Result<String, NormalizeError> {
    crate::money::exponent(currency)
        .map(|(code, _)| code)
        .map_err(|e| malformed(format!("{field}: {e}")))
}

/// Stripe's subscription statuses, which Polar uses too.
pub fn stripe_subscription_status(word: &str) -> Option<crate::canonical::SubscriptionStatus> {
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
