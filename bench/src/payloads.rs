//! Signed webhooks of every provider, prepared before a run: one source per provider kind,
//! each request signed with `Source::sign` over the connector's own sample (`Source::sample`,
//! its ids spread over 10,000 subscriptions and one cycle per request, so the worker does
//! not fight over one hot row, as real traffic would not).

use std::time::SystemTime;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri, header};
use bytes::Bytes;
use subsync::{
    config::ProviderKind,
    envelope::Envelope,
    providers::{Sources, Unverified, contract::Sample},
};

/// One secret for every signing provider (a valid `whsec_` base64 key for the Svix family,
/// any string for the others).
const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// Subscriptions the requests are spread over.
const SUBSCRIPTIONS: usize = 10_000;

/// Every provider kind, in the order requests cycle through them.
pub const KINDS: [ProviderKind; ProviderKind::ALL.len()] = ProviderKind::ALL;

/// `[[sources]]` for every provider kind (id = the kind's name), with a signature window of
/// `tolerance_secs` so requests signed before a run stay valid through it.
pub fn sources_toml(tolerance_secs: u64) -> String {
    let mut out = String::new();
    for kind in KINDS {
        let name = kind.as_str();
        out.push_str(&format!(
            "[[sources]]\nid = \"{name}\"\nprovider = \"{name}\"\ntolerance_secs = {tolerance_secs}\n"
        ));
        match kind {
            ProviderKind::Rebilly => out.push_str(
                "basic_auth = { username = \"bench\", password = \"bench-password\" }\n",
            ),
            ProviderKind::Hmac => out.push_str(&format!(
                "secrets = [\"{SECRET}\"]\nhmac = {{ signature_header = \"X-Signature\", encoding = \"hex\", \
                 signature_prefix = \"sha256=\", timestamp_header = \"X-Timestamp\" }}\n"
            )),
            _ => out.push_str(&format!("secrets = [\"{SECRET}\"]\n")),
        }
    }
    out
}

/// A signed request ready to send: `POST {path}` with `headers` and `body`.
#[derive(Clone)]
pub struct Prepared {
    pub kind: ProviderKind,
    pub path: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Prepared {
    /// Verifies the request as the ingress would and returns the envelope it publishes.
    pub fn verify(&self, sources: &Sources, now: SystemTime) -> anyhow::Result<Envelope> {
        let source = sources
            .get(self.kind.as_str())
            .ok_or_else(|| anyhow::anyhow!("no source {}", self.kind.as_str()))?;
        let request = Unverified {
            headers: &self.headers,
            body: &self.body,
            peer: Some([127, 0, 0, 1].into()),
        };
        let verified = source
            .verify(request, Some("application/json".into()), now)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.kind.as_str()))?;
        Ok(verified.envelope().clone())
    }
}

/// `n` signed requests cycling through every provider, with event ids `{tag}_{i}`.
/// Checks that one of each kind verifies and normalizes (some are types the worker
/// archives as ignored: the generic providers).
pub fn prepare(
    sources: &Sources,
    n: usize,
    tag: &str,
    host: &str,
    now: SystemTime,
) -> anyhow::Result<Vec<Prepared>> {
    let host = HeaderValue::from_str(host)?;
    let json = HeaderValue::from_static("application/json");
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let kind = KINDS[i % KINDS.len()];
        let source = sources
            .get(kind.as_str())
            .ok_or_else(|| anyhow::anyhow!("no source {}", kind.as_str()))?;
        let event_id = format!("evt_{tag}_{i}");
        let body = source.sample(&Sample {
            event_id: &event_id,
            now,
            subscription: (i % SUBSCRIPTIONS) as u64,
            cycle: i as u64,
        });
        let mut headers = HeaderMap::with_capacity(8);
        headers.insert(header::HOST, host.clone());
        headers.insert(header::CONTENT_TYPE, json.clone());
        for (name, value) in source.sign(&event_id, &body, now) {
            headers.insert(
                HeaderName::from_bytes(name.as_bytes())?,
                HeaderValue::from_str(&value)?,
            );
        }
        out.push(Prepared {
            kind,
            path: Uri::try_from(format!("/webhooks/{}", kind.as_str()))?,
            headers,
            body: Bytes::from(body),
        });
    }
    for request in out.iter().take(KINDS.len()) {
        let envelope = request.verify(sources, now)?;
        let source = sources.get(request.kind.as_str()).expect("checked above");
        source
            .normalize(&envelope)
            .map_err(|e| anyhow::anyhow!("{}: {e}", request.kind.as_str()))?;
    }
    Ok(out)
}

/// Mean body size of `requests`, in bytes.
pub fn mean_body(requests: &[Prepared]) -> usize {
    requests.iter().map(|r| r.body.len()).sum::<usize>() / requests.len().max(1)
}
