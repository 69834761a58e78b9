//! Provider list clients for pull sync: each pages through one provider's list API in
//! that API's own pagination style, and renders every record as the webhook payload the
//! provider would have sent for it, so the provider's normalizer (the same code the
//! webhooks go through) turns it into canonical events.
//!
//! A client is stateless between pages: where to continue is the opaque `cursor` it
//! returned, which the sync run stores after each page (resumable after a crash).

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::api::{Cap, ProviderApiError, ProviderHttp};
use crate::config::{ApiSettings, ProviderKind};

mod appstle;
mod paynow;
mod polar;
mod rebilly;
mod shopify;
mod stripe;

/// What to fetch next.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest<'a> {
    /// The `next` of the previous page; `None` for the first page of a run.
    pub cursor: Option<&'a str>,
    /// Only records created or updated at or after this time, where the API can filter
    /// (or sort by time and stop); `None` = everything.
    pub since: Option<DateTime<Utc>>,
    /// The subscription ids the ledger knows for this source, sorted: for APIs that list
    /// per contract (Appstle past orders).
    pub known_subscriptions: &'a [String],
    /// Records wanted per page; a client caps it at its API's documented maximum.
    pub page_size: u32,
    /// The most bytes of the page's answer read (`sync.max_page_bytes`).
    pub max_page_bytes: usize,
}

impl PageRequest<'_> {
    /// The cap on the page's answer.
    pub(crate) fn cap(&self) -> Cap {
        Cap::page(self.max_page_bytes)
    }
}

/// One page of records, and where to continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub records: Vec<Record>,
    /// The cursor of the next page, or `None` when this was the last one.
    pub next: Option<String>,
}

/// One provider record, rendered as the webhook the provider would have sent for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record's id at the provider, with its kind where ids could collide
    /// (`invoice:in_123`, `contract:gid://...`). The sync event id is derived from it and
    /// from the rendered body, so an unchanged record is the same event on every run.
    pub key: String,
    /// The webhook body, in the exact shape the provider's normalizer reads.
    pub body: Vec<u8>,
    /// Headers the normalizer reads (e.g. Shopify's `x-shopify-topic`), lowercase names.
    pub headers: Vec<(String, String)>,
}

pub trait ListClient: Send + Sync {
    /// Fetches one page. 429 is `RateLimited` (with the provider's `Retry-After`), 5xx and
    /// transport failures `Transient`, anything else the API refuses `Rejected`; the caller
    /// decides about waiting and retrying.
    fn page<'a>(
        &'a self,
        request: PageRequest<'a>,
    ) -> BoxFuture<'a, Result<Page, ProviderApiError>>;

    /// The pause between two page requests that keeps within the provider's documented
    /// rate limit (used when the source's `min_interval_ms` is 0).
    fn default_min_interval(&self) -> std::time::Duration;
}

/// The list client of a provider with a list API, or `None`.
pub fn list_client_for(
    kind: ProviderKind,
    api: &ApiSettings,
    http: ProviderHttp,
) -> Option<Box<dyn ListClient>> {
    match kind {
        ProviderKind::Stripe => Some(Box::new(stripe::StripeList::new(api, http))),
        ProviderKind::Shopify => Some(Box::new(shopify::ShopifyList::new(api, http))),
        ProviderKind::Appstle => Some(Box::new(appstle::AppstleList::new(api, http))),
        ProviderKind::Polar => Some(Box::new(polar::PolarList::new(api, http))),
        ProviderKind::Paynow => Some(Box::new(paynow::PayNowList::new(api, http))),
        ProviderKind::Rebilly => Some(Box::new(rebilly::RebillyList::new(api, http))),
        ProviderKind::Standard | ProviderKind::Svix | ProviderKind::Hmac => None,
    }
}

/// `Some(n)` capped to `max` (and at least 1), for page sizes.
fn capped(page_size: u32, max: u32) -> u32 {
    page_size.clamp(1, max)
}

/// A JSON body for a [`Record`].
fn json_body(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("a webhook body serializes")
}

impl Record {
    /// A record whose body is `body` as JSON, without headers.
    fn json(key: String, body: &impl Serialize) -> Self {
        Self {
            key,
            body: json_body(body),
            headers: Vec::new(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::SystemTime;

    use futures_util::future::BoxFuture;
    use wiremock::matchers::any;
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::{Page, PageRequest, Record};
    use crate::api::ProviderApiError;
    use crate::canonical::CanonicalEvent;
    use crate::config::{ProviderKind, SourceSettings};
    use crate::envelope::Envelope;
    use crate::providers::Source;

    /// The first page of a run (`cursor` `None`) or the page after `cursor`: 2 records, no
    /// `since`, no known subscriptions.
    pub(crate) fn request(cursor: Option<&str>) -> PageRequest<'_> {
        PageRequest {
            cursor,
            since: None,
            known_subscriptions: &[],
            page_size: 2,
            max_page_bytes: 1 << 20,
        }
    }

    /// An empty page that ends the listing.
    pub(crate) const EMPTY_END: Page = Page {
        records: Vec::new(),
        next: None,
    };

    /// Asserts that `call`, answered 200 by `server` with `body` (not the provider's list),
    /// is final: `Rejected { status: 200 }` with a message containing `says`.
    pub(crate) async fn assert_unreadable<'c>(
        server: &MockServer,
        call: impl Fn() -> BoxFuture<'c, Result<Page, ProviderApiError>>,
        body: &str,
        says: &str,
    ) {
        server.reset().await;
        Mock::given(any())
            .respond_with(ResponseTemplate::new(200).set_body_string(body))
            .expect(1)
            .mount(server)
            .await;
        match call().await {
            Err(ProviderApiError::Rejected {
                status: 200,
                message,
            }) => assert!(message.contains(says), "{message}"),
            other => panic!("{body}: expected Rejected 200, got {other:?}"),
        }
        server.verify().await;
    }

    /// Normalizes a rendered record with the provider's webhook normalizer, as the worker
    /// will: the record must be a payload the provider's adapter accepts.
    pub(crate) fn normalize_with(kind: ProviderKind, record: &Record) -> Vec<CanonicalEvent> {
        let settings: SourceSettings = serde_json::from_value(serde_json::json!({
            "id": "src",
            "provider": kind.as_str(),
            "secrets": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_c2VjcmV0"],
            "basic_auth": { "username": "u", "password": "p" },
        }))
        .expect("settings");
        let source = Source::new(&settings).expect("source");
        let envelope = Envelope {
            source_id: "src".to_owned(),
            provider: kind,
            event_id: format!("sync:{}", record.key),
            received_at: SystemTime::now().into(),
            content_type: Some("application/json".to_owned()),
            headers: record.headers.clone(),
            body: record.body.clone().into(),
        };
        match source.normalize(&envelope) {
            Ok(normalized) => normalized.events,
            Err(e) => panic!("{} does not normalize: {e}", record.key),
        }
    }
}
