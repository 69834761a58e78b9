//! PayNow (paynow.gg): the Management API's `GET {base_url}/v1/stores/{store_id}/subscriptions`
//! (`Subscriptions_GetSubscriptions`, paynow-gg/openapi `management-api.yaml`), with the
//! store API key as `Authorization: APIKey <token>`. The seed page documents the storefront
//! twin `GET /v1/store/customer/subscriptions`, which needs a per-customer `Customer <token>`
//! and lists one customer's subscriptions only; a store-wide sync needs the management
//! listing, which takes the same `limit`/`after`/`before`/`asc` parameters and answers the
//! same subscription DTO (plus the `customer` object). `api.store_id` is required: without
//! it nothing is sent (`Rejected{status: 0, "missing api.store_id"}`).
//!
//! Pagination is by flake-id cursor: `limit` ≤ 100, `asc=true` (oldest id first) and
//! `after=<last id of the previous page>`; the body is a bare JSON array. A page with fewer
//! than `limit` items (or none) is the last. The cursor is the last id (a 64-bit flake id
//! kept as text); a page whose last id is not above the cursor is `Rejected{status: 200}`.
//!
//! The listing has no updated-since filter (only customer/subscription/checkout/trial ids,
//! billing email and `status`), and flake ids order by creation, not by change, so every run
//! reads the whole list. With `since`, a subscription whose latest own time (`updated_at`,
//! `canceled_at`, `active_at`, `current_period_start`, `created_at`) is before `since` is
//! not rendered (it is unchanged since the last run); one without any readable time is.
//!
//! Each subscription renders as the webhook PayNow sends for its state, envelope
//! `{"event_type", "event_id", "body"}` with the `SubscriptionDto` as `body` (read by the
//! normalizer: `id`, `status`, `past_due`, `currency`, `customer.id`,
//! `current_period_end`, `updated_at`). `event_id` is `sync:{id}:{16 hex of SHA-256 of the
//! DTO}`: the same for an unchanged subscription, new for any change. Key:
//! `subscription:{id}`.
//!
//! | DTO `status` (`SubscriptionStatusDto`) | webhook `event_type` | canonical |
//! |---|---|---|
//! | `active` | `ON_SUBSCRIPTION_ACTIVATED` (`billing_cycle_sequence` ≤ 1 or none) | active; past_due with `past_due: true` |
//! | `active` | `ON_SUBSCRIPTION_RENEWED` (later cycles) | active; past_due with `past_due: true` |
//! | `canceled` | `ON_SUBSCRIPTION_CANCELED` | cancelled |
//! | `created` | not rendered (never activated, no webhook the normalizer maps) | - |
//! | `invalid` | not rendered (undescribed in the definitions; PayNow sends no webhook for it) | - |
//! | any other word | not rendered, counted (`subsync_unknown_provider_values_total{provider="paynow",field="subscription.status"}`) | - |
//!
//! `past_due` ("Whether the subscription is past due, and is in a dunning (retrying)
//! state") is a flag beside `status`, not a status: an active subscription with it is
//! past due. The webhooks' subscription body has no such flag.
//!
//! Billing attempts and refunds come from the second phase, the store's payments
//! (`payments.rs`): the subscriptions' last page leads to the cursor `payments:`. The
//! subscription DTO's `attempt_count` and `next_attempt_at` are not made into attempts:
//! they name no payment, and PayNow's `ON_PAYMENT_*` webhooks carry the payment id as the
//! attempt id, so each failed renewal is healed from its own payment instead (and the
//! subscription's past-due state from this listing).
//!
//! PayNow publishes no rate limit for the Management API; the default pause is a
//! conservative 250 ms (4 requests per second), and a 429 is honoured with `Retry-After`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use reqwest::Method;
use serde_json::{Value, json};

use crate::config::ApiSettings;
use crate::providers::contract::{ListClient, Page, PageRequest, Record};
use crate::providers::http::{Credential, Endpoint, ProviderApiError, read, required};
use crate::providers::support::sha256_hex;
use crate::providers::support::{capped, json_body};

use super::payments;

/// PayNow's maximum `limit`.
const MAX_LIMIT: u32 = 100;

pub struct PayNowList {
    api: Endpoint,
    store_id: Option<String>,
}

impl PayNowList {
    pub fn new(api: &ApiSettings, http: crate::providers::http::ProviderHttp) -> Self {
        Self {
            store_id: api.store_id.clone(),
            api: Endpoint::new(api, http, Credential::Authorization("APIKey")),
        }
    }

    async fn fetch(&self, request: PageRequest<'_>) -> Result<Page, ProviderApiError> {
        let store = required(self.store_id.as_deref(), "api.store_id")?;
        let limit = capped(request.page_size, MAX_LIMIT);
        let mut query = vec![("limit", limit.to_string())];
        if let Some(after) = request.cursor.and_then(payments::after) {
            let list = self
                .api
                .request(Method::GET, &["v1", "stores", store, "payments"])?;
            query.push(("asc", "false".to_owned()));
            query.extend(after.map(|id| ("after", id.to_owned())));
            let body = read(list.query(&query), "PayNow", request.cap())
                .await?
                .body;
            return payments::parse(&body, limit, after, request.since);
        }
        let subscriptions = self
            .api
            .request(Method::GET, &["v1", "stores", store, "subscriptions"])?;
        query.push(("asc", "true".to_owned()));
        if let Some(after) = request.cursor {
            query.push(("after", after.to_owned()));
        }
        let body = read(subscriptions.query(&query), "PayNow", request.cap())
            .await?
            .body;
        parse(&body, limit, request.cursor, request.since)
    }
}

impl ListClient for PayNowList {
    fn page<'a>(
        &'a self,
        request: PageRequest<'a>,
    ) -> BoxFuture<'a, Result<Page, ProviderApiError>> {
        Box::pin(self.fetch(request))
    }

    /// No documented rate: 4 requests per second.
    fn default_min_interval(&self) -> Duration {
        Duration::from_millis(250)
    }

    /// A full run lists every subscription of the store.
    fn lists_every_subscription(&self) -> bool {
        true
    }
}

/// A flake id written as a JSON string or integer, as text.
pub(super) fn flake_id(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) if n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// A listing the API answered (HTTP 200) that cannot be followed.
pub(super) fn rejected(message: impl Into<String>) -> ProviderApiError {
    ProviderApiError::Rejected {
        status: 200,
        message: message.into(),
    }
}

fn parse(
    body: &str,
    limit: u32,
    cursor: Option<&str>,
    since: Option<DateTime<Utc>>,
) -> Result<Page, ProviderApiError> {
    let subscriptions: Vec<Value> = serde_json::from_str(body)
        .map_err(|e| rejected(format!("not a PayNow list of subscriptions: {e}")))?;
    let full = subscriptions.len() >= limit as usize;
    let next = match subscriptions.last() {
        Some(last) if full => {
            let id = last.get("id").and_then(flake_id).ok_or_else(|| {
                rejected("PayNow page is full but its last subscription has no id")
            })?;
            if let Some(cursor) = cursor
                && !advances(cursor, &id)
            {
                return Err(rejected(format!(
                    "PayNow pagination does not advance (after {cursor}, last id {id})"
                )));
            }
            id
        }
        // Subscriptions done: the payments next.
        _ => payments::CURSOR.to_owned(),
    };
    let next = Some(next);
    let records = subscriptions
        .into_iter()
        .filter(|sub| changed_since(sub, since))
        .filter_map(render)
        .collect();
    Ok(Page::new(records, next))
}

/// Whether `last` lies after `cursor` in ascending flake-id order (64-bit numbers; text
/// that is not a number only has to differ).
fn advances(cursor: &str, last: &str) -> bool {
    match (cursor.parse::<u64>(), last.parse::<u64>()) {
        (Ok(cursor), Ok(last)) => last > cursor,
        _ => cursor != last,
    }
}

/// Whether the subscription's latest own time is at or after `since` (or unknown).
fn changed_since(sub: &Value, since: Option<DateTime<Utc>>) -> bool {
    let Some(since) = since else {
        return true;
    };
    let latest = [
        "updated_at",
        "canceled_at",
        "active_at",
        "current_period_start",
        "created_at",
    ]
    .iter()
    .filter_map(|field| sub.get(*field)?.as_str())
    .filter_map(|text| DateTime::parse_from_rfc3339(text).ok())
    .map(|time| time.with_timezone(&Utc))
    .max();
    latest.is_none_or(|latest| latest >= since)
}

/// The webhook PayNow sends for a subscription in this state, or `None` (never activated,
/// invalid, an unknown status, no id).
fn render(sub: Value) -> Option<Record> {
    let id = sub.get("id").and_then(flake_id)?;
    let status = sub.get("status")?.as_str()?.to_ascii_lowercase();
    let event_type = match status.as_str() {
        "active" => {
            let cycle = sub.get("billing_cycle_sequence").and_then(Value::as_u64);
            if cycle.is_none_or(|n| n <= 1) {
                "ON_SUBSCRIPTION_ACTIVATED"
            } else {
                "ON_SUBSCRIPTION_RENEWED"
            }
        }
        "canceled" => "ON_SUBSCRIPTION_CANCELED",
        "created" | "invalid" => return None,
        other => {
            crate::providers::support::unknown_provider_value(
                "paynow",
                "subscription.status",
                other,
            );
            return None;
        }
    };
    let state = sha256_hex(&[&json_body(&sub)]);
    let body = json!({
        "event_type": event_type,
        "event_id": format!("sync:{id}:{}", &state[..16]),
        "body": sub,
    });
    Some(Record::json(format!("subscription:{id}"), &body))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use wiremock::matchers::{header, method, path, query_param, query_param_is_missing};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::canonical::{CanonicalEvent, SubscriptionChange, SubscriptionStatus};
    use crate::config::ProviderKind;
    use crate::providers::paynow::definitions;
    use crate::providers::testing::schema::set;
    use crate::providers::testing::{EMPTY_END, assert_unreadable, normalize_with, request};
    use crate::providers::testing::{api_settings, assert_errors_map};

    const TOKEN: &str = "pnapi_v1_secret";
    const STORE: &str = "411486491630370000";

    fn client(server: &MockServer, store_id: Option<&str>) -> PayNowList {
        let api = ApiSettings {
            store_id: store_id.map(str::to_owned),
            ..api_settings(format!("{}/", server.uri()), TOKEN)
        };
        PayNowList::new(&api, crate::providers::http::http_client().unwrap())
    }

    /// A `SubscriptionDto` as the management API lists it, generated from its schema and
    /// checked valid (when `status` is one of `SubscriptionStatusDto`).
    fn subscription(id: &str, status: &str, cycle: Option<u64>) -> Value {
        let spec = &definitions().1;
        let mut sub = spec.generate(spec.schema("SubscriptionDto"));
        let canceled = status == "canceled";
        for (pointer, value) in [
            ("/id", json!(id)),
            ("/store_id", json!(STORE)),
            ("/customer/id", json!("411486491630370555")),
            ("/customer/store_id", json!(STORE)),
            ("/status", json!(status)),
            ("/past_due", json!(false)),
            ("/currency", json!("eur")),
            ("/total_amount", json!(999)),
            ("/current_period_start", json!("2024-11-12T10:30:00Z")),
            ("/current_period_end", json!("2024-12-12T10:30:00Z")),
            ("/billing_cycle_sequence", json!(cycle)),
            ("/next_attempt_at", Value::Null),
            ("/attempt_count", json!(0)),
            ("/created_at", json!("2024-10-12T10:30:00Z")),
            ("/updated_at", json!("2024-11-12T10:30:00Z")),
            ("/active_at", json!("2024-10-12T10:31:00Z")),
            (
                "/canceled_at",
                json!(canceled.then_some("2024-11-12T10:30:00Z")),
            ),
            ("/cancel_reason", Value::Null),
        ] {
            set(&mut sub, pointer, value);
        }
        let known = spec.schema("SubscriptionStatusDto")["enum"]
            .as_array()
            .unwrap()
            .contains(&json!(status));
        if known {
            let errors = spec.validate(&sub, spec.schema("SubscriptionDto"));
            assert!(errors.is_empty(), "{errors:#?}");
        }
        sub
    }

    fn ok(items: Vec<Value>) -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json(Value::Array(items))
    }

    #[tokio::test]
    async fn walks_forward_with_after_until_a_short_page() {
        let server = MockServer::start().await;
        let list = format!("/v1/stores/{STORE}/subscriptions");
        Mock::given(method("GET"))
            .and(path(list.as_str()))
            .and(header("authorization", format!("APIKey {TOKEN}").as_str()))
            .and(query_param("limit", "2"))
            .and(query_param("asc", "true"))
            .and(query_param("after", "411486491630370817"))
            .respond_with(ok(vec![subscription(
                "411486491630370900",
                "canceled",
                Some(2),
            )]))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(list.as_str()))
            .and(header("authorization", format!("APIKey {TOKEN}").as_str()))
            .and(query_param("limit", "2"))
            .and(query_param("asc", "true"))
            .and(query_param_is_missing("after"))
            .respond_with(ok(vec![
                subscription("411486491630370816", "active", Some(1)),
                subscription("411486491630370817", "created", None),
            ]))
            .expect(1)
            .mount(&server)
            .await;
        let client = client(&server, Some(STORE));

        let first = client.page(request(None)).await.unwrap();
        assert_eq!(first.next.as_deref(), Some("411486491630370817"));
        let keys: Vec<_> = first.records.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(
            keys,
            ["subscription:411486491630370816"],
            "a created (never active) subscription is not rendered but still moves the cursor"
        );

        let last = client
            .page(request(Some("411486491630370817")))
            .await
            .unwrap();
        assert_eq!(
            last.next.as_deref(),
            Some("payments:"),
            "1 of limit 2: the last page of subscriptions, the payments next"
        );
        assert_eq!(last.records.len(), 1);
    }

    #[tokio::test]
    async fn an_empty_page_ends_the_subscriptions_and_page_size_is_capped() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(query_param("limit", "100"))
            .respond_with(ok(vec![]))
            .expect(1)
            .mount(&server)
            .await;
        let page = client(&server, Some(STORE))
            .page(PageRequest {
                page_size: 500,
                ..request(Some("411486491630370817"))
            })
            .await
            .unwrap();
        assert_eq!(page.records, EMPTY_END.records);
        assert_eq!(page.next.as_deref(), Some("payments:"));
    }

    #[tokio::test]
    async fn a_missing_store_id_sends_nothing() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ok(vec![]))
            .expect(0)
            .mount(&server)
            .await;
        for store in [None, Some("")] {
            let err = client(&server, store)
                .page(request(None))
                .await
                .unwrap_err();
            assert_eq!(
                err,
                ProviderApiError::Rejected {
                    status: 0,
                    message: "missing api.store_id".to_owned()
                }
            );
        }
    }

    #[tokio::test]
    async fn a_cursor_that_does_not_advance_is_rejected() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ok(vec![
                subscription("411486491630370700", "active", Some(1)),
                subscription("411486491630370800", "active", Some(1)),
            ]))
            .mount(&server)
            .await;
        let err = client(&server, Some(STORE))
            .page(request(Some("411486491630370800")))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ProviderApiError::Rejected { status: 200, message } if message.contains("does not advance")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn errors_map_to_api_errors() {
        let server = MockServer::start().await;
        let client = client(&server, Some(STORE));
        let call = || client.page(request(None));
        assert_errors_map(&server, call, TOKEN).await;
        assert_unreadable(&server, call, "{\"data\": []}", "not a PayNow list").await;
    }

    fn change(record: &Record) -> SubscriptionChange {
        match normalize_with(ProviderKind::Paynow, record).as_slice() {
            [CanonicalEvent::Subscription(change)] => change.clone(),
            other => panic!("{}: expected one change, got {other:?}", record.key),
        }
    }

    #[test]
    fn subscriptions_render_as_paynow_webhooks() {
        use SubscriptionStatus::*;
        let table = [
            ("active", Some(1), "ON_SUBSCRIPTION_ACTIVATED", Active),
            ("active", None, "ON_SUBSCRIPTION_ACTIVATED", Active),
            ("active", Some(4), "ON_SUBSCRIPTION_RENEWED", Active),
            ("canceled", Some(4), "ON_SUBSCRIPTION_CANCELED", Cancelled),
        ];
        for (status, cycle, event, expected) in table {
            let record = render(subscription("411486491630370817", status, cycle)).unwrap();
            assert_eq!(record.key, "subscription:411486491630370817");
            assert!(record.headers.is_empty());
            let body: Value = serde_json::from_slice(&record.body).unwrap();
            assert_eq!(body["event_type"], event);
            assert_eq!(body["body"]["id"], "411486491630370817");
            let c = change(&record);
            assert_eq!((c.status, c.provider_status.as_str()), (expected, status));
            assert_eq!(c.subscription_id, "411486491630370817");
            assert_eq!(c.customer_id.as_deref(), Some("411486491630370555"));
            assert_eq!(c.currency.as_deref(), Some("EUR"));
            assert_eq!(
                c.current_period_end,
                Some(Utc.with_ymd_and_hms(2024, 12, 12, 10, 30, 0).unwrap())
            );
            assert_eq!(
                c.updated_at,
                Some(Utc.with_ymd_and_hms(2024, 11, 12, 10, 30, 0).unwrap()),
                "the subscription's own updated_at"
            );
        }
        assert_eq!(render(subscription("1", "created", None)), None);
        assert_eq!(render(subscription("1", "invalid", None)), None);
        assert_eq!(
            render(subscription("1", "zombie", None)),
            None,
            "counted, not rendered"
        );
        assert_eq!(render(json!({"status": "active"})), None, "no id");
        // Numeric flake ids stay exact.
        let mut numeric = subscription("1", "active", Some(1));
        numeric["id"] = json!(411486491630370817u64);
        assert_eq!(
            render(numeric).unwrap().key,
            "subscription:411486491630370817"
        );
    }

    #[test]
    fn an_active_subscription_past_due_is_past_due() {
        for (cycle, event) in [
            (Some(1), "ON_SUBSCRIPTION_ACTIVATED"),
            (Some(3), "ON_SUBSCRIPTION_RENEWED"),
        ] {
            let mut sub = subscription("411486491630370817", "active", cycle);
            sub["past_due"] = json!(true);
            sub["attempt_count"] = json!(2);
            sub["next_attempt_at"] = json!("2024-11-15T10:30:00Z");
            let record = render(sub).unwrap();
            let body: Value = serde_json::from_slice(&record.body).unwrap();
            assert_eq!(body["event_type"], event);
            assert_eq!(body["body"]["past_due"], true);
            let c = change(&record);
            assert_eq!(
                (c.status, c.provider_status.as_str()),
                (SubscriptionStatus::PastDue, "active")
            );
        }
        // A canceled one stays cancelled whatever the flag says.
        let mut sub = subscription("411486491630370817", "canceled", Some(3));
        sub["past_due"] = json!(true);
        assert_eq!(
            change(&render(sub).unwrap()).status,
            SubscriptionStatus::Cancelled
        );
    }

    #[test]
    fn the_listing_is_what_the_definitions_declare() {
        let spec = &definitions().1;
        let operation = spec.operation("/v1/stores/{storeId}/subscriptions", "get");
        assert_eq!(operation["security"], json!([{"APIKey": []}]));
        assert_eq!(
            spec.at("/components/securitySchemes/APIKey/x-gitbook-prefix"),
            "APIKey"
        );
        assert_eq!(
            spec.at("/components/securitySchemes/APIKey/name"),
            "Authorization"
        );
        let parameters = operation["parameters"].as_array().unwrap();
        let param = |name: &str| {
            parameters
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("no parameter {name}"))
        };
        assert_eq!(param("limit")["schema"]["maximum"], MAX_LIMIT);
        assert!(
            spec.validate(&json!(true), &param("asc")["schema"])
                .is_empty()
        );
        assert!(
            spec.validate(&json!("411486491630370817"), &param("after")["schema"])
                .is_empty()
        );
        let page = json!([
            subscription("411486491630370816", "active", Some(1)),
            subscription("411486491630370817", "canceled", Some(2)),
        ]);
        let errors = spec.validate(
            &page,
            spec.response("/v1/stores/{storeId}/subscriptions", "get", "200"),
        );
        assert!(errors.is_empty(), "{errors:#?}");
    }

    #[test]
    fn event_id_is_derived_from_id_and_state() {
        let event_id = |sub: Value| -> String {
            let body: Value = serde_json::from_slice(&render(sub).unwrap().body).unwrap();
            body["event_id"].as_str().unwrap().to_owned()
        };
        let active = subscription("411486491630370817", "active", Some(2));
        let first = event_id(active.clone());
        assert!(first.starts_with("sync:411486491630370817:"), "{first}");
        assert_eq!(first.len(), "sync:411486491630370817:".len() + 16);
        assert_eq!(first, event_id(active.clone()), "same state, same id");
        assert_eq!(
            render(active.clone()).unwrap().body,
            render(active).unwrap().body,
            "byte-identical renders"
        );
        let canceled = subscription("411486491630370817", "canceled", Some(2));
        assert_ne!(first, event_id(canceled), "a new state, a new id");
    }

    #[test]
    fn since_skips_subscriptions_unchanged_since() {
        let since = Utc.with_ymd_and_hms(2024, 11, 1, 0, 0, 0).single();
        let mut old = subscription("411486491630370001", "active", Some(1));
        for field in [
            "updated_at",
            "current_period_start",
            "active_at",
            "created_at",
        ] {
            old[field] = json!("2024-10-01T00:00:00Z");
        }
        let mut timeless = subscription("411486491630370002", "active", Some(1));
        for field in [
            "updated_at",
            "current_period_start",
            "active_at",
            "created_at",
        ] {
            timeless[field] = Value::Null;
        }
        let recent = subscription("411486491630370003", "active", Some(1));
        let body = serde_json::to_string(&vec![old, timeless, recent]).unwrap();
        let page = parse(&body, 3, None, since).unwrap();
        let keys: Vec<_> = page.records.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "subscription:411486491630370002",
                "subscription:411486491630370003"
            ]
        );
        assert_eq!(
            page.next.as_deref(),
            Some("411486491630370003"),
            "skipped records still page on"
        );
        assert_eq!(parse(&body, 3, None, None).unwrap().records.len(), 3);
    }
}
