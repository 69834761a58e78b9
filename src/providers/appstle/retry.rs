//! Appstle: `PUT /api/external/v2/subscription-billing-attempts/attempt-billing/{id}`
//! ("Retry billing for failed attempt"). Asynchronous: 200 means queued, not paid; the
//! result arrives by the `subscription.billing-success|failure` webhook.
//!
//! Appstle's API has no idempotency key (its documents name none), so a send is never
//! blind: a repeat would charge twice.
//! - The scheduler never re-sends within a pass after a timeout or a 5xx
//!   ([`RetryClient::resends_safely`] is false), and never sends a second retry while one
//!   is in flight.
//! - Before every send the contract's past orders (`getPastOrdersV2`, newest billing date
//!   first, the route pull sync reads) are read. If the attempt being retried is already
//!   under way (a pending word: QUEUED, REQUESTING, PROGRESS, ...) the retry follows it
//!   (`InProgress`); if it succeeded, the retry is `Charged`; if this is a re-send and the
//!   attempt was tried at or after the first send (`attemptTime`), the earlier send reached
//!   Appstle and its outcome comes by webhook (`InProgress`). Only otherwise is
//!   `attempt-billing` sent.
//! - Appstle allows at most 5 billing attempts per contract per hour. The attempts read
//!   with an `attemptTime` in the last hour count against it: at 5, the retry waits
//!   (`RateLimited`) until the oldest of them is an hour old. A 429 is a rate limit too.
//!
//! Assumed where the documents are silent: the retry of an attempt updates that attempt
//! in place (same `id`, new `status`, `attemptTime`), as the past-orders listing shows
//! retried attempts; at most [`MAX_PAGES`] pages of [`PAGE_SIZE`] are read, so attempts
//! further back are not counted; without a contract id the send is not checked.
//!
//! Final actions, on the contract (the call's subscription id, Appstle's `contractId` or
//! its contract gid, else the contract of its cycle id):
//! - `cancel`: `DELETE /api/external/v2/subscription-contracts/{contractId}` with a
//!   `cancellationNote` saying subsync cancelled it ("Cancel contract immediately"; no
//!   content returned). Appstle enforces the contract's minimum cycles here: such a refusal
//!   is `Rejected` with Appstle's words. `at_period_end` is ignored: the call has no such
//!   option.
//! - `pause`: `PUT /api/external/v2/subscription-contracts-update-status?contractId=
//!   {contractId}&status=PAUSED`. Assumed: the documents name the `contractId` query
//!   parameter and a new status, but the snapshot read lost the status parameter's name;
//!   `status`, a query parameter like `contractId`, is the form assumed.
//! - `mark_unpaid`: `Unsupported` without a request (Appstle has no such call).
//!
//! Neither call takes an idempotency key, so a re-send (`resend`) first reads the contract
//! (`GET /api/external/v2/contract-raw-response?contractId=`, the raw Shopify
//! `subscriptionContract`, read as `money.rs` reads it): `status` in the target status, or
//! ended (CANCELLED, EXPIRED: nothing is left to stop), is `AlreadyDone` and nothing is
//! sent. A read that names no status is `Rejected` (nothing is sent blind). A first send
//! does not read: the scheduler has checked the ledger. Any 2xx is `Done` with the target
//! status; other answers are mapped as for the retry.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures_util::future::BoxFuture;
use reqwest::header::HeaderName;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::list::{Attempt, contract_number, past_orders};
use super::webhook::attempt_status;
use crate::canonical::AttemptStatus;
use crate::config::{ApiSettings, FinalAction};
use crate::providers::contract::{
    CallOutcome, FinalActionClient, FinalCall, FinalOutcome, RetryCall, RetryClient,
};
use crate::providers::http::{
    Credential, Endpoint, ProviderApiError, auth_failed, exchange, missing, read, snippet,
};
use crate::providers::support::already_done;

/// Past-order pages read before a send, and their size.
const MAX_PAGES: u32 = 4;
const PAGE_SIZE: u32 = 50;
/// Billing attempts Appstle allows per contract per hour.
const HOURLY_LIMIT: usize = 5;
/// The `cancellationNote` of a `cancel` (at most 1000 characters).
const CANCELLATION_NOTE: &str = "Cancelled by subsync: the failed payment was not recovered";

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
        if let Some(outcome) = self.under_way(call, Utc::now()).await? {
            return Ok(outcome);
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

impl AppstleClient {
    /// What the contract's past orders say before a send (see the module doc): `Some`
    /// when the retry must follow what is already there instead of sending.
    async fn under_way(
        &self,
        call: &RetryCall,
        now: DateTime<Utc>,
    ) -> Result<Option<CallOutcome>, ProviderApiError> {
        let Some(contract) = contract_of(call.subscription_id.as_deref(), call.cycle_id.as_deref())
        else {
            return Ok(None);
        };
        let hour_ago = now - TimeDelta::hours(1);
        let (mut ours, mut last_hour) = (None, Vec::new());
        for page in 0..MAX_PAGES {
            let (attempts, _) =
                past_orders(&self.api, contract, page, PAGE_SIZE, self.api.answer_cap()).await?;
            for attempt in attempts.iter().map(Seen::read) {
                if let Some(at) = attempt.attempt_time.filter(|at| *at > hour_ago) {
                    last_hour.push(at);
                }
                if attempt.id.as_deref() == Some(call.attempt_id.as_str()) {
                    ours = Some(attempt);
                }
            }
            if attempts.len() < PAGE_SIZE as usize {
                break;
            }
        }
        if let Some(ours) = ours {
            match ours.status.as_deref().and_then(attempt_status) {
                Some(AttemptStatus::Pending) => return Ok(Some(CallOutcome::InProgress)),
                Some(AttemptStatus::Succeeded | AttemptStatus::Refunded) => {
                    return Ok(Some(CallOutcome::Charged));
                }
                _ => {}
            }
            let tried_since_sent = call
                .previous_send_at
                .zip(ours.attempt_time)
                .is_some_and(|(sent, tried)| tried >= sent);
            if tried_since_sent {
                return Ok(Some(CallOutcome::InProgress));
            }
        }
        last_hour.sort_unstable();
        if last_hour.len() >= HOURLY_LIMIT {
            let oldest = last_hour[last_hour.len() - HOURLY_LIMIT];
            let wait = (oldest + TimeDelta::hours(1) - now)
                .to_std()
                .unwrap_or(Duration::ZERO);
            return Err(ProviderApiError::RateLimited {
                retry_after: Some(wait),
            });
        }
        Ok(None)
    }
}

impl AppstleClient {
    /// Cancels or pauses the contract (see the module doc).
    async fn end(&self, call: &FinalCall) -> Result<FinalOutcome, ProviderApiError> {
        let target = match call.action {
            FinalAction::Cancel => "CANCELLED",
            FinalAction::Pause => "PAUSED",
            FinalAction::MarkUnpaid | FinalAction::Leave => {
                return Ok(FinalOutcome::unsupported(call.action));
            }
        };
        let contract = contract_of(call.subscription_id.as_deref(), call.cycle_id.as_deref())
            .ok_or_else(|| missing("subscription_id (Appstle contractId)"))?;
        if call.resend {
            let status = self.contract_status(contract).await?;
            if let Some(why) = already_done(call.action, target, &status) {
                return Ok(FinalOutcome::AlreadyDone(why));
            }
        }
        let request = if call.action == FinalAction::Cancel {
            let route = ["api", "external", "v2", "subscription-contracts", contract];
            (self.api.request(Method::DELETE, &route)?)
                .query(&[("cancellationNote", CANCELLATION_NOTE)])
        } else {
            let route = [
                "api",
                "external",
                "v2",
                "subscription-contracts-update-status",
            ];
            (self.api.request(Method::PUT, &route)?)
                .query(&[("contractId", contract), ("status", target)])
        };
        let (status, wait, body) = exchange(request, self.api.answer_cap()).await?;
        if status.is_success() {
            Ok(FinalOutcome::Done(format!("contract {target}")))
        } else {
            Err(error(status, wait, &body))
        }
    }

    /// The contract's status (`contract-raw-response`), upper case, `CANCELED` spelled
    /// `CANCELLED`: at the top level, or under `subscriptionContract` or
    /// `data.subscriptionContract`, whichever the answer has.
    async fn contract_status(&self, contract: &str) -> Result<String, ProviderApiError> {
        let route = ["api", "external", "v2", "contract-raw-response"];
        let request = (self.api.request(Method::GET, &route)?).query(&[("contractId", contract)]);
        let answer = read(request, "Appstle", self.api.answer_cap()).await?;
        let unreadable = |what: String| ProviderApiError::Rejected {
            status: 200,
            message: snippet(&what),
        };
        let json: Value = serde_json::from_str(&answer.body)
            .map_err(|e| unreadable(format!("not an Appstle contract: {e}")))?;
        let status = [
            &json,
            &json["subscriptionContract"],
            &json["data"]["subscriptionContract"],
        ]
        .into_iter()
        .find_map(|c| c.get("status")?.as_str())
        .ok_or_else(|| unreadable(format!("contract {contract} names no status")))?;
        let status = status.trim().to_ascii_uppercase();
        Ok(if status == "CANCELED" {
            "CANCELLED".to_owned()
        } else {
            status
        })
    }
}

/// Appstle's contract id of a call: its subscription id (`contractId`, or the contract's
/// gid), else the contract part of its cycle id (`{contractId}@{billingDate}`).
fn contract_of<'a>(subscription_id: Option<&'a str>, cycle_id: Option<&'a str>) -> Option<&'a str> {
    [subscription_id, cycle_id]
        .into_iter()
        .flatten()
        .find_map(|id| contract_number(id.split('@').next().unwrap_or(id)))
}

/// The fields of a listed attempt the check reads.
struct Seen {
    id: Option<String>,
    status: Option<String>,
    attempt_time: Option<DateTime<Utc>>,
}

impl Seen {
    fn read(attempt: &Attempt) -> Self {
        let text = |field: &str| -> Option<String> {
            let raw = attempt.get(field)?.get();
            match serde_json::from_str::<serde_json::Value>(raw).ok()? {
                serde_json::Value::String(s) => Some(s),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        };
        Self {
            id: text("id"),
            status: text("status"),
            attempt_time: text("attemptTime")
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc)),
        }
    }
}

impl RetryClient for AppstleClient {
    fn retry<'a>(
        &'a self,
        call: &'a RetryCall,
    ) -> BoxFuture<'a, Result<CallOutcome, ProviderApiError>> {
        Box::pin(async move { self.attempt(call).await })
    }

    /// No idempotency key: a send that failed in transit may have reached Appstle.
    fn resends_safely(&self) -> bool {
        false
    }
}

impl FinalActionClient for AppstleClient {
    fn final_action<'a>(
        &'a self,
        call: &'a FinalCall,
    ) -> BoxFuture<'a, Result<FinalOutcome, ProviderApiError>> {
        Box::pin(self.end(call))
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
    if status.is_success() {
        return Ok(CallOutcome::Accepted);
    }
    Err(error(status, wait, body))
}

/// An unsuccessful answer: 5xx `Transient`, 429 `RateLimited`, 401/403 an authentication
/// failure (the body is not echoed), anything else `Rejected` with Appstle's reason.
fn error(status: StatusCode, wait: Option<Duration>, body: &str) -> ProviderApiError {
    let code = status.as_u16();
    if status.is_server_error() {
        return ProviderApiError::Transient(format!("appstle {code}"));
    }
    match code {
        429 => ProviderApiError::RateLimited { retry_after: wait },
        401 | 403 => auth_failed(code),
        _ => {
            let error: ErrorBody = serde_json::from_str(body).unwrap_or_default();
            let message = error
                .detail
                .or(error.message)
                .or(error.title)
                .map(|m| snippet(&m))
                .unwrap_or_else(|| snippet(body));
            ProviderApiError::Rejected {
                status: code,
                message,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use wiremock::matchers::{header, header_exists, method, path, query_param};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::providers::testing::api_settings;

    const TOKEN: &str = "apst_secret123";
    const ROUTE: &str = "/api/external/v2/subscription-billing-attempts/attempt-billing/98765";
    const PAST_ORDERS: &str = "/api/external/v2/subscription-billing-attempts/past-orders";

    /// The contract's past orders (of contract 1, the test call's): `attempts` on the first
    /// page, as `getPastOrdersV2` answers (a JSON array of billing attempts).
    async fn past_orders(server: &MockServer, attempts: Value) {
        Mock::given(method("GET"))
            .and(path(PAST_ORDERS))
            .and(header("x-api-key", TOKEN))
            .and(query_param("contractId", "1"))
            .and(query_param("page", "0"))
            .respond_with(ResponseTemplate::new(200).set_body_json(attempts))
            .mount(server)
            .await;
    }

    /// A billing attempt as Appstle lists it (the fact sheet's fields).
    fn listed(id: u64, status: &str, tried: DateTime<Utc>) -> Value {
        json!({
            "id": id, "shop": "demo.myshopify.com", "contractId": 1, "status": status,
            "billingDate": "2026-12-01T09:00:00Z", "attemptCount": 1,
            "attemptTime": tried.to_rfc3339(), "orderAmount": 49.95, "retryingNeeded": true,
        })
    }

    /// A server whose past orders are `attempts` and whose `attempt-billing` must be
    /// called `sends` times (answering 200).
    async fn appstle(attempts: Value, sends: u64) -> MockServer {
        let server = MockServer::start().await;
        past_orders(&server, attempts).await;
        Mock::given(method("PUT"))
            .and(path(ROUTE))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(json!({"id": 98765, "status": "QUEUED"})),
            )
            .expect(sends)
            .mount(&server)
            .await;
        server
    }

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
            previous_send_at: None,
        }
    }

    async fn answer(response: ResponseTemplate) -> Result<CallOutcome, ProviderApiError> {
        let server = MockServer::start().await;
        past_orders(&server, json!([])).await;
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
        past_orders(&server, json!([])).await;
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

    #[tokio::test]
    async fn an_attempt_under_way_or_paid_is_followed_not_sent_again() {
        let now = Utc::now();
        for (status, expected) in [
            ("QUEUED", CallOutcome::InProgress),
            ("PROGRESS", CallOutcome::InProgress),
            ("SUCCESS", CallOutcome::Charged),
        ] {
            let server = appstle(json!([listed(98765, status, now)]), 0).await;
            let outcome = client(&server, 2_000).retry(&call()).await;
            assert_eq!(outcome, Ok(expected), "{status}");
            server.verify().await;
        }
    }

    /// A re-send (the first send timed out, or the process died during it) reads what
    /// happened since the first send: an attempt tried at or after it is the first send's.
    #[tokio::test]
    async fn a_resend_follows_an_attempt_tried_since_the_first_send() {
        let sent = Utc::now() - TimeDelta::minutes(5);
        let resend = RetryCall {
            previous_send_at: Some(sent),
            ..call()
        };
        let after = appstle(
            json!([listed(98765, "FAILURE", sent + TimeDelta::seconds(20))]),
            0,
        )
        .await;
        assert_eq!(
            client(&after, 2_000).retry(&resend).await,
            Ok(CallOutcome::InProgress)
        );
        after.verify().await;
        let before = appstle(
            json!([listed(98765, "FAILURE", sent - TimeDelta::days(1))]),
            1,
        )
        .await;
        assert_eq!(
            client(&before, 2_000).retry(&resend).await,
            Ok(CallOutcome::Accepted),
            "the first send never reached Appstle: send"
        );
        before.verify().await;
    }

    #[tokio::test]
    async fn five_attempts_in_the_last_hour_wait_for_the_oldest_to_age() {
        let now = Utc::now();
        let tried = |minutes_ago: i64| now - TimeDelta::minutes(minutes_ago);
        let five: Vec<Value> = (1..=5)
            .map(|i| listed(500 + i as u64, "FAILURE", tried(10 * i)))
            .chain([listed(98765, "FAILURE", tried(600))])
            .collect();
        let server = appstle(Value::Array(five), 0).await;
        match client(&server, 2_000).retry(&call()).await {
            Err(ProviderApiError::RateLimited {
                retry_after: Some(wait),
            }) => {
                // The oldest of the five was tried 50 minutes ago: 10 minutes to wait.
                let expected = Duration::from_secs(600);
                assert!(
                    wait <= expected && wait + Duration::from_secs(30) > expected,
                    "{wait:?}"
                );
            }
            other => panic!("expected a rate limit, got {other:?}"),
        }
        server.verify().await;
        let four: Vec<Value> = (1..=4)
            .map(|i| listed(500 + i as u64, "FAILURE", tried(10 * i)))
            .chain([listed(98765, "FAILURE", tried(600))])
            .collect();
        let server = appstle(Value::Array(four), 1).await;
        assert_eq!(
            client(&server, 2_000).retry(&call()).await,
            Ok(CallOutcome::Accepted)
        );
        server.verify().await;
    }

    #[tokio::test]
    async fn past_orders_that_cannot_be_read_send_nothing() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path(PAST_ORDERS))
            .respond_with(ResponseTemplate::new(503))
            .mount(&server)
            .await;
        Mock::given(method("PUT"))
            .respond_with(ResponseTemplate::new(200))
            .expect(0)
            .mount(&server)
            .await;
        assert!(matches!(
            client(&server, 2_000).retry(&call()).await,
            Err(ProviderApiError::Transient(_))
        ));
        server.verify().await;
    }

    #[test]
    fn appstle_is_never_resent_within_a_pass() {
        let server_less = AppstleClient::new(
            &api_settings("http://127.0.0.1:9/", TOKEN),
            crate::providers::http::http_client().unwrap(),
        );
        assert!(!server_less.resends_safely());
    }

    const CANCEL: &str = "/api/external/v2/subscription-contracts/1";
    const UPDATE_STATUS: &str = "/api/external/v2/subscription-contracts-update-status";
    const CONTRACT: &str = "/api/external/v2/contract-raw-response";

    fn final_call(action: FinalAction, resend: bool) -> FinalCall {
        FinalCall {
            action,
            attempt_id: "98765".into(),
            cycle_id: Some("1@2026-12-01T09:00:00Z".into()),
            subscription_id: Some("gid://shopify/SubscriptionContract/1".into()),
            idempotency_key: "subsync-final-0123456789abcdef".into(),
            resend,
            at_period_end: true,
        }
    }

    /// Contract 1's raw response, read `reads` times.
    async fn contract(server: &MockServer, response: ResponseTemplate, reads: u64) {
        Mock::given(method("GET"))
            .and(path(CONTRACT))
            .and(header("x-api-key", TOKEN))
            .and(query_param("contractId", "1"))
            .respond_with(response)
            .expect(reads)
            .mount(server)
            .await;
    }

    fn in_status(status: &str) -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json(json!({
            "__typename": "SubscriptionContract",
            "id": "gid://shopify/SubscriptionContract/1", "status": status,
        }))
    }

    /// `action`'s request, checked (method, route, key header, query), answering
    /// `response`, sent `sends` times: the cancel a `DELETE` with its note, the pause a
    /// `PUT` with the contract and the status in the query.
    async fn action_call(
        server: &MockServer,
        action: FinalAction,
        response: ResponseTemplate,
        sends: u64,
    ) {
        let mock = if action == FinalAction::Cancel {
            Mock::given(method("DELETE"))
                .and(path(CANCEL))
                .and(query_param("cancellationNote", CANCELLATION_NOTE))
        } else {
            Mock::given(method("PUT"))
                .and(path(UPDATE_STATUS))
                .and(query_param("contractId", "1"))
                .and(query_param("status", "PAUSED"))
        };
        mock.and(header("x-api-key", TOKEN))
            .respond_with(response)
            .expect(sends)
            .mount(server)
            .await;
    }

    /// Both actions' requests, each sent `sends` times.
    async fn final_calls(server: &MockServer, sends: u64) {
        for action in [FinalAction::Cancel, FinalAction::Pause] {
            action_call(server, action, ResponseTemplate::new(200), sends).await;
        }
    }

    /// One first send of `action` on a server answering `response` to it (no read).
    async fn final_answer(
        action: FinalAction,
        response: ResponseTemplate,
    ) -> Result<FinalOutcome, ProviderApiError> {
        let server = MockServer::start().await;
        contract(&server, in_status("ACTIVE"), 0).await;
        action_call(&server, action, response, 1).await;
        let outcome = client(&server, 2_000)
            .final_action(&final_call(action, false))
            .await;
        server.verify().await;
        outcome
    }

    /// A first send: no read (the scheduler checked the ledger), the action's one request,
    /// `Done`; no idempotency header is invented. `at_period_end` changes nothing.
    #[tokio::test]
    async fn cancel_deletes_and_pause_updates_the_status() {
        let paused = ResponseTemplate::new(200).set_body_json(json!({"id": 1, "status": "PAUSED"}));
        for (action, answer, done) in [
            (
                FinalAction::Cancel,
                ResponseTemplate::new(204),
                "contract CANCELLED",
            ),
            (FinalAction::Pause, paused, "contract PAUSED"),
        ] {
            let server = MockServer::start().await;
            Mock::given(header_exists("idempotency-key"))
                .respond_with(ResponseTemplate::new(599))
                .expect(0)
                .mount(&server)
                .await;
            contract(&server, in_status("ACTIVE"), 0).await;
            action_call(&server, action, answer, 1).await;
            let outcome = client(&server, 2_000)
                .final_action(&final_call(action, false))
                .await;
            assert_eq!(outcome, Ok(FinalOutcome::Done(done.into())));
            server.verify().await;
        }
    }

    /// The exact requests as they leave: method, route, the whole query, no body.
    #[tokio::test]
    async fn the_final_requests_are_the_documented_ones() {
        for action in [FinalAction::Cancel, FinalAction::Pause] {
            let server = MockServer::start().await;
            Mock::given(wiremock::matchers::any())
                .respond_with(ResponseTemplate::new(200))
                .mount(&server)
                .await;
            let outcome = client(&server, 2_000)
                .final_action(&final_call(action, false))
                .await;
            assert!(outcome.is_ok(), "{action:?}: {outcome:?}");
            let requests = server.received_requests().await.unwrap();
            assert_eq!(requests.len(), 1);
            let request = &requests[0];
            let query: Vec<(String, String)> = request.url.query_pairs().into_owned().collect();
            let pairs = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
                (pairs.iter())
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            };
            if action == FinalAction::Cancel {
                assert_eq!(request.method.as_str(), "DELETE");
                assert_eq!(request.url.path(), CANCEL);
                assert_eq!(query, pairs(&[("cancellationNote", CANCELLATION_NOTE)]));
            } else {
                assert_eq!(request.method.as_str(), "PUT");
                assert_eq!(request.url.path(), UPDATE_STATUS);
                assert_eq!(query, pairs(&[("contractId", "1"), ("status", "PAUSED")]));
            }
            assert!(request.body.is_empty());
            assert_eq!(request.headers.get("x-api-key").unwrap(), TOKEN);
        }
        assert!(CANCELLATION_NOTE.chars().count() <= 1000);
    }

    #[tokio::test]
    async fn mark_unpaid_is_unsupported_without_a_request() {
        let server = MockServer::start().await;
        Mock::given(wiremock::matchers::any())
            .respond_with(ResponseTemplate::new(200))
            .expect(0)
            .mount(&server)
            .await;
        for action in [FinalAction::MarkUnpaid, FinalAction::Leave] {
            assert_eq!(
                client(&server, 2_000)
                    .final_action(&final_call(action, true))
                    .await,
                Ok(FinalOutcome::unsupported(action))
            );
        }
    }

    /// A re-send reads the contract first: a status already reached, or a contract that
    /// has ended, sends nothing; any case, `CANCELED`, and the answer nested under
    /// `data.subscriptionContract` are read too.
    #[tokio::test]
    async fn a_resend_that_finds_the_state_reached_sends_nothing() {
        let ended = |status: &str, action: &str| {
            format!("contract {status}: it has ended, nothing left to {action}")
        };
        let nested = ResponseTemplate::new(200).set_body_json(
            json!({"data": {"subscriptionContract": {"id": "1", "status": "PAUSED"}}}),
        );
        let cases = [
            (
                FinalAction::Cancel,
                in_status("CANCELLED"),
                "contract CANCELLED".to_owned(),
            ),
            (
                FinalAction::Cancel,
                in_status("canceled"),
                "contract CANCELLED".to_owned(),
            ),
            (
                FinalAction::Cancel,
                in_status("EXPIRED"),
                ended("EXPIRED", "cancel"),
            ),
            (
                FinalAction::Pause,
                in_status("paused"),
                "contract PAUSED".to_owned(),
            ),
            (FinalAction::Pause, nested, "contract PAUSED".to_owned()),
            (
                FinalAction::Pause,
                in_status("CANCELLED"),
                ended("CANCELLED", "pause"),
            ),
            (
                FinalAction::Pause,
                in_status("EXPIRED"),
                ended("EXPIRED", "pause"),
            ),
        ];
        for (action, read, why) in cases {
            let server = MockServer::start().await;
            contract(&server, read, 1).await;
            final_calls(&server, 0).await;
            let outcome = client(&server, 2_000)
                .final_action(&final_call(action, true))
                .await;
            assert_eq!(outcome, Ok(FinalOutcome::AlreadyDone(why)));
            server.verify().await;
        }
    }

    /// A re-send that finds the contract still ACTIVE sends the action; one whose read
    /// fails, or names no status, sends nothing.
    #[tokio::test]
    async fn a_resend_sends_only_after_reading_a_live_contract() {
        let server = MockServer::start().await;
        contract(&server, in_status("ACTIVE"), 1).await;
        Mock::given(method("DELETE"))
            .and(path(CANCEL))
            .respond_with(ResponseTemplate::new(204))
            .expect(1)
            .mount(&server)
            .await;
        let cancel = final_call(FinalAction::Cancel, true);
        assert_eq!(
            client(&server, 2_000).final_action(&cancel).await,
            Ok(FinalOutcome::Done("contract CANCELLED".into()))
        );
        server.verify().await;

        let no_status = ResponseTemplate::new(200).set_body_json(json!({"id": 1}));
        let mut outcomes = Vec::new();
        for read in [ResponseTemplate::new(503), no_status] {
            let server = MockServer::start().await;
            contract(&server, read, 1).await;
            final_calls(&server, 0).await;
            outcomes.push(client(&server, 2_000).final_action(&cancel).await);
            server.verify().await;
        }
        assert!(
            matches!(outcomes[0], Err(ProviderApiError::Transient(_))),
            "{:?}",
            outcomes[0]
        );
        assert_eq!(
            outcomes[1],
            Err(ProviderApiError::Rejected {
                status: 200,
                message: "contract 1 names no status".into()
            })
        );
    }

    #[tokio::test]
    async fn final_action_answers_are_mapped() {
        let detail = "Minimum number of orders not reached for this subscription";
        let refused = ResponseTemplate::new(400)
            .set_body_json(json!({"title": "Bad Request", "status": 400, "detail": detail}));
        assert_eq!(
            final_answer(FinalAction::Cancel, refused).await,
            Err(ProviderApiError::Rejected {
                status: 400,
                message: detail.into()
            })
        );
        for action in [FinalAction::Cancel, FinalAction::Pause] {
            assert!(matches!(
                final_answer(action, ResponseTemplate::new(502)).await,
                Err(ProviderApiError::Transient(_))
            ));
            let limited = ResponseTemplate::new(429).insert_header("Retry-After", "30");
            assert_eq!(
                final_answer(action, limited).await,
                Err(ProviderApiError::RateLimited {
                    retry_after: Some(Duration::from_secs(30))
                })
            );
            for status in [401, 403] {
                let echo =
                    ResponseTemplate::new(status).set_body_string(format!("invalid key {TOKEN}"));
                match final_answer(action, echo).await {
                    Err(ProviderApiError::Rejected { status: s, message }) => {
                        assert_eq!(s, status);
                        assert!(!message.contains(TOKEN), "{message}");
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    }

    /// The contract comes from the subscription id (a bare number or a gid), else from
    /// the cycle id; without one the action is final and nothing is sent.
    #[tokio::test]
    async fn the_contract_id_comes_from_the_call() {
        assert_eq!(contract_of(Some("1"), None), Some("1"));
        assert_eq!(
            contract_of(Some("gid://shopify/SubscriptionContract/1"), Some("2@x")),
            Some("1")
        );
        assert_eq!(contract_of(None, Some("7@2026-12-01T09:00:00Z")), Some("7"));
        assert_eq!(contract_of(Some("not-a-contract"), None), None);

        let server = MockServer::start().await;
        Mock::given(wiremock::matchers::any())
            .respond_with(ResponseTemplate::new(200))
            .expect(0)
            .mount(&server)
            .await;
        let mut without = final_call(FinalAction::Cancel, true);
        without.subscription_id = None;
        without.cycle_id = None;
        assert!(matches!(
            client(&server, 2_000).final_action(&without).await,
            Err(ProviderApiError::Rejected { status: 0, .. })
        ));
    }
}
