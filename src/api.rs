//! Plumbing shared by the provider API clients (dunning retries, pull sync): URLs built
//! from safe path segments, credential headers marked sensitive, one request/answer
//! exchange with its own timeout, `Retry-After`, and errors that never echo a credential.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

/// Why a provider API request did not get a usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
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

/// The configured base URL without its trailing `/`.
pub(crate) fn trim_base(base_url: &str) -> String {
    base_url.trim_end_matches('/').to_owned()
}

/// `base` plus `segments`, each percent-encoded as one path segment (an id can never add a
/// path, query or fragment). An unusable base is final for the call.
pub(crate) fn endpoint(base: &str, segments: &[&str]) -> Result<reqwest::Url, ApiError> {
    let invalid = || ApiError::Rejected {
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
pub(crate) fn secret_header(value: &str) -> Result<HeaderValue, ApiError> {
    let mut header = HeaderValue::from_str(value).map_err(|_| ApiError::Rejected {
        status: 0,
        message: "api.token is not a valid header value".to_owned(),
    })?;
    header.set_sensitive(true);
    Ok(header)
}

/// A required, non-empty id of the call; without it the call is final and nothing is sent.
pub(crate) fn required<'a>(value: Option<&'a str>, what: &str) -> Result<&'a str, ApiError> {
    value.filter(|v| !v.is_empty()).ok_or_else(|| missing(what))
}

/// A required setting or id the call lacks: final, nothing was sent.
pub(crate) fn missing(what: &str) -> ApiError {
    ApiError::Rejected {
        status: 0,
        message: format!("missing {what}"),
    }
}

/// Sends a request with its own timeout and reads the answer: status, `Retry-After`, body.
/// No HTTP answer at all is transient (the same call, same key, may be sent again).
pub(crate) async fn exchange(
    request: reqwest::RequestBuilder,
) -> Result<(reqwest::StatusCode, Option<Duration>, String), ApiError> {
    let response = request.send().await.map_err(transport)?;
    let status = response.status();
    let wait = retry_after(response.headers());
    let body = response.text().await.map_err(transport)?;
    Ok((status, wait, body))
}

/// A provider's successful answer to a read, in full.
pub(crate) struct Answer {
    pub(crate) headers: HeaderMap,
    pub(crate) body: String,
}

/// Sends a read (a list page) and maps an unsuccessful answer to its error: 429 is
/// `RateLimited` (with `Retry-After`), 5xx `Transient`, 401/403 an authentication failure
/// (the body is not echoed), any other status `Rejected` with a snippet of the body.
pub(crate) async fn read(
    request: reqwest::RequestBuilder,
    provider: &str,
) -> Result<Answer, ApiError> {
    let response = request.send().await.map_err(transport)?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.text().await.map_err(transport)?;
    match status {
        s if s.is_success() => Ok(Answer { headers, body }),
        StatusCode::TOO_MANY_REQUESTS => Err(ApiError::RateLimited {
            retry_after: retry_after(&headers),
        }),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(auth_failed(status.as_u16())),
        s if s.is_server_error() => Err(ApiError::Transient(format!("{provider} answered {s}"))),
        s => Err(ApiError::Rejected {
            status: s.as_u16(),
            message: snippet(&body),
        }),
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by these providers).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let secs: f64 = value.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// A request that got no HTTP answer (timeout, connection failure, broken body): the same
/// call, with the same key, may be sent again.
pub(crate) fn transport(err: reqwest::Error) -> ApiError {
    let kind = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connect error"
    } else {
        "request error"
    };
    ApiError::Transient(format!("{kind}: {}", err.without_url()))
}

/// A 401/403: the provider's body is not echoed (some echo the credential back).
pub(crate) fn auth_failed(status: u16) -> ApiError {
    ApiError::Rejected {
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
mod tests {
    use super::*;

    #[test]
    fn endpoint_trims_and_encodes() {
        let url = endpoint(&trim_base("http://h/p/"), &["v1", "a/b?c"]).unwrap();
        assert_eq!(url.as_str(), "http://h/p/v1/a%2Fb%3Fc");
        let url = endpoint("http://h", &["x"]).unwrap();
        assert_eq!(url.as_str(), "http://h/x");
        assert!(matches!(
            endpoint("not a url", &["x"]),
            Err(ApiError::Rejected { status: 0, .. })
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
