//! How an [`Envelope`] is laid out in AMQP properties and headers (envelope version 1):
//! the body is the raw webhook body, untouched; everything else is a header.
//!
//! Webhooks that arrive together may travel as one batch message (header
//! [`H_BATCH`] = how many): its body is one frame per envelope, each a big-endian `u32`
//! length and a JSON [`PartHeader`] (what the single message carries in AMQP headers),
//! then a `u32` length and the raw webhook body, untouched.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use super::topology::long;
use crate::config::ProviderKind;
use crate::envelope::{ENVELOPE_VERSION, Envelope};

pub const H_VERSION: &str = "x-subsync-version";
pub const H_SOURCE: &str = "x-subsync-source-id";
pub const H_PROVIDER: &str = "x-subsync-provider";
pub const H_EVENT_ID: &str = "x-subsync-event-id";
pub const H_RECEIVED_AT: &str = "x-subsync-received-at-us";
pub const H_PROVIDER_HEADERS: &str = "x-subsync-provider-headers";
/// Why a message was dead-lettered by a worker (the broker's own reasons are in `x-death`).
pub const H_REASON: &str = "x-subsync-reason";
pub const H_DEAD_AT: &str = "x-subsync-dead-lettered-at-us";
/// How many times an operator replayed the message from the dead-letter queue, and when.
pub const H_REPLAYS: &str = "x-subsync-replays";
pub const H_REPLAYED_AT: &str = "x-subsync-replayed-at-us";

/// Set on a batch message: how many envelopes its body holds.
pub const H_BATCH: &str = "x-subsync-batch";
/// Deliveries an event already had inside a batch before it was handed back on its own.
pub const H_PRIOR_DELIVERIES: &str = "x-subsync-prior-deliveries";
const BATCH_CONTENT_TYPE: &str = "application/vnd.subsync.batch";
/// Routing key of batch messages (sources route as `source.{id}`; the work queue binds `#`).
pub const BATCH_ROUTING_KEY: &str = "batch";

/// Persistent delivery: the message is written to disk before the broker confirms it.
const PERSISTENT: u8 = 2;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("envelope: missing or malformed header {0}")]
    Header(&'static str),
    #[error("envelope: unsupported version {0}")]
    Version(i64),
    #[error("envelope: unknown provider {0:?}")]
    Provider(String),
    #[error("a batch of {0} events (replay it whole: the worker splits it)")]
    Batch(i64),
    #[error("batch: malformed frame {0}")]
    Frame(usize),
}

pub fn encode(envelope: &Envelope) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        H_VERSION.into(),
        AMQPValue::LongLongInt(ENVELOPE_VERSION.into()),
    );
    headers.insert(H_SOURCE.into(), long(&envelope.source_id));
    headers.insert(H_PROVIDER.into(), long(envelope.provider.as_str()));
    headers.insert(H_EVENT_ID.into(), long(&envelope.event_id));
    headers.insert(
        H_RECEIVED_AT.into(),
        AMQPValue::LongLongInt(envelope.received_at.timestamp_micros()),
    );
    let mut kept = FieldTable::default();
    for (name, value) in &envelope.headers {
        if let Ok(name) = ShortString::try_new(name.as_str()) {
            kept.insert(name, long(value));
        }
    }
    headers.insert(H_PROVIDER_HEADERS.into(), AMQPValue::FieldTable(kept));

    let mut props = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_app_id("subsync".into())
        .with_timestamp(envelope.received_at.timestamp().max(0) as u64)
        .with_headers(headers);
    // Both are short strings on the wire; an over-long value is left out rather than
    // truncated (the event id is always in the headers too).
    if let Ok(id) = ShortString::try_new(envelope.event_id.as_str()) {
        props = props.with_message_id(id);
    }
    if let Some(Ok(ct)) = envelope.content_type.as_deref().map(ShortString::try_new) {
        props = props.with_content_type(ct);
    }
    props
}

pub fn decode(props: &BasicProperties, body: Bytes) -> Result<Envelope, DecodeError> {
    let empty = FieldTable::default();
    let headers = props.headers().as_ref().unwrap_or(&empty);
    if let Ok(count) = int(headers, H_BATCH) {
        return Err(DecodeError::Batch(count));
    }
    let version = int(headers, H_VERSION)?;
    if version != i64::from(ENVELOPE_VERSION) {
        return Err(DecodeError::Version(version));
    }
    let provider = string(headers, H_PROVIDER)?;
    let provider = ProviderKind::parse(&provider).ok_or(DecodeError::Provider(provider))?;
    let received_at = DateTime::<Utc>::from_timestamp_micros(int(headers, H_RECEIVED_AT)?)
        .ok_or(DecodeError::Header(H_RECEIVED_AT))?;
    let kept = match headers.inner().get(H_PROVIDER_HEADERS) {
        Some(AMQPValue::FieldTable(t)) => t
            .inner()
            .iter()
            .filter_map(|(k, v)| as_string(v).map(|v| (k.to_string(), v)))
            .collect(),
        _ => Vec::new(),
    };
    Ok(Envelope {
        source_id: string(headers, H_SOURCE)?,
        provider,
        event_id: string(headers, H_EVENT_ID)?,
        received_at,
        content_type: props.content_type().as_ref().map(|c| c.to_string()),
        headers: kept,
        body,
    })
}

/// What a batch frame says about its envelope (a single message has it in AMQP headers).
#[derive(serde::Serialize, serde::Deserialize)]
struct PartHeader<'a> {
    #[serde(borrow)]
    source_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    provider: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    event_id: std::borrow::Cow<'a, str>,
    received_at_us: i64,
    content_type: Option<String>,
    headers: Vec<(String, String)>,
}

/// One batch message holding `envelopes` (at least one).
pub fn encode_batch(envelopes: &[&Envelope]) -> (BasicProperties, Vec<u8>) {
    let size = envelopes.iter().map(|e| e.body.len() + 256).sum();
    let mut body = Vec::with_capacity(size);
    for envelope in envelopes {
        let header = PartHeader {
            source_id: envelope.source_id.as_str().into(),
            provider: envelope.provider.as_str().into(),
            event_id: envelope.event_id.as_str().into(),
            received_at_us: envelope.received_at.timestamp_micros(),
            content_type: envelope.content_type.clone(),
            headers: envelope.headers.clone(),
        };
        let header = serde_json::to_vec(&header).expect("a part header serializes");
        for frame in [&header[..], &envelope.body[..]] {
            let len = u32::try_from(frame.len()).expect("a frame is smaller than 4 GiB");
            body.extend_from_slice(&len.to_be_bytes());
            body.extend_from_slice(frame);
        }
    }
    let mut headers = FieldTable::default();
    headers.insert(
        H_VERSION.into(),
        AMQPValue::LongLongInt(ENVELOPE_VERSION.into()),
    );
    headers.insert(
        H_BATCH.into(),
        AMQPValue::LongLongInt(envelopes.len() as i64),
    );
    let props = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_app_id("subsync".into())
        .with_content_type(BATCH_CONTENT_TYPE.into())
        .with_timestamp(Utc::now().timestamp().max(0) as u64)
        .with_headers(headers);
    (props, body)
}

/// The envelopes of a batch message (bodies share `body`, not copied); `None` for a
/// single message.
pub fn decode_batch(
    props: &BasicProperties,
    body: &Bytes,
) -> Option<Result<Vec<Envelope>, DecodeError>> {
    let count = header_int(props, H_BATCH)?;
    let mut envelopes = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(4096));
    let mut at = 0usize;
    while at < body.len() {
        let index = envelopes.len();
        let (Some(header), Some(part)) = (frame(body, &mut at), frame(body, &mut at)) else {
            return Some(Err(DecodeError::Frame(index)));
        };
        let Ok(header) = serde_json::from_slice::<PartHeader>(&header) else {
            return Some(Err(DecodeError::Frame(index)));
        };
        let Some(provider) = ProviderKind::parse(&header.provider) else {
            return Some(Err(DecodeError::Provider(header.provider.into_owned())));
        };
        let Some(received_at) = DateTime::<Utc>::from_timestamp_micros(header.received_at_us)
        else {
            return Some(Err(DecodeError::Frame(index)));
        };
        envelopes.push(Envelope {
            source_id: header.source_id.into_owned(),
            provider,
            event_id: header.event_id.into_owned(),
            received_at,
            content_type: header.content_type,
            headers: header.headers,
            body: part,
        });
    }
    if envelopes.len() as i64 != count {
        return Some(Err(DecodeError::Frame(envelopes.len())));
    }
    Some(Ok(envelopes))
}

/// The length-prefixed frame at `at`, moving `at` past it.
fn frame(body: &Bytes, at: &mut usize) -> Option<Bytes> {
    let len = body.get(*at..at.checked_add(4)?)?;
    let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
    let start = *at + 4;
    let end = start.checked_add(len).filter(|&end| end <= body.len())?;
    *at = end;
    Some(body.slice(start..end))
}

/// A single message carrying one event of a batch on its own (dead-lettered, or handed
/// back after `prior_deliveries` deliveries inside its batch).
pub fn encode_part(envelope: &Envelope, prior_deliveries: u32) -> BasicProperties {
    let props = encode(envelope);
    if prior_deliveries == 0 {
        return props;
    }
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(
        H_PRIOR_DELIVERIES.into(),
        AMQPValue::LongLongInt(prior_deliveries.into()),
    );
    props.with_headers(headers)
}

/// A string header, if present (used for dead-letter reasons too).
pub fn header_string(props: &BasicProperties, name: &str) -> Option<String> {
    props
        .headers()
        .as_ref()?
        .inner()
        .get(name)
        .and_then(as_string)
}

/// An integer header, if present.
pub fn header_int(props: &BasicProperties, name: &str) -> Option<i64> {
    match props.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some((*v).into()),
        _ => None,
    }
}

fn as_string(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn string(headers: &FieldTable, name: &'static str) -> Result<String, DecodeError> {
    headers
        .inner()
        .get(name)
        .and_then(as_string)
        .filter(|s| !s.is_empty())
        .ok_or(DecodeError::Header(name))
}

fn int(headers: &FieldTable, name: &'static str) -> Result<i64, DecodeError> {
    match headers.inner().get(name) {
        Some(AMQPValue::LongLongInt(v)) => Ok(*v),
        Some(AMQPValue::LongInt(v)) => Ok((*v).into()),
        Some(AMQPValue::ShortShortUInt(v)) => Ok((*v).into()),
        _ => Err(DecodeError::Header(name)),
    }
}

/// Headers of a dead letter: the original ones plus our reason and time.
pub fn with_reason(props: &BasicProperties, reason: &str, at: DateTime<Utc>) -> BasicProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(
        H_REASON.into(),
        AMQPValue::LongString(LongString::from(reason)),
    );
    headers.insert(
        H_DEAD_AT.into(),
        AMQPValue::LongLongInt(at.timestamp_micros()),
    );
    props.clone().with_headers(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            source_id: "demo".into(),
            provider: ProviderKind::Standard,
            event_id: "msg_1".into(),
            received_at: DateTime::<Utc>::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            content_type: Some("application/json".into()),
            headers: vec![("webhook-timestamp".into(), "1700000000".into())],
            body: Bytes::from_static(b"{\"type\":\"x\"}\n\x00\xff"),
        }
    }

    #[test]
    fn round_trip_keeps_every_field_and_the_body_byte_for_byte() {
        let env = sample();
        let props = encode(&env);
        assert_eq!(props.delivery_mode(), &Some(PERSISTENT));
        assert_eq!(decode(&props, env.body.clone()).unwrap(), env);
    }

    #[test]
    fn over_long_content_type_is_dropped_not_a_panic() {
        let mut env = sample();
        env.content_type = Some("x".repeat(300));
        let props = encode(&env);
        assert_eq!(props.content_type(), &None);
        assert_eq!(decode(&props, env.body.clone()).unwrap().event_id, "msg_1");
    }

    #[test]
    fn a_batch_round_trips_every_envelope_byte_for_byte_and_is_not_a_single_message() {
        let first = sample();
        let mut second = sample();
        second.event_id = "msg_2".into();
        second.provider = ProviderKind::Stripe;
        second.content_type = None;
        second.headers = Vec::new();
        second.body = Bytes::new();
        let (props, body) = encode_batch(&[&first, &second]);
        assert_eq!(props.delivery_mode(), &Some(PERSISTENT));
        let body = Bytes::from(body);
        assert_eq!(
            decode_batch(&props, &body).unwrap().unwrap(),
            vec![first.clone(), second]
        );
        assert_eq!(
            decode(&props, body.clone()).unwrap_err(),
            DecodeError::Batch(2)
        );
        let single = encode(&first);
        assert!(decode_batch(&single, &first.body).is_none());
    }

    #[test]
    fn a_truncated_or_miscounted_batch_is_a_decode_error_not_a_panic() {
        let (props, body) = encode_batch(&[&sample(), &sample()]);
        for cut in [1, 3, 5, body.len() / 2, body.len() - 1] {
            let truncated = Bytes::copy_from_slice(&body[..cut]);
            assert!(matches!(
                decode_batch(&props, &truncated),
                Some(Err(DecodeError::Frame(_)))
            ));
        }
        let (_, one) = encode_batch(&[&sample()]);
        assert_eq!(
            decode_batch(&props, &Bytes::from(one))
                .unwrap()
                .unwrap_err(),
            DecodeError::Frame(1)
        );
    }

    #[test]
    fn missing_headers_and_unknown_versions_are_decode_errors() {
        let props = BasicProperties::default();
        assert_eq!(
            decode(&props, Bytes::new()).unwrap_err(),
            DecodeError::Header(H_VERSION)
        );
        let mut headers = encode(&sample()).headers().clone().unwrap();
        headers.insert(H_VERSION.into(), AMQPValue::LongLongInt(99));
        let props = BasicProperties::default().with_headers(headers);
        assert_eq!(
            decode(&props, Bytes::new()).unwrap_err(),
            DecodeError::Version(99)
        );
    }
}
