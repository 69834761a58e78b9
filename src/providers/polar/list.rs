//! Polar: the customer portal's orders of the customer whose session token is configured.
//!
//! - Endpoint: `GET {base_url}/v1/customer-portal/orders/` ("List Orders"; the route is
//!   declared with its trailing slash) with `Authorization: Bearer <api.token>`, a Polar
//!   customer-session token (the same one the dunning client uses).
//! - Query: `product_billing_type=recurring` (Polar's filter name: subscription creations
//!   and renewals only), `sorting=-created_at` (newest first; also Polar's default),
//!   `page` (1-based) and `limit` (capped at 100, Polar's maximum).
//! - Answer: `{"items": [...], "pagination": {"total_count", "max_page"}}`. Cursor = the
//!   next page number; the listing ends at `max_page` or on an empty `items`.
//! - `since`: the portal list has no time filter and sorts only by creation
//!   (`created_at`, `amount`, `net_amount`, `product`, `subscription`), not by
//!   modification. Orders change after creation while in dunning (Polar retries at +2, +7,
//!   +14 and +21 days), so the listing stops once a whole page was created more than
//!   [`LATE_WINDOW`] before `since`. A later change (a refund weeks afterwards) is only
//!   seen by a full run (`since = None`).
//! - Limits: Polar allows 500 requests per minute per organization/customer in production
//!   and 100 per minute in the sandbox (docs `api-reference/introduction`, 429 with
//!   `Retry-After`); pages are paced at 600 ms, within the sandbox limit, leaving most of
//!   the production budget to the other callers.
//!
//! Each order is rendered as Polar's webhook `{"type", "timestamp", "data"}`, `data` = the
//! order as listed without the nested resources the portal embeds in it (`product`,
//! `product_price`, `subscription`, `customer`, `discount`, `organization`: their own
//! current states, which would change the rendering without an order change), and
//! `timestamp` = the order's `modified_at`, else `created_at` (never the current time):
//!
//! | order `status` | webhook | canonical |
//! |---|---|---|
//! | `paid` | `order.paid` | succeeded |
//! | `refunded`, `partially_refunded` | `order.refunded` | refunded |
//! | `pending` with `next_payment_attempt_at` (a failed renewal in dunning) | `order.updated` | pending, `next_attempt_at` set |
//! | `pending` without | `order.created` | pending |
//! | `void` | `order.updated` | skipped |
//! | `draft` | not rendered (no payment asked yet) | - |
//! | any other word | `order.updated` | as the normalizer decides (an unknown word is dead-lettered) |
//!
//! A failed renewal is rendered as what Polar sends for it: the order stays `pending`
//! with `next_payment_attempt_at`; Polar's `OrderStatus` has no failed state, and the
//! failure itself is signalled by `subscription.past_due`, which this list does not
//! cover. Headers: none. Key: `order:<id>` (the normalizer's attempt and cycle id).
//!
//! Knowingly not covered: other customers' orders (a customer-session token sees one
//! customer), subscription state changes, one-time orders.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures_util::future::BoxFuture;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::ApiSettings;
use crate::providers::contract::{ListClient, Page, PageRequest, Record};
use crate::providers::http::{Credential, Endpoint, ProviderApiError, read, snippet};
use crate::providers::support::capped;

/// Polar's maximum `limit`.
const MAX_LIMIT: u32 = 100;

/// How long after its creation an order may still change on its own (Polar's dunning
/// retries end 21 days after the failed renewal).
const LATE_WINDOW: TimeDelta = TimeDelta::days(30);

/// Other resources the portal embeds in an order: not the order's own state.
const EMBEDDED: &[&str] = &[
    "product",
    "product_price",
    "subscription",
    "customer",
    "discount",
    "organization",
];

pub struct PolarList {
    api: Endpoint,
}

impl PolarList {
    pub fn new(api: &ApiSettings, http: crate::providers::http::ProviderHttp) -> Self {
        Self {
            api: Endpoint::new(api, http, Credential::Authorization("Bearer")),
        }
    }

    async fn fetch(&self, request: PageRequest<'_>) -> Result<Page, ProviderApiError> {
        let page = match request.cursor {
            None => 1,
            Some(cursor) => cursor
                .parse::<u32>()
                .ok()
                .filter(|page| *page >= 1)
                .ok_or_else(|| ProviderApiError::Rejected {
                    status: 0,
                    message: format!("invalid Polar sync cursor {}", snippet(cursor)),
                })?,
        };
        // The trailing empty segment gives the route's own `/orders/`.
        let orders = self
            .api
            .request(Method::GET, &["v1", "customer-portal", "orders", ""])?;
        let query = [
            ("product_billing_type", "recurring".to_owned()),
            ("sorting", "-created_at".to_owned()),
            ("page", page.to_string()),
            ("limit", capped(request.page_size, MAX_LIMIT).to_string()),
        ];
        let body = read(orders.query(&query), "Polar", request.cap())
            .await?
            .body;
        parse(&body, page, request.since)
    }
}

impl ListClient for PolarList {
    fn page<'a>(
        &'a self,
        request: PageRequest<'a>,
    ) -> BoxFuture<'a, Result<Page, ProviderApiError>> {
        Box::pin(self.fetch(request))
    }

    /// 100 requests per minute (Polar's sandbox limit; production allows 500).
    fn default_min_interval(&self) -> Duration {
        Duration::from_millis(600)
    }
}

/// Polar's `ListResource`.
#[derive(Deserialize)]
struct List {
    items: Vec<Value>,
    pagination: Pagination,
}

/// Polar's `Pagination` (its `total_count` is not needed: `max_page` bounds the walk).
#[derive(Deserialize)]
struct Pagination {
    max_page: u32,
}

fn parse(body: &str, page: u32, since: Option<DateTime<Utc>>) -> Result<Page, ProviderApiError> {
    let list: List = serde_json::from_str(body).map_err(|e| ProviderApiError::Rejected {
        status: 200,
        message: format!("not a Polar list of orders: {e}"),
    })?;
    let more = !list.items.is_empty()
        && page < list.pagination.max_page
        && !all_created_before(&list.items, since);
    let records = list.items.into_iter().filter_map(render).collect();
    Ok(Page {
        records,
        next: more.then(|| (page + 1).to_string()),
    })
}

/// Whether every order of the page was created before `since - LATE_WINDOW` (the list is
/// newest first, so every later page is older still). An order without a readable
/// `created_at` is not old.
fn all_created_before(orders: &[Value], since: Option<DateTime<Utc>>) -> bool {
    let Some(since) = since else {
        return false;
    };
    let horizon = since
        .checked_sub_signed(LATE_WINDOW)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    orders.iter().all(|order| {
        order
            .get("created_at")
            .and_then(Value::as_str)
            .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
            .is_some_and(|at| at < horizon)
    })
}

/// The webhook Polar sends for an order in this state, or `None` (a draft, or no id,
/// status or time).
fn render(mut order: Value) -> Option<Record> {
    let id = order.get("id")?.as_str()?.to_owned();
    let status = order.get("status")?.as_str()?;
    let in_dunning = order
        .get("next_payment_attempt_at")
        .is_some_and(|at| !at.is_null());
    let event_type = match status {
        "draft" => return None,
        "paid" => "order.paid",
        "refunded" | "partially_refunded" => "order.refunded",
        "pending" if !in_dunning => "order.created",
        _ => "order.updated",
    };
    let time = |field: &str| order.get(field).and_then(Value::as_str).map(str::to_owned);
    let timestamp = time("modified_at").or_else(|| time("created_at"))?;
    if let Some(fields) = order.as_object_mut() {
        for field in EMBEDDED {
            fields.remove(*field);
        }
    }
    let body = json!({ "type": event_type, "timestamp": timestamp, "data": order });
    Some(Record::json(format!("order:{id}"), &body))
}

#[cfg(test)]
mod tests {
    use wiremock::matchers::{header, method, path, query_param};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::canonical::{AttemptStatus, BillingAttempt, CanonicalEvent};
    use crate::config::ProviderKind;
    use crate::providers::testing::{EMPTY_END, assert_unreadable, normalize_with, request};
    use crate::providers::testing::{api_settings, assert_errors_map};

    const TOKEN: &str = "polar_cst_secret123";
    const PATH: &str = "/v1/customer-portal/orders/";
    const SUB: &str = "e5149aae-e521-42b9-b24c-abb8d71eea2e";

    fn client(server: &MockServer) -> PolarList {
        PolarList::new(
            &api_settings(server.uri(), TOKEN),
            crate::providers::http::http_client().unwrap(),
        )
    }

    /// A `CustomerOrder` as the portal lists it.
    fn order(id: &str, status: &str, created: &str) -> Value {
        json!({
            "id": id, "created_at": created, "modified_at": created, "status": status,
            "paid": status == "paid", "subtotal_amount": 1999, "discount_amount": 0,
            "net_amount": 1999, "tax_amount": 0, "total_amount": 1999, "refunded_amount": 0,
            "refunded_tax_amount": 0, "currency": "usd", "billing_reason": "subscription_cycle",
            "customer_id": "992fae2a-2a17-4b7a-8d9e-e287cf90131b",
            "product_id": "3b6a4e5c-0e43-4a5e-9a59-5d3c0b1f9b0a", "subscription_id": SUB,
            "next_payment_attempt_at": null,
            "product": {"id": "3b6a4e5c-0e43-4a5e-9a59-5d3c0b1f9b0a", "name": "Pro"},
            "subscription": {"id": SUB, "status": "active",
                "current_period_end": "2025-02-10T08:00:00Z"},
            "items": [{"label": "Pro", "amount": 1999, "tax_amount": 0, "proration": false}]
        })
    }

    fn list(items: Vec<Value>, total: u64, max_page: u32) -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json(json!({
            "items": items,
            "pagination": { "total_count": total, "max_page": max_page }
        }))
    }

    async fn mount(server: &MockServer, page: &str, response: ResponseTemplate) {
        Mock::given(method("GET"))
            .and(path(PATH))
            .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
            .and(query_param("product_billing_type", "recurring"))
            .and(query_param("sorting", "-created_at"))
            .and(query_param("limit", "2"))
            .and(query_param("page", page))
            .respond_with(response)
            .expect(1)
            .mount(server)
            .await;
    }

    #[tokio::test]
    async fn pages_up_to_max_page() {
        let server = MockServer::start().await;
        mount(
            &server,
            "1",
            list(
                vec![
                    order("ord_3", "paid", "2025-03-10T08:00:00Z"),
                    order("ord_2", "draft", "2025-02-10T08:00:00Z"),
                ],
                3,
                2,
            ),
        )
        .await;
        mount(
            &server,
            "2",
            list(
                vec![order("ord_1", "refunded", "2025-01-10T08:00:00Z")],
                3,
                2,
            ),
        )
        .await;
        let client = client(&server);

        let first = client.page(request(None)).await.unwrap();
        assert_eq!(first.next.as_deref(), Some("2"));
        let keys: Vec<_> = first.records.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["order:ord_3"], "a draft asks no payment");

        let last = client.page(request(Some("2"))).await.unwrap();
        assert_eq!(last.next, None, "page 2 is max_page");
        assert_eq!(last.records[0].key, "order:ord_1");
    }

    #[tokio::test]
    async fn empty_items_end_the_listing() {
        let server = MockServer::start().await;
        // max_page claims more, but the page is empty: finished, not an endless walk.
        mount(&server, "3", list(vec![], 9, 5)).await;
        let page = client(&server).page(request(Some("3"))).await.unwrap();
        assert_eq!(page, EMPTY_END);
    }

    #[tokio::test]
    async fn since_stops_once_a_page_was_created_before_the_late_window() {
        let server = MockServer::start().await;
        let since = DateTime::parse_from_rfc3339("2025-03-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        // 20 days before `since` (dunning may still change it): go on.
        mount(
            &server,
            "1",
            list(
                vec![
                    order("ord_4", "paid", "2025-02-20T00:00:00Z"),
                    order("ord_3", "paid", "2025-02-09T00:00:00Z"),
                ],
                8,
                4,
            ),
        )
        .await;
        // 35 and 40 days before `since`: older than the 30-day window, stop.
        mount(
            &server,
            "2",
            list(
                vec![
                    order("ord_2", "paid", "2025-01-25T00:00:00Z"),
                    order("ord_1", "paid", "2025-01-20T00:00:00Z"),
                ],
                8,
                4,
            ),
        )
        .await;
        let client = client(&server);
        let with_since = |cursor| PageRequest {
            since: Some(since),
            ..request(cursor)
        };
        let first = client.page(with_since(None)).await.unwrap();
        assert_eq!(first.next.as_deref(), Some("2"));
        let second = client.page(with_since(Some("2"))).await.unwrap();
        assert_eq!((second.records.len(), second.next), (2, None));
    }

    #[tokio::test]
    async fn a_bad_cursor_is_rejected_without_a_request() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(list(vec![], 0, 0))
            .expect(0)
            .mount(&server)
            .await;
        let client = client(&server);
        for bad in ["0", "x", "-1", ""] {
            assert!(
                matches!(
                    client.page(request(Some(bad))).await,
                    Err(ProviderApiError::Rejected { status: 0, .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn errors_map_to_api_errors() {
        let server = MockServer::start().await;
        let client = client(&server);
        let call = || client.page(request(None));
        assert_errors_map(&server, call, TOKEN).await;
        let says = "not a Polar list of orders";
        assert_unreadable(&server, call, r#"{"items": "nope"}"#, says).await;
    }

    fn one_attempt(record: &Record) -> BillingAttempt {
        match normalize_with(ProviderKind::Polar, record).as_slice() {
            [CanonicalEvent::BillingAttempt(a)] => a.clone(),
            other => panic!("{}: unexpected events {other:?}", record.key),
        }
    }

    fn body(record: &Record) -> Value {
        serde_json::from_slice(&record.body).unwrap()
    }

    fn at(text: &str) -> Option<DateTime<Utc>> {
        Some(
            DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc),
        )
    }

    #[test]
    fn renders_the_webhook_of_each_order_state() {
        use AttemptStatus::*;
        let created = "2025-01-10T08:00:00Z";
        let modified = "2025-01-10T08:00:07Z";

        let mut paid = order("ord_1", "paid", created);
        paid["modified_at"] = json!(modified);
        let record = render(paid).unwrap();
        let webhook = body(&record);
        assert_eq!(
            (webhook["type"].as_str(), webhook["timestamp"].as_str()),
            (Some("order.paid"), Some(modified))
        );
        assert!(webhook["data"].get("product").is_none());
        assert!(webhook["data"].get("subscription").is_none());
        assert_eq!(webhook["data"]["items"][0]["amount"], 1999);
        let a = one_attempt(&record);
        assert_eq!(
            (a.attempt_id.as_str(), a.cycle_id.as_deref(), a.status),
            ("ord_1", Some("ord_1"), Succeeded)
        );
        assert_eq!(a.subscription_id.as_deref(), Some(SUB));
        assert_eq!(
            a.amount.map(|m| (m.minor, m.currency)),
            Some((1999, "USD".into()))
        );
        assert_eq!((a.attempted_at, a.next_attempt_at), (at(modified), None));

        // A failed renewal in dunning: Polar keeps the order pending with its retry date.
        let mut dunning = order("ord_2", "pending", created);
        dunning["modified_at"] = json!(modified);
        dunning["next_payment_attempt_at"] = json!("2025-01-12T08:00:07Z");
        let record = render(dunning).unwrap();
        assert_eq!(body(&record)["type"], "order.updated");
        let a = one_attempt(&record);
        assert_eq!(a.status, Pending);
        assert_eq!(a.next_attempt_at, at("2025-01-12T08:00:07Z"));

        let table = [
            ("pending", "order.created", Pending),
            ("refunded", "order.refunded", Refunded),
            ("partially_refunded", "order.refunded", Refunded),
            ("void", "order.updated", Skipped),
        ];
        for (word, event, status) in table {
            let record = render(order("ord_3", word, created)).unwrap();
            assert_eq!(body(&record)["type"], event, "{word}");
            assert_eq!(body(&record)["timestamp"], created, "{word}");
            let a = one_attempt(&record);
            assert_eq!((a.status, a.provider_status.as_str()), (status, word));
        }

        assert_eq!(render(order("ord_4", "draft", created)), None);
        let mut no_time = order("ord_5", "paid", created);
        no_time["created_at"] = Value::Null;
        no_time["modified_at"] = Value::Null;
        assert_eq!(
            render(no_time),
            None,
            "no order time to stamp the event with"
        );
        let mut no_id = order("ord_6", "paid", created);
        no_id.as_object_mut().unwrap().remove("id");
        assert_eq!(render(no_id), None);
    }

    #[test]
    fn rendering_is_stable_across_runs_and_embedded_changes() {
        let first = render(order("ord_1", "paid", "2025-01-10T08:00:00Z")).unwrap();
        let mut later = order("ord_1", "paid", "2025-01-10T08:00:00Z");
        later["subscription"]["status"] = json!("past_due");
        later["subscription"]["current_period_end"] = json!("2025-03-10T08:00:00Z");
        later["product"]["name"] = json!("Pro (renamed)");
        assert_eq!(render(later).unwrap(), first);
        let mut refunded = order("ord_1", "refunded", "2025-01-10T08:00:00Z");
        refunded["modified_at"] = json!("2025-02-01T00:00:00Z");
        let refunded = render(refunded).unwrap();
        assert_eq!(refunded.key, first.key);
        assert_ne!(refunded.body, first.body, "a new state renders differently");
    }
}
