//! Provider retry clients: one call that asks a provider to charge a failed billing cycle
//! again. Every call carries the deterministic idempotency key of its retry, so a crash
//! between the call and its commit never charges twice: the provider answers the repeat
//! with the first call's result. Exceptions: Appstle's API has no idempotency header (the
//! scheduler never sends a second retry while one is in flight), and Polar's guard is its
//! 409 `PaymentAlreadyInProgress` (the header is sent but not documented as honoured).
//!
//! PayNow and Rebilly retry on their side (subsync tracks their `next_attempt_at` and
//! count), and the generic schemes have no API: for them there is no client.

use std::time::Duration;

use futures_util::future::BoxFuture;
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

use crate::config::{ApiSettings, ProviderKind};

mod appstle;
mod polar;
mod shopify;
mod stripe;

pub use appstle::AppstleClient;
pub use polar::PolarClient;
pub use shopify::ShopifyClient;
pub use stripe::StripeClient;

/// What to retry. Ids are the ledger's: `cycle_id` is the Stripe invoice, the Polar order;
/// `attempt_id` the Appstle billing attempt; `subscription_id` the Shopify contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryCall {
    pub attempt_id: String,
    pub cycle_id: Option<String>,
    pub subscription_id: Option<String>,
    /// Deterministic: derived from (source, cycle, retry number).
    pub idempotency_key: String,
}

/// What the provider said about the retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// Charged now (Stripe invoice paid, Polar `succeeded`).
    Charged,
    /// Accepted; the result arrives later by webhook or polling (Appstle, Shopify).
    Accepted,
    /// The customer must complete a challenge (3-D Secure).
    RequiresAction,
    /// Declined now, with the provider's code and message.
    Declined {
        code: Option<String>,
        message: Option<String>,
    },
    /// A payment for this cycle is already in progress (Polar 409, Stripe idempotency
    /// conflict): do not send another; the outcome arrives by webhook.
    InProgress,
    /// Nothing to retry: already paid, voided, or not eligible (Polar 422).
    NotEligible(String),
}

/// Why a call did not get an answer about the payment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// 429 (or a GraphQL `THROTTLED`): wait at least `retry_after` when given.
    #[error("rate limited")]
    RateLimited { retry_after: Option<Duration> },
    /// 5xx, timeout, connection failure: retry the same call (same key) on a backoff.
    #[error("transient: {0}")]
    Transient(String),
    /// Any other 4xx: final for this try.
    #[error("rejected with {status}: {message}")]
    Rejected { status: u16, message: String },
}

pub trait RetryClient: Send + Sync {
    fn retry<'a>(&'a self, call: &'a RetryCall) -> BoxFuture<'a, Result<CallOutcome, CallError>>;
}

/// The client of a provider that takes retries through its API, or `None`.
pub fn client_for(
    kind: ProviderKind,
    api: &ApiSettings,
    http: reqwest::Client,
) -> Option<Box<dyn RetryClient>> {
    match kind {
        ProviderKind::Stripe => Some(Box::new(StripeClient::new(api, http))),
        ProviderKind::Shopify => Some(Box::new(ShopifyClient::new(api, http))),
        ProviderKind::Appstle => Some(Box::new(AppstleClient::new(api, http))),
        ProviderKind::Polar => Some(Box::new(PolarClient::new(api, http))),
        ProviderKind::Paynow
        | ProviderKind::Rebilly
        | ProviderKind::Standard
        | ProviderKind::Svix
        | ProviderKind::Hmac => None,
    }
}

/// The configured base URL without its trailing `/`.
fn trim_base(base_url: &str) -> String {
    base_url.trim_end_matches('/').to_owned()
}

/// `base` plus `segments`, each percent-encoded as one path segment (an id can never add a
/// path, query or fragment). An unusable base is final for the call.
fn endpoint(base: &str, segments: &[&str]) -> Result<reqwest::Url, CallError> {
    let invalid = || CallError::Rejected {
        status: 0,
        message: "invalid api.base_url".to_owned(),
    };
    let mut url = reqwest::Url::parse(base).map_err(|_| invalid())?;
    url.path_segments_mut()
        .map_err(|_| invalid())?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// A header value carrying a credential, marked sensitive so no debug output shows it. The
/// error never echoes the value.
fn secret_header(value: &str) -> Result<HeaderValue, CallError> {
    let mut header = HeaderValue::from_str(value).map_err(|_| CallError::Rejected {
        status: 0,
        message: "api.token is not a valid header value".to_owned(),
    })?;
    header.set_sensitive(true);
    Ok(header)
}

/// A required, non-empty id of the call; without it the call is final and nothing is sent.
fn required<'a>(value: Option<&'a str>, what: &str) -> Result<&'a str, CallError> {
    value.filter(|v| !v.is_empty()).ok_or_else(|| missing(what))
}

/// A required setting or id the call lacks: final, nothing was sent.
fn missing(what: &str) -> CallError {
    CallError::Rejected {
        status: 0,
        message: format!("missing {what}"),
    }
}

/// Sends a request with its own timeout and reads the answer: status, `Retry-After`, body.
/// No HTTP answer at all is transient (the same call, same key, may be sent again).
async fn exchange(
    request: reqwest::RequestBuilder,
) -> Result<(reqwest::StatusCode, Option<Duration>, String), CallError> {
    let response = request.send().await.map_err(transport)?;
    let status = response.status();
    let wait = retry_after(response.headers());
    let body = response.text().await.map_err(transport)?;
    Ok((status, wait, body))
}

/// `Retry-After` in seconds (the HTTP-date form is not used by these providers).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let secs: f64 = value.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// A request that got no HTTP answer (timeout, connection failure, broken body): the same
/// call, with the same key, may be sent again.
fn transport(err: reqwest::Error) -> CallError {
    let kind = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connect error"
    } else {
        "request error"
    };
    CallError::Transient(format!("{kind}: {}", err.without_url()))
}

/// A 401/403: the provider's body is not echoed (some echo the credential back).
fn auth_failed(status: u16) -> CallError {
    CallError::Rejected {
        status,
        message: "authentication failed: check api.token".to_owned(),
    }
}

/// At most 300 characters of a provider's text, for messages.
fn snippet(text: &str) -> String {
    const MAX: usize = 300;
    let text = text.trim();
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    fn api() -> ApiSettings {
        ApiSettings {
            base_url: "http://127.0.0.1:9/".to_owned(),
            token: SecretString::from("tok"),
            api_version: None,
            payment_method_id: Some("pm".to_owned()),
            timeout_ms: 1_000,
        }
    }

    #[test]
    fn client_for_covers_the_api_providers_only() {
        let http = reqwest::Client::new();
        for kind in [
            ProviderKind::Stripe,
            ProviderKind::Shopify,
            ProviderKind::Appstle,
            ProviderKind::Polar,
        ] {
            assert!(client_for(kind, &api(), http.clone()).is_some(), "{kind:?}");
        }
        for kind in [
            ProviderKind::Paynow,
            ProviderKind::Rebilly,
            ProviderKind::Standard,
            ProviderKind::Svix,
            ProviderKind::Hmac,
        ] {
            assert!(client_for(kind, &api(), http.clone()).is_none(), "{kind:?}");
        }
    }

    #[test]
    fn endpoint_trims_and_encodes() {
        let url = endpoint(&trim_base("http://h/p/"), &["v1", "a/b?c"]).unwrap();
        assert_eq!(url.as_str(), "http://h/p/v1/a%2Fb%3Fc");
        let url = endpoint("http://h", &["x"]).unwrap();
        assert_eq!(url.as_str(), "http://h/x");
        assert!(matches!(
            endpoint("not a url", &["x"]),
            Err(CallError::Rejected { status: 0, .. })
        ));
    }

    #[test]
    fn retry_after_parses_seconds() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn snippet_truncates_on_char_boundaries() {
        assert_eq!(snippet("  short "), "short");
        let long = "é".repeat(400);
        assert_eq!(snippet(&long).chars().count(), 303);
    }
}
