//! Polar: the organization's orders, `GET {base_url}/v1/orders/` ("List Orders", operation
//! `orders:list`; the route is declared with its trailing slash) with `Authorization:
//! Bearer <api.token>`, an organization access token with scope `orders:read`. It lists
//! every customer's orders (the customer portal's list sees one customer only).
//!
//! - Query: `product_billing_type=recurring` (Polar's filter: subscription creations and
//!   renewals only), `sorting=-created_at` (newest first; also Polar's default), `page`
//!   (1-based) and `limit` (capped at 100, Polar's maximum), and with `since`
//!   `created_after` = `since` − [`LATE_WINDOW`] (RFC 3339).
//! - Answer: `ListResource_Order_` = `{"items": [Order...], "pagination": {"total_count",
//!   "max_page"}}`. Cursor = the next page number; the listing ends at `max_page` or on an
//!   empty `items`.
//! - `since`: Polar filters orders by creation only (`created_after`/`created_before`; no
//!   modification filter, no sorting by `modified_at`), and an order changes after its
//!   creation while in dunning (Polar retries at +2, +7, +14 and +21 days). So an
//!   incremental run reads the orders created from [`LATE_WINDOW`] before `since`; a later
//!   change (a refund weeks afterwards) is only seen by a full run (`since = None`). An
//!   order created while a run walks the pages pushes the others one place down (newest
//!   first): a page may repeat an order, none is skipped.
//! - Limits: Polar allows 500 requests per minute per organization in production and 100
//!   per minute in the sandbox (docs `api-reference/introduction`, 429 with
//!   `Retry-After`); pages are paced at 600 ms, within the sandbox limit, leaving most of
//!   the production budget to the other callers.
//!
//! Each order is rendered as Polar's webhook `{"type", "timestamp", "data"}`, `data` = the
//! order as listed (the same `Order` schema as the webhooks' `data`) without the nested
//! resources it embeds (`customer`, `product`, `subscription`, `discount`: their own current
//! states, which would change the rendering without an order change), and `timestamp` =
//! the order's `modified_at`, else `created_at` (never the current time). The normalizer
//! then maps it as `mod.rs` says:
//!
//! | order `status` | webhook | canonical |
//! |---|---|---|
//! | `paid` | `order.paid` | succeeded |
//! | `refunded` | `order.refunded` | refunded |
//! | `partially_refunded` | `order.refunded` | succeeded (the partial amount is not booked) |
//! | `pending` with `next_payment_attempt_at` (a failed renewal in dunning) | `order.updated` | failed, `next_attempt_at` set |
//! | `pending` without | `order.created` | pending |
//! | `void` | `order.updated` | skipped |
//! | `draft` | not rendered (no payment asked yet) | - |
//! | any other word | `order.updated` | ignored by the normalizer, counted |
//!
//! Headers: none. Key: `order:<id>` (the normalizer's attempt and cycle id).
//!
//! Then the subscriptions: `GET {base_url}/v1/subscriptions/` ("List Subscriptions",
//! `subscriptions:list`, scope `subscriptions:read`), every status (no `status` filter),
//! `sorting=started_at` (oldest first: one started during the walk lands on a later page,
//! none is skipped; Polar's own default is newest first), `page` and `limit` as above;
//! cursor `subscriptions:<page>`, reached from the orders' last page. The listing filters
//! by start and cancellation dates only, so every run walks it whole; with `since` a
//! subscription whose `modified_at` (else `created_at`) is before `since` is not rendered.
//! Each is rendered as the webhook Polar sends on entering its `status` (`active` →
//! `subscription.active`, `past_due`, `paused`, `canceled` alike, `incomplete` →
//! `subscription.created`, others `subscription.updated`; the normalizer reads
//! `data.status`), `data` without the resources it embeds, `timestamp` its own time.
//! Key: `subscription:<id>`. A full run thus reads every subscription: one the ledger has
//! live that Polar no longer lists is reported as disappeared.
//!
//! Knowingly not covered: one-time orders, and the customer portal's payment status of a
//! `pending` order that is not in dunning (a call per order, under a customer session).

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
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

/// Other resources an `Order` or a `Subscription` embeds: not its own state.
const EMBEDDED: &[&str] = &["customer", "product", "subscription", "discount"];

/// The cursor prefix of the subscriptions listing (an orders cursor is a bare page).
const SUBSCRIPTIONS: &str = "subscriptions:";

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
        let (listing, page) = match request.cursor {
            None => (Listing::Orders, 1),
            Some(cursor) => {
                let (listing, number) = match cursor.strip_prefix(SUBSCRIPTIONS) {
                    Some(number) => (Listing::Subscriptions, number),
                    None => (Listing::Orders, cursor),
                };
                let page = number.parse::<u32>().ok().filter(|page| *page >= 1);
                let page = page.ok_or_else(|| ProviderApiError::Rejected {
                    status: 0,
                    message: format!("invalid Polar sync cursor {}", snippet(cursor)),
                })?;
                (listing, page)
            }
        };
        let limit = capped(request.page_size, MAX_LIMIT).to_string();
        // The trailing empty segment gives the routes' own `/orders/`, `/subscriptions/`.
        let (list, mut query) = match listing {
            Listing::Orders => (
                self.api.request(Method::GET, &["v1", "orders", ""])?,
                vec![
                    ("product_billing_type", "recurring".to_owned()),
                    ("sorting", "-created_at".to_owned()),
                ],
            ),
            Listing::Subscriptions => (
                self.api
                    .request(Method::GET, &["v1", "subscriptions", ""])?,
                vec![("sorting", "started_at".to_owned())],
            ),
        };
        query.extend([("page", page.to_string()), ("limit", limit)]);
        if let (Listing::Orders, Some(since)) = (listing, request.since) {
            query.push(("created_after", created_after(since)));
        }
        let body = read(list.query(&query), "Polar", request.cap()).await?.body;
        parse(&body, listing, page, request.since)
            .map(|parsed| parsed.counted(page, capped(request.page_size, MAX_LIMIT)))
    }
}

/// The two listings a run walks, orders first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listing {
    Orders,
    Subscriptions,
}

/// `since` − [`LATE_WINDOW`], as Polar's `created_after` takes it.
fn created_after(since: DateTime<Utc>) -> String {
    since
        .checked_sub_signed(LATE_WINDOW)
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
        .to_rfc3339_opts(SecondsFormat::Secs, true)
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

    /// 100 requests per minute per organization in the sandbox (500 in production).
    fn requests_per_second(&self) -> Option<f64> {
        Some(100.0 / 60.0)
    }

    /// Every run walks every subscription of the organization.
    fn lists_every_subscription(&self) -> bool {
        true
    }
}

/// Polar's `ListResource_Order_`.
#[derive(Deserialize)]
struct List {
    items: Vec<Value>,
    pagination: Pagination,
}

/// Polar's `Pagination`: `max_page` bounds the walk, `total_count` tells the progress.
#[derive(Deserialize)]
struct Pagination {
    total_count: Option<u64>,
    max_page: u32,
}

/// A parsed page and the listing's total.
struct Parsed {
    page: Page,
    total: Option<u64>,
    items: u64,
}

impl Parsed {
    /// The page, with what the listing holds after it (page `number` of `limit` items).
    fn counted(self, number: u32, limit: u32) -> Page {
        let read = u64::from(number - 1) * u64::from(limit) + self.items;
        Page {
            remaining: self.total.map(|total| total.saturating_sub(read)),
            ..self.page
        }
    }
}

fn parse(
    body: &str,
    listing: Listing,
    page: u32,
    since: Option<DateTime<Utc>>,
) -> Result<Parsed, ProviderApiError> {
    let list: List = serde_json::from_str(body).map_err(|e| ProviderApiError::Rejected {
        status: 200,
        message: format!("not a Polar list of {}: {e}", listing.noun()),
    })?;
    let (total, items) = (list.pagination.total_count, list.items.len() as u64);
    let more = !list.items.is_empty() && page < list.pagination.max_page;
    let (records, next) = match listing {
        Listing::Orders => (
            list.items.into_iter().filter_map(render).collect(),
            // Orders done: the subscriptions next.
            Some(if more {
                (page + 1).to_string()
            } else {
                format!("{SUBSCRIPTIONS}1")
            }),
        ),
        Listing::Subscriptions => (
            (list.items.into_iter())
                .filter(|sub| changed_since(sub, since))
                .filter_map(render_subscription)
                .collect(),
            more.then(|| format!("{SUBSCRIPTIONS}{}", page + 1)),
        ),
    };
    Ok(Parsed {
        page: Page::new(records, next),
        total,
        items,
    })
}

impl Listing {
    fn noun(self) -> &'static str {
        match self {
            Listing::Orders => "orders",
            Listing::Subscriptions => "subscriptions",
        }
    }
}

/// The record's own time: `modified_at`, else `created_at`.
fn own_time(record: &Value) -> Option<&str> {
    let time = |field: &str| record.get(field).and_then(Value::as_str);
    time("modified_at").or_else(|| time("created_at"))
}

/// Whether the subscription changed at or after `since` (or its time is unreadable).
fn changed_since(sub: &Value, since: Option<DateTime<Utc>>) -> bool {
    let at = own_time(sub).and_then(|t| DateTime::parse_from_rfc3339(t).ok());
    match (since, at) {
        (Some(since), Some(at)) => at >= since,
        _ => true,
    }
}

/// `record` without the resources it embeds, as Polar's webhook `{type, timestamp, data}`.
fn webhook(key: String, event_type: &str, mut record: Value) -> Option<Record> {
    let timestamp = own_time(&record)?.to_owned();
    if let Some(fields) = record.as_object_mut() {
        for field in EMBEDDED {
            fields.remove(*field);
        }
    }
    let body = json!({ "type": event_type, "timestamp": timestamp, "data": record });
    Some(Record::json(key, &body))
}

/// The webhook Polar sends for a subscription in this state, or `None` (no id, status or
/// time). The normalizer reads the state from `data.status`; the type is the one Polar
/// sends on entering it.
fn render_subscription(sub: Value) -> Option<Record> {
    let id = sub.get("id")?.as_str()?.to_owned();
    let event_type = match sub.get("status")?.as_str()? {
        "active" => "subscription.active",
        "past_due" => "subscription.past_due",
        "paused" => "subscription.paused",
        "canceled" => "subscription.canceled",
        "incomplete" => "subscription.created",
        _ => "subscription.updated",
    };
    webhook(format!("subscription:{id}"), event_type, sub)
}

/// The webhook Polar sends for an order in this state, or `None` (a draft, or no id,
/// status or time).
fn render(order: Value) -> Option<Record> {
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
    webhook(format!("order:{id}"), event_type, order)
}

#[cfg(test)]
mod tests {
    use wiremock::matchers::{header, method, path, query_param, query_param_is_missing};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::canonical::{AttemptStatus, BillingAttempt, CanonicalEvent};
    use crate::config::ProviderKind;
    use crate::providers::polar::definitions;
    use crate::providers::testing::schema::set;
    use crate::providers::testing::{EMPTY_END, assert_unreadable, normalize_with, request};
    use crate::providers::testing::{api_settings, assert_errors_map};

    const TOKEN: &str = "polar_oat_secret123";
    const PATH: &str = "/v1/orders/";
    const SUB: &str = "e5149aae-e521-42b9-b24c-abb8d71eea2e";

    fn client(server: &MockServer) -> PolarList {
        PolarList::new(
            &api_settings(server.uri(), TOKEN),
            crate::providers::http::http_client().unwrap(),
        )
    }

    /// An `Order` as `GET /v1/orders/` lists it (generated from the schema: the customer,
    /// product and subscription it embeds included), with id `n` as a uuid.
    fn order(n: u32, status: &str, created: &str) -> Value {
        let spec = definitions();
        let mut order = spec.generate(spec.schema("Order"));
        for (pointer, value) in [
            ("/id", json!(format!("8a4c1f0e-0000-4000-8000-{n:012}"))),
            ("/status", json!(status)),
            ("/created_at", json!(created)),
            ("/modified_at", json!(created)),
            ("/paid", json!(status == "paid")),
            ("/total_amount", json!(1999)),
            ("/currency", json!("usd")),
            ("/billing_reason", json!("subscription_cycle")),
            ("/subscription_id", json!(SUB)),
            ("/next_payment_attempt_at", Value::Null),
        ] {
            set(&mut order, pointer, value);
        }
        order
    }

    fn id(n: u32) -> String {
        format!("8a4c1f0e-0000-4000-8000-{n:012}")
    }

    /// A page of `ListResource_Order_`, checked against the operation's 200 schema.
    fn list(items: Vec<Value>, total: u64, max_page: u32) -> ResponseTemplate {
        let body = json!({
            "items": items,
            "pagination": { "total_count": total, "max_page": max_page }
        });
        let spec = definitions();
        let errors = spec.validate(&body, spec.response(PATH, "get", "200"));
        assert!(errors.is_empty(), "{errors:#?}");
        ResponseTemplate::new(200).set_body_json(body)
    }

    async fn mount(
        server: &MockServer,
        page: &str,
        created_after: Option<&str>,
        response: ResponseTemplate,
    ) {
        let mock = Mock::given(method("GET"))
            .and(path(PATH))
            .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
            .and(query_param("product_billing_type", "recurring"))
            .and(query_param("sorting", "-created_at"))
            .and(query_param("limit", "2"))
            .and(query_param("page", page));
        let mock = match created_after {
            Some(at) => mock.and(query_param("created_after", at)),
            None => mock.and(query_param_is_missing("created_after")),
        };
        mock.respond_with(response).expect(1).mount(server).await;
    }

    #[test]
    fn the_query_is_one_the_definitions_declare() {
        let spec = definitions();
        let operation = spec.operation(PATH, "get");
        let security: Vec<&String> = operation["security"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s.as_object().unwrap().keys())
            .collect();
        assert!(
            security.iter().any(|s| *s == "oat"),
            "an organization token"
        );
        let parameters = operation["parameters"].as_array().unwrap();
        let param = |name: &str| {
            parameters
                .iter()
                .find(|p| p["name"] == name && p["in"] == "query")
                .unwrap_or_else(|| panic!("no query parameter {name}"))
        };
        let recurring = json!("recurring");
        assert!(
            spec.validate(&recurring, &param("product_billing_type")["schema"])
                .is_empty()
        );
        assert!(
            spec.validate(&json!(["-created_at"]), &param("sorting")["schema"])
                .is_empty()
        );
        assert!(
            spec.validate(&json!(1), &param("page")["schema"])
                .is_empty()
        );
        assert!(
            spec.validate(&json!(100), &param("limit")["schema"])
                .is_empty()
        );
        assert!(
            param("limit")["schema"]["description"]
                .as_str()
                .unwrap()
                .contains("Maximum is 100")
        );
        let since = DateTime::parse_from_rfc3339("2025-03-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let after = json!(created_after(since));
        assert_eq!(after, "2025-01-30T00:00:00Z");
        assert!(
            spec.validate(&after, &param("created_after")["schema"])
                .is_empty()
        );
    }

    #[tokio::test]
    async fn pages_up_to_max_page() {
        let server = MockServer::start().await;
        mount(
            &server,
            "1",
            None,
            list(
                vec![
                    order(3, "paid", "2025-03-10T08:00:00Z"),
                    order(2, "draft", "2025-02-10T08:00:00Z"),
                ],
                3,
                2,
            ),
        )
        .await;
        mount(
            &server,
            "2",
            None,
            list(vec![order(1, "refunded", "2025-01-10T08:00:00Z")], 3, 2),
        )
        .await;
        let client = client(&server);

        let first = client.page(request(None)).await.unwrap();
        assert_eq!(first.next.as_deref(), Some("2"));
        assert_eq!(first.remaining, Some(1), "total_count 3, 2 read");
        let keys: Vec<_> = first.records.iter().map(|r| r.key.clone()).collect();
        assert_eq!(
            keys,
            [format!("order:{}", id(3))],
            "a draft asks no payment"
        );

        let last = client.page(request(Some("2"))).await.unwrap();
        assert_eq!(
            last.next.as_deref(),
            Some("subscriptions:1"),
            "page 2 is max_page: the subscriptions next"
        );
        assert_eq!(last.remaining, Some(0));
        assert_eq!(last.records[0].key, format!("order:{}", id(1)));
    }

    #[tokio::test]
    async fn empty_items_end_the_listing() {
        let server = MockServer::start().await;
        // max_page claims more, but the page is empty: finished, not an endless walk.
        mount(&server, "3", None, list(vec![], 9, 5)).await;
        let page = client(&server).page(request(Some("3"))).await.unwrap();
        assert_eq!(page.records, EMPTY_END.records);
        assert_eq!(page.next.as_deref(), Some("subscriptions:1"));
    }

    #[tokio::test]
    async fn since_asks_for_the_orders_created_from_the_late_window_before_it() {
        let server = MockServer::start().await;
        let since = DateTime::parse_from_rfc3339("2025-03-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        mount(
            &server,
            "1",
            Some("2025-01-30T00:00:00Z"),
            list(
                vec![
                    order(4, "paid", "2025-02-20T00:00:00Z"),
                    order(3, "paid", "2025-02-09T00:00:00Z"),
                ],
                3,
                2,
            ),
        )
        .await;
        mount(
            &server,
            "2",
            Some("2025-01-30T00:00:00Z"),
            list(vec![order(2, "paid", "2025-02-01T00:00:00Z")], 3, 2),
        )
        .await;
        let client = client(&server);
        let with_since = |cursor| PageRequest {
            since: Some(since),
            ..request(cursor)
        };
        let first = client.page(with_since(None)).await.unwrap();
        assert_eq!((first.records.len(), first.next.as_deref()), (2, Some("2")));
        let second = client.page(with_since(Some("2"))).await.unwrap();
        assert_eq!(
            (second.records.len(), second.next.as_deref()),
            (1, Some("subscriptions:1"))
        );
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
        for bad in ["0", "x", "-1", "", "subscriptions:0", "subscriptions:"] {
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

        let mut paid = order(1, "paid", created);
        paid["modified_at"] = json!(modified);
        let record = render(paid).unwrap();
        let webhook = body(&record);
        assert_eq!(
            (webhook["type"].as_str(), webhook["timestamp"].as_str()),
            (Some("order.paid"), Some(modified))
        );
        for embedded in EMBEDDED {
            assert!(webhook["data"].get(embedded).is_none(), "{embedded}");
        }
        assert!(
            webhook["data"]["items"].is_array(),
            "the order's own items stay"
        );
        let a = one_attempt(&record);
        assert_eq!(
            (a.attempt_id.as_str(), a.cycle_id.as_deref(), a.status),
            (id(1).as_str(), Some(id(1).as_str()), Succeeded)
        );
        assert_eq!(a.subscription_id.as_deref(), Some(SUB));
        assert_eq!(
            a.amount.map(|m| (m.minor, m.currency)),
            Some((1999, "USD".into()))
        );
        assert_eq!((a.attempted_at, a.next_attempt_at), (at(modified), None));

        // A failed renewal in dunning: Polar keeps the order pending with its retry date.
        let mut dunning = order(2, "pending", created);
        dunning["modified_at"] = json!(modified);
        dunning["next_payment_attempt_at"] = json!("2025-01-12T08:00:07Z");
        let record = render(dunning).unwrap();
        assert_eq!(body(&record)["type"], "order.updated");
        let a = one_attempt(&record);
        assert_eq!((a.status, a.provider_status.as_str()), (Failed, "pending"));
        assert_eq!(a.next_attempt_at, at("2025-01-12T08:00:07Z"));

        let table = [
            ("pending", "order.created", Pending),
            ("refunded", "order.refunded", Refunded),
            ("partially_refunded", "order.refunded", Succeeded),
            ("void", "order.updated", Skipped),
        ];
        for (word, event, status) in table {
            let record = render(order(3, word, created)).unwrap();
            assert_eq!(body(&record)["type"], event, "{word}");
            assert_eq!(body(&record)["timestamp"], created, "{word}");
            let a = one_attempt(&record);
            assert_eq!((a.status, a.provider_status.as_str()), (status, word));
        }

        assert_eq!(render(order(4, "draft", created)), None);
        let mut no_time = order(5, "paid", created);
        no_time["created_at"] = Value::Null;
        no_time["modified_at"] = Value::Null;
        assert_eq!(
            render(no_time),
            None,
            "no order time to stamp the event with"
        );
        let mut no_id = order(6, "paid", created);
        no_id.as_object_mut().unwrap().remove("id");
        assert_eq!(render(no_id), None);
    }

    #[test]
    fn rendering_is_stable_across_runs_and_embedded_changes() {
        let first = render(order(1, "paid", "2025-01-10T08:00:00Z")).unwrap();
        let mut later = order(1, "paid", "2025-01-10T08:00:00Z");
        later["subscription"]["status"] = json!("past_due");
        later["customer"]["name"] = json!("Renamed");
        later["product"]["name"] = json!("Pro (renamed)");
        assert_eq!(render(later).unwrap(), first);
        let mut refunded = order(1, "refunded", "2025-01-10T08:00:00Z");
        refunded["modified_at"] = json!("2025-02-01T00:00:00Z");
        let refunded = render(refunded).unwrap();
        assert_eq!(refunded.key, first.key);
        assert_ne!(refunded.body, first.body, "a new state renders differently");
    }

    const SUBSCRIPTIONS_PATH: &str = "/v1/subscriptions/";

    /// A `Subscription` as `GET /v1/subscriptions/` lists it (generated from the schema,
    /// checked valid), modified at `modified`.
    fn subscription(n: u32, status: &str, modified: &str) -> Value {
        let spec = definitions();
        let mut sub = spec.generate(spec.schema("Subscription"));
        for (pointer, value) in [
            ("/id", json!(id(n))),
            ("/status", json!(status)),
            ("/currency", json!("usd")),
            (
                "/customer_id",
                json!("992fae2a-2a17-4b7a-8d9e-e287cf90131b"),
            ),
            ("/created_at", json!("2025-01-01T00:00:00Z")),
            ("/modified_at", json!(modified)),
            ("/current_period_end", json!("2025-04-01T00:00:00Z")),
        ] {
            set(&mut sub, pointer, value);
        }
        let errors = spec.validate(&sub, spec.schema("Subscription"));
        assert!(errors.is_empty(), "{errors:#?}");
        sub
    }

    #[tokio::test]
    async fn the_subscriptions_follow_the_orders_and_render_their_state() {
        let server = MockServer::start().await;
        let body = json!({
            "items": [
                subscription(1, "active", "2025-03-10T08:00:00Z"),
                subscription(2, "canceled", "2025-03-11T08:00:00Z"),
            ],
            "pagination": { "total_count": 3, "max_page": 2 }
        });
        let spec = definitions();
        let errors = spec.validate(&body, spec.response(SUBSCRIPTIONS_PATH, "get", "200"));
        assert!(errors.is_empty(), "{errors:#?}");
        let operation = spec.operation(SUBSCRIPTIONS_PATH, "get");
        let sorting = operation["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "sorting")
            .unwrap();
        assert!(
            spec.validate(&json!(["started_at"]), &sorting["schema"])
                .is_empty()
        );
        Mock::given(method("GET"))
            .and(path(SUBSCRIPTIONS_PATH))
            .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
            .and(query_param("sorting", "started_at"))
            .and(query_param("page", "1"))
            .and(query_param("limit", "2"))
            .and(query_param_is_missing("created_after"))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .expect(2)
            .mount(&server)
            .await;
        let client = client(&server);
        let page = client.page(request(Some("subscriptions:1"))).await.unwrap();
        assert_eq!(page.next.as_deref(), Some("subscriptions:2"));
        let states: Vec<_> = page
            .records
            .iter()
            .map(|record| {
                let body: Value = serde_json::from_slice(&record.body).unwrap();
                assert!(body["data"].get("customer").is_none(), "embedded: left out");
                match normalize_with(ProviderKind::Polar, record).as_slice() {
                    [CanonicalEvent::Subscription(c)] => (
                        record.key.clone(),
                        body["type"].as_str().unwrap().to_owned(),
                        c.status,
                    ),
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        use crate::canonical::SubscriptionStatus::{Active, Cancelled};
        assert_eq!(
            states,
            [
                (
                    format!("subscription:{}", id(1)),
                    "subscription.active".to_owned(),
                    Active
                ),
                (
                    format!("subscription:{}", id(2)),
                    "subscription.canceled".to_owned(),
                    Cancelled
                ),
            ]
        );
        // With `since`, only what changed from it on.
        let since = DateTime::parse_from_rfc3339("2025-03-11T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let recent = client
            .page(PageRequest {
                since: Some(since),
                ..request(Some("subscriptions:1"))
            })
            .await
            .unwrap();
        let keys: Vec<_> = recent.records.iter().map(|r| r.key.clone()).collect();
        assert_eq!(keys, [format!("subscription:{}", id(2))]);
    }

    #[tokio::test]
    async fn the_subscriptions_last_page_ends_the_run() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path(SUBSCRIPTIONS_PATH))
            .and(query_param("page", "2"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "items": [subscription(3, "past_due", "2025-03-12T08:00:00Z")],
                "pagination": { "total_count": 3, "max_page": 2 }
            })))
            .expect(1)
            .mount(&server)
            .await;
        let page = client(&server)
            .page(request(Some("subscriptions:2")))
            .await
            .unwrap();
        assert_eq!(page.next, None);
        assert_eq!(page.records.len(), 1);
        assert!(client(&server).lists_every_subscription());
    }
}
