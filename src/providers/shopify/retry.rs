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
//!
//! Final actions set the contract's status: `cancel` → `subscriptionContractCancel`
//! (CANCELLED), `pause` → `subscriptionContractPause` (PAUSED), `mark_unpaid` →
//! `subscriptionContractFail` (FAILED: Shopify has no invoice to mark uncollectible; a
//! FAILED contract is its "billing failed, no further billing attempts" state). These
//! mutations take no idempotency key, so the contract's status is read first
//! (`subscriptionContract(id:) { status }`, one cheap query, before every send, not only
//! re-sends): a contract already in the target status, or one that has ended (CANCELLED or
//! EXPIRED: nothing is left to stop), is `AlreadyDone` and no mutation is sent. Otherwise
//! the answer is `Done` with the status of the payload's contract; `userErrors`
//! (`SubscriptionContractStatusUpdateUserError`) → `Rejected` with their messages; HTTP
//! and top-level errors as for the retry. `at_period_end` is ignored: these mutations
//! have no such option, so a `cancel` takes effect at once.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use futures_util::future::BoxFuture;
use reqwest::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::config::{ApiSettings, FinalAction};
use crate::providers::contract::{
    CallOutcome, FinalActionClient, FinalCall, FinalOutcome, RetryCall, RetryClient,
};
use crate::providers::http::{ProviderApiError, auth_failed, exchange, required, snippet};
use crate::providers::support::already_done;

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

/// The contract's status, read before a final action.
const CONTRACT_STATUS: &str = "query subscriptionContract($id: ID!) { \
subscriptionContract(id: $id) { id status } }";

/// The status mutation of a final action, and the status it leads to; `None` for `leave`.
fn status_mutation(action: FinalAction) -> Option<(&'static str, &'static str)> {
    match action {
        FinalAction::Cancel => Some(("subscriptionContractCancel", "CANCELLED")),
        FinalAction::Pause => Some(("subscriptionContractPause", "PAUSED")),
        FinalAction::MarkUnpaid => Some(("subscriptionContractFail", "FAILED")),
        FinalAction::Leave => None,
    }
}

/// The document of status mutation `name` (each takes only the contract id).
fn status_document(name: &str) -> String {
    format!(
        "mutation {name}($subscriptionContractId: ID!) {{ \
{name}(subscriptionContractId: $subscriptionContractId) {{ \
contract {{ id status }} userErrors {{ field message code }} }} }}"
    )
}

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

    /// Sets the contract's status for a final action (see the module doc).
    async fn set_status(&self, call: &FinalCall) -> Result<FinalOutcome, ProviderApiError> {
        let Some((mutation, target)) = status_mutation(call.action) else {
            return Ok(FinalOutcome::unsupported(call.action));
        };
        let contract = required(
            call.subscription_id.as_deref(),
            "subscription_id (Shopify contract)",
        )?;
        let contract = contract_gid(contract);
        let status = self.contract_status(&contract).await?;
        if let Some(why) = already_done(call.action, target, &status) {
            return Ok(FinalOutcome::AlreadyDone(why));
        }
        let body = json!({
            "query": status_document(mutation),
            "variables": { "subscriptionContractId": contract },
        });
        let (status, wait, body) =
            exchange(self.admin.graphql(&body)?, self.admin.answer_cap()).await?;
        let code = status.as_u16();
        let payload = graphql_data::<HashMap<String, Option<StatusPayload>>>(status, wait, &body)?
            .and_then(|mut data| data.remove(mutation).flatten())
            .ok_or_else(|| rejected(code, &format!("no {mutation} in the response")))?;
        if !payload.user_errors.is_empty() {
            return Err(rejected(code, &messages(&payload.user_errors)));
        }
        let contract = (payload.contract)
            .ok_or_else(|| rejected(code, &format!("no contract in the {mutation} response")))?;
        Ok(FinalOutcome::Done(format!("contract {}", contract.status)))
    }

    /// The status of `contract` (a gid); an unknown contract is `Rejected`.
    async fn contract_status(&self, contract: &str) -> Result<String, ProviderApiError> {
        let body = json!({ "query": CONTRACT_STATUS, "variables": { "id": contract } });
        let (status, wait, body) =
            exchange(self.admin.graphql(&body)?, self.admin.answer_cap()).await?;
        let code = status.as_u16();
        graphql_data::<ContractData>(status, wait, &body)?
            .and_then(|d| d.subscription_contract)
            .map(|c| c.status)
            .ok_or_else(|| rejected(code, &format!("no subscription contract {contract}")))
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

impl FinalActionClient for ShopifyClient {
    fn final_action<'a>(
        &'a self,
        call: &'a FinalCall,
    ) -> BoxFuture<'a, Result<FinalOutcome, ProviderApiError>> {
        Box::pin(self.set_status(call))
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
struct Response<D> {
    data: Option<D>,
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

/// The payload of a status mutation (`SubscriptionContract*Payload`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusPayload {
    contract: Option<ContractState>,
    #[serde(default)]
    user_errors: Vec<UserError>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContractData {
    subscription_contract: Option<ContractState>,
}

#[derive(Deserialize)]
struct ContractState {
    status: String,
}

fn rejected(status: u16, message: &str) -> ProviderApiError {
    ProviderApiError::Rejected {
        status,
        message: snippet(message),
    }
}

/// User errors as one message: `CODE: message`, joined by `; `.
fn messages(errors: &[UserError]) -> String {
    let messages: Vec<String> = (errors.iter())
        .map(|e| match &e.code {
            Some(c) => format!("{c}: {}", e.message),
            None => e.message.clone(),
        })
        .collect();
    messages.join("; ")
}

/// The `data` of a GraphQL answer: HTTP 5xx → `Transient`, 429 → `RateLimited`, 401/403 →
/// authentication failure, other non-2xx → `Rejected`; an unreadable body `Transient`;
/// top-level errors as in `admin.rs`.
fn graphql_data<D: DeserializeOwned>(
    status: StatusCode,
    wait: Option<Duration>,
    body: &str,
) -> Result<Option<D>, ProviderApiError> {
    let code = status.as_u16();
    match code {
        500.. => return Err(ProviderApiError::Transient(format!("shopify {code}"))),
        429 => return Err(ProviderApiError::RateLimited { retry_after: wait }),
        401 | 403 => return Err(auth_failed(code)),
        _ if !status.is_success() => return Err(rejected(code, body)),
        _ => {}
    }
    let response: Response<D> = serde_json::from_str(body).map_err(|_| {
        ProviderApiError::Transient(format!("unreadable GraphQL response ({code})"))
    })?;
    match response.errors.error(code, wait) {
        Some(error) => Err(error),
        None => Ok(response.data),
    }
}

fn classify(
    status: StatusCode,
    wait: Option<Duration>,
    body: &str,
) -> Result<CallOutcome, ProviderApiError> {
    let code = status.as_u16();
    let payload = graphql_data::<Data>(status, wait, body)?
        .and_then(|d| d.subscription_billing_attempt_create)
        .ok_or_else(|| rejected(code, "no subscriptionBillingAttemptCreate in the response"))?;
    let throttled =
        (payload.user_errors.iter()).any(|e| e.code.as_deref().map(str::trim) == Some(THROTTLED));
    if throttled {
        // Not an answer about the payment: the same retry (number and key) later.
        return Err(ProviderApiError::RateLimited { retry_after: wait });
    }
    if !payload.user_errors.is_empty() {
        return Err(rejected(code, &messages(&payload.user_errors)));
    }
    let attempt = payload
        .subscription_billing_attempt
        .ok_or_else(|| rejected(code, "no billing attempt in the response"))?;
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
    use wiremock::matchers::{body_partial_json, body_string_contains, header, method, path};
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

    fn final_call(action: FinalAction, resend: bool) -> FinalCall {
        FinalCall {
            action,
            attempt_id: "gid://shopify/SubscriptionBillingAttempt/1".into(),
            cycle_id: None,
            subscription_id: Some("4242".into()),
            idempotency_key: "subsync-final-0123456789abcdef".into(),
            resend,
            at_period_end: false,
        }
    }

    /// The `subscriptionContract` read of contract 4242, answering its `status`.
    async fn contract_read(server: &MockServer, status: &str) {
        let found = json!({"data": {"subscriptionContract": {"id": GID, "status": status}}});
        contract_answer(server, ResponseTemplate::new(200).set_body_json(found)).await;
    }

    async fn contract_answer(server: &MockServer, response: ResponseTemplate) {
        Mock::given(method("POST"))
            .and(path("/admin/api/2026-04/graphql.json"))
            .and(header("x-shopify-access-token", TOKEN))
            .and(body_string_contains("subscriptionContract(id: $id)"))
            .and(body_partial_json(json!({"variables": {"id": GID}})))
            .respond_with(response)
            .expect(1)
            .mount(server)
            .await;
    }

    /// Status mutation `name` on contract 4242, sent `sends` times.
    async fn status_mutation_answer(
        server: &MockServer,
        name: &str,
        response: ResponseTemplate,
        sends: u64,
    ) {
        Mock::given(method("POST"))
            .and(path("/admin/api/2026-04/graphql.json"))
            .and(header("x-shopify-access-token", TOKEN))
            .and(body_string_contains(format!("mutation {name}(").as_str()))
            .and(body_partial_json(
                json!({"variables": {"subscriptionContractId": GID}}),
            ))
            .respond_with(response)
            .expect(sends)
            .mount(server)
            .await;
    }

    fn status_payload(name: &str, status: Option<&str>, user_errors: Value) -> ResponseTemplate {
        let contract = status.map(|s| json!({"id": GID, "status": s}));
        ResponseTemplate::new(200).set_body_json(
            json!({"data": {name: {"contract": contract, "userErrors": user_errors}}}),
        )
    }

    /// An ACTIVE contract: each action reads the status, then sends its mutation, and is
    /// `Done` with the status the payload's contract has.
    #[tokio::test]
    async fn final_actions_read_the_contract_then_send_their_mutation() {
        for (action, name, status) in [
            (
                FinalAction::Cancel,
                "subscriptionContractCancel",
                "CANCELLED",
            ),
            (FinalAction::Pause, "subscriptionContractPause", "PAUSED"),
            (
                FinalAction::MarkUnpaid,
                "subscriptionContractFail",
                "FAILED",
            ),
        ] {
            let server = MockServer::start().await;
            contract_read(&server, "ACTIVE").await;
            let done = status_payload(name, Some(status), json!([]));
            status_mutation_answer(&server, name, done, 1).await;
            let outcome = client(&server, None)
                .final_action(&final_call(action, false))
                .await;
            assert_eq!(
                outcome,
                Ok(FinalOutcome::Done(format!("contract {status}")))
            );
            server.verify().await;
        }
    }

    /// The read and the mutations as they leave, for both copied schema versions: each
    /// document conforms to the schema, and the variables name the contract's gid.
    #[tokio::test]
    async fn the_final_action_bodies_conform_to_the_schema_of_their_version() {
        for (version, configured) in [("2026-04", None), ("2025-01", Some("2025-01"))] {
            let schema = schema::copied(version);
            let statuses = &schema.types["SubscriptionContractSubscriptionStatus"].values;
            for (action, name) in [
                (FinalAction::Cancel, "subscriptionContractCancel"),
                (FinalAction::Pause, "subscriptionContractPause"),
                (FinalAction::MarkUnpaid, "subscriptionContractFail"),
            ] {
                let (mutation, target) = status_mutation(action).unwrap();
                assert_eq!(mutation, name);
                assert!(statuses.contains(&target.to_owned()), "{version}: {target}");
                let server = MockServer::start().await;
                let active =
                    json!({"data": {"subscriptionContract": {"id": GID, "status": "ACTIVE"}}});
                Mock::given(method("POST"))
                    .and(path(format!("/admin/api/{version}/graphql.json")))
                    .and(body_string_contains("subscriptionContract(id: $id)"))
                    .respond_with(ResponseTemplate::new(200).set_body_json(active))
                    .expect(1)
                    .mount(&server)
                    .await;
                Mock::given(method("POST"))
                    .and(path(format!("/admin/api/{version}/graphql.json")))
                    .and(body_string_contains(format!("mutation {name}(").as_str()))
                    .respond_with(status_payload(name, Some(target), json!([])))
                    .expect(1)
                    .mount(&server)
                    .await;
                let call = final_call(action, false);
                client(&server, configured)
                    .final_action(&call)
                    .await
                    .unwrap();
                let requests = server.received_requests().await.unwrap();
                let bodies: Vec<Value> = (requests.iter())
                    .map(|r| serde_json::from_slice(&r.body).unwrap())
                    .collect();
                assert_eq!(bodies.len(), 2);
                for body in &bodies {
                    let query = body["query"].as_str().unwrap();
                    assert_eq!(
                        schema.check_document(query),
                        Vec::<String>::new(),
                        "{version}: {query}"
                    );
                }
                assert_eq!(bodies[0]["variables"], json!({"id": GID}));
                assert!(bodies[0]["query"].as_str().unwrap().contains("status"));
                assert_eq!(
                    bodies[1]["variables"],
                    json!({"subscriptionContractId": GID})
                );
                assert!(
                    bodies[1]["query"]
                        .as_str()
                        .unwrap()
                        .contains("contract { id status }")
                );
            }
        }
    }

    /// A contract already in the target status (a re-send after a crash, or another
    /// actor), or one that has ended, sends no mutation: on a re-send and on a first send.
    #[tokio::test]
    async fn a_contract_already_there_or_ended_sends_no_mutation() {
        let ended = |status: &str, action: &str| {
            format!("contract {status}: it has ended, nothing left to {action}")
        };
        let cases = [
            (
                FinalAction::Cancel,
                "CANCELLED",
                "contract CANCELLED".to_owned(),
            ),
            (FinalAction::Pause, "PAUSED", "contract PAUSED".to_owned()),
            (
                FinalAction::MarkUnpaid,
                "FAILED",
                "contract FAILED".to_owned(),
            ),
            (FinalAction::Pause, "CANCELLED", ended("CANCELLED", "pause")),
            (FinalAction::Pause, "EXPIRED", ended("EXPIRED", "pause")),
            (
                FinalAction::MarkUnpaid,
                "CANCELLED",
                ended("CANCELLED", "mark_unpaid"),
            ),
            (
                FinalAction::MarkUnpaid,
                "EXPIRED",
                ended("EXPIRED", "mark_unpaid"),
            ),
            (FinalAction::Cancel, "EXPIRED", ended("EXPIRED", "cancel")),
        ];
        for (action, status, why) in cases {
            for resend in [true, false] {
                let server = MockServer::start().await;
                contract_read(&server, status).await;
                let (name, _) = status_mutation(action).unwrap();
                status_mutation_answer(&server, name, ResponseTemplate::new(500), 0).await;
                let outcome = client(&server, None)
                    .final_action(&final_call(action, resend))
                    .await;
                assert_eq!(outcome, Ok(FinalOutcome::AlreadyDone(why.clone())));
                server.verify().await;
            }
        }
    }

    #[tokio::test]
    async fn final_action_user_errors_are_rejected() {
        let server = MockServer::start().await;
        contract_read(&server, "FAILED").await;
        let name = "subscriptionContractPause";
        let errors = json!([{"field": ["subscriptionContractId"],
            "message": "Subscription contract status cannot be changed once terminated.",
            "code": "CONTRACT_TERMINATED"}]);
        status_mutation_answer(&server, name, status_payload(name, None, errors), 1).await;
        let outcome = client(&server, None)
            .final_action(&final_call(FinalAction::Pause, true))
            .await;
        assert_eq!(
            outcome,
            Err(rejected(
                200,
                "CONTRACT_TERMINATED: Subscription contract status cannot be changed once terminated."
            ))
        );
    }

    /// The read's failures send nothing: 5xx `Transient`, a throttle `RateLimited`, an
    /// unknown contract `Rejected`, 401/403 without the provider's text; a mutation's 5xx
    /// is `Transient`.
    #[tokio::test]
    async fn final_action_failures_are_mapped_and_never_echo_the_token() {
        let cancel = final_call(FinalAction::Cancel, true);
        let throttled =
            json!({"errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}]});
        let unknown = json!({"data": {"subscriptionContract": null}});
        let reads = [
            ResponseTemplate::new(503),
            ResponseTemplate::new(200)
                .set_body_json(throttled)
                .insert_header("Retry-After", "2"),
            ResponseTemplate::new(200).set_body_json(unknown),
            ResponseTemplate::new(401).set_body_string(format!("bad token {TOKEN}")),
            ResponseTemplate::new(403).set_body_string(format!("bad token {TOKEN}")),
        ];
        let mut outcomes = Vec::new();
        for read in reads {
            let server = MockServer::start().await;
            contract_answer(&server, read).await;
            let name = "subscriptionContractCancel";
            status_mutation_answer(&server, name, ResponseTemplate::new(200), 0).await;
            outcomes.push(client(&server, None).final_action(&cancel).await);
            server.verify().await;
        }
        assert!(matches!(outcomes[0], Err(ProviderApiError::Transient(_))));
        assert_eq!(
            outcomes[1],
            Err(ProviderApiError::RateLimited {
                retry_after: Some(Duration::from_secs(2))
            })
        );
        assert_eq!(
            outcomes[2],
            Err(rejected(200, &format!("no subscription contract {GID}")))
        );
        for outcome in &outcomes[3..] {
            match outcome {
                Err(ProviderApiError::Rejected { status, message }) => {
                    assert!([401, 403].contains(status));
                    assert!(!message.contains(TOKEN), "{message}");
                }
                other => panic!("unexpected {other:?}"),
            }
        }

        let server = MockServer::start().await;
        contract_read(&server, "ACTIVE").await;
        let name = "subscriptionContractCancel";
        status_mutation_answer(&server, name, ResponseTemplate::new(502), 1).await;
        assert!(matches!(
            client(&server, None).final_action(&cancel).await,
            Err(ProviderApiError::Transient(_))
        ));
    }

    /// Without a contract the action is final and nothing is sent; `leave` has no call.
    #[tokio::test]
    async fn a_final_action_without_a_contract_or_a_call_sends_nothing() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200))
            .expect(0)
            .mount(&server)
            .await;
        let mut without = final_call(FinalAction::Cancel, false);
        without.subscription_id = None;
        assert!(matches!(
            client(&server, None).final_action(&without).await,
            Err(ProviderApiError::Rejected { status: 0, .. })
        ));
        let leave = final_call(FinalAction::Leave, false);
        assert_eq!(
            client(&server, None).final_action(&leave).await,
            Ok(FinalOutcome::unsupported(FinalAction::Leave))
        );
    }
}
