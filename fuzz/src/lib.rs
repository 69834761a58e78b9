//! The fuzz targets' one table: every provider kind (`ProviderKind::ALL`), its signature
//! parser through `Source::verify` and its normalizer through `Source::normalize`, fed
//! arbitrary header values and bodies. The first input byte picks the kind, so a provider
//! added to the registry is fuzzed without a new target; the header names are the ones its
//! connector says it reads (`Source::header_names`). A target only fails by panicking,
//! hanging or crashing.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use secrecy::SecretString;
use subsync::config::{BasicAuthSettings, HmacEncoding, HmacSettings, ProviderKind, SourceSettings};
use subsync::envelope::Envelope;
use subsync::providers::{Source, Unverified};

/// One source per kind, with the header names its connector reads.
fn sources() -> &'static [(Source, Vec<HeaderName>)] {
    static SOURCES: OnceLock<Vec<(Source, Vec<HeaderName>)>> = OnceLock::new();
    SOURCES.get_or_init(|| {
        let http = subsync::providers::http::http_client().expect("HTTP client");
        ProviderKind::ALL
            .into_iter()
            .map(|kind| {
                let source = Source::new(&settings(kind), &http).expect("fuzz settings are valid");
                let names = source.header_names().iter().map(|n| HeaderName::from_bytes(n.as_bytes()).expect("a header name")).collect();
                (source, names)
            })
            .collect()
    })
}

fn settings(kind: ProviderKind) -> SourceSettings {
    SourceSettings {
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
    }
}

/// The source picked by the first byte, then the rest split at the first NUL: lines before
/// it are header values (assigned to the connector's header names in turn, repeats
/// allowed), the rest is the body.
fn split(data: &[u8]) -> Option<(&'static Source, Vec<(&'static HeaderName, &[u8])>, &[u8])> {
    let (pick, data) = data.split_first()?;
    let (source, names) = &sources()[usize::from(*pick) % ProviderKind::ALL.len()];
    let (head, body) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[][..], data),
    };
    let values = match names.len() {
        0 => Vec::new(),
        n => head.split(|b| *b == b'\n').enumerate().map(|(i, v)| (&names[i % n], v)).collect(),
    };
    Some((source, values, body))
}

pub fn verify(data: &[u8]) {
    let Some((source, values, body)) = split(data) else { return };
    let mut headers = HeaderMap::new();
    for (name, value) in values {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(name.clone(), value);
        }
    }
    let body = Bytes::copy_from_slice(body);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let _ = source.verify(Unverified { headers: &headers, body: &body, peer: Some([127, 0, 0, 1].into()) }, None, now);
}

pub fn normalize(data: &[u8]) {
    let Some((source, values, body)) = split(data) else { return };
    let envelope = Envelope {
        source_id: "fuzz".into(),
        provider: source.kind(),
        event_id: "evt_fuzz".into(),
        received_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("valid"),
        content_type: Some("application/json".into()),
        headers: values.into_iter().map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v).into_owned())).collect(),
        body: Bytes::copy_from_slice(body),
    };
    let _ = source.normalize(&envelope);
}
