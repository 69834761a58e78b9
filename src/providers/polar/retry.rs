//! Polar: `POST /v1/customer-portal/orders/{order}/confirm-payment` ("Confirm Retry
//! Payment") with the saved payment method. Polar's guard against a double charge is its
//! 409 `PaymentAlreadyInProgress`; the `Idempotency-Key` header is sent as well but Polar
//! is not documented to honour it. The token is a Polar customer-session token.

use std::time::Duration;

use futures_util::future::BoxFuture;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::ApiSettings;
use crate::providers::contract::{CallOutcome, RetryCall, RetryClient};
use crate::providers::http::{
    Credential, Endpoint, ProviderApiError, auth_failed, exchange, missing, required, snippet,
};

/// Retries a failed Polar order (`RetryCall::cycle_id` = the order id).
pub struct PolarClient {
    api: Endpoint,
    payment_method_id: Option<String>,
}

impl PolarClient {
    pub fn new(api: &ApiSettings, http: crate::providers::http::ProviderHttp) -> Self {
        Self {
            payment_method_id: api.payment_method_id.clone(),
            api: Endpoint::new(api, http, Credential::Authorization("Bearer")),
        }
    }

    async fn confirm(&self, call: &RetryCall) -> Result<CallOutcome, ProviderApiError> {
        let order = required(call.cycle_id.as_deref(), "cycle_id (Polar order id)")?;
        let method = self
            .payment_method_id
            .as_deref()
            .filter(|id| !id.is_empty())
            .ok_or_else(|| missing("api.payment_method_id"))?;
        let request = self.api.request(
            Method::POST,
            &["v1", "customer-portal", "orders", order, "confirm-payment"],
        )?;
        // Exactly one of `payment_method_id` / `confirmation_token_id`: never both.
        let body = json!({ "payment_method_id": method, "payment_processor": "stripe" });
        let (status, wait, body) = exchange(
            request
                .header("Idempotency-Key", call.idempotency_key.as_str())
                .json(&body),
            self.api.answer_cap(),
        )
        .await?;
        classify(status, wait, &body)
    }
}

impl RetryClient for PolarClient {
    fn retry<'a>(
        &'a self,
        call: &'a RetryCall,
    ) -> BoxFuture<'a, Result<CallOutcome, ProviderApiError>> {
        Box::pin(async move { self.confirm(call).await })
    }
}

/// `CustomerOrderPaymentConfirmation`.
#[derive(Deserialize)]
struct Confirmation {
    status: String,
    error: Option<String>,
}

/// Polar's error body: `{"error": "<ErrorName>", "detail": "..."}` (validation errors carry
/// a list in `detail`).
#[derive(Deserialize, Default)]
struct ErrorBody {
    error: Option<String>,
    detail: Option<Value>,
}

fn classify(
    status: StatusCode,
    wait: Option<Duration>,
    body: &str,
) -> Result<CallOutcome, ProviderApiError> {
    let code = status.as_u16();
    if status.is_success() {
        let confirmation: Confirmation = serde_json::from_str(body).map_err(|_| {
            ProviderApiError::Transient(format!("unreadable confirmation ({code})"))
        })?;
        return match confirmation.status.as_str() {
            "succeeded" => Ok(CallOutcome::Charged),
            "requires_action" => Ok(CallOutcome::RequiresAction),
            "failed" => Ok(CallOutcome::Declined {
                code: None,
                message: confirmation.error,
            }),
            // Not returned by Polar's server today; the outcome would arrive by webhook.
            "processing" | "pending" => Ok(CallOutcome::InProgress),
            other => Err(ProviderApiError::Transient(format!(
                "unexpected confirmation status {}",
                snippet(other)
            ))),
        };
    }
    if status.is_server_error() {
        return Err(ProviderApiError::Transient(format!("polar {code}")));
    }
    let error: ErrorBody = serde_json::from_str(body).unwrap_or_default();
    let detail = match &error.detail {
        Some(Value::String(detail)) => Some(detail.clone()),
        _ => None,
    };
    let message = || {
        let name = error.error.as_deref().unwrap_or("error");
        match &detail {
            Some(detail) => format!("{name}: {detail}"),
            None => format!("{name}: {}", snippet(body)),
        }
    };
    match code {
        409 => Ok(CallOutcome::InProgress),
        // A validation error (list `detail`) is our request's fault, not the order's state.
        422 if error.error.as_deref() != Some("RequestValidationError") && detail.is_some() => {
            Ok(CallOutcome::NotEligible(detail.unwrap_or_default()))
        }
        429 => Err(ProviderApiError::RateLimited { retry_after: wait }),
        401 | 403 => Err(auth_failed(code)),
        _ => Err(ProviderApiError::Rejected {
            status: code,
            message: message(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use wiremock::matchers::{body_json, header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::providers::testing::api_settings;

    const TOKEN: &str = "polar_cst_secret123";
    const ORDER: &str = "8a4c1f0e-0000-4000-8000-000000000001";
    const METHOD: &str = "5b9d2e1f-0000-4000-8000-000000000002";

    fn client(server: &MockServer, method: Option<&str>, timeout_ms: u64) -> PolarClient {
        let api = ApiSettings {
            payment_method_id: method.map(str::to_owned),
            timeout_ms,
            ..api_settings(format!("{}/", server.uri()), TOKEN)
        };
        PolarClient::new(&api, crate::providers::http::http_client().unwrap())
    }

    fn call() -> RetryCall {
        RetryCall {
            attempt_id: "att_1".into(),
            cycle_id: Some(ORDER.into()),
            subscription_id: None,
            idempotency_key: "subsync-polar-r1".into(),
            previous_send_at: None,
        }
    }

    async fn answer(response: ResponseTemplate) -> Result<CallOutcome, ProviderApiError> {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(format!(
                "/v1/customer-portal/orders/{ORDER}/confirm-payment"
            )))
            .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
            .and(header("idempotency-key", "subsync-polar-r1"))
            // Exact body: the method id only, never a confirmation token as well.
            .and(body_json(
                json!({"payment_method_id": METHOD, "payment_processor": "stripe"}),
            ))
            .respond_with(response)
            .expect(1)
            .mount(&server)
            .await;
        client(&server, Some(METHOD), 2_000).retry(&call()).await
    }

    fn ok(body: serde_json::Value) -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json(body)
    }

    fn error(status: u16, name: &str, detail: &str) -> ResponseTemplate {
        ResponseTemplate::new(status).set_body_json(json!({"error": name, "detail": detail}))
    }

    #[tokio::test]
    async fn confirmation_statuses_map() {
        let succeeded = ok(json!({"status": "succeeded", "client_secret": null, "error": null}));
        assert_eq!(answer(succeeded).await, Ok(CallOutcome::Charged));
        let action = ok(
            json!({"status": "requires_action", "client_secret": "pi_1_secret_x", "error": null}),
        );
        assert_eq!(answer(action).await, Ok(CallOutcome::RequiresAction));
        let failed = ok(
            json!({"status": "failed", "client_secret": null, "error": "Your card was declined."}),
        );
        assert_eq!(
            answer(failed).await,
            Ok(CallOutcome::Declined {
                code: None,
                message: Some("Your card was declined.".into())
            })
        );
    }

    #[tokio::test]
    async fn not_found_is_rejected() {
        assert_eq!(
            answer(error(404, "ResourceNotFound", "Not found")).await,
            Err(ProviderApiError::Rejected {
                status: 404,
                message: "ResourceNotFound: Not found".into()
            })
        );
    }

    #[tokio::test]
    async fn payment_in_progress_is_in_progress() {
        let busy = error(
            409,
            "PaymentAlreadyInProgress",
            "Payment already in progress",
        );
        assert_eq!(answer(busy).await, Ok(CallOutcome::InProgress));
    }

    #[tokio::test]
    async fn not_eligible_carries_the_detail() {
        let detail = "Order is not eligible for retry";
        assert_eq!(
            answer(error(422, "OrderNotEligibleForRetry", detail)).await,
            Ok(CallOutcome::NotEligible(detail.into()))
        );
        let invalid = ResponseTemplate::new(422).set_body_json(
            json!({"error": "RequestValidationError", "detail": [{"loc": ["body"], "msg": "bad"}]}),
        );
        assert!(matches!(
            answer(invalid).await,
            Err(ProviderApiError::Rejected { status: 422, .. })
        ));
    }

    #[tokio::test]
    async fn retry_limit_is_rate_limited() {
        let limited = error(
            429,
            "ManualRetryLimitExceeded",
            "Maximum retry attempts exceeded",
        )
        .insert_header("Retry-After", "120");
        assert_eq!(
            answer(limited).await,
            Err(ProviderApiError::RateLimited {
                retry_after: Some(Duration::from_secs(120))
            })
        );
        let bare = error(
            429,
            "ManualRetryLimitExceeded",
            "Maximum retry attempts exceeded",
        );
        assert_eq!(
            answer(bare).await,
            Err(ProviderApiError::RateLimited { retry_after: None })
        );
    }

    #[tokio::test]
    async fn server_errors_are_transient_and_auth_errors_hide_the_token() {
        assert!(matches!(
            answer(ResponseTemplate::new(502)).await,
            Err(ProviderApiError::Transient(_))
        ));
        let echo = error(401, "Unauthorized", &format!("bad token {TOKEN}"));
        match answer(echo).await {
            Err(ProviderApiError::Rejected {
                status: 401,
                message,
            }) => assert!(!message.contains(TOKEN)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn missing_payment_method_or_order_is_rejected_before_calling() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200))
            .expect(0)
            .mount(&server)
            .await;
        let result = client(&server, None, 1_000).retry(&call()).await;
        assert!(
            matches!(result, Err(ProviderApiError::Rejected { status: 0, message }) if message.contains("payment_method_id"))
        );
        let mut without = call();
        without.cycle_id = None;
        let result = client(&server, Some(METHOD), 1_000).retry(&without).await;
        assert!(matches!(
            result,
            Err(ProviderApiError::Rejected { status: 0, .. })
        ));
    }
}
