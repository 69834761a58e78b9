//! Providers: everything subsync knows about each payment provider, one folder per
//! vendor behind one contract.
//!
//! - `contract.rs`: what a provider can do ([`contract::Connector`] for webhooks,
//!   [`contract::RetryClient`], [`contract::ListClient`], [`contract::DunningMode`]).
//! - `registry.rs`: the one place that says which provider has which; an exhaustive
//!   `match` over [`ProviderKind`], so a new kind does not compile until it is registered.
//! - `http.rs`: the plumbing of every provider API call (timeouts, capped answers,
//!   `Retry-After`, no redirects, errors that never echo a credential).
//! - `support.rs`: helpers shared by the connectors (headers, HMAC, typed payloads).
//! - `schemes/`: signature schemes that are not vendors (Standard Webhooks, Svix, a
//!   configurable HMAC).
//! - `<vendor>/`: `mod.rs` (the provider's mapping and its connector), `webhook.rs` (wire
//!   types and normalization), `retry.rs` and `list.rs` where the provider has them.
//!
//! This module is the face the rest of subsync uses: a configured [`Source`] verifies
//! requests (in the ingress), normalizes queued payloads (in the worker), and hands out
//! its retry client (to dunning) and list client (to sync). [`Sources`], built once from
//! the settings, holds them all. Providers know nothing of the queue, the database,
//! dunning or sync.
//!
//! Verification is a type boundary: an [`Unverified`] request becomes a [`Verified`] one
//! only through [`Source::verify`], and only a `Verified` request can be turned into an
//! [`Envelope`] for publishing.

pub mod contract;
pub mod http;
mod registry;
mod schemes;
mod support;
#[cfg(test)]
pub(crate) mod testing;

mod appstle;
mod paynow;
mod polar;
mod rebilly;
mod shopify;
mod stripe;

use std::{collections::HashMap, net::IpAddr, sync::Arc, time::SystemTime};

use axum::http::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::canonical::CanonicalEvent;
use crate::config::{ProviderKind, SourceSettings};
use crate::envelope::Envelope;
use contract::{
    Connector, DunningMode, FinalActionClient, ListClient, MoneyClient, PaymentClient, RetryClient,
};
use http::ProviderHttp;
pub(crate) use support::sha256_hex;

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

/// Why a source could not be built from its settings. The message names the source and
/// the setting, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source {source_id:?}: {reason}")]
    Invalid { source_id: String, reason: String },
    #[error("building the provider HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// A configured source: its id, its provider's connector and keys, and, where the
/// provider has them and `[sources.api]` is set, its retry and list clients.
pub struct Source {
    id: String,
    kind: ProviderKind,
    connector: Box<dyn Connector>,
    dunning: DunningMode,
    retry: Option<Arc<dyn RetryClient>>,
    final_action: Option<Arc<dyn FinalActionClient>>,
    list: Option<Arc<dyn ListClient>>,
    money: Option<Arc<dyn MoneyClient>>,
    payment: Option<Arc<dyn PaymentClient>>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("dunning", &self.dunning)
            .finish()
    }
}

impl Source {
    /// Builds a source from its settings (see `registry.rs`); fails on secrets or settings
    /// the provider cannot use. `http` is the one client of every provider API.
    pub fn new(settings: &SourceSettings, http: &ProviderHttp) -> Result<Self, SourceError> {
        let entry = registry::entry(settings, http).map_err(|reason| SourceError::Invalid {
            source_id: settings.id.clone(),
            reason,
        })?;
        // A provider whose retries go through its API has no dunning without the API.
        let dunning = match (entry.dunning, &entry.retry) {
            (DunningMode::CallsApi, None) => DunningMode::None,
            (mode, _) => mode,
        };
        Ok(Self {
            id: settings.id.clone(),
            kind: settings.provider,
            connector: entry.connector,
            dunning,
            retry: entry.retry.map(Arc::from),
            final_action: entry.final_action.map(Arc::from),
            list: entry.list.map(Arc::from),
            money: entry.money.map(Arc::from),
            payment: entry.payment.map(Arc::from),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn kind(&self) -> ProviderKind {
        self.kind
    }

    /// Who retries this source's failed payments.
    pub fn dunning_mode(&self) -> DunningMode {
        self.dunning
    }

    /// The client that asks the provider to retry a payment, when subsync calls its API.
    pub fn retry_client(&self) -> Option<Arc<dyn RetryClient>> {
        self.retry.clone()
    }

    /// The client that carries out final actions (mark unpaid, pause, cancel), when the
    /// provider's API has such calls and `[sources.api]` is set.
    pub fn final_action_client(&self) -> Option<Arc<dyn FinalActionClient>> {
        self.final_action.clone()
    }

    /// The client of the provider's list API, when `[sources.api]` is set.
    pub fn list_client(&self) -> Option<Arc<dyn ListClient>> {
        self.list.clone()
    }

    /// The client that reads an attempt's amount and currency from the provider's API,
    /// for the providers whose webhooks do not carry both (with `[sources.api]` set).
    pub fn money_client(&self) -> Option<Arc<dyn MoneyClient>> {
        self.money.clone()
    }

    /// The client that finds the attempt a payment belongs to, for the providers whose
    /// refunds name the payment (with `[sources.api]` set).
    pub fn payment_client(&self) -> Option<Arc<dyn PaymentClient>> {
        self.payment.clone()
    }

    /// The only way to obtain a [`Verified`] request.
    pub fn verify(
        &self,
        request: Unverified<'_>,
        content_type: Option<String>,
        now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        let accepted = self.connector.verify(&request, now)?;
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
        self.connector.normalize(envelope)
    }

    pub fn sign(&self, event_id: &str, body: &[u8], now: SystemTime) -> Vec<(String, String)> {
        self.connector.sign(event_id, body, now)
    }

    /// A realistic payload of subscription 0, cycle 0 (see [`Self::sample`]).
    pub fn sample_body(&self, event_id: &str, now: SystemTime) -> Vec<u8> {
        self.sample(&contract::Sample::new(event_id, now))
    }

    /// A realistic payload naming `sample`'s ids.
    pub fn sample(&self, sample: &contract::Sample<'_>) -> Vec<u8> {
        self.connector.sample_body(sample)
    }

    /// Every request header the connector reads, lowercase.
    pub fn header_names(&self) -> Vec<String> {
        self.connector.header_names()
    }
}

/// Every configured source, by id: the catalogue, built once from the settings and shared
/// by every role of the process.
#[derive(Debug, Default)]
pub struct Sources {
    by_id: HashMap<String, Source>,
}

impl Sources {
    /// Builds every source, with one HTTP client for all their provider APIs.
    pub fn from_settings(settings: &[SourceSettings]) -> Result<Self, SourceError> {
        let http = http::http_client()?;
        let by_id = settings
            .iter()
            .map(|s| Source::new(s, &http).map(|source| (s.id.clone(), source)))
            .collect::<Result<_, _>>()?;
        Ok(Self { by_id })
    }

    pub fn get(&self, id: &str) -> Option<&Source> {
        self.by_id.get(id)
    }

    /// Every source, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Source> {
        self.by_id.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::settings_for;

    /// Every registered kind signs its own sample, verifies it through [`Source`] and
    /// normalizes it; an unsigned request is refused by every kind; every header a
    /// connector names is one it can be given (lowercase, valid).
    #[test]
    fn every_kind_is_registered_and_round_trips() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let http = http::http_client().unwrap();
        for kind in ProviderKind::ALL {
            let source = Source::new(&settings_for(kind), &http).unwrap();
            assert_eq!(source.kind(), kind);
            let body = Bytes::from(source.sample_body("evt_roundtrip", now));
            let mut headers = HeaderMap::new();
            let signed = source.sign("evt_roundtrip", &body, now);
            let names = source.header_names();
            for (name, value) in signed {
                assert!(
                    names.contains(&name.to_ascii_lowercase()),
                    "{kind:?} signs {name}"
                );
                let name = axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
                headers.insert(name, value.parse().unwrap());
            }
            for name in &names {
                assert_eq!(*name, name.to_ascii_lowercase(), "{kind:?}");
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
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
            let empty = HeaderMap::new();
            let unsigned = Unverified {
                headers: &empty,
                body: &body,
                peer: None,
            };
            assert!(source.verify(unsigned, None, now).is_err(), "{kind:?}");
        }
    }

    /// The verifier checks every kind must pass, through [`Source`] only: a request signed
    /// with the old secret verifies while both are configured (rotation); a changed body
    /// is refused; a request an hour old is refused where the scheme signs a timestamp.
    #[test]
    fn every_kind_rotates_and_refuses_tampered_or_stale_requests() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let http = http::http_client().unwrap();
        let (old, new) = (
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        );
        for kind in ProviderKind::ALL {
            // What the scheme signs: Rebilly sends credentials, not a signature; Shopify
            // signs no timestamp.
            let (signs_body, signs_time) = match kind {
                ProviderKind::Rebilly => (false, false),
                ProviderKind::Shopify => (true, false),
                ProviderKind::Standard
                | ProviderKind::Svix
                | ProviderKind::Appstle
                | ProviderKind::Polar
                | ProviderKind::Stripe
                | ProviderKind::Paynow
                | ProviderKind::Hmac => (true, true),
            };
            let with = |secrets: &[&str]| {
                let settings = SourceSettings {
                    secrets: secrets.iter().map(|s| (*s).to_owned().into()).collect(),
                    ..settings_for(kind)
                };
                Source::new(&settings, &http).unwrap()
            };
            let (signer, rotated) = (with(&[old]), with(&[new, old]));
            let body = Bytes::from(signer.sample_body("evt_rotation", now));
            let headers = |at: SystemTime| {
                let mut headers = HeaderMap::new();
                for (name, value) in signer.sign("evt_rotation", &body, at) {
                    let name = axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
                    headers.insert(name, value.parse().unwrap());
                }
                headers
            };
            let verify = |source: &Source, headers: &HeaderMap, body: &Bytes, at| {
                let request = Unverified {
                    headers,
                    body,
                    peer: None,
                };
                source.verify(request, None, at)
            };
            let signed = headers(now);
            assert!(
                verify(&rotated, &signed, &body, now).is_ok(),
                "{kind:?} rotation"
            );
            let mut tampered = body.to_vec();
            let last = tampered.len() - 2;
            tampered[last] ^= 0x01;
            let tampered = Bytes::from(tampered);
            assert_eq!(
                verify(&rotated, &signed, &tampered, now).is_err(),
                signs_body,
                "{kind:?} tampered body"
            );
            let stale = now + std::time::Duration::from_secs(3_600);
            assert_eq!(
                verify(&rotated, &signed, &body, stale).is_err(),
                signs_time,
                "{kind:?} an hour late"
            );
        }
    }

    #[test]
    fn missing_kind_specific_settings_are_errors() {
        let http = http::http_client().unwrap();
        let error =
            |settings: &SourceSettings| Source::new(settings, &http).unwrap_err().to_string();
        let base = SourceSettings {
            basic_auth: None,
            hmac: None,
            ..settings_for(ProviderKind::Hmac)
        };
        assert!(error(&base).contains("[hmac]"));
        let rebilly = SourceSettings {
            provider: ProviderKind::Rebilly,
            ..base.clone()
        };
        assert!(error(&rebilly).contains("basic_auth"));
        let stripe = SourceSettings {
            provider: ProviderKind::Stripe,
            secrets: vec![],
            ..base
        };
        let message = error(&stripe);
        assert!(
            message.starts_with(&format!("source {:?}", stripe.id)),
            "{message}"
        );
    }

    /// A retry API needs `[sources.api]`: without it the source has no dunning.
    #[test]
    fn dunning_needs_the_api_where_subsync_calls_it() {
        let http = http::http_client().unwrap();
        let mut stripe = settings_for(ProviderKind::Stripe);
        let bare = Source::new(&stripe, &http).unwrap();
        assert_eq!(bare.dunning_mode(), DunningMode::None);
        assert!(bare.retry_client().is_none() && bare.list_client().is_none());
        stripe.api = Some(crate::providers::testing::api_settings(
            "http://127.0.0.1:9/",
            "k",
        ));
        let with_api = Source::new(&stripe, &http).unwrap();
        assert_eq!(with_api.dunning_mode(), DunningMode::CallsApi);
        assert!(with_api.retry_client().is_some() && with_api.list_client().is_some());
        let paynow = Source::new(&settings_for(ProviderKind::Paynow), &http).unwrap();
        assert_eq!(paynow.dunning_mode(), DunningMode::ProviderManaged);
    }
}
