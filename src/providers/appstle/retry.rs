//! Appstle: `PUT /api/external/v2/subscription-billing-attempts/attempt-billing/{id}`
//! ("Retry billing for failed attempt"). Asynchronous: 200 means queued, not paid; the
//! result arrives by the `subscription.billing-success|failure` webhook.
//!
//! Appstle's API has no idempotency header, so `RetryCall::idempotency_key` is not sent.
//! A repeat is avoided by the scheduler instead: it never sends a second retry while one
//! is in flight. Appstle allows at most 5 attempts per contract per hour (then 429).

use std::time::Duration;

use futures_util::future::BoxFuture;
use reqwest::header::HeaderName;
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use crate::config::ApiSettings;
use crate::providers::contract::{CallOutcome, RetryCall, RetryClient};
use crate::providers::http::{
    Credential, Endpoint, ProviderApiError, auth_failed, exchange, missing, snippet,
};

/// Triggers billing of an Appstle billing attempt (`RetryCall::attempt_id`).
pub struct AppstleClient {
    api: Endpoint,
}

impl AppstleClient {
    pub fn new(api: &ApiSettings, http: crate::providers::http::ProviderHttp) -> Self {
        let key = Credential::Header(HeaderName::from_static("x-api-key"));
        Self {
            api: Endpoint::new(api, http, key),
        }
    }

    async fn attempt(&self, call: &RetryCall) -> Result<CallOutcome, ProviderApiError> {
        if call.attempt_id.is_empty() {
            return Err(missing("attempt_id (Appstle billing attempt id)"));
        }
        let request = self.api.request(
            Method::PUT,
            &[
                "api",
                "external",
                "v2",
                "subscription-billing-attempts",
                "attempt-billing",
                &call.attempt_id,
            ],
        )?;
        let (status, wait, body) = exchange(request, self.api.answer_cap()).await?;
        classify(status, wait, &body)
    }
}

impl RetryClient for AppstleClient {
    fn retry<'a>(
        &'a self,
        call: &'a RetryCall,
    ) -> BoxFuture<'a, Result<CallOutcome, ProviderApiError>> {
        Box::pin(async move { self.attempt(call).await })
    }
}

/// Appstle's (JHipster) error body; any of these may be present.
#[derive(Deserialize, Default)]
struct ErrorBody {
    detail: Option<String>,
    message: Option<String>,
    title: Option<String>,
}

fn classify(
    status: StatusCode,
    wait: Option<Duration>,
    body: &str,
) -> Result<CallOutcome, ProviderApiError> {
    let code = status.as_u16();
    if status.is_success() {
        return Ok(CallOutcome::Accepted);
    }
    if status.is_server_error() {
        return Err(ProviderApiError::Transient(format!("appstle {code}")));
    }
    match code {
        429 => Err(ProviderApiError::RateLimited { retry_after: wait }),
        401 | 403 => Err(auth_failed(code)),
        _ => {
            let error: ErrorBody = serde_json::from_str(body).unwrap_or_default();
            let message = error
                .detail
                .or(error.message)
                .or(error.title)
                .map(|m| snippet(&m))
                .unwrap_or_else(|| snippet(body));
            Err(ProviderApiError::Rejected {
                status: code,
                message,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use wiremock::matchers::{header, header_exists, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::providers::testing::api_settings;

    const TOKEN: &str = "apst_secret123";
    const ROUTE: &str = "/api/external/v2/subscription-billing-attempts/attempt-billing/98765";

    fn client(server: &MockServer, timeout_ms: u64) -> AppstleClient {
        let api = ApiSettings {
            timeout_ms,
            ..api_settings(format!("{}/", server.uri()), TOKEN)
        };
        AppstleClient::new(&api, crate::providers::http::http_client().unwrap())
    }

    fn call() -> RetryCall {
        RetryCall {
            attempt_id: "98765".into(),
            cycle_id: None,
            subscription_id: Some("gid://shopify/SubscriptionContract/1".into()),
            idempotency_key: "subsync-appstle-98765-r1".into(),
        }
    }

    async fn answer(response: ResponseTemplate) -> Result<CallOutcome, ProviderApiError> {
        let server = MockServer::start().await;
        Mock::given(method("PUT"))
            .and(path(ROUTE))
            .and(header("x-api-key", TOKEN))
            .respond_with(response)
            .expect(1)
            .mount(&server)
            .await;
        // Nothing else is called, and no idempotency header is invented.
        Mock::given(header_exists("idempotency-key"))
            .respond_with(ResponseTemplate::new(599))
            .expect(0)
            .mount(&server)
            .await;
        client(&server, 2_000).retry(&call()).await
    }

    #[tokio::test]
    async fn queued_is_accepted() {
        let queued =
            ResponseTemplate::new(200).set_body_json(json!({"id": 98765, "status": "QUEUED"}));
        assert_eq!(answer(queued).await, Ok(CallOutcome::Accepted));
    }

    #[tokio::test]
    async fn bad_request_is_rejected_with_the_reason() {
        let detail = "Immediate place order is not enabled for this shop";
        let refused = ResponseTemplate::new(400)
            .set_body_json(json!({"title": "Bad Request", "status": 400, "detail": detail}));
        assert_eq!(
            answer(refused).await,
            Err(ProviderApiError::Rejected {
                status: 400,
                message: detail.into()
            })
        );
        let not_found = ResponseTemplate::new(404).set_body_string("no such attempt");
        assert_eq!(
            answer(not_found).await,
            Err(ProviderApiError::Rejected {
                status: 404,
                message: "no such attempt".into()
            })
        );
    }

    #[tokio::test]
    async fn hourly_limit_is_rate_limited() {
        let limited = ResponseTemplate::new(429).insert_header("Retry-After", "1800");
        assert_eq!(
            answer(limited).await,
            Err(ProviderApiError::RateLimited {
                retry_after: Some(Duration::from_secs(1800))
            })
        );
        assert_eq!(
            answer(ResponseTemplate::new(429)).await,
            Err(ProviderApiError::RateLimited { retry_after: None })
        );
    }

    #[tokio::test]
    async fn server_errors_and_timeouts_are_transient() {
        assert!(matches!(
            answer(ResponseTemplate::new(500)).await,
            Err(ProviderApiError::Transient(_))
        ));
        let server = MockServer::start().await;
        Mock::given(method("PUT"))
            .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(500)))
            .mount(&server)
            .await;
        let result = client(&server, 50).retry(&call()).await;
        assert!(matches!(result, Err(ProviderApiError::Transient(m)) if m.starts_with("timeout")));
    }

    #[tokio::test]
    async fn unauthorized_never_echoes_the_key() {
        let echo = ResponseTemplate::new(401).set_body_string(format!("invalid api key {TOKEN}"));
        match answer(echo).await {
            Err(ProviderApiError::Rejected {
                status: 401,
                message,
            }) => assert!(!message.contains(TOKEN)),
            other => panic!("unexpected {other:?}"),
        }
    }
}
