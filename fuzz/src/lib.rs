//! Shared harness of the fuzz targets: every provider's signature-header parser (through
//! `Source::verify`) and every normalizer (through `Source::normalize`), fed arbitrary
//! header values and bodies. A target only fails by panicking, hanging or crashing.

use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use secrecy::SecretString;
use subsync::config::{BasicAuthSettings, HmacEncoding, HmacSettings, ProviderKind, SourceSettings};
use subsync::envelope::Envelope;
use subsync::providers::{Source, Unverified};

/// Every header name any verifier or normalizer reads.
const HEADERS: &[&str] = &[
    "webhook-id", "webhook-timestamp", "webhook-signature",
    "svix-id", "svix-timestamp", "svix-signature",
    "stripe-signature",
    "x-shopify-hmac-sha256", "x-shopify-webhook-id", "x-shopify-topic", "shopify-hmac-sha256",
    "shopify-webhook-id", "shopify-topic", "x-shopify-triggered-at",
    "paynow-signature", "paynow-timestamp",
    "authorization",
    "x-signature", "x-timestamp", "x-event-id",
];

fn source(kind: ProviderKind) -> Source {
    Source::new(&SourceSettings {
        id: "fuzz".into(),
        provider: kind,
        secrets: vec![SecretString::from("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")],
        tolerance_secs: None,
        basic_auth: Some(BasicAuthSettings { username: "user".into(), password: SecretString::from("pass") }),
        allow_ips: None,
        hmac: Some(HmacSettings {
            signature_header: "x-signature".into(),
            encoding: HmacEncoding::Hex,
            signature_prefix: Some("sha256=".into()),
            timestamp_header: Some("x-timestamp".into()),
            event_id_field: None,
            event_id_header: Some("x-event-id".into()),
        }),
        retry: Default::default(),
        api: None,
        sync: None,
    })
    .expect("fuzz settings are valid")
}

/// Splits `data` at the first NUL: lines before it are header values (assigned to the
/// header names in turn, repeats allowed), the rest is the body.
fn split(data: &[u8]) -> (Vec<(&'static str, &[u8])>, &[u8]) {
    let (head, body) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[][..], data),
    };
    let values = head.split(|b| *b == b'\n').enumerate().map(|(i, v)| (HEADERS[i % HEADERS.len()], v)).collect();
    (values, body)
}

pub fn verify(kind: ProviderKind, data: &[u8]) {
    let source = source(kind);
    let (values, body) = split(data);
    let mut headers = HeaderMap::new();
    for (name, value) in values {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(HeaderName::from_static(name), value);
        }
    }
    let body = Bytes::copy_from_slice(body);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let _ = source.verify(Unverified { headers: &headers, body: &body, peer: Some([127, 0, 0, 1].into()) }, None, now);
}

pub fn normalize(kind: ProviderKind, data: &[u8]) {
    let source = source(kind);
    let (values, body) = split(data);
    let envelope = Envelope {
        source_id: "fuzz".into(),
        provider: kind,
        event_id: "evt_fuzz".into(),
        received_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("valid"),
        content_type: Some("application/json".into()),
        headers: values.into_iter().map(|(n, v)| (n.to_owned(), String::from_utf8_lossy(v).into_owned())).collect(),
        body: Bytes::copy_from_slice(body),
    };
    let _ = source.normalize(&envelope);
}
