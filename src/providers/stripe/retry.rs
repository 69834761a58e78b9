//! Stripe: `POST /v1/invoices/{invoice}/pay` with the retry's `Idempotency-Key`. Stripe
//! replays the first answer to a repeated key, so a call resent after a crash never
//! charges twice.
//!
//! Final actions (operations and parameters from the SDK's definitions):
//! - every one first reads the invoice (`GET /v1/invoices/{id}`): a `paid` invoice is
//!   [`FinalOutcome::Paid`] and nothing is changed;
//! - `mark_unpaid`: `POST /v1/invoices/{id}/mark_uncollectible` (`InvoiceMarkUncollectibleParams`,
//!   none sent) with the action's `Idempotency-Key`; an invoice already `uncollectible` is
//!   `AlreadyDone`;
//! - `pause`: `POST /v1/subscriptions/{id}` with `pause_collection[behavior]=mark_uncollectible`
//!   (`SubscriptionUpdateParams.PauseCollection`: invoices are still created and marked
//!   uncollectible, the customer is not charged) and the key;
//! - `cancel`: `DELETE /v1/subscriptions/{id}` (`SubscriptionCancelParams`, none sent), or with
//!   `at_period_end` `POST /v1/subscriptions/{id}` with `cancel_at_period_end=true` and the key.
//!   Stripe ignores idempotency keys on `DELETE` ("idempotent by definition"), so a re-send
//!   reads the subscription first (`GET /v1/subscriptions/{id}`): `canceled` is `AlreadyDone`.

use std::time::Duration;

use futures_util::future::BoxFuture;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use crate::config::{ApiSettings, FinalAction};
use crate::providers::contract::{
    CallOutcome, FinalActionClient, FinalCall, FinalOutcome, RetryCall, RetryClient,
};
use crate::providers::http::{
    Credential, Endpoint, ProviderApiError, auth_failed, exchange, required, snippet,
};

/// Pays an open Stripe invoice (`RetryCall::cycle_id` = `in_...`) with its default method.
pub struct StripeClient {
    api: Endpoint,
}

impl StripeClient {
    pub fn new(api: &ApiSettings, http: crate::providers::http::ProviderHttp) -> Self {
        Self {
            api: Endpoint::new(api, http, Credential::Authorization("Bearer")),
        }
    }

    async fn pay(&self, call: &RetryCall) -> Result<CallOutcome, ProviderApiError> {
        let invoice = required(call.cycle_id.as_deref(), "cycle_id (Stripe invoice id)")?;
        let request = self
            .api
            .request(Method::POST, &["v1", "invoices", invoice, "pay"])?;
        let (status, wait, body) = exchange(
            request
                .header("Idempotency-Key", call.idempotency_key.as_str())
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(""),
            self.api.answer_cap(),
        )
        .await?;
        classify(status, wait, &body)
    }
}

impl StripeClient {
    /// One Stripe call; a 2xx answer read as `T`, anything else as the error it is.
    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        key: Option<&str>,
        form: &str,
    ) -> Result<T, ProviderApiError> {
        let mut request = self.api.request(method, segments)?;
        if let Some(key) = key {
            request = request
                .header("Idempotency-Key", key)
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(form.to_owned());
        }
        let (status, wait, body) = exchange(request, self.api.answer_cap()).await?;
        let code = status.as_u16();
        if status.is_success() {
            return serde_json::from_str(&body)
                .map_err(|_| ProviderApiError::Transient(format!("unreadable answer ({code})")));
        }
        if status.is_server_error() {
            return Err(ProviderApiError::Transient(format!("stripe {code}")));
        }
        let message = serde_json::from_str::<ErrorBody>(&body)
            .ok()
            .and_then(|b| b.error.message)
            .unwrap_or_else(|| snippet(&body));
        Err(match code {
            429 => ProviderApiError::RateLimited { retry_after: wait },
            401 | 403 => auth_failed(code),
            _ => ProviderApiError::Rejected {
                status: code,
                message,
            },
        })
    }

    async fn finish(&self, call: &FinalCall) -> Result<FinalOutcome, ProviderApiError> {
        let invoice_id = required(call.cycle_id.as_deref(), "cycle_id (Stripe invoice id)")?;
        let invoice: Invoice = self
            .send(Method::GET, &["v1", "invoices", invoice_id], None, "")
            .await?;
        let invoice_status = invoice.status.as_deref().unwrap_or("unknown");
        if invoice_status == "paid" {
            return Ok(FinalOutcome::Paid(format!("invoice {invoice_id} paid")));
        }
        let key = Some(call.idempotency_key.as_str());
        if call.action == FinalAction::MarkUnpaid {
            if invoice_status == "uncollectible" {
                return Ok(FinalOutcome::AlreadyDone("invoice uncollectible".into()));
            }
            let path = ["v1", "invoices", invoice_id, "mark_uncollectible"];
            let marked: Invoice = self.send(Method::POST, &path, key, "").await?;
            let status = marked.status.as_deref().unwrap_or("unknown");
            return Ok(FinalOutcome::Done(format!("invoice {status}")));
        }
        let subscription_id = required(
            call.subscription_id.as_deref(),
            "subscription_id (Stripe subscription id)",
        )?;
        let path = ["v1", "subscriptions", subscription_id];
        let (method, form) = match call.action {
            FinalAction::Pause => (
                Method::POST,
                "pause_collection%5Bbehavior%5D=mark_uncollectible",
            ),
            FinalAction::Cancel if call.at_period_end => {
                (Method::POST, "cancel_at_period_end=true")
            }
            FinalAction::Cancel => {
                if call.resend {
                    let now: Subscription = self.send(Method::GET, &path, None, "").await?;
                    if now.status.as_deref() == Some("canceled") {
                        return Ok(FinalOutcome::AlreadyDone("subscription canceled".into()));
                    }
                }
                (Method::DELETE, "")
            }
            FinalAction::MarkUnpaid | FinalAction::Leave => {
                return Ok(FinalOutcome::unsupported(call.action));
            }
        };
        let key = (method == Method::POST).then_some(call.idempotency_key.as_str());
        let changed: Subscription = self.send(method, &path, key, form).await?;
        Ok(FinalOutcome::Done(changed.describe()))
    }
}

impl RetryClient for StripeClient {
    fn retry<'a>(
        &'a self,
        call: &'a RetryCall,
    ) -> BoxFuture<'a, Result<CallOutcome, ProviderApiError>> {
        Box::pin(async move { self.pay(call).await })
    }
}

impl FinalActionClient for StripeClient {
    fn final_action<'a>(
        &'a self,
        call: &'a FinalCall,
    ) -> BoxFuture<'a, Result<FinalOutcome, ProviderApiError>> {
        Box::pin(async move { self.finish(call).await })
    }
}

/// The fields of a `Subscription` a final action reports.
#[derive(Deserialize)]
struct Subscription {
    status: Option<String>,
    #[serde(default)]
    cancel_at_period_end: bool,
    pause_collection: Option<PauseCollection>,
}

#[derive(Deserialize)]
struct PauseCollection {
    behavior: Option<String>,
}

impl Subscription {
    /// `subscription canceled`, `subscription active, collection paused (mark_uncollectible)`, ...
    fn describe(&self) -> String {
        let mut text = format!(
            "subscription {}",
            self.status.as_deref().unwrap_or("unknown")
        );
        if self.cancel_at_period_end {
            text.push_str(", cancels at period end");
        }
        if let Some(pause) = &self.pause_collection {
            let behavior = pause.behavior.as_deref().unwrap_or("unknown");
            text.push_str(&format!(", collection paused ({behavior})"));
        }
        text
    }
}

#[derive(Deserialize)]
struct Invoice {
    status: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: StripeError,
}

#[derive(Deserialize, Default)]
struct StripeError {
    code: Option<String>,
    decline_code: Option<String>,
    message: Option<String>,
    payment_intent: Option<PaymentIntent>,
}

#[derive(Deserialize)]
struct PaymentIntent {
    status: Option<String>,
}

fn classify(
    status: StatusCode,
    wait: Option<Duration>,
    body: &str,
) -> Result<CallOutcome, ProviderApiError> {
    let code = status.as_u16();
    if status.is_success() {
        let invoice: Invoice = serde_json::from_str(body)
            .map_err(|_| ProviderApiError::Transient(format!("unreadable invoice ({code})")))?;
        return Ok(match invoice.status.as_deref() {
            Some("paid") => CallOutcome::Charged,
            other => CallOutcome::Declined {
                code: None,
                message: Some(format!("invoice status {}", other.unwrap_or("unknown"))),
            },
        });
    }
    if status.is_server_error() {
        return Err(ProviderApiError::Transient(format!("stripe {code}")));
    }
    let error = serde_json::from_str::<ErrorBody>(body)
        .map(|b| b.error)
        .unwrap_or_default();
    let error_code = error.code.as_deref().unwrap_or("");
    let requires_action = error_code == "authentication_required"
        || error_code == "invoice_payment_intent_requires_action"
        || error.decline_code.as_deref() == Some("authentication_required")
        || error
            .payment_intent
            .as_ref()
            .and_then(|pi| pi.status.as_deref())
            == Some("requires_action");
    let message = || error.message.clone().unwrap_or_else(|| snippet(body));
    match code {
        402 | 400 if requires_action => Ok(CallOutcome::RequiresAction),
        402 => Ok(CallOutcome::Declined {
            code: error.decline_code.clone().or_else(|| error.code.clone()),
            message: error.message.clone(),
        }),
        400 if error_code.contains("already_paid") || error_code.contains("not_open") => Ok(
            CallOutcome::NotEligible(format!("{error_code}: {}", message())),
        ),
        409 => Ok(CallOutcome::InProgress),
        429 => Err(ProviderApiError::RateLimited { retry_after: wait }),
        401 | 403 => Err(auth_failed(code)),
        _ => Err(ProviderApiError::Rejected {
            status: code,
            message: message(),
        }),
    }
}

/// The fake of Stripe's `POST /v1/invoices/{id}/pay` checks what the definitions require:
/// the form parameters are `InvoicePayParams`, a 200 answer is an `Invoice`, an error's
/// `error` a `StripeRawError` without the fields the SDK adds (`headers`, `statusCode`,
/// `requestId`, `detail`, `exception`).
#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use wiremock::matchers::{body_string, header, method, path};
    use wiremock::{Mock, MockServer, Request, ResponseTemplate};

    use super::*;
    use crate::providers::stripe::definitions;
    use crate::providers::testing::api_settings;

    fn valid(value: &Value, type_name: &str) {
        let errors = definitions().validate(value, type_name);
        assert!(errors.is_empty(), "{type_name}: {errors:#?}");
    }

    /// The form body's parameters are `InvoicePayParams`.
    fn conforms(request: &Request) -> bool {
        let Ok(body) = std::str::from_utf8(&request.body) else {
            return false;
        };
        // The form body read as the query of a URL (the same encoding).
        let form = reqwest::Url::parse(&format!("http://form.test/?{body}")).expect("a form");
        let pairs: Vec<(String, String)> = form.query_pairs().into_owned().collect();
        let problems = definitions().validate_form(
            pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            "InvoicePayParams",
        );
        if !problems.is_empty() {
            eprintln!("Stripe would refuse the pay request: {problems:#?}");
        }
        problems.is_empty()
    }

    /// The invoice `in_123` in `status`, as `POST .../pay` answers it.
    fn invoice(status: &str) -> ResponseTemplate {
        let mut invoice = definitions().generate("Invoice");
        invoice["id"] = json!("in_123");
        invoice["status"] = json!(status);
        invoice["currency"] = json!("usd");
        valid(&invoice, "Invoice");
        ResponseTemplate::new(200).set_body_json(invoice)
    }

    /// A PaymentIntent in `status`, as an error carries it.
    fn payment_intent(status: &str) -> Value {
        let mut intent = definitions().generate("PaymentIntent");
        intent["id"] = json!("pi_1");
        intent["status"] = json!(status);
        valid(&intent, "PaymentIntent");
        intent
    }

    const TOKEN: &str = "sk_test_secret123";

    fn client(server: &MockServer, timeout_ms: u64) -> StripeClient {
        let api = ApiSettings {
            timeout_ms,
            ..api_settings(format!("{}/", server.uri()), TOKEN)
        };
        StripeClient::new(&api, crate::providers::http::http_client().unwrap())
    }

    fn call() -> RetryCall {
        RetryCall {
            attempt_id: "att_1".into(),
            cycle_id: Some("in_123".into()),
            subscription_id: Some("sub_1".into()),
            idempotency_key: "subsync-stripe-in_123-r2".into(),
            previous_send_at: None,
        }
    }

    /// Mounts the real route, with every header Stripe needs, answering `response` once.
    async fn answer(response: ResponseTemplate) -> Result<CallOutcome, ProviderApiError> {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/invoices/in_123/pay"))
            .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
            .and(header("idempotency-key", "subsync-stripe-in_123-r2"))
            .and(header("content-type", "application/x-www-form-urlencoded"))
            .and(body_string(""))
            .and(conforms)
            .respond_with(response)
            .expect(1)
            .mount(&server)
            .await;
        client(&server, 2_000).retry(&call()).await
    }

    fn error(status: u16, error: Value) -> ResponseTemplate {
        valid(&error, "StripeRawError");
        for sdk_only in ["headers", "statusCode", "requestId", "detail", "exception"] {
            assert!(
                error.get(sdk_only).is_none(),
                "{sdk_only} is not on the wire"
            );
        }
        ResponseTemplate::new(status).set_body_json(json!({ "error": error }))
    }

    #[tokio::test]
    async fn paid_invoice_is_charged() {
        assert_eq!(answer(invoice("paid")).await, Ok(CallOutcome::Charged));
    }

    #[tokio::test]
    async fn open_invoice_after_pay_is_declined_without_code() {
        assert_eq!(
            answer(invoice("open")).await,
            Ok(CallOutcome::Declined {
                code: None,
                message: Some("invoice status open".into())
            })
        );
    }

    #[tokio::test]
    async fn card_error_is_declined_with_decline_code() {
        let declined = error(
            402,
            json!({"type": "card_error", "code": "card_declined",
                   "decline_code": "insufficient_funds", "message": "Your card has insufficient funds."}),
        );
        assert_eq!(
            answer(declined).await,
            Ok(CallOutcome::Declined {
                code: Some("insufficient_funds".into()),
                message: Some("Your card has insufficient funds.".into())
            })
        );
        let no_decline_code = error(402, json!({"type": "card_error", "code": "expired_card"}));
        assert_eq!(
            answer(no_decline_code).await,
            Ok(CallOutcome::Declined {
                code: Some("expired_card".into()),
                message: None
            })
        );
    }

    #[tokio::test]
    async fn authentication_required_needs_action() {
        let by_code = error(
            402,
            json!({"type": "card_error", "code": "authentication_required"}),
        );
        assert_eq!(answer(by_code).await, Ok(CallOutcome::RequiresAction));
        let by_intent = error(
            402,
            json!({"type": "card_error", "code": "card_declined",
                   "payment_intent": payment_intent("requires_action")}),
        );
        assert_eq!(answer(by_intent).await, Ok(CallOutcome::RequiresAction));
    }

    #[tokio::test]
    async fn already_paid_or_not_open_is_not_eligible() {
        let paid = error(
            400,
            json!({"type": "invalid_request_error", "code": "invoice_already_paid", "message": "Invoice is already paid"}),
        );
        assert_eq!(
            answer(paid).await,
            Ok(CallOutcome::NotEligible(
                "invoice_already_paid: Invoice is already paid".into()
            ))
        );
        let void = error(
            400,
            json!({"type": "invalid_request_error", "code": "invoice_not_open"}),
        );
        assert!(
            matches!(answer(void).await, Ok(CallOutcome::NotEligible(m)) if m.starts_with("invoice_not_open"))
        );
    }

    #[tokio::test]
    async fn idempotency_conflict_is_in_progress() {
        let in_use = error(
            409,
            json!({"type": "idempotency_error", "code": "idempotency_key_in_use"}),
        );
        assert_eq!(answer(in_use).await, Ok(CallOutcome::InProgress));
        let lock = error(
            409,
            json!({"type": "invalid_request_error", "code": "lock_timeout"}),
        );
        assert_eq!(answer(lock).await, Ok(CallOutcome::InProgress));
    }

    #[tokio::test]
    async fn rate_limit_reads_retry_after() {
        let limited = error(
            429,
            json!({"type": "invalid_request_error", "code": "rate_limit"}),
        )
        .insert_header("Retry-After", "3");
        assert_eq!(
            answer(limited).await,
            Err(ProviderApiError::RateLimited {
                retry_after: Some(Duration::from_secs(3))
            })
        );
        let bare = ResponseTemplate::new(429);
        assert_eq!(
            answer(bare).await,
            Err(ProviderApiError::RateLimited { retry_after: None })
        );
    }

    #[tokio::test]
    async fn hostile_answers_cost_one_call() {
        // Retry-After of 1e20 is ignored; ten trillion seconds is bounded.
        for (value, wait) in [
            ("1e20", None),
            (
                "10000000000000",
                Some(crate::providers::http::MAX_RETRY_WAIT),
            ),
        ] {
            let limited = ResponseTemplate::new(429).insert_header("Retry-After", value);
            let expected = Err(ProviderApiError::RateLimited { retry_after: wait });
            assert_eq!(answer(limited).await, expected, "{value}");
        }
        // A paid invoice padded past api.max_answer_bytes: the outcome is unknown, so the
        // same call (same key) is sent again later.
        let padded = format!(r#"{{"status": "paid", "pad": "{}"}}"#, "x".repeat(1 << 20));
        let oversized = ResponseTemplate::new(200).set_body_string(padded);
        assert!(matches!(
            answer(oversized).await,
            Err(ProviderApiError::Transient(m)) if m.contains("api.max_answer_bytes")
        ));
    }

    #[tokio::test]
    async fn server_errors_and_timeouts_are_transient() {
        assert!(matches!(
            answer(ResponseTemplate::new(500)).await,
            Err(ProviderApiError::Transient(_))
        ));
        assert!(matches!(
            answer(ResponseTemplate::new(503)).await,
            Err(ProviderApiError::Transient(_))
        ));

        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/invoices/in_123/pay"))
            .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(500)))
            .mount(&server)
            .await;
        let result = client(&server, 50).retry(&call()).await;
        assert!(matches!(result, Err(ProviderApiError::Transient(m)) if m.starts_with("timeout")));
    }

    #[tokio::test]
    async fn other_client_errors_are_rejected_without_the_token() {
        let missing = error(
            404,
            json!({"type": "invalid_request_error", "code": "resource_missing", "message": "No such invoice: 'in_123'"}),
        );
        assert_eq!(
            answer(missing).await,
            Err(ProviderApiError::Rejected {
                status: 404,
                message: "No such invoice: 'in_123'".into()
            })
        );
        let echo = error(
            401,
            json!({"message": format!("Invalid API Key provided: {TOKEN}")}),
        );
        match answer(echo).await {
            Err(ProviderApiError::Rejected {
                status: 401,
                message,
            }) => assert!(!message.contains(TOKEN)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn missing_invoice_id_is_rejected_before_calling() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200))
            .expect(0)
            .mount(&server)
            .await;
        let mut without = call();
        without.cycle_id = None;
        assert!(matches!(
            client(&server, 1_000).retry(&without).await,
            Err(ProviderApiError::Rejected { status: 0, .. })
        ));
    }
}
