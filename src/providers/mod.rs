//! Providers: verification of inbound webhooks (in the ingress) and normalization of the
//! queued payloads (in the worker). One trait for all providers; each provider overrides a
//! few small methods. Providers know nothing of the queue or the database.
//!
//! Verification is a type boundary: an [`Unverified`] request becomes a [`Verified`] one only
//! through [`Source::verify`], and only a `Verified` request can be turned into an
//! [`Envelope`] for publishing.

mod standard;

use std::time::SystemTime;

use axum::http::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use secrecy::SecretString;

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
}

/// A correctly signed payload that the worker cannot turn into events: it is dead-lettered
/// with this reason, never dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NormalizeError {
    #[error("malformed payload: {0}")]
    Malformed(String),
}

/// What the worker learned from a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    pub event_type: String,
}

/// The parts of a request a verifier looks at, before anyone trusts them.
pub struct Unverified<'a> {
    pub headers: &'a HeaderMap,
    pub body: &'a Bytes,
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
        let provider: Box<dyn Provider> = match settings.provider {
            ProviderKind::Standard => Box::new(
                standard::StandardWebhooks::new(&settings.secrets, tolerance)
                    .map_err(|e| format!("source {:?}: {e}", settings.id))?,
            ),
        };
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
    let mut values = headers.get_all(name).iter();
    let value = values.next().ok_or(VerifyError::MissingHeader(name))?;
    if values.next().is_some() {
        return Err(VerifyError::MalformedHeader(name));
    }
    let value = value
        .to_str()
        .map_err(|_| VerifyError::MalformedHeader(name))?
        .trim();
    if value.is_empty() {
        return Err(VerifyError::MissingHeader(name));
    }
    Ok(value)
}

/// Seconds since the Unix epoch, for signing and windows.
fn unix_secs(now: SystemTime) -> i64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
