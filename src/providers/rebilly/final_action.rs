//! Rebilly's final actions, through the merchant API (`REB-APIKEY`, the list's endpoint).
//! Rebilly dunns on its side, so subsync only tracks its failures; one whose order Rebilly
//! has not settled by `retry.provider_managed_secs` ends with the policy's final action,
//! carried out here (operations of Rebilly/api-definitions):
//!
//! - every action first reads the order, `GET /subscriptions/{id}` (`GetSubscription`): an
//!   order `canceled` or `churned` has nothing left to stop, and one `paused` nothing to
//!   pause (`AlreadyDone`). Rebilly's definitions declare no idempotency key, so this read
//!   is also what keeps a re-send after a crash from acting twice;
//! - `cancel`: `POST /order-cancellations` (`PostOrderCancellation`) with `orderId`,
//!   `canceledBy: merchant`, `reason: billing-failure` and `churnTimePolicy: now`, or
//!   `at-next-renewal` with `retry.cancel_at_period_end`;
//! - `pause`: `POST /order-pauses` (`PostOrderPause`) with `orderId` and `pausedBy: merchant`
//!   (no `effectiveTime`: at once; no `endTime`: until resumed);
//! - `mark_unpaid`: unsupported (the invoice's dunning is Rebilly's own).
//!
//! Answers: 201 is `Done` with the created resource's `status`; 401/403 an authentication
//! failure; 429 `RateLimited`; 5xx and transport failures `Transient`; 404 and 422 (and any
//! other) `Rejected` with Rebilly's message.

use futures_util::future::BoxFuture;
use reqwest::Method;
use reqwest::header::HeaderName;
use serde::Deserialize;
use serde_json::json;

use crate::config::{ApiSettings, FinalAction};
use crate::providers::contract::{FinalActionClient, FinalCall, FinalOutcome};
use crate::providers::http::{
    Credential, Endpoint, ProviderApiError, ProviderHttp, auth_failed, exchange, required, snippet,
};

const API_KEY: HeaderName = HeaderName::from_static("reb-apikey");

/// Cancels or pauses a Rebilly order (`FinalCall::subscription_id`).
pub struct RebillyFinal {
    api: Endpoint,
}

/// The fields of `Subscription` (an order) and of the created resources that are read.
#[derive(Deserialize)]
struct Status {
    status: Option<String>,
}

/// Rebilly's error body (`message`, or `detail` of a problem document).
#[derive(Deserialize, Default)]
struct ErrorBody {
    message: Option<String>,
    detail: Option<String>,
}

impl RebillyFinal {
    pub fn new(api: &ApiSettings, http: ProviderHttp) -> Self {
        Self {
            api: Endpoint::new(api, http, Credential::Header(API_KEY)),
        }
    }

    async fn send(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<serde_json::Value>,
    ) -> Result<Status, ProviderApiError> {
        let mut request = self.api.request(method, segments)?;
        if let Some(body) = body {
            request = request.json(&body);
        }
        let (status, wait, body) = exchange(request, self.api.answer_cap()).await?;
        let code = status.as_u16();
        if status.is_success() {
            return serde_json::from_str(&body)
                .map_err(|_| ProviderApiError::Transient(format!("unreadable answer ({code})")));
        }
        let error = serde_json::from_str::<ErrorBody>(&body).unwrap_or_default();
        let message = error
            .message
            .or(error.detail)
            .unwrap_or_else(|| snippet(&body));
        Err(match code {
            500.. => ProviderApiError::Transient(format!("rebilly {code}")),
            429 => ProviderApiError::RateLimited { retry_after: wait },
            401 | 403 => auth_failed(code),
            _ => ProviderApiError::Rejected {
                status: code,
                message: snippet(&message),
            },
        })
    }

    async fn finish(&self, call: &FinalCall) -> Result<FinalOutcome, ProviderApiError> {
        let (path, body) = match call.action {
            FinalAction::Cancel => {
                let when = if call.at_period_end {
                    "at-next-renewal"
                } else {
                    "now"
                };
                let body = json!({ "canceledBy": "merchant", "reason": "billing-failure",
                                   "churnTimePolicy": when });
                ("order-cancellations", body)
            }
            FinalAction::Pause => ("order-pauses", json!({ "pausedBy": "merchant" })),
            FinalAction::MarkUnpaid | FinalAction::Leave => {
                return Ok(FinalOutcome::unsupported(call.action));
            }
        };
        let order = required(
            call.subscription_id.as_deref(),
            "subscription_id (Rebilly order)",
        )?;
        let read = self
            .send(Method::GET, &["subscriptions", order], None)
            .await?;
        let status = read.status.unwrap_or_default();
        let ended = matches!(status.as_str(), "canceled" | "churned");
        if ended || (call.action == FinalAction::Pause && status == "paused") {
            return Ok(FinalOutcome::AlreadyDone(format!("order {status}")));
        }
        let mut body = body;
        body["orderId"] = json!(order);
        let created = self.send(Method::POST, &[path], Some(body)).await?;
        let kind = path.trim_end_matches('s').replace('-', " ");
        let state = created.status.unwrap_or_else(|| "created".into());
        Ok(FinalOutcome::Done(format!("{kind} {state}")))
    }
}

impl FinalActionClient for RebillyFinal {
    fn final_action<'a>(
        &'a self,
        call: &'a FinalCall,
    ) -> BoxFuture<'a, Result<FinalOutcome, ProviderApiError>> {
        Box::pin(self.finish(call))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use wiremock::matchers::{body_partial_json, header, method, path};
    use wiremock::{Mock, MockServer, Request, ResponseTemplate};

    use super::*;
    use crate::providers::rebilly::webhook::definitions::definitions;
    use crate::providers::testing::api_settings;

    const KEY: &str = "sk_sandbox_final";

    fn call(action: FinalAction) -> FinalCall {
        FinalCall {
            action,
            attempt_id: "txn_1".into(),
            cycle_id: Some("inv_1".into()),
            subscription_id: Some("ord_1".into()),
            idempotency_key: "subsync-final-x".into(),
            resend: false,
            at_period_end: false,
        }
    }

    /// A fake whose order `ord_1` is in `status`; `POST /order-pauses` answers `paused`
    /// (the request body checked against `OrderPause`).
    async fn rebilly(status: &str, pauses: u64) -> MockServer {
        let server = MockServer::start().await;
        let order = definitions().answer(
            "/subscriptions/{id}",
            "get",
            "200",
            &[("id", json!("ord_1")), ("status", json!(status))],
        );
        Mock::given(method("GET"))
            .and(path("/subscriptions/ord_1"))
            .and(header("reb-apikey", KEY))
            .respond_with(ResponseTemplate::new(200).set_body_json(order))
            .mount(&server)
            .await;
        let pause = definitions().answer(
            "/order-pauses",
            "post",
            "201",
            &[("orderId", json!("ord_1")), ("status", json!("ongoing"))],
        );
        Mock::given(method("POST"))
            .and(path("/order-pauses"))
            .and(body_partial_json(
                json!({"orderId": "ord_1", "pausedBy": "merchant"}),
            ))
            .and(|request: &Request| {
                let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
                definitions()
                    .request_problems("/order-pauses", "post", &body)
                    .is_empty()
            })
            .respond_with(ResponseTemplate::new(201).set_body_json(pause))
            .expect(pauses)
            .mount(&server)
            .await;
        server
    }

    fn client(server: &MockServer) -> RebillyFinal {
        let api = api_settings(format!("{}/", server.uri()), KEY);
        RebillyFinal::new(&api, crate::providers::http::http_client().unwrap())
    }

    #[tokio::test]
    async fn pause_posts_an_order_pause() {
        let server = rebilly("active", 1).await;
        let outcome = client(&server).finish(&call(FinalAction::Pause)).await;
        assert_eq!(
            outcome,
            Ok(FinalOutcome::Done("order pause ongoing".into()))
        );
        server.verify().await;
    }

    #[tokio::test]
    async fn an_order_already_there_or_ended_gets_no_request() {
        for (status, action) in [
            ("paused", FinalAction::Pause),
            ("canceled", FinalAction::Pause),
            ("churned", FinalAction::Cancel),
        ] {
            let server = rebilly(status, 0).await;
            let outcome = client(&server).finish(&call(action)).await;
            assert_eq!(
                outcome,
                Ok(FinalOutcome::AlreadyDone(format!("order {status}")))
            );
            server.verify().await;
        }
    }

    #[tokio::test]
    async fn mark_unpaid_is_unsupported_and_refusals_keep_rebillys_words() {
        let server = rebilly("active", 0).await;
        let outcome = client(&server).finish(&call(FinalAction::MarkUnpaid)).await;
        assert!(
            matches!(outcome, Ok(FinalOutcome::Unsupported(_))),
            "{outcome:?}"
        );
        assert!(server.received_requests().await.unwrap().is_empty());

        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"status": "active"})))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(422)
                    .set_body_json(json!({"message": "Order cannot be canceled"})),
            )
            .mount(&server)
            .await;
        let outcome = client(&server).finish(&call(FinalAction::Cancel)).await;
        assert_eq!(
            outcome,
            Err(ProviderApiError::Rejected {
                status: 422,
                message: "Order cannot be canceled".into()
            })
        );
    }
}
