//! Polar: retries a failed renewal with "Confirm Retry Payment", `POST
//! /v1/customer-portal/orders/{id}/confirm-payment`, whose security is a customer session
//! (`customer_session` / `member_session`, scope `customer_portal:write`), never an
//! organization token. So one retry is up to three calls:
//!
//! 1. `GET /v1/orders/{id}` with the organization token (`api.token`, scope
//!    `orders:read`): the order's `status`, `customer_id` and
//!    `customer.default_payment_method_id`. An order that is no longer `pending` has
//!    nothing to retry (`NotEligible`, no further call).
//! 2. `POST /v1/customer-sessions/` `{"customer_id": ...}` with the organization token
//!    (scope `customer_sessions:write`): 201 `CustomerSession` with `token` and
//!    `expires_at`. Sessions are cached per customer until a minute before `expires_at`
//!    (the definitions give no lifetime but that field), so retries of one customer's
//!    orders mint one session; a session refused with 401/403 is dropped from the cache.
//! 3. confirm-payment with `Authorization: Bearer <session token>` and the body
//!    `{"payment_method_id", "payment_processor": "stripe"}` (`CustomerOrderConfirmPayment`:
//!    a saved method, never also a `confirmation_token_id`). The method is
//!    `api.payment_method_id` when configured, else the customer's default; with neither
//!    nothing is sent (`Rejected`, status 0: the customer has to add a payment method,
//!    and the next retry looks again).
//!
//! Answers of confirm-payment (`CustomerOrderPaymentConfirmation.status` is an untyped
//! string; its values are Polar's server's):
//!
//! | answer | outcome |
//! |---|---|
//! | 200 `succeeded` | `Charged` |
//! | 200 `requires_action` | `RequiresAction` |
//! | 200 `failed` | `Declined` with the answer's `error` as message |
//! | 200 `processing` / `pending` | `InProgress` (the outcome arrives by webhook) |
//! | 200 another word | `Transient` (the same call later), counted |
//! | 409 `PaymentAlreadyInProgress` | `InProgress` |
//! | 422 `OrderNotEligibleForRetry` | `NotEligible(detail)`, or `Declined` (below) |
//! | 422 with another `error` or a list `detail` (request validation) | `Rejected` |
//! | 429 `ManualRetryLimitExceeded` | `NotEligible(detail)`: a cap on manual retries of the order, waiting does not help |
//! | 429 otherwise (the API's rate limit) | `RateLimited` with `Retry-After` |
//! | 401, 403 | `Rejected`, the body not echoed |
//! | 404 `ResourceNotFound`, other 4xx | `Rejected` |
//! | 5xx, no answer | `Transient` |
//!
//! The 422 is documented as "Order not eligible for retry or payment confirmation failed"
//! with one schema (`error` = `OrderNotEligibleForRetry`, `detail` free text), so only the
//! `detail` tells the two apart. Decided: a `detail` that says "not eligible" (Polar's own
//! text is "Order … is not eligible for payment retry.") is `NotEligible`; one that speaks
//! of a failure or a decline ("fail", "declin") without saying "not eligible" is a payment
//! confirmation that failed, `Declined` with the detail as message (its bucket then comes
//! from the policy: no code, `declined`); any other detail is `NotEligible`, as the error's
//! name says. A 422 with another `error` than the declared one (or a validation list) is
//! about our request, not the order: `Rejected`.
//!
//! Polar's guard against a double charge is its 409 `PaymentAlreadyInProgress`; an
//! `Idempotency-Key` header is sent as well but the operation declares no such parameter.
//!
//! Final actions (`subscriptions:revoke` / `subscriptions:update`), after reading the order
//! (`paid`, `refunded` or `partially_refunded` → [`FinalOutcome::Paid`], nothing changed):
//! - `cancel`: `DELETE /v1/subscriptions/{id}` (revoke now), or with `at_period_end`
//!   `PATCH` `SubscriptionCancel` `{"cancel_at_period_end": true}`;
//! - `pause`: `PATCH` `SubscriptionPause` `{"pause_at_period_end": false}`. Assumed: `false`
//!   pauses now (the definition says only that `true` pauses at the period's end); a
//!   subscription Polar will not pause (403: "not active") is refused with its words;
//! - `mark_unpaid`: unsupported (Polar has no such state for an order).
//!
//! A 403 `AlreadyCanceledSubscription` is `AlreadyDone` (a re-send after a crash, or a
//! subscription cancelled meanwhile): revoking twice changes nothing. 409
//! `SubscriptionLocked` ("pending an update") is transient. The answer's `Subscription`
//! gives the state recorded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures_util::future::BoxFuture;
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::{ApiSettings, FinalAction};
use crate::providers::contract::{
    CallOutcome, FinalActionClient, FinalCall, FinalOutcome, RetryCall, RetryClient,
};
use crate::providers::http::{
    Credential, Endpoint, ProviderApiError, ProviderHttp, auth_failed, exchange, read, required,
    snippet,
};

/// A cached session is used until this long before its `expires_at`.
const SESSION_MARGIN: TimeDelta = TimeDelta::seconds(60);

/// Retries a failed Polar order (`RetryCall::cycle_id` = the order id).
pub struct PolarClient {
    /// The organization token's endpoint.
    api: Endpoint,
    /// The settings again, to build a customer session's endpoint (same base URL, timeout
    /// and answer cap, the session's token).
    settings: ApiSettings,
    http: ProviderHttp,
    payment_method_id: Option<String>,
    /// Customer id → its session.
    sessions: Mutex<HashMap<String, Session>>,
}

#[derive(Clone)]
struct Session {
    token: SecretString,
    expires_at: DateTime<Utc>,
}

/// The fields of `Order` a retry reads.
#[derive(Deserialize)]
struct OrderState {
    status: String,
    customer_id: String,
    customer: Option<OrderCustomer>,
}

/// `OrderCustomer`.
#[derive(Deserialize)]
struct OrderCustomer {
    default_payment_method_id: Option<String>,
}

/// `CustomerSession` (the fields used).
#[derive(Deserialize)]
struct CustomerSession {
    token: String,
    expires_at: DateTime<Utc>,
}

impl PolarClient {
    pub fn new(api: &ApiSettings, http: ProviderHttp) -> Self {
        Self {
            payment_method_id: api.payment_method_id.clone().filter(|id| !id.is_empty()),
            api: Endpoint::new(api, http.clone(), Credential::Authorization("Bearer")),
            settings: api.clone(),
            http,
            sessions: Mutex::default(),
        }
    }

    async fn confirm(&self, call: &RetryCall) -> Result<CallOutcome, ProviderApiError> {
        let order_id = required(call.cycle_id.as_deref(), "cycle_id (Polar order id)")?;
        let order = self.order(order_id).await?;
        if order.status != "pending" {
            return Ok(CallOutcome::NotEligible(format!(
                "the order is {}: nothing to retry",
                snippet(&order.status)
            )));
        }
        let method = self
            .payment_method_id
            .clone()
            .or_else(|| order.customer.and_then(|c| c.default_payment_method_id))
            .filter(|id| !id.is_empty())
            .ok_or_else(|| ProviderApiError::Rejected {
                status: 0,
                message: "no payment method: api.payment_method_id is not set and the \
                          order's customer has no default payment method"
                    .to_owned(),
            })?;
        let session = self.session(&order.customer_id).await?;
        let portal = Endpoint::new(
            &ApiSettings {
                token: session.token,
                ..self.settings.clone()
            },
            self.http.clone(),
            Credential::Authorization("Bearer"),
        );
        let request = portal.request(
            Method::POST,
            &[
                "v1",
                "customer-portal",
                "orders",
                order_id,
                "confirm-payment",
            ],
        )?;
        // Exactly one of `payment_method_id` / `confirmation_token_id`: never both.
        let body = json!({ "payment_method_id": method, "payment_processor": "stripe" });
        let (status, wait, body) = exchange(
            request
                .header("Idempotency-Key", call.idempotency_key.as_str())
                .json(&body),
            portal.answer_cap(),
        )
        .await?;
        if matches!(status.as_u16(), 401 | 403) {
            self.forget(&order.customer_id);
        }
        classify(status, wait, &body)
    }

    /// `GET /v1/orders/{id}`.
    async fn order(&self, id: &str) -> Result<OrderState, ProviderApiError> {
        let request = self.api.request(Method::GET, &["v1", "orders", id])?;
        let answer = read(request, "Polar", self.api.answer_cap()).await?;
        serde_json::from_str(&answer.body).map_err(|e| ProviderApiError::Rejected {
            status: 200,
            message: format!("not a Polar order: {e}"),
        })
    }

    async fn finish(&self, call: &FinalCall) -> Result<FinalOutcome, ProviderApiError> {
        let body = match call.action {
            FinalAction::Cancel if call.at_period_end => {
                Some(json!({ "cancel_at_period_end": true }))
            }
            FinalAction::Cancel => None,
            FinalAction::Pause => Some(json!({ "pause_at_period_end": false })),
            FinalAction::MarkUnpaid | FinalAction::Leave => {
                return Ok(FinalOutcome::unsupported(call.action));
            }
        };
        let order_id = required(call.cycle_id.as_deref(), "cycle_id (Polar order id)")?;
        let order = self.order(order_id).await?;
        if matches!(
            order.status.as_str(),
            "paid" | "refunded" | "partially_refunded"
        ) {
            return Ok(FinalOutcome::Paid(format!("order {}", order.status)));
        }
        let id = required(
            call.subscription_id.as_deref(),
            "subscription_id (Polar subscription id)",
        )?;
        let segments = ["v1", "subscriptions", id];
        let request = match body {
            Some(body) => self.api.request(Method::PATCH, &segments)?.json(&body),
            None => self.api.request(Method::DELETE, &segments)?,
        };
        let request = request.header("Idempotency-Key", call.idempotency_key.as_str());
        let (status, wait, body) = exchange(request, self.api.answer_cap()).await?;
        let code = status.as_u16();
        if status.is_success() {
            let changed: SubscriptionState = serde_json::from_str(&body).map_err(|_| {
                ProviderApiError::Transient(format!("unreadable subscription ({code})"))
            })?;
            let mut state = format!("subscription {}", snippet(&changed.status));
            if changed.cancel_at_period_end {
                state.push_str(", cancels at period end");
            }
            return Ok(FinalOutcome::Done(state));
        }
        let error = serde_json::from_str::<ErrorBody>(&body).unwrap_or_default();
        let detail = match &error.detail {
            Some(Value::String(detail)) => snippet(detail),
            _ => snippet(&body),
        };
        match (code, error.error.as_deref()) {
            (403, Some("AlreadyCanceledSubscription")) => Ok(FinalOutcome::AlreadyDone(detail)),
            (409, _) => Err(ProviderApiError::Transient(format!("polar 409: {detail}"))),
            (429, _) => Err(ProviderApiError::RateLimited { retry_after: wait }),
            (401, _) => Err(auth_failed(code)),
            (500.., _) => Err(ProviderApiError::Transient(format!("polar {code}"))),
            _ => Err(ProviderApiError::Rejected {
                status: code,
                message: detail,
            }),
        }
    }

    /// The customer's cached session, else a new one (`POST /v1/customer-sessions/`).
    async fn session(&self, customer_id: &str) -> Result<Session, ProviderApiError> {
        let now = Utc::now();
        if let Some(session) = self.cached(customer_id, now) {
            return Ok(session);
        }
        // The trailing empty segment gives the route's own `/customer-sessions/`.
        let request = self
            .api
            .request(Method::POST, &["v1", "customer-sessions", ""])?
            .json(&json!({ "customer_id": customer_id }));
        let answer = read(request, "Polar", self.api.answer_cap()).await?;
        let minted: CustomerSession =
            serde_json::from_str(&answer.body).map_err(|e| ProviderApiError::Rejected {
                status: 201,
                message: format!("not a Polar customer session: {e}"),
            })?;
        let session = Session {
            token: SecretString::from(minted.token),
            expires_at: minted.expires_at,
        };
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| s.expires_at - SESSION_MARGIN > now);
        sessions.insert(customer_id.to_owned(), session.clone());
        Ok(session)
    }

    fn cached(&self, customer_id: &str, now: DateTime<Utc>) -> Option<Session> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .get(customer_id)
            .filter(|s| s.expires_at - SESSION_MARGIN > now)
            .filter(|s| !s.token.expose_secret().is_empty())
            .cloned()
    }

    fn forget(&self, customer_id: &str) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.remove(customer_id);
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

impl FinalActionClient for PolarClient {
    fn final_action<'a>(
        &'a self,
        call: &'a FinalCall,
    ) -> BoxFuture<'a, Result<FinalOutcome, ProviderApiError>> {
        Box::pin(async move { self.finish(call).await })
    }
}

/// The fields of `Subscription` a final action records.
#[derive(Deserialize)]
struct SubscriptionState {
    status: String,
    #[serde(default)]
    cancel_at_period_end: bool,
}

/// `CustomerOrderPaymentConfirmation`.
#[derive(Deserialize)]
struct Confirmation {
    status: String,
    error: Option<String>,
}

/// Polar's error body: `{"error": "<ErrorName>", "detail": "..."}` (request validation
/// errors carry a list in `detail`).
#[derive(Deserialize, Default)]
struct ErrorBody {
    error: Option<String>,
    detail: Option<Value>,
}

/// Whether a 422 `detail` reports a payment confirmation that failed rather than an order
/// that is not eligible (see the module doc).
fn confirmation_failed(detail: &str) -> bool {
    let detail = detail.to_ascii_lowercase();
    !detail.contains("not eligible") && (detail.contains("fail") || detail.contains("declin"))
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
            other => {
                crate::providers::support::unknown_provider_value(
                    "polar",
                    "confirmation.status",
                    other,
                );
                Err(ProviderApiError::Transient(format!(
                    "unexpected confirmation status {}",
                    snippet(other)
                )))
            }
        };
    }
    if status.is_server_error() {
        return Err(ProviderApiError::Transient(format!("polar {code}")));
    }
    let error: ErrorBody = serde_json::from_str(body).unwrap_or_default();
    let detail = match &error.detail {
        Some(Value::String(detail)) => Some(snippet(detail)),
        _ => None,
    };
    let name = error.error.as_deref();
    match (code, detail) {
        (409, _) => Ok(CallOutcome::InProgress),
        (422, Some(detail)) if name == Some("OrderNotEligibleForRetry") => {
            if confirmation_failed(&detail) {
                Ok(CallOutcome::Declined {
                    code: None,
                    message: Some(detail),
                })
            } else {
                Ok(CallOutcome::NotEligible(detail))
            }
        }
        (429, detail) if name == Some("ManualRetryLimitExceeded") => Ok(CallOutcome::NotEligible(
            detail.unwrap_or_else(|| "ManualRetryLimitExceeded".to_owned()),
        )),
        (429, _) => Err(ProviderApiError::RateLimited { retry_after: wait }),
        (401 | 403, _) => Err(auth_failed(code)),
        (_, detail) => Err(ProviderApiError::Rejected {
            status: code,
            message: format!(
                "{}: {}",
                name.unwrap_or("error"),
                detail.unwrap_or_else(|| snippet(body))
            ),
        }),
    }
}

#[cfg(test)]
mod tests;
