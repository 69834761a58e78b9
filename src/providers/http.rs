//! Plumbing shared by the provider API clients (dunning retries, pull sync): URLs built
//! from safe path segments, credential headers marked sensitive, one request/answer
//! exchange with its own timeout, `Retry-After`, and errors that never echo a credential.
//!
//! A provider API is on the other side of a trust boundary: a hostile or broken one must
//! cost one call (or one sync run), never a task or the process. So every client is built
//! by [`http_client`] (redirects are never followed: a redirect would carry the credential
//! header to a host nobody configured), every answer is read with a byte cap
//! ([`body`]) under the call's timeout, and every wait a provider asks for is bounded
//! ([`wait`]).

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, LOCATION};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};

use crate::config::ApiSettings;

mod body;
mod wait;

pub(crate) use body::Cap;
pub use wait::MAX_RETRY_WAIT;
pub(crate) use wait::{bound_secs, retry_after};

/// Why a provider API request did not get a usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderApiError {
    /// 429 (or a GraphQL `THROTTLED`): wait at least `retry_after` when given (at most
    /// [`MAX_RETRY_WAIT`]).
    #[error("rate limited")]
    RateLimited { retry_after: Option<Duration> },
    /// 5xx, timeout, connection failure, an answer too large to read: retry the same call
    /// (same key) on a backoff.
    #[error("transient: {0}")]
    Transient(String),
    /// Any other 4xx, a redirect: final for this try.
    #[error("rejected with {status}: {message}")]
    Rejected { status: u16, message: String },
}

/// The HTTP client of the provider APIs. Only [`http_client`] makes one, so no client can
/// be built that follows redirects.
#[derive(Debug, Clone)]
pub struct ProviderHttp(reqwest::Client);

/// The one way to build the HTTP client of the provider APIs: redirects are not followed
/// (a 3xx becomes a final error, see [`redirected`]).
pub fn http_client() -> Result<ProviderHttp, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map(ProviderHttp)
}

/// How a provider API takes its token.
#[derive(Debug, Clone)]
pub(crate) enum Credential {
    /// `Authorization: <scheme> <token>` (`Bearer`, PayNow's `APIKey`).
    Authorization(&'static str),
    /// The bare token as the value of the provider's own header (`X-API-Key`, ...).
    Header(HeaderName),
}

/// One configured provider API: the HTTP client, the base URL (without its trailing `/`),
/// the token with the way it is sent, the per-call timeout (`api.timeout_ms`) and the cap
/// on a call's answer (`api.max_answer_bytes`).
pub(crate) struct Endpoint {
    http: reqwest::Client,
    base_url: String,
    token: SecretString,
    credential: Credential,
    timeout: Duration,
    answer_cap: Cap,
}

impl Endpoint {
    pub(crate) fn new(api: &ApiSettings, http: ProviderHttp, credential: Credential) -> Self {
        Self {
            http: http.0,
            base_url: trim_base(&api.base_url),
            token: api.token.clone(),
            credential,
            timeout: Duration::from_millis(api.timeout_ms),
            answer_cap: Cap::answer(api.max_answer_bytes),
        }
    }

    /// The cap on the answer of a call (see [`exchange`]).
    pub(crate) fn answer_cap(&self) -> Cap {
        self.answer_cap
    }

    /// A request to the base URL plus `segments` (see [`endpoint`]), with the call's timeout
    /// and the token in its header. An unusable base URL or token is final: nothing is sent.
    pub(crate) fn request(
        &self,
        method: Method,
        segments: &[&str],
    ) -> Result<RequestBuilder, ProviderApiError> {
        let url = endpoint(&self.base_url, segments)?;
        let token = self.token.expose_secret();
        let (name, value) = match &self.credential {
            Credential::Authorization(scheme) => {
                (AUTHORIZATION, secret_header(&format!("{scheme} {token}"))?)
            }
            Credential::Header(name) => (name.clone(), secret_header(token)?),
        };
        // The timeout covers the whole exchange, body included (see `body::read_capped`).
        Ok(self
            .http
            .request(method, url)
            .timeout(self.timeout)
            .header(name, value))
    }
}

/// The configured base URL without its trailing `/`.
fn trim_base(base_url: &str) -> String {
    base_url.trim_end_matches('/').to_owned()
}

/// `base` plus `segments`, each percent-encoded as one path segment (an id can never add a
/// path, query or fragment). An unusable base is final for the call.
fn endpoint(base: &str, segments: &[&str]) -> Result<reqwest::Url, ProviderApiError> {
    let invalid = || ProviderApiError::Rejected {
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
fn secret_header(value: &str) -> Result<HeaderValue, ProviderApiError> {
    let mut header = HeaderValue::from_str(value).map_err(|_| ProviderApiError::Rejected {
        status: 0,
        message: "api.token is not a valid header value".to_owned(),
    })?;
    header.set_sensitive(true);
    Ok(header)
}

/// A required, non-empty id of the call; without it the call is final and nothing is sent.
pub(crate) fn required<'a>(
    value: Option<&'a str>,
    what: &str,
) -> Result<&'a str, ProviderApiError> {
    value.filter(|v| !v.is_empty()).ok_or_else(|| missing(what))
}

/// A required setting or id the call lacks: final, nothing was sent.
pub(crate) fn missing(what: &str) -> ProviderApiError {
    ProviderApiError::Rejected {
        status: 0,
        message: format!("missing {what}"),
    }
}

/// Sends a request with its own timeout and reads the answer: status, `Retry-After`, body
/// (at most `cap`). No HTTP answer at all is transient (the same call, same key, may be
/// sent again), and so is an answer past the cap: its outcome is unknown. A redirect is
/// final (see [`redirected`]).
pub(crate) async fn exchange(
    request: RequestBuilder,
    cap: Cap,
) -> Result<(StatusCode, Option<Duration>, String), ProviderApiError> {
    let response = request.send().await.map_err(transport)?;
    let status = response.status();
    if status.is_redirection() {
        return Err(redirected(&response));
    }
    let wait = retry_after(response.headers());
    let body = body::read_capped(response, cap)
        .await
        .map_err(|e| match e {
            body::BodyError::Transport(e) => transport(e),
            too_large => {
                ProviderApiError::Transient(format!("{too_large}; the outcome is unknown"))
            }
        })?;
    Ok((status, wait, body))
}

/// A provider's successful answer to a read, in full.
pub(crate) struct Answer {
    pub(crate) headers: HeaderMap,
    pub(crate) body: String,
}

/// Sends a read (a list page) and maps an unsuccessful answer to its error: 429 is
/// `RateLimited` (with `Retry-After`), 5xx `Transient`, 401/403 an authentication failure
/// (the body is not echoed), a redirect or a successful answer past `cap` final
/// (`Rejected`), any other status `Rejected` with a snippet of the body.
pub(crate) async fn read(
    request: RequestBuilder,
    provider: &str,
    cap: Cap,
) -> Result<Answer, ProviderApiError> {
    let response = request.send().await.map_err(transport)?;
    let status = response.status();
    if status.is_redirection() {
        return Err(redirected(&response));
    }
    let headers = response.headers().clone();
    let body = match body::read_capped(response, cap).await {
        Ok(body) => body,
        Err(body::BodyError::Transport(e)) => return Err(transport(e)),
        Err(too_large) if status.is_success() => {
            return Err(ProviderApiError::Rejected {
                status: status.as_u16(),
                message: too_large.to_string(),
            });
        }
        // An unsuccessful answer's body is only read for a message: its status decides.
        Err(too_large) => too_large.to_string(),
    };
    match status {
        s if s.is_success() => Ok(Answer { headers, body }),
        StatusCode::TOO_MANY_REQUESTS => Err(ProviderApiError::RateLimited {
            retry_after: retry_after(&headers),
        }),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(auth_failed(status.as_u16())),
        s if s.is_server_error() => Err(ProviderApiError::Transient(format!(
            "{provider} answered {s}"
        ))),
        s => Err(ProviderApiError::Rejected {
            status: s.as_u16(),
            message: snippet(&body),
        }),
    }
}

/// A 3xx answer: final, naming only the host it points to (never the rest of the
/// `Location`, which could carry anything, nor our request's URL or headers).
fn redirected(response: &Response) -> ProviderApiError {
    let host = (response.headers().get(LOCATION))
        .and_then(|l| l.to_str().ok())
        .and_then(|l| response.url().join(l).ok())
        .and_then(|u| u.host_str().map(str::to_owned));
    let message = match host {
        Some(host) => format!("redirect to {host} not followed"),
        None => "redirect (without a usable Location) not followed".to_owned(),
    };
    ProviderApiError::Rejected {
        status: response.status().as_u16(),
        message,
    }
}

/// A request that got no HTTP answer (timeout, connection failure, broken body): the same
/// call, with the same key, may be sent again.
pub(crate) fn transport(err: reqwest::Error) -> ProviderApiError {
    let kind = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connect error"
    } else {
        "request error"
    };
    ProviderApiError::Transient(format!("{kind}: {}", err.without_url()))
}

/// A 401/403: the provider's body is not echoed (some echo the credential back).
pub(crate) fn auth_failed(status: u16) -> ProviderApiError {
    ProviderApiError::Rejected {
        status,
        message: "authentication failed: check api.token".to_owned(),
    }
}

/// At most 300 characters of a provider's text, for messages.
pub(crate) fn snippet(text: &str) -> String {
    const MAX: usize = 300;
    let text = text.trim();
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
pub(crate) mod tests;
