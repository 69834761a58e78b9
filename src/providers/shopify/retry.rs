//! Shopify Admin GraphQL: `subscriptionBillingAttemptCreate` on the contract, with the
//! retry's key as the attempt's `idempotencyKey` (Shopify returns the existing attempt for
//! a repeated key). Asynchronous: the result arrives by the
//! `subscription_billing_attempts/success|failure|challenged` webhooks.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use futures_util::future::BoxFuture;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;

use crate::config::ApiSettings;
use crate::providers::contract::{CallOutcome, RetryCall, RetryClient};
use crate::providers::http::{ProviderApiError, auth_failed, exchange, required, snippet};

use super::admin::{AdminApi, GraphQlErrors};

const MUTATION: &str = "mutation subscriptionBillingAttemptCreate($subscriptionContractId: ID!, \
$subscriptionBillingAttemptInput: SubscriptionBillingAttemptInput!) { \
subscriptionBillingAttemptCreate(subscriptionContractId: $subscriptionContractId, \
subscriptionBillingAttemptInput: $subscriptionBillingAttemptInput) { \
subscriptionBillingAttempt { id ready errorCode errorMessage } \
userErrors { field message code } } }";

/// Creates a billing attempt on a Shopify contract (`RetryCall::subscription_id`).
pub struct ShopifyClient {
    admin: AdminApi,
}

impl ShopifyClient {
    pub fn new(api: &ApiSettings, http: crate::providers::http::ProviderHttp) -> Self {
        Self {
            admin: AdminApi::new(api, http),
        }
    }

    async fn create_attempt(&self, call: &RetryCall) -> Result<CallOutcome, ProviderApiError> {
        let contract = required(
            call.subscription_id.as_deref(),
            "subscription_id (Shopify contract)",
        )?;
        let body = json!({
            "query": MUTATION,
            "variables": {
                "subscriptionContractId": contract_gid(contract),
                "subscriptionBillingAttemptInput": {
                    "idempotencyKey": call.idempotency_key,
                    "originTime": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
                },
            },
        });
        let (status, wait, body) =
            exchange(self.admin.graphql(&body)?, self.admin.answer_cap()).await?;
        classify(status, wait, &body)
    }
}

impl RetryClient for ShopifyClient {
    fn retry<'a>(
        &'a self,
        call: &'a RetryCall,
    ) -> BoxFuture<'a, Result<CallOutcome, ProviderApiError>> {
        Box::pin(async move { self.create_attempt(call).await })
    }
}

/// The contract's GraphQL id: a bare number gets the `SubscriptionContract` gid prefix.
fn contract_gid(id: &str) -> String {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) {
        format!("gid://shopify/SubscriptionContract/{id}")
    } else {
        id.to_owned()
    }
}

#[derive(Deserialize)]
struct Response {
    data: Option<Data>,
    #[serde(flatten)]
    errors: GraphQlErrors,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    subscription_billing_attempt_create: Option<Payload>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    subscription_billing_attempt: Option<Attempt>,
    #[serde(default)]
    user_errors: Vec<UserError>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Attempt {
    #[serde(default)]
    ready: bool,
    error_code: Option<String>,
    error_message: Option<String>,
}

#[derive(Deserialize)]
struct UserError {
    message: String,
    code: Option<String>,
}

fn classify(
    status: StatusCode,
    wait: Option<Duration>,
    body: &str,
) -> Result<CallOutcome, ProviderApiError> {
    let code = status.as_u16();
    let rejected = |message: String| ProviderApiError::Rejected {
        status: code,
        message: snippet(&message),
    };
    match code {
        500.. => return Err(ProviderApiError::Transient(format!("shopify {code}"))),
        429 => return Err(ProviderApiError::RateLimited { retry_after: wait }),
        401 | 403 => return Err(auth_failed(code)),
        _ if !status.is_success() => return Err(rejected(body.to_owned())),
        _ => {}
    }
    let response: Response = serde_json::from_str(body).map_err(|_| {
        ProviderApiError::Transient(format!("unreadable GraphQL response ({code})"))
    })?;
    if let Some(error) = response.errors.error(code, wait) {
        return Err(error);
    }
    let payload = (response.data)
        .and_then(|d| d.subscription_billing_attempt_create)
        .ok_or_else(|| rejected("no subscriptionBillingAttemptCreate in the response".into()))?;
    if !payload.user_errors.is_empty() {
        let messages: Vec<String> = (payload.user_errors.iter())
            .map(|e| match &e.code {
                Some(c) => format!("{c}: {}", e.message),
                None => e.message.clone(),
            })
            .collect();
        return Err(rejected(messages.join("; ")));
    }
    match payload.subscription_billing_attempt {
        // A repeated key returns the first attempt: if it already failed, say so now.
        Some(Attempt {
            ready: true,
            error_code: Some(error_code),
            error_message,
        }) => Ok(CallOutcome::Declined {
            code: Some(error_code),
            message: error_message,
        }),
        Some(_) => Ok(CallOutcome::Accepted),
        None => Err(rejected("no billing attempt in the response".into())),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use wiremock::matchers::{body_partial_json, header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::providers::testing::api_settings;

    const TOKEN: &str = "shpat_secret123";
    const GID: &str = "gid://shopify/SubscriptionContract/4242";

    fn client(server: &MockServer, version: Option<&str>) -> ShopifyClient {
        let api = ApiSettings {
            api_version: version.map(str::to_owned),
            ..api_settings(format!("{}/", server.uri()), TOKEN)
        };
        ShopifyClient::new(&api, crate::providers::http::http_client().unwrap())
    }

    fn call(contract: &str) -> RetryCall {
        RetryCall {
            attempt_id: "att_1".into(),
            cycle_id: None,
            subscription_id: Some(contract.into()),
            idempotency_key: "subsync-shopify-4242-r3".into(),
            previous_send_at: None,
        }
    }

    async fn answer_at(
        version: Option<&str>,
        route: &str,
        contract: &str,
        response: ResponseTemplate,
    ) -> Result<CallOutcome, ProviderApiError> {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(route))
            .and(header("x-shopify-access-token", TOKEN))
            .and(header("content-type", "application/json"))
            .and(body_partial_json(json!({
                "variables": {
                    "subscriptionContractId": GID,
                    "subscriptionBillingAttemptInput": {"idempotencyKey": "subsync-shopify-4242-r3"}
                }
            })))
            .respond_with(response)
            .expect(1)
            .mount(&server)
            .await;
        client(&server, version).retry(&call(contract)).await
    }

    async fn answer(response: ResponseTemplate) -> Result<CallOutcome, ProviderApiError> {
        answer_at(None, "/admin/api/2025-01/graphql.json", "4242", response).await
    }

    fn payload(attempt: Value, user_errors: Value) -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json(json!({
            "data": {"subscriptionBillingAttemptCreate": {
                "subscriptionBillingAttempt": attempt, "userErrors": user_errors}}
        }))
    }

    fn rejected(status: u16, message: &str) -> ProviderApiError {
        ProviderApiError::Rejected {
            status,
            message: message.into(),
        }
    }

    fn limited(secs: u64) -> Result<CallOutcome, ProviderApiError> {
        Err(ProviderApiError::RateLimited {
            retry_after: Some(Duration::from_secs(secs)),
        })
    }

    fn pending() -> Value {
        json!({"id": "gid://shopify/SubscriptionBillingAttempt/7", "ready": false, "errorCode": null, "errorMessage": null})
    }

    #[tokio::test]
    async fn created_attempt_is_accepted() {
        let created = || payload(pending(), json!([]));
        assert_eq!(answer(created()).await, Ok(CallOutcome::Accepted));
        // A configured version and a contract that is already a gid pass through.
        let route = "/admin/api/2024-10/graphql.json";
        let result = answer_at(Some("2024-10"), route, GID, created()).await;
        assert_eq!(result, Ok(CallOutcome::Accepted));
    }

    #[tokio::test]
    async fn the_body_carries_the_mutation_and_an_origin_time() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(payload(pending(), json!([])))
            .expect(1)
            .mount(&server)
            .await;
        client(&server, None).retry(&call("4242")).await.unwrap();
        let requests = server.received_requests().await.unwrap();
        let body: Value = serde_json::from_slice(&requests[0].body).unwrap();
        assert_eq!(body["query"], MUTATION);
        let origin = body["variables"]["subscriptionBillingAttemptInput"]["originTime"]
            .as_str()
            .unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(origin).is_ok(),
            "{origin}"
        );
    }

    #[tokio::test]
    async fn repeated_key_with_a_failed_attempt_is_declined() {
        let failed = json!({"id": "gid://shopify/SubscriptionBillingAttempt/7", "ready": true,
                            "errorCode": "INSUFFICIENT_FUNDS", "errorMessage": "Insufficient funds"});
        assert_eq!(
            answer(payload(failed, json!([]))).await,
            Ok(CallOutcome::Declined {
                code: Some("INSUFFICIENT_FUNDS".into()),
                message: Some("Insufficient funds".into())
            })
        );
    }

    #[tokio::test]
    async fn user_errors_are_rejected() {
        let errors = json!([{"field": ["subscriptionContractId"], "message": "Contract is not active", "code": "CONTRACT_NOT_ACTIVE"}]);
        assert_eq!(
            answer(payload(Value::Null, errors)).await,
            Err(rejected(200, "CONTRACT_NOT_ACTIVE: Contract is not active"))
        );
    }

    #[tokio::test]
    async fn throttled_is_rate_limited() {
        let throttled = json!({
            "errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
            "extensions": {"cost": {"requestedQueryCost": 10, "actualQueryCost": null,
                "throttleStatus": {"maximumAvailable": 2000.0, "currentlyAvailable": 0, "restoreRate": 100.0}}}
        });
        let with_header = ResponseTemplate::new(200)
            .set_body_json(throttled.clone())
            .insert_header("Retry-After", "2");
        assert_eq!(answer(with_header).await, limited(2));
        let from_cost = ResponseTemplate::new(200).set_body_json(throttled);
        assert_eq!(answer(from_cost).await, limited(1));
        let http_429 = ResponseTemplate::new(429).insert_header("Retry-After", "4");
        assert_eq!(answer(http_429).await, limited(4));
    }

    #[tokio::test]
    async fn server_errors_are_transient_and_client_errors_rejected() {
        assert!(matches!(
            answer(ResponseTemplate::new(503)).await,
            Err(ProviderApiError::Transient(_))
        ));
        for status in [401, 403] {
            let echo = ResponseTemplate::new(status).set_body_string(format!("bad token {TOKEN}"));
            match answer(echo).await {
                Err(ProviderApiError::Rejected { status: s, message }) => {
                    assert_eq!(s, status);
                    assert!(!message.contains(TOKEN));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let not_found = answer(ResponseTemplate::new(404).set_body_string("Not Found")).await;
        assert_eq!(not_found, Err(rejected(404, "Not Found")));
    }

    #[tokio::test]
    async fn missing_contract_is_rejected_before_calling() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200))
            .expect(0)
            .mount(&server)
            .await;
        let mut without = call("4242");
        without.subscription_id = None;
        assert!(matches!(
            client(&server, None).retry(&without).await,
            Err(ProviderApiError::Rejected { status: 0, .. })
        ));
    }
}
