//! Plumbing shared by the provider API clients (dunning retries, pull sync): URLs built
//! from safe path segments, credential headers marked sensitive, one request/answer
//! exchange with its own timeout, `Retry-After`, and errors that never echo a credential.

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, StatusCode};
use secrecy::{ExposeSecret, SecretString};

use crate::config::ApiSettings;

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

/// How a provider API takes its token.
#[derive(Debug, Clone)]
pub(crate) enum Credential {
    /// `Authorization: <scheme> <token>` (`Bearer`, PayNow's `APIKey`).
    Authorization(&'static str),
    /// The bare token as the value of the provider's own header (`X-API-Key`, ...).
    Header(HeaderName),
}

/// One configured provider API: the HTTP client, the base URL (without its trailing `/`),
/// the token with the way it is sent, and the per-call timeout (`api.timeout_ms`).
pub(crate) struct Endpoint {
    http: reqwest::Client,
    base_url: String,
    token: SecretString,
    credential: Credential,
    timeout: Duration,
}

impl Endpoint {
    pub(crate) fn new(api: &ApiSettings, http: reqwest::Client, credential: Credential) -> Self {
        Self {
            http,
            base_url: trim_base(&api.base_url),
            token: api.token.clone(),
            credential,
            timeout: Duration::from_millis(api.timeout_ms),
        }
    }

    /// A request to the base URL plus `segments` (see [`endpoint`]), with the call's timeout
    /// and the token in its header. An unusable base URL or token is final: nothing is sent.
    pub(crate) fn request(
        &self,
        method: Method,
        segments: &[&str],
    ) -> Result<RequestBuilder, ApiError> {
        let url = endpoint(&self.base_url, segments)?;
        let token = self.token.expose_secret();
        let (name, value) = match &self.credential {
            Credential::Authorization(scheme) => {
                (AUTHORIZATION, secret_header(&format!("{scheme} {token}"))?)
            }
            Credential::Header(name) => (name.clone(), secret_header(token)?),
        };
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
fn endpoint(base: &str, segments: &[&str]) -> Result<reqwest::Url, ApiError> {
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
fn secret_header(value: &str) -> Result<HeaderValue, ApiError> {
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
pub(crate) mod tests {
    use std::fmt::Debug;

    use futures_util::future::BoxFuture;
    use wiremock::matchers::{any, header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;

    /// The settings of a provider API at `base_url` with `token`: no provider-specific
    /// field, a 2 s timeout.
    pub(crate) fn api_settings(base_url: impl Into<String>, token: &str) -> ApiSettings {
        ApiSettings {
            base_url: base_url.into(),
            token: SecretString::from(token),
            api_version: None,
            payment_method_id: None,
            store_id: None,
            timeout_ms: 2_000,
        }
    }

    /// Asserts that `call`, answered by `server` with each unsuccessful status in turn,
    /// fails as [`read`] maps it: 429 is `RateLimited` with the `Retry-After`, 5xx
    /// `Transient`, 401/403 `Rejected` without echoing `token` (which the body carries), any
    /// other 4xx `Rejected` with the body. Each status is answered to exactly one request;
    /// the server is reset before each.
    pub(crate) async fn assert_errors_map<'c, T: Debug>(
        server: &MockServer,
        call: impl Fn() -> BoxFuture<'c, Result<T, ApiError>>,
        token: &str,
    ) {
        let echo = format!("{{\"message\": \"invalid key {token}\"}}");
        let problem = r#"{"title": "Bad Request", "detail": "no such field"}"#;
        for status in [429, 500, 502, 503, 401, 403, 400, 404, 422] {
            let body = if matches!(status, 401 | 403) {
                echo.as_str()
            } else {
                problem
            };
            server.reset().await;
            Mock::given(any())
                .respond_with(
                    ResponseTemplate::new(status)
                        .insert_header("retry-after", "3")
                        .set_body_string(body),
                )
                .expect(1)
                .mount(server)
                .await;
            let result = call().await;
            server.verify().await;
            match (status, result) {
                (429, Err(ApiError::RateLimited { retry_after })) => {
                    assert_eq!(retry_after, Some(Duration::from_secs(3)))
                }
                (500.., Err(ApiError::Transient(_))) => {}
                (401 | 403, Err(ApiError::Rejected { status: s, message })) => {
                    assert_eq!(s, status);
                    assert!(!message.contains(token), "the token is echoed: {message}");
                }
                (_, Err(ApiError::Rejected { status: s, message })) if s == status => {
                    assert_eq!(message, problem)
                }
                (status, other) => panic!("{status}: unexpected {other:?}"),
            }
        }
        server.reset().await;
    }

    #[tokio::test]
    async fn read_maps_answers_to_api_errors() {
        let server = MockServer::start().await;
        let settings = api_settings(server.uri(), "tok_secret");
        let bearer = Credential::Authorization("Bearer");
        let api = Endpoint::new(&settings, reqwest::Client::new(), bearer);
        let call = || -> BoxFuture<'_, Result<String, ApiError>> {
            Box::pin(async {
                let request = api.request(Method::GET, &["list"])?;
                Ok(read(request, "Provider").await?.body)
            })
        };
        assert_errors_map(&server, call, "tok_secret").await;

        let answers = [
            (
                ResponseTemplate::new(200).set_body_string(" [1] "),
                Ok(" [1] ".to_owned()),
            ),
            (
                ResponseTemplate::new(429),
                Err(ApiError::RateLimited { retry_after: None }),
            ),
            (
                ResponseTemplate::new(503),
                Err(ApiError::Transient(
                    "Provider answered 503 Service Unavailable".to_owned(),
                )),
            ),
        ];
        for (answer, expected) in answers {
            server.reset().await;
            Mock::given(any()).respond_with(answer).mount(&server).await;
            assert_eq!(call().await, expected);
        }

        server.reset().await;
        let slow = ResponseTemplate::new(200).set_delay(Duration::from_millis(500));
        Mock::given(any()).respond_with(slow).mount(&server).await;
        let settings = ApiSettings {
            timeout_ms: 50,
            ..settings
        };
        let api = Endpoint::new(
            &settings,
            reqwest::Client::new(),
            Credential::Authorization("Bearer"),
        );
        let result = read(api.request(Method::GET, &["list"]).unwrap(), "Provider").await;
        assert!(matches!(result, Err(ApiError::Transient(m)) if m.starts_with("timeout")));
    }

    #[tokio::test]
    async fn endpoint_requests_carry_the_token_in_its_header() {
        let server = MockServer::start().await;
        Mock::given(method("PUT"))
            .and(path("/base/v1/a%2Fb"))
            .and(header("authorization", "APIKey k1"))
            .respond_with(ResponseTemplate::new(204))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/base/v1"))
            .and(header("x-api-key", "k2"))
            .respond_with(ResponseTemplate::new(204))
            .expect(1)
            .mount(&server)
            .await;
        let base = format!("{}/base/", server.uri());
        let http = reqwest::Client::new();
        let scheme = Endpoint::new(
            &api_settings(base.as_str(), "k1"),
            http.clone(),
            Credential::Authorization("APIKey"),
        );
        let request = scheme.request(Method::PUT, &["v1", "a/b"]).unwrap();
        assert_eq!(request.send().await.unwrap().status(), 204);
        let own = Credential::Header(HeaderName::from_static("x-api-key"));
        let own = Endpoint::new(&api_settings(base.as_str(), "k2"), http.clone(), own);
        let request = own.request(Method::GET, &["v1"]).unwrap();
        assert_eq!(request.send().await.unwrap().status(), 204);

        // A token that is no header value is final, and never echoed.
        let bad = Endpoint::new(
            &api_settings(base, "k\n3"),
            http,
            Credential::Authorization("Bearer"),
        );
        match bad.request(Method::GET, &["v1"]) {
            Err(ApiError::Rejected { status: 0, message }) => assert!(!message.contains("k\n3")),
            other => panic!("unexpected {:?}", other.map(|_| ())),
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
