//! Stripe: `GET /v1/invoices` (Bearer secret key), newest first, `limit` ≤ 100,
//! `created[gte]` for incremental runs, `starting_after=<last id>` while `has_more`.
//! `expand[]=data.payment_intent` brings the decline code of a failed payment.
//!
//! Each invoice that saw a payment attempt is rendered as the event Stripe sends for its
//! state: `invoice.paid`, `invoice.payment_action_required` or `invoice.payment_failed`.
//! Drafts, voided invoices and open ones never attempted carry no billing attempt.

use std::time::Duration;

use futures_util::future::BoxFuture;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::ApiSettings;
use crate::providers::contract::{ListClient, Page, PageRequest, Record};
use crate::providers::http::{Credential, Endpoint, ProviderApiError, read};
use crate::providers::support::capped;

/// Stripe's maximum `limit`.
const MAX_LIMIT: u32 = 100;

pub struct StripeList {
    api: Endpoint,
}

impl StripeList {
    pub fn new(api: &ApiSettings, http: crate::providers::http::ProviderHttp) -> Self {
        Self {
            api: Endpoint::new(api, http, Credential::Authorization("Bearer")),
        }
    }

    async fn fetch(&self, request: PageRequest<'_>) -> Result<Page, ProviderApiError> {
        let invoices = self.api.request(Method::GET, &["v1", "invoices"])?;
        let mut query = vec![
            ("limit", capped(request.page_size, MAX_LIMIT).to_string()),
            ("expand[]", "data.payment_intent".to_owned()),
        ];
        if let Some(since) = request.since {
            query.push(("created[gte]", since.timestamp().to_string()));
        }
        if let Some(after) = request.cursor {
            query.push(("starting_after", after.to_owned()));
        }
        let body = read(invoices.query(&query), "Stripe", request.cap())
            .await?
            .body;
        parse(&body)
    }
}

impl ListClient for StripeList {
    fn page<'a>(
        &'a self,
        request: PageRequest<'a>,
    ) -> BoxFuture<'a, Result<Page, ProviderApiError>> {
        Box::pin(self.fetch(request))
    }

    /// Stripe allows 25 read requests per second in test mode (100 live).
    fn default_min_interval(&self) -> Duration {
        Duration::from_millis(40)
    }
}

#[derive(Deserialize)]
struct List {
    data: Vec<Value>,
    has_more: bool,
}

fn parse(body: &str) -> Result<Page, ProviderApiError> {
    let list: List = serde_json::from_str(body).map_err(|e| ProviderApiError::Rejected {
        status: 200,
        message: format!("not a Stripe list of invoices: {e}"),
    })?;
    let last_id = list
        .data
        .last()
        .and_then(|invoice| invoice.get("id")?.as_str().map(str::to_owned));
    let next = if list.has_more { last_id } else { None };
    if list.has_more && next.is_none() {
        return Err(ProviderApiError::Rejected {
            status: 200,
            message: "Stripe list has_more but its last invoice has no id".to_owned(),
        });
    }
    let records = list.data.into_iter().filter_map(render).collect();
    Ok(Page { records, next })
}

/// The event Stripe sends for an invoice in this state, or `None` when no payment was tried.
fn render(invoice: Value) -> Option<Record> {
    let id = invoice.get("id")?.as_str()?.to_owned();
    let count = invoice.get("attempt_count")?.as_u64()?;
    let status = invoice.get("status")?.as_str()?;
    let intent_status = invoice
        .pointer("/payment_intent/status")
        .and_then(Value::as_str);
    let event_type = match status {
        "paid" => "invoice.paid",
        "open" | "uncollectible" if count > 0 && intent_status == Some("requires_action") => {
            "invoice.payment_action_required"
        }
        "open" | "uncollectible" if count > 0 => "invoice.payment_failed",
        _ => return None,
    };
    let unix = |pointer: &str| invoice.pointer(pointer).and_then(Value::as_i64);
    let created = match event_type {
        "invoice.paid" => unix("/status_transitions/paid_at"),
        _ => None,
    }
    .or_else(|| unix("/status_transitions/finalized_at"))
    .or_else(|| unix("/created"))?;
    let body = json!({
        "id": format!("evt_sync_{id}_{count}"),
        "object": "event",
        "type": event_type,
        "created": created,
        "data": { "object": invoice },
    });
    Some(Record::json(format!("invoice:{id}:{count}"), &body))
}

#[cfg(test)]
mod tests {
    use wiremock::matchers::{header, method, path, query_param};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::canonical::{AttemptStatus, CanonicalEvent};
    use crate::config::ProviderKind;
    use crate::providers::testing::{EMPTY_END, normalize_with, request};
    use crate::providers::testing::{api_settings, assert_errors_map};

    fn client(server: &MockServer) -> StripeList {
        StripeList::new(
            &api_settings(server.uri(), "sk_test_123"),
            crate::providers::http::http_client().unwrap(),
        )
    }

    fn invoice(id: &str, status: &str, count: u64) -> Value {
        json!({
            "id": id, "object": "invoice", "status": status, "attempt_count": count,
            "attempted": count > 0, "amount_due": 1500, "amount_paid": if status == "paid" { 1500 } else { 0 },
            "currency": "usd", "created": 1_700_000_000, "subscription": "sub_1",
            "status_transitions": { "paid_at": if status == "paid" { json!(1_700_000_100) } else { Value::Null } },
            "payment_intent": { "id": "pi_1", "status": "requires_payment_method",
                "last_payment_error": { "code": "card_declined", "decline_code": "insufficient_funds", "message": "no" } },
            "next_payment_attempt": null
        })
    }

    #[tokio::test]
    async fn pages_with_starting_after_until_has_more_is_false() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v1/invoices"))
            .and(header("authorization", "Bearer sk_test_123"))
            .and(query_param("limit", "2"))
            .and(query_param("starting_after", "in_2"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "object": "list", "url": "/v1/invoices", "has_more": false,
                "data": [invoice("in_3", "draft", 0)]
            })))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/v1/invoices"))
            .and(query_param("expand[]", "data.payment_intent"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "object": "list", "url": "/v1/invoices", "has_more": true,
                "data": [invoice("in_1", "paid", 1), invoice("in_2", "open", 2)]
            })))
            .mount(&server)
            .await;
        let client = client(&server);

        let first = client.page(request(None)).await.unwrap();
        assert_eq!(first.next.as_deref(), Some("in_2"));
        let keys: Vec<_> = first.records.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["invoice:in_1:1", "invoice:in_2:2"]);

        let last = client.page(request(Some("in_2"))).await.unwrap();
        assert_eq!(last.next, None);
        assert!(last.records.is_empty(), "a draft carries no attempt");

        let paid = normalize_with(ProviderKind::Stripe, &first.records[0]);
        let failed = normalize_with(ProviderKind::Stripe, &first.records[1]);
        match (&paid[..], &failed[..]) {
            ([CanonicalEvent::BillingAttempt(p)], [CanonicalEvent::BillingAttempt(f)]) => {
                assert_eq!(
                    (p.attempt_id.as_str(), p.status),
                    ("in_1:1", AttemptStatus::Succeeded)
                );
                assert_eq!(p.amount.as_ref().map(|m| m.minor), Some(1500));
                assert_eq!(
                    (f.attempt_id.as_str(), f.status),
                    ("in_2:2", AttemptStatus::Failed)
                );
                assert_eq!(f.error_code.as_deref(), Some("insufficient_funds"));
            }
            other => panic!("unexpected events {other:?}"),
        }
    }

    #[tokio::test]
    async fn since_is_sent_as_created_gte() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v1/invoices"))
            .and(query_param("created[gte]", "1700000000"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "object": "list", "has_more": false, "data": []
            })))
            .expect(1)
            .mount(&server)
            .await;
        let since = chrono::DateTime::from_timestamp(1_700_000_000, 0);
        let page = client(&server)
            .page(PageRequest {
                since,
                ..request(None)
            })
            .await
            .unwrap();
        assert_eq!(page, EMPTY_END);
    }

    #[tokio::test]
    async fn errors_map_to_api_errors() {
        let server = MockServer::start().await;
        let client = client(&server);
        assert_errors_map(&server, || client.page(request(None)), "sk_test_123").await;
    }
}
