//! Shopify Admin GraphQL: `subscriptionBillingAttemptCreate` on the contract, with the
//! retry's key as the attempt's `idempotencyKey` (Shopify returns the existing attempt for
//! a repeated key). Asynchronous: the result arrives by the
//! `subscription_billing_attempts/success|failure|challenged` webhooks, whose
//! `idempotency_key` links the new attempt to the retried cycle (see `mod.rs`).
//!
//! The input (`SubscriptionBillingAttemptInput`): `idempotencyKey`, and the cycle to bill.
//! A `billingCycleSelector: { index }` when the retried cycle's index is known, that is
//! when its cycle id is `{contract gid}/cycles/{index}` (the form skip webhooks give);
//! otherwise `originTime` = now, as before. Shopify attempts carry no cycle index (neither
//! the webhook nor the GraphQL attempt has one), so for a failed renewal the index is not
//! known to subsync and the attempt bills the contract's current cycle ("Default to bill
//! the current billing cycle if not specified"): a retry made after the failed cycle ended
//! bills the next one, so keep the policy's `max_age_secs` below the billing interval.
//! Resolving the index would take a `subscriptionBillingCycle` lookup by date that the
//! webhook cannot give (it has no `originTime`).
//!
//! The answer: HTTP 5xx → `Transient`, 429 → `RateLimited`, 401/403 → authentication
//! failure, other non-2xx → `Rejected`; top-level GraphQL errors as in `admin.rs`
//! (`THROTTLED` → `RateLimited` with the cost wait). `userErrors` (`BillingAttemptUserError`)
//! with code `THROTTLED` ("Billing attempt rate limit exceeded - try later", 2026-01 and
//! later; a trust-based limit with no published wait) → `RateLimited` without a wait, so
//! the same retry number and key go again later; any other user error → `Rejected` (the
//! policy's provider-error path). The attempt returned (selected in the configured
//! version's shape, see `attempt.rs`): processing or unknown → `Accepted`; for a repeated
//! key, an attempt that already ended → `Charged` (succeeded), `RequiresAction`
//! (challenged) or `Declined` with its code (upper case) and message (failed).

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use futures_util::future::BoxFuture;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::ApiSettings;
use crate::providers::contract::{CallOutcome, RetryCall, RetryClient};
use crate::providers::http::{ProviderApiError, auth_failed, exchange, required, snippet};

use super::admin::{AdminApi, GraphQlErrors};
use super::attempt::{AttemptState, Outcome, Shape};

/// The mutation, selecting the attempt's outcome in `shape`.
fn mutation(shape: Shape) -> String {
    format!(
        "mutation subscriptionBillingAttemptCreate($subscriptionContractId: ID!, \
$subscriptionBillingAttemptInput: SubscriptionBillingAttemptInput!) {{ \
subscriptionBillingAttemptCreate(subscriptionContractId: $subscriptionContractId, \
subscriptionBillingAttemptInput: $subscriptionBillingAttemptInput) {{ \
subscriptionBillingAttempt {{ id {} }} \
userErrors {{ field message code }} }} }}",
        shape.selection()
    )
}

/// `BillingAttemptUserErrorCode.THROTTLED`.
const THROTTLED: &str = "THROTTLED";

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
        let contract = contract_gid(contract);
        let body = json!({
            "query": mutation(self.admin.shape()),
            "variables": {
                "subscriptionContractId": contract,
                "subscriptionBillingAttemptInput": attempt_input(call, &contract),
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

/// The index of a cycle id of `contract` written `{contract gid}/cycles/{index}`.
fn cycle_index(cycle_id: Option<&str>, contract: &str) -> Option<u32> {
    let rest = cycle_id?.strip_prefix(contract)?.strip_prefix("/cycles/")?;
    rest.parse().ok()
}

/// `SubscriptionBillingAttemptInput`: the key, and the cycle when its index is known.
fn attempt_input(call: &RetryCall, contract: &str) -> Value {
    match cycle_index(call.cycle_id.as_deref(), contract) {
        Some(index) => json!({
            "idempotencyKey": call.idempotency_key,
            "billingCycleSelector": { "index": index },
        }),
        None => json!({
            "idempotencyKey": call.idempotency_key,
            "originTime": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
        }),
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
    subscription_billing_attempt: Option<AttemptState>,
    #[serde(default)]
    user_errors: Vec<UserError>,
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
    let throttled =
        (payload.user_errors.iter()).any(|e| e.code.as_deref().map(str::trim) == Some(THROTTLED));
    if throttled {
        // Not an answer about the payment: the same retry (number and key) later.
        return Err(ProviderApiError::RateLimited { retry_after: wait });
    }
    if !payload.user_errors.is_empty() {
        let messages: Vec<String> = (payload.user_errors.iter())
            .map(|e| match &e.code {
                Some(c) => format!("{c}: {}", e.message),
                None => e.message.clone(),
            })
            .collect();
        return Err(rejected(messages.join("; ")));
    }
    let attempt = payload
        .subscription_billing_attempt
        .ok_or_else(|| rejected("no billing attempt in the response".into()))?;
    // A repeated key returns the first attempt: if it already ended, say how now.
    Ok(match attempt.outcome() {
        Outcome::Processing | Outcome::Unknown => CallOutcome::Accepted,
        Outcome::Succeeded { .. } => CallOutcome::Charged,
        Outcome::Challenged => CallOutcome::RequiresAction,
        Outcome::Failed { code, message } => CallOutcome::Declined { code, message },
    })
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use wiremock::matchers::{body_partial_json, header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::providers::shopify::schema;
    use crate::providers::testing::api_settings;

    const TOKEN: &str = "shpat_secret123";
    const GID: &str = "gid://shopify/SubscriptionContract/4242";
    const KEY: &str = "subsync-retry-0123456789abcdef0123456789abcdef";

    fn client(server: &MockServer, version: Option<&str>) -> ShopifyClient {
        let api = ApiSettings {
            api_version: version.map(str::to_owned),
            ..api_settings(format!("{}/", server.uri()), TOKEN)
        };
        ShopifyClient::new(&api, crate::providers::http::http_client().unwrap())
    }

    fn call(contract: &str) -> RetryCall {
        RetryCall {
            attempt_id: "gid://shopify/SubscriptionBillingAttempt/1".into(),
            cycle_id: None,
            subscription_id: Some(contract.into()),
            idempotency_key: KEY.into(),
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
                    "subscriptionBillingAttemptInput": {"idempotencyKey": KEY}
                }
            })))
            .respond_with(response)
            .expect(1)
            .mount(&server)
            .await;
        client(&server, version).retry(&call(contract)).await
    }

    /// The default version (2026-04).
    async fn answer(response: ResponseTemplate) -> Result<CallOutcome, ProviderApiError> {
        answer_at(None, "/admin/api/2026-04/graphql.json", "4242", response).await
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

    const ATTEMPT: &str = "gid://shopify/SubscriptionBillingAttempt/7";

    /// A fresh attempt, as 2026-04 answers (`state`).
    fn pending() -> Value {
        json!({"id": ATTEMPT, "state": {"__typename": "SubscriptionBillingAttemptPendingState"}})
    }

    fn in_state(state: Value) -> Value {
        json!({"id": ATTEMPT, "state": state})
    }

    #[tokio::test]
    async fn created_attempt_is_accepted() {
        assert_eq!(
            answer(payload(pending(), json!([]))).await,
            Ok(CallOutcome::Accepted)
        );
        // A configured version before 2026-04 answers in the flat shape; a contract that is
        // already a gid passes through.
        let route = "/admin/api/2025-10/graphql.json";
        let flat = json!({"id": ATTEMPT, "ready": false, "nextActionUrl": null, "order": null,
                          "processingError": null});
        let result = answer_at(Some("2025-10"), route, GID, payload(flat, json!([]))).await;
        assert_eq!(result, Ok(CallOutcome::Accepted));
    }

    /// The request as it leaves: the mutation of the version's shape, which the copied
    /// schema of that version accepts, and variables that are a valid
    /// `SubscriptionBillingAttemptInput`: the key, and `originTime` when the cycle's index is
    /// unknown (a Shopify attempt), a `billingCycleSelector` when it is known.
    #[tokio::test]
    async fn the_body_conforms_to_the_schema_of_its_version() {
        for (version, configured) in [("2026-04", None), ("2025-01", Some("2025-01"))] {
            let server = MockServer::start().await;
            Mock::given(method("POST"))
                .and(path(format!("/admin/api/{version}/graphql.json")))
                .respond_with(payload(pending(), json!([])))
                .expect(2)
                .mount(&server)
                .await;
            let client = client(&server, configured);
            client.retry(&call("4242")).await.unwrap();
            let mut known = call("4242");
            known.cycle_id = Some(format!("{GID}/cycles/3"));
            client.retry(&known).await.unwrap();

            let schema = schema::copied(version);
            let requests = server.received_requests().await.unwrap();
            let bodies: Vec<Value> = (requests.iter())
                .map(|r| serde_json::from_slice(&r.body).unwrap())
                .collect();
            for body in &bodies {
                let query = body["query"].as_str().unwrap();
                assert_eq!(
                    schema.check_document(query),
                    Vec::<String>::new(),
                    "{version}"
                );
                let input = &body["variables"]["subscriptionBillingAttemptInput"];
                let problems = schema.check_input("SubscriptionBillingAttemptInput", input);
                assert_eq!(problems, Vec::<String>::new(), "{version}: {input}");
                assert_eq!(body["variables"]["subscriptionContractId"], GID);
                assert_eq!(input["idempotencyKey"], KEY);
            }
            let shape = if version == "2026-04" {
                "state {"
            } else {
                "processingError {"
            };
            assert!(bodies[0]["query"].as_str().unwrap().contains(shape));
            let unknown = &bodies[0]["variables"]["subscriptionBillingAttemptInput"];
            let origin = unknown["originTime"].as_str().unwrap();
            assert!(
                chrono::DateTime::parse_from_rfc3339(origin).is_ok(),
                "{origin}"
            );
            assert!(unknown.get("billingCycleSelector").is_none());
            let known = &bodies[1]["variables"]["subscriptionBillingAttemptInput"];
            assert_eq!(known["billingCycleSelector"], json!({"index": 3}));
            assert!(
                known.get("originTime").is_none(),
                "it must lie in the selected cycle"
            );
        }
    }

    #[test]
    fn only_a_cycle_of_the_same_contract_names_an_index() {
        let cycle = |id: &str| cycle_index(Some(id), GID);
        assert_eq!(cycle(&format!("{GID}/cycles/0")), Some(0));
        assert_eq!(cycle("gid://shopify/SubscriptionContract/1/cycles/3"), None);
        assert_eq!(cycle(&format!("{GID}/cycles/x")), None);
        assert_eq!(cycle("gid://shopify/SubscriptionBillingAttempt/9"), None);
        assert_eq!(cycle_index(None, GID), None);
    }

    /// A repeated key returns the first attempt: an attempt that already ended answers
    /// for the retry now, in either shape; codes come in the enum's upper case.
    #[tokio::test]
    async fn a_repeated_key_answers_with_the_first_attempts_outcome() {
        let failed = |error: Value| {
            in_state(json!({"__typename": "SubscriptionBillingAttemptFailedState", "error": error}))
        };
        let cases = [
            (
                failed(
                    json!({"__typename": "SubscriptionBillingAttemptPaymentError",
                              "paymentCode": "INSUFFICIENT_FUNDS"}),
                ),
                CallOutcome::Declined {
                    code: Some("INSUFFICIENT_FUNDS".into()),
                    message: None,
                },
            ),
            (
                failed(
                    json!({"__typename": "SubscriptionBillingAttemptUnexpectedError",
                              "message": "Something went wrong"}),
                ),
                CallOutcome::Declined {
                    code: Some("UNEXPECTED_ERROR".into()),
                    message: Some("Something went wrong".into()),
                },
            ),
            (
                in_state(
                    json!({"__typename": "SubscriptionBillingAttemptSuccessState",
                                "order": {"id": "gid://shopify/Order/5"}}),
                ),
                CallOutcome::Charged,
            ),
            (
                in_state(
                    json!({"__typename": "SubscriptionBillingAttemptActionRequiredState",
                                "action": {"__typename": "SubscriptionBillingAttemptPaymentChallenge"}}),
                ),
                CallOutcome::RequiresAction,
            ),
            // A member this version does not know: the outcome comes by webhook.
            (
                in_state(json!({"__typename": "SubscriptionBillingAttemptLaterState"})),
                CallOutcome::Accepted,
            ),
        ];
        for (attempt, outcome) in cases {
            assert_eq!(
                answer(payload(attempt.clone(), json!([]))).await,
                Ok(outcome),
                "{attempt}"
            );
        }
        let flat = json!({"id": ATTEMPT, "ready": true, "nextActionUrl": null, "order": null,
            "processingError": {"code": "insufficient_funds", "message": "Insufficient funds"}});
        let route = "/admin/api/2025-07/graphql.json";
        assert_eq!(
            answer_at(Some("2025-07"), route, "4242", payload(flat, json!([]))).await,
            Ok(CallOutcome::Declined {
                code: Some("INSUFFICIENT_FUNDS".into()),
                message: Some("Insufficient funds".into())
            })
        );
    }

    #[tokio::test]
    async fn user_errors_are_rejected() {
        let errors = json!([{"field": ["subscriptionContractId"],
            "message": "Subscription contract cannot be billed if paused.", "code": "CONTRACT_PAUSED"}]);
        assert_eq!(
            answer(payload(Value::Null, errors)).await,
            Err(rejected(
                200,
                "CONTRACT_PAUSED: Subscription contract cannot be billed if paused."
            ))
        );
    }

    /// `BillingAttemptUserErrorCode.THROTTLED` (2026-01+): not a rejection that spends the
    /// retry number, a rate limit (the same retry later).
    #[tokio::test]
    async fn a_throttled_user_error_is_rate_limited() {
        let errors = json!([{"field": null, "message": "Billing attempt rate limit exceeded - try later.",
                             "code": "THROTTLED"}]);
        assert_eq!(
            answer(payload(Value::Null, errors.clone())).await,
            Err(ProviderApiError::RateLimited { retry_after: None })
        );
        let with_header = payload(Value::Null, errors).insert_header("Retry-After", "3");
        assert_eq!(answer(with_header).await, limited(3));
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
