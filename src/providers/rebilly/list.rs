//! Rebilly: `GET {base_url}/subscriptions` ("Retrieve a list of orders",
//! `GetSubscriptionCollection` in Rebilly/api-definitions), the merchant API with the
//! secret API key in `REB-APIKEY` (security scheme `SecretApiKey`). `base_url` is the API
//! host, with the organization path when the account uses one
//! (`https://api.rebilly.com/organizations/{organizationId}`); the storefront API
//! (`/storefront/orders`, customer JWT) is not used.
//!
//! Pagination is by offset: `limit` ≤ 1000, `offset`, and the body is a bare JSON array;
//! where the list stands comes from the `Pagination-Total` and `Pagination-Offset` headers:
//! the next offset is `Pagination-Offset + len` while that is below `Pagination-Total`
//! (`Pagination-Limit` is informational). A page without those headers is taken as the last
//! one (logged), an empty array ends the listing, and an offset that would not move forward
//! is `Rejected{status: 200}`. The cursor is the next offset as decimal text.
//!
//! Incremental runs filter `updatedTime:<since, RFC 3339>..` (Rebilly's collection filter,
//! `..` = greater than or equal). The sort is `-updatedTime` (newest first): an order
//! updated during the walk then moves to the front, so later pages shift by one and show an
//! order twice, never skip one; its new state is picked up by the next run. Ascending order
//! would move it to the end and shift an unread order onto an already read offset. Orders
//! with an equal `updatedTime` have no documented tie order.
//!
//! `expand=recentInvoice` embeds each order's most recent invoice. Every subscription order
//! is rendered as the order webhook (`SubscriptionWebhook`: `{subscriptionId, eventType,
//! _embedded: {subscription}}`, the order as listed without its `_embedded`) of an event
//! the normalizer maps; the normalizer takes the status from the order itself (an `active`
//! order whose `billingStatus` is `past-due` is past_due):
//!
//! | order `status`                                 | webhook `eventType`        | canonical status   |
//! |------------------------------------------------|----------------------------|--------------------|
//! | `active`                                       | `subscription-renewed`     | active / past_due  |
//! | `paused`                                       | `subscription-paused`      | paused             |
//! | `canceled`, `churned`, `abandoned`, `voided`   | `subscription-canceled`    | cancelled          |
//! | `completed`                                    | `order-completed`          | expired            |
//! | `trial-ended`                                  | `subscription-trial-ended` | expired            |
//! | `pending` (not started), other words           | not rendered               | -                  |
//!
//! One-time orders (`orderType: one-time-order`) are no subscriptions and are not rendered.
//! The recent invoice, when embedded, adds billing attempts:
//! - `status: paid` → `invoice-paid` (`{invoiceId, eventType, _embedded: {invoice}}`, the
//!   invoice webhook shape, the invoice with its `transactions`): a succeeded attempt with
//!   the id the real webhook gives, the last approved sale or capture's transaction id
//!   when the listing embeds the transactions, else `invoice-paid:{invoiceId}`.
//! - each `sale`/`capture` transaction in the invoice's `transactions` whose `result` (or,
//!   without one, `status`) is a word of the definitions → `transaction-processed`
//!   (`{transactionId, eventType, _embedded: {transaction}}`); a `declined` one on a
//!   `renewal` invoice → `renewal-invoice-payment-declined` with the invoice (without its
//!   `transactions`) beside it (the `InvoiceAndTransaction` shape), so the failure carries
//!   its invoice as cycle.
//!
//! Amounts are embedded exactly as Rebilly wrote them (raw JSON, never through f64).
//! Keys: `order:{id}`, `invoice:{id}`, `transaction:{id}`.
//!
//! Then the transactions: `GET {base_url}/transactions` (`GetTransactionCollection`), the
//! same `limit`/`offset`/`sort=-updatedTime`/`filter=updatedTime:<since>..` and
//! `Pagination-*` headers, no expand; cursor `transactions:<offset>`. Every charge (`sale`,
//! `capture`) and every refund, void or credit of one whose outcome is a word of the
//! definitions renders as `transaction-processed` (`{transactionId, eventType,
//! _embedded: {transaction}}`), so the attempts and refunds of older invoices than an
//! order's recent one, and those of invoices paid without the order's `updatedTime`
//! moving, are healed too. Setups, authorizations and 3-D Secure checks are no charge and
//! are not rendered. Key: `transaction:{id}` (a transaction also seen under its invoice
//! renders the same attempt).
//!
//! Deeper than the definitions' `offset` (≤ 1000): once the next offset would pass it, the
//! window closes at the `updatedTime` of the page's oldest record (Rebilly's range filter
//! `updatedTime:<since>..<until>`, both ends inclusive) and the walk starts again at offset
//! 0 of the narrower window; the cursor carries the bound (`<offset>@<until>`,
//! `transactions:<offset>@<until>`). The records of that very second are read again
//! (queued once: the run's de-duplication), none is skipped. More than 1000 records within
//! one second cannot be narrowed and stop the run (`Rejected{status: 200}`).
//!
//! Rebilly publishes no request rate for its API (it answers 429 `TooManyRequests`), so
//! the default pause is a conservative 250 ms (4 requests per second).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat};
use futures_util::future::BoxFuture;
use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderName};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::ApiSettings;
use crate::providers::contract::{ListClient, Page, PageRequest, Record};
use crate::providers::http::{Credential, Endpoint, ProviderApiError, read};
use crate::providers::support::capped;

use super::webhook::{REFUND_TYPES, TRANSACTION_RESULTS, TRANSACTION_STATUSES};

/// Rebilly's maximum `limit`.
const MAX_LIMIT: u32 = 1000;
/// The definitions' deepest `offset`.
const MAX_OFFSET: u64 = 1000;
/// The cursor prefix of the transactions listing (an orders cursor is a bare offset).
const TRANSACTIONS: &str = "transactions:";

/// The secret API key header (`SecretApiKey` security scheme).
const API_KEY: HeaderName = HeaderName::from_static("reb-apikey");

pub struct RebillyList {
    api: Endpoint,
}

impl RebillyList {
    pub fn new(api: &ApiSettings, http: crate::providers::http::ProviderHttp) -> Self {
        Self {
            api: Endpoint::new(api, http, Credential::Header(API_KEY)),
        }
    }

    async fn fetch(&self, request: PageRequest<'_>) -> Result<Page, ProviderApiError> {
        let (transactions, position) = match request.cursor {
            None => (false, "0"),
            Some(cursor) => match cursor.strip_prefix(TRANSACTIONS) {
                Some(position) => (true, position),
                None => (false, cursor),
            },
        };
        let invalid = || ProviderApiError::Rejected {
            status: 0,
            message: format!("invalid Rebilly offset cursor {:?}", request.cursor),
        };
        let (offset, until) = match position.split_once('@') {
            Some((offset, until)) => (offset, Some(until)),
            None => (position, None),
        };
        let offset = offset.parse::<u64>().map_err(|_| invalid())?;
        if until.is_some_and(|until| DateTime::parse_from_rfc3339(until).is_err()) {
            return Err(invalid());
        }
        let mut query = vec![
            ("limit", capped(request.page_size, MAX_LIMIT).to_string()),
            ("offset", offset.to_string()),
            ("sort", "-updatedTime".to_owned()),
        ];
        // Whole seconds, rounded down: the filter only widens.
        let since = (request.since).map(|at| at.to_rfc3339_opts(SecondsFormat::Secs, true));
        if since.is_some() || until.is_some() {
            let (from, to) = (since.unwrap_or_default(), until.unwrap_or_default());
            query.push(("filter", format!("updatedTime:{from}..{to}")));
        }
        let (path, what, render): (&str, _, fn(&RawValue) -> Vec<Record>) = if transactions {
            ("transactions", "transactions", render_transaction)
        } else {
            query.push(("expand", "recentInvoice".to_owned()));
            ("subscriptions", "orders", render)
        };
        let list = self.api.request(Method::GET, &[path])?;
        let answer = read(list.query(&query), "Rebilly", request.cap()).await?;
        let pagination = Pagination::read(&answer.headers);
        let (page, oldest) = parse(&answer.body, offset, pagination, what, render)?;
        // Past the definitions' deepest offset, the window closes at the oldest time read
        // and the walk goes on from its first record (those of that very second again).
        let next = match page.next {
            Some(next) if next.parse::<u64>().is_ok_and(|n| n > MAX_OFFSET) => {
                let oldest = oldest.ok_or_else(|| ProviderApiError::Rejected {
                    status: 200,
                    message: format!("Rebilly {what} past offset {MAX_OFFSET} without an updatedTime to narrow the window"),
                })?;
                if until == Some(oldest.as_str()) {
                    return Err(ProviderApiError::Rejected {
                        status: 200,
                        message: format!(
                            "more than {MAX_OFFSET} Rebilly {what} share the updatedTime {oldest}: the window cannot narrow"
                        ),
                    });
                }
                Some(format!("0@{oldest}"))
            }
            Some(next) => Some(match until {
                Some(until) => format!("{next}@{until}"),
                None => next,
            }),
            None => None,
        };
        let next = match (transactions, next) {
            (true, next) => next.map(|next| format!("{TRANSACTIONS}{next}")),
            (false, Some(next)) => Some(next),
            // Orders done: the transactions (of the same window) next.
            (false, None) => Some(format!("{TRANSACTIONS}0")),
        };
        Ok(Page { next, ..page })
    }
}

impl ListClient for RebillyList {
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

    /// A full run lists every subscription order, in every status the normalizer maps.
    fn lists_every_subscription(&self) -> bool {
        true
    }
}

/// The `Pagination-*` response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pagination {
    total: Option<u64>,
    offset: Option<u64>,
}

impl Pagination {
    fn read(headers: &HeaderMap) -> Self {
        let number = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse().ok();
        Self {
            total: number("pagination-total"),
            offset: number("pagination-offset"),
        }
    }
}

/// A page of the listing of `what`, each item rendered by `render`, and the last item's
/// `updatedTime` (the oldest of the page, newest first).
fn parse(
    body: &str,
    requested: u64,
    pagination: Pagination,
    what: &str,
    render: fn(&RawValue) -> Vec<Record>,
) -> Result<(Page, Option<String>), ProviderApiError> {
    let items: Vec<Box<RawValue>> =
        serde_json::from_str(body).map_err(|e| ProviderApiError::Rejected {
            status: 200,
            message: format!("not a Rebilly list of {what}: {e}"),
        })?;
    if items.is_empty() {
        return Ok((Page::new(Vec::new(), None), None));
    }
    #[derive(Deserialize)]
    struct Updated {
        #[serde(rename = "updatedTime")]
        updated_time: Option<String>,
    }
    let oldest = (items.last())
        .and_then(|item| serde_json::from_str::<Updated>(item.get()).ok())
        .and_then(|item| item.updated_time)
        .filter(|time| DateTime::parse_from_rfc3339(time).is_ok());
    let len = items.len() as u64;
    let next = next_offset(requested, len, pagination)?;
    let records = items.iter().flat_map(|item| render(item)).collect();
    let remaining = (pagination.total)
        .zip(pagination.offset)
        .map(|(total, offset)| total.saturating_sub(offset.saturating_add(len)));
    let page = Page {
        records,
        next,
        remaining,
    };
    Ok((page, oldest))
}

/// `Pagination-Offset + len` while below `Pagination-Total`.
fn next_offset(
    requested: u64,
    len: u64,
    p: Pagination,
) -> Result<Option<String>, ProviderApiError> {
    let (Some(total), Some(offset)) = (p.total, p.offset) else {
        tracing::warn!(
            offset = requested,
            "Rebilly list without Pagination-Total/Pagination-Offset headers: taken as the last page"
        );
        return Ok(None);
    };
    let next = offset.saturating_add(len);
    if next >= total {
        return Ok(None);
    }
    if next <= requested {
        return Err(ProviderApiError::Rejected {
            status: 200,
            message: format!(
                "Rebilly pagination does not advance (asked offset {requested}, got offset {offset} with {len} items)"
            ),
        });
    }
    Ok(Some(next.to_string()))
}

/// An object's members, values kept exactly as written.
type Fields = BTreeMap<String, Box<RawValue>>;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderView {
    id: String,
    order_type: Option<String>,
    status: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InvoiceView {
    id: String,
    status: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    transactions: Option<Vec<Box<RawValue>>>,
}

#[derive(Deserialize)]
struct TransactionView {
    id: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    result: Option<String>,
    status: Option<String>,
}

/// A Rebilly webhook body: the ids, the event type and the embedded objects.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Hook<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    transaction_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    invoice_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscription_id: Option<&'a str>,
    event_type: &'a str,
    #[serde(rename = "_embedded")]
    embedded: Embedded<'a>,
}

#[derive(Serialize)]
struct Embedded<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    transaction: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    invoice: Option<&'a Fields>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscription: Option<&'a Fields>,
}

/// The records of one listed order: its status change, then its recent invoice's attempts.
fn render(raw: &RawValue) -> Vec<Record> {
    let Ok(order) = serde_json::from_str::<OrderView>(raw.get()) else {
        tracing::warn!("Rebilly order without a string id skipped");
        return Vec::new();
    };
    if order.order_type.as_deref() == Some("one-time-order") {
        return Vec::new();
    }
    let Ok(mut fields) = serde_json::from_str::<Fields>(raw.get()) else {
        return Vec::new();
    };
    let embedded = fields.remove("_embedded");
    let mut records = Vec::new();
    let status = order.status.as_deref().unwrap_or_default();
    match subscription_event(status) {
        Some(event_type) => {
            let hook = Hook {
                transaction_id: None,
                invoice_id: None,
                subscription_id: Some(&order.id),
                event_type,
                embedded: Embedded {
                    transaction: None,
                    invoice: None,
                    subscription: Some(&fields),
                },
            };
            records.push(Record::json(format!("order:{}", order.id), &hook));
        }
        None if status == "pending" => {}
        None => tracing::warn!(order = %order.id, status, "Rebilly order status not rendered"),
    }
    if let Some(invoice) = embedded.as_deref().and_then(recent_invoice) {
        records.extend(render_invoice(&invoice));
    }
    records
}

/// The webhook whose event the normalizer maps for an order in this status.
fn subscription_event(status: &str) -> Option<&'static str> {
    match status {
        "active" => Some("subscription-renewed"),
        "paused" => Some("subscription-paused"),
        "canceled" | "churned" | "abandoned" | "voided" => Some("subscription-canceled"),
        "completed" => Some("order-completed"),
        "trial-ended" => Some("subscription-trial-ended"),
        _ => None,
    }
}

/// `_embedded.recentInvoice`, whether `_embedded` is an object or (as Rebilly's own docs
/// sometimes show it) an array of single-key objects.
fn recent_invoice(embedded: &RawValue) -> Option<Box<RawValue>> {
    if let Ok(mut object) = serde_json::from_str::<Fields>(embedded.get()) {
        return object.remove("recentInvoice");
    }
    let list: Vec<Fields> = serde_json::from_str(embedded.get()).ok()?;
    list.into_iter()
        .find_map(|mut item| item.remove("recentInvoice"))
}

fn render_invoice(raw: &RawValue) -> Vec<Record> {
    let (Ok(invoice), Ok(mut fields)) = (
        serde_json::from_str::<InvoiceView>(raw.get()),
        serde_json::from_str::<Fields>(raw.get()),
    ) else {
        return Vec::new();
    };
    fields.remove("_embedded");
    let mut records = Vec::new();
    if invoice.status.as_deref() == Some("paid") {
        let hook = Hook {
            transaction_id: None,
            invoice_id: Some(&invoice.id),
            subscription_id: None,
            event_type: "invoice-paid",
            embedded: Embedded {
                transaction: None,
                invoice: Some(&fields),
                subscription: None,
            },
        };
        records.push(Record::json(format!("invoice:{}", invoice.id), &hook));
    }
    fields.remove("transactions");
    let renewal = invoice.kind.as_deref() == Some("renewal");
    for raw_tx in invoice.transactions.iter().flatten() {
        let Ok(tx) = serde_json::from_str::<TransactionView>(raw_tx.get()) else {
            continue;
        };
        if !matches!(tx.kind.as_deref(), Some("sale" | "capture")) || !known_outcome(&tx) {
            continue;
        }
        let declined = tx.result.as_deref() == Some("declined");
        let hook = if declined && renewal {
            Hook {
                transaction_id: Some(&tx.id),
                invoice_id: Some(&invoice.id),
                subscription_id: None,
                event_type: "renewal-invoice-payment-declined",
                embedded: Embedded {
                    transaction: Some(raw_tx),
                    invoice: Some(&fields),
                    subscription: None,
                },
            }
        } else {
            Hook {
                transaction_id: Some(&tx.id),
                invoice_id: None,
                subscription_id: None,
                event_type: "transaction-processed",
                embedded: Embedded {
                    transaction: Some(raw_tx),
                    invoice: None,
                    subscription: None,
                },
            }
        };
        records.push(Record::json(format!("transaction:{}", tx.id), &hook));
    }
    records
}

/// A listed transaction as the `transaction-processed` webhook (`{transactionId,
/// eventType, _embedded: {transaction}}`), when it is one the normalizer books: a charge
/// (`sale`, `capture`) or a refund, void or credit of one, whose outcome is a word of the
/// definitions.
fn render_transaction(raw: &RawValue) -> Vec<Record> {
    let Ok(tx) = serde_json::from_str::<TransactionView>(raw.get()) else {
        tracing::warn!("Rebilly transaction without a string id skipped");
        return Vec::new();
    };
    let kind = tx.kind.as_deref().unwrap_or_default();
    let booked = matches!(kind, "sale" | "capture") || REFUND_TYPES.contains(&kind);
    if !booked || !known_outcome(&tx) {
        return Vec::new();
    }
    let hook = Hook {
        transaction_id: Some(&tx.id),
        invoice_id: None,
        subscription_id: None,
        event_type: "transaction-processed",
        embedded: Embedded {
            transaction: Some(raw),
            invoice: None,
            subscription: None,
        },
    };
    vec![Record::json(format!("transaction:{}", tx.id), &hook)]
}

/// Whether this transaction's `result` (or, without one, `status`) is a word of the
/// definitions (the normalizer would take another as pending).
fn known_outcome(tx: &TransactionView) -> bool {
    let known = |table: &[(&str, _)], word: &str| table.iter().any(|(w, _)| *w == word);
    match (tx.result.as_deref(), tx.status.as_deref()) {
        (Some(result), _) => known(&TRANSACTION_RESULTS, result),
        (None, Some(status)) => known(&TRANSACTION_STATUSES, status),
        (None, None) => false,
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use serde_json::{Value, json};
    use wiremock::matchers::{header, method, path, query_param, query_param_is_missing};
    use wiremock::{Mock, MockServer, Request, ResponseTemplate};

    use super::*;
    use crate::canonical::{AttemptStatus, CanonicalEvent, SubscriptionStatus};
    use crate::config::ProviderKind;
    use crate::money::Money;
    use crate::providers::testing::{api_settings, assert_errors_map};
    use crate::providers::testing::{assert_unreadable, normalize_with, request};

    use super::super::webhook::definitions::{
        ORDERS, TRANSACTIONS as TRANSACTIONS_PATH, definitions,
    };

    const KEY: &str = "sk_live_rebilly_123";

    fn client(server: &MockServer, base_path: &str) -> RebillyList {
        let api = api_settings(format!("{}{base_path}", server.uri()), KEY);
        RebillyList::new(&api, crate::providers::http::http_client().unwrap())
    }

    /// A subscription order as listed (`#/components/schemas/Subscription`).
    fn order(id: &str, status: &str) -> Value {
        json!({
            "id": id, "orderType": "subscription-order", "billingStatus": "paid",
            "websiteId": "web_1", "currency": "USD", "customerId": "cus_1",
            "items": [{"plan": {"id": "plan_1"}, "quantity": 1}],
            "recentInvoiceId": "inv_1", "status": status, "autopay": true,
            "renewalTime": "2019-09-24T14:15:22Z", "rebillNumber": 2, "revision": 4,
            "lineItemSubtotal": {"currency": "USD", "amount": 49.95},
            "createdTime": "2019-07-24T14:15:22Z", "updatedTime": "2019-08-24T14:15:22Z",
            "_links": [{"rel": "self", "href": format!("https://api.rebilly.com/subscriptions/{id}")}]
        })
    }

    /// A rendered record's body, checked against Rebilly's definition of its webhook.
    fn checked_body(record: &Record) -> Value {
        let body: Value = serde_json::from_slice(&record.body).unwrap();
        let event_type = body["eventType"].as_str().unwrap();
        if let Err(errors) = definitions().check(event_type, &body) {
            panic!("{}: {event_type} is not as defined: {errors:?}", record.key);
        }
        body
    }

    /// `body` as a page of the listing, checked against its definition.
    fn checked_page(body: &str) -> &str {
        let page: Value = serde_json::from_str(body).unwrap();
        let problems = definitions().list_page_problems(ORDERS, &page);
        assert!(
            problems.is_empty(),
            "not a page Rebilly answers: {problems:#?}"
        );
        body
    }

    /// Only a listing request Rebilly would accept (another is not answered: the fake's
    /// 404).
    fn conforms(request: &Request) -> bool {
        let pairs: Vec<(String, String)> = request.url.query_pairs().into_owned().collect();
        let listing = match request.url.path().ends_with(TRANSACTIONS_PATH) {
            true => TRANSACTIONS_PATH,
            false => ORDERS,
        };
        let pairs = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let problems = definitions().list_query_problems(listing, pairs);
        if !problems.is_empty() {
            eprintln!("Rebilly would refuse {}: {problems:#?}", request.url);
        }
        problems.is_empty()
    }

    /// A list page, checked, with its pagination headers.
    fn page(body: String, total: u64, offset: u64, limit: u64) -> ResponseTemplate {
        checked_page(&body);
        ResponseTemplate::new(200)
            .insert_header("content-type", "application/json")
            .insert_header("pagination-total", total.to_string().as_str())
            .insert_header("pagination-offset", offset.to_string().as_str())
            .insert_header("pagination-limit", limit.to_string().as_str())
            .set_body_string(body)
    }

    fn list(orders: &[Value]) -> String {
        serde_json::to_string(orders).unwrap()
    }

    #[tokio::test]
    async fn pages_by_offset_until_pagination_total() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(conforms)
            .and(path("/organizations/org_1/subscriptions"))
            .and(header("reb-apikey", KEY))
            .and(query_param("limit", "2"))
            .and(query_param("offset", "2"))
            .and(query_param("sort", "-updatedTime"))
            .and(query_param("expand", "recentInvoice"))
            .respond_with(page(list(&[order("ord_3", "paused")]), 3, 2, 2))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(conforms)
            .and(path("/organizations/org_1/subscriptions"))
            .and(header("reb-apikey", KEY))
            .and(query_param("limit", "2"))
            .and(query_param("offset", "0"))
            .and(query_param("sort", "-updatedTime"))
            .and(query_param("expand", "recentInvoice"))
            .and(query_param_is_missing("filter"))
            .respond_with(page(
                list(&[order("ord_1", "active"), order("ord_2", "canceled")]),
                3,
                0,
                2,
            ))
            .expect(1)
            .mount(&server)
            .await;
        let client = client(&server, "/organizations/org_1/");

        let first = client.page(request(None)).await.unwrap();
        assert_eq!(first.next.as_deref(), Some("2"));
        assert_eq!(first.remaining, Some(1), "Pagination-Total 3, 2 read");
        let keys: Vec<_> = first.records.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["order:ord_1", "order:ord_2"]);

        let last = client.page(request(Some("2"))).await.unwrap();
        assert_eq!(
            last.next.as_deref(),
            Some("transactions:0"),
            "offset 2 + 1 order reaches Pagination-Total 3: the transactions next"
        );
        assert_eq!(last.records.len(), 1);
        assert!(last.records[0].headers.is_empty());
    }

    #[tokio::test]
    async fn since_filters_on_updated_time_and_page_size_is_capped() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(conforms)
            .and(path("/subscriptions"))
            .and(query_param("filter", "updatedTime:2023-11-14T22:13:20Z.."))
            .and(query_param("limit", "1000"))
            .respond_with(page("[]".to_owned(), 0, 0, 1000))
            .expect(1)
            .mount(&server)
            .await;
        let since = Utc.timestamp_opt(1_700_000_000, 750_000_000).single();
        let page = client(&server, "")
            .page(PageRequest {
                since,
                page_size: 5000,
                ..request(None)
            })
            .await
            .unwrap();
        assert_eq!(
            (page.records.len(), page.next.as_deref()),
            (0, Some("transactions:0"))
        );
    }

    /// `n` orders, newest first, the last updated at `oldest`.
    fn orders_down_to(n: usize, oldest: &str) -> String {
        let mut orders: Vec<Value> = (0..n)
            .map(|i| {
                let mut o = order(&format!("ord_{i}"), "active");
                o["updatedTime"] = json!("2024-05-01T00:00:00Z");
                o
            })
            .collect();
        if let Some(last) = orders.last_mut() {
            last["updatedTime"] = json!(oldest);
        }
        list(&orders)
    }

    #[tokio::test]
    async fn past_the_deepest_offset_the_window_closes_at_the_oldest_time_read() {
        let server = MockServer::start().await;
        let oldest = "2024-04-01T10:00:00Z";
        Mock::given(method("GET"))
            .and(conforms)
            .and(path("/subscriptions"))
            .and(query_param("offset", "1000"))
            .and(query_param_is_missing("filter"))
            .respond_with(page(orders_down_to(1000, oldest), 5000, 1000, 1000))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(conforms)
            .and(path("/subscriptions"))
            .and(query_param("offset", "0"))
            .and(query_param(
                "filter",
                format!("updatedTime:..{oldest}").as_str(),
            ))
            .respond_with(page(
                orders_down_to(1000, "2024-03-01T00:00:00Z"),
                3001,
                0,
                1000,
            ))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(conforms)
            .and(path("/transactions"))
            .and(query_param("offset", "1000"))
            .and(query_param(
                "filter",
                format!("updatedTime:2024-01-01T00:00:00Z..{oldest}").as_str(),
            ))
            .respond_with(page(orders_down_to(1000, oldest), 2500, 1000, 1000))
            .expect(1)
            .mount(&server)
            .await;
        let client = client(&server, "");
        let deep = |cursor| PageRequest {
            page_size: 1000,
            ..request(Some(cursor))
        };
        let page = client.page(deep("1000")).await.unwrap();
        assert_eq!(
            page.next,
            Some(format!("0@{oldest}")),
            "offset 2000 is past 1000"
        );
        let narrower = format!("0@{oldest}");
        let page = client.page(deep(&narrower)).await.unwrap();
        assert_eq!(
            page.next,
            Some(format!("1000@{oldest}")),
            "the bound is kept"
        );

        // The same second again: the window cannot narrow.
        let since = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).single();
        let same = format!("transactions:1000@{oldest}");
        let error = client
            .page(PageRequest {
                since,
                ..deep(&same)
            })
            .await
            .unwrap_err();
        assert!(error.to_string().contains("cannot narrow"), "{error}");

        for bad in ["0@", "0@yesterday", "transactions:x@2024-04-01T10:00:00Z"] {
            assert!(
                matches!(
                    client.page(request(Some(bad))).await,
                    Err(ProviderApiError::Rejected { status: 0, .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            definitions().at("/components/parameters/collectionOffset/schema/maximum"),
            &json!(MAX_OFFSET)
        );
    }

    #[tokio::test]
    async fn empty_page_and_missing_headers_end_the_listing() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(conforms)
            .and(query_param("offset", "4"))
            .respond_with(page("[]".to_owned(), 10, 4, 2))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(conforms)
            .and(query_param("offset", "0"))
            .respond_with(
                ResponseTemplate::new(200).set_body_string(checked_page(&list(&[
                    order("ord_1", "active"),
                    order("ord_2", "active"),
                ]))),
            )
            .mount(&server)
            .await;
        let client = client(&server, "");
        let empty = client.page(request(Some("transactions:4"))).await.unwrap();
        assert_eq!(empty.next, None, "an empty array ends even below the total");
        let headerless = client.page(request(None)).await.unwrap();
        assert_eq!(headerless.records.len(), 2);
        assert_eq!(
            headerless.next.as_deref(),
            Some("transactions:0"),
            "no pagination headers: the last page of the orders"
        );
    }

    #[tokio::test]
    async fn non_advancing_offsets_and_bad_cursors_are_rejected() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(conforms)
            .respond_with(page(list(&[order("ord_1", "active")]), 50, 0, 2))
            .mount(&server)
            .await;
        let client = client(&server, "");
        let err = client.page(request(Some("10"))).await.unwrap_err();
        assert!(
            matches!(&err, ProviderApiError::Rejected { status: 200, message } if message.contains("does not advance")),
            "{err:?}"
        );
        let err = client.page(request(Some("ten"))).await.unwrap_err();
        assert!(
            matches!(err, ProviderApiError::Rejected { status: 0, .. }),
            "{err:?}"
        );
        assert_eq!(
            server.received_requests().await.unwrap().len(),
            1,
            "a bad cursor sends nothing"
        );
    }

    /// The transactions listing, after the orders: every charge and refund of the window
    /// (not only the recent invoice's), each as the `transaction-processed` webhook.
    #[tokio::test]
    async fn transactions_follow_the_orders_and_render_as_processed_webhooks() {
        let server = MockServer::start().await;
        let tx = |id: &str, kind: &str, result: &str, parent: Option<&str>| {
            let mut tx = json!({"id": id, "type": kind, "status": "completed",
                "result": result, "amount": 49.95, "currency": "USD",
                "customerId": "cus_1", "invoiceIds": ["inv_9"], "subscriptionIds": ["ord_9"],
                "processedTime": "2019-08-24T14:15:22Z", "updatedTime": "2019-08-24T14:15:22Z"});
            if let Some(parent) = parent {
                tx["parentTransactionId"] = json!(parent);
                tx["amount"] = json!(5.00);
            }
            tx
        };
        let listed = json!([
            tx("txn_1", "sale", "declined", None),
            tx("txn_2", "sale", "approved", None),
            tx("txn_3", "refund", "approved", Some("txn_2")),
            tx("txn_4", "authorize", "approved", None),
        ]);
        let problems = definitions().list_page_problems(TRANSACTIONS_PATH, &listed);
        assert!(problems.is_empty(), "{problems:#?}");
        Mock::given(method("GET"))
            .and(path("/transactions"))
            .and(conforms)
            .and(query_param("offset", "0"))
            .and(query_param("sort", "-updatedTime"))
            .and(query_param_is_missing("expand"))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("pagination-total", "4")
                    .insert_header("pagination-offset", "0")
                    .set_body_json(&listed),
            )
            .expect(1)
            .mount(&server)
            .await;
        let page = client(&server, "")
            .page(request(Some("transactions:0")))
            .await
            .unwrap();
        assert_eq!(page.next, None);
        let keys: Vec<_> = page.records.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "transaction:txn_1",
                "transaction:txn_2",
                "transaction:txn_3"
            ],
            "an authorization is no charge"
        );
        for record in &page.records {
            assert_eq!(checked_body(record)["eventType"], "transaction-processed");
        }
        let failed = attempt(&page.records[0]);
        assert_eq!(
            (failed.status, failed.cycle_id.as_deref()),
            (AttemptStatus::Failed, Some("inv_9"))
        );
        assert_eq!(attempt(&page.records[1]).status, AttemptStatus::Succeeded);
        match normalize_with(ProviderKind::Rebilly, &page.records[2]).as_slice() {
            [CanonicalEvent::Refund(r)] => {
                assert_eq!(r.attempt_id.as_deref(), Some("txn_2"));
                assert_eq!(r.amount, Money::from_minor(500, "USD").unwrap());
            }
            other => panic!("{other:?}"),
        }
    }

    /// The listing as Rebilly defines it: the secret key in its header, the parameters
    /// the client sends, and a fake that refuses what Rebilly refuses.
    #[test]
    fn the_listing_is_what_the_definitions_declare() {
        let spec = definitions();
        let operation = spec.list_operation(ORDERS);
        assert_eq!(operation["operationId"], "GetSubscriptionCollection");
        assert!(
            (operation["security"].as_array().unwrap())
                .iter()
                .any(|s| s.get("SecretApiKey").is_some())
        );
        let scheme = spec.at("/components/securitySchemes/SecretApiKey");
        assert_eq!(scheme["in"], "header");
        let name = scheme["name"].as_str().unwrap();
        assert!(name.eq_ignore_ascii_case(API_KEY.as_str()), "{name}");
        let sent = [
            ("limit", "1000"),
            ("offset", "0"),
            ("sort", "-updatedTime"),
            ("expand", "recentInvoice"),
            ("filter", "updatedTime:2023-11-14T22:13:20Z.."),
        ];
        assert_eq!(spec.list_query_problems(ORDERS, sent), Vec::<String>::new());
        assert_eq!(MAX_LIMIT, 1000);
        assert_eq!(
            spec.list_query_problems(ORDERS, [("limit", "1001")]).len(),
            1
        );
        assert_eq!(
            spec.list_query_problems(ORDERS, [("offset", "-1")]).len(),
            1
        );
        assert_eq!(
            spec.list_query_problems(ORDERS, [("since", "2023")]).len(),
            1
        );
        let headers = &spec.doc_response_headers(ORDERS);
        for name in ["Pagination-Total", "Pagination-Offset", "Pagination-Limit"] {
            assert!(headers.contains(&name.to_owned()), "{name}: {headers:?}");
        }
    }

    #[tokio::test]
    async fn errors_map_to_api_errors() {
        let server = MockServer::start().await;
        let client = client(&server, "");
        let call = || client.page(request(None));
        assert_errors_map(&server, call, KEY).await;
        assert_unreadable(&server, call, "{\"not\": \"a list\"}", "not a Rebilly list").await;
    }

    fn subscription_change(record: &Record) -> crate::canonical::SubscriptionChange {
        match normalize_with(ProviderKind::Rebilly, record).as_slice() {
            [CanonicalEvent::Subscription(change)] => change.clone(),
            other => panic!("{}: expected one change, got {other:?}", record.key),
        }
    }

    fn attempt(record: &Record) -> crate::canonical::BillingAttempt {
        match normalize_with(ProviderKind::Rebilly, record).as_slice() {
            [CanonicalEvent::BillingAttempt(a)] => a.clone(),
            other => panic!("{}: expected one attempt, got {other:?}", record.key),
        }
    }

    /// The first and only page of a listing of `total` orders.
    fn only_page(body: &str, total: u64) -> Page {
        let pagination = Pagination {
            total: Some(total),
            offset: Some(0),
        };
        parse(checked_page(body), 0, pagination, "orders", render)
            .unwrap()
            .0
    }

    fn rendered(orders: &[Value]) -> Vec<Record> {
        only_page(&list(orders), orders.len() as u64).records
    }

    /// [`only_page`] of a body deliberately outside the definitions (a word they do not
    /// list, a hostile item): tolerated, never checked.
    fn unchecked_page(body: &str) -> Page {
        let pagination = Pagination {
            total: Some(1),
            offset: Some(0),
        };
        parse(body, 0, pagination, "orders", render).unwrap().0
    }

    #[test]
    fn order_statuses_render_as_subscription_webhooks() {
        use SubscriptionStatus::*;
        let past_due = |mut order: Value| {
            order["billingStatus"] = json!("past-due");
            order
        };
        let table = [
            (
                order("ord_1", "active"),
                "subscription-renewed",
                Active,
                "active",
            ),
            (
                past_due(order("ord_1", "active")),
                "subscription-renewed",
                PastDue,
                "past-due",
            ),
            (
                order("ord_1", "paused"),
                "subscription-paused",
                Paused,
                "paused",
            ),
            (
                order("ord_1", "canceled"),
                "subscription-canceled",
                Cancelled,
                "canceled",
            ),
            (
                order("ord_1", "churned"),
                "subscription-canceled",
                Cancelled,
                "churned",
            ),
            (
                order("ord_1", "abandoned"),
                "subscription-canceled",
                Cancelled,
                "abandoned",
            ),
            (
                order("ord_1", "voided"),
                "subscription-canceled",
                Cancelled,
                "voided",
            ),
            (
                order("ord_1", "completed"),
                "order-completed",
                Expired,
                "completed",
            ),
            (
                order("ord_1", "trial-ended"),
                "subscription-trial-ended",
                Expired,
                "trial-ended",
            ),
        ];
        for (listed, event, expected, word) in table {
            let records = rendered(&[listed]);
            let [record] = records.as_slice() else {
                panic!("{word}: {records:?}")
            };
            assert_eq!(record.key, "order:ord_1");
            let body = checked_body(record);
            assert_eq!(body["eventType"], event);
            assert_eq!(body["subscriptionId"], "ord_1");
            assert!(body["_embedded"]["subscription"].get("_embedded").is_none());
            let change = subscription_change(record);
            assert_eq!(
                (change.status, change.provider_status.as_str()),
                (expected, word)
            );
            assert_eq!(change.subscription_id, "ord_1");
            assert_eq!(change.customer_id.as_deref(), Some("cus_1"));
            assert_eq!(change.currency.as_deref(), Some("USD"));
            assert_eq!(change.version, Some(4), "the order's revision");
            assert_eq!(
                change.updated_at,
                Some(Utc.with_ymd_and_hms(2019, 8, 24, 14, 15, 22).unwrap()),
                "the order's own updatedTime"
            );
            assert_eq!(
                change.current_period_end,
                Some(Utc.with_ymd_and_hms(2019, 9, 24, 14, 15, 22).unwrap()),
                "renewalTime, as the listed order has no currentPeriodEnd"
            );
        }
        // A one-time sale (`OneTimeSale`: no renewal fields) and a pending order.
        let mut one_time = order("ord_9", "completed");
        one_time["orderType"] = json!("one-time-order");
        for field in ["autopay", "lineItemSubtotal", "rebillNumber", "renewalTime"] {
            one_time.as_object_mut().unwrap().remove(field);
        }
        let skipped = rendered(&[order("ord_8", "pending"), one_time]);
        assert!(skipped.is_empty(), "{skipped:?}");
        // A status word the definitions do not list, and an item that is no order.
        let hostile = list(&[order("ord_7", "suspended"), json!({"no": "id"})]);
        let skipped = unchecked_page(&hostile).records;
        assert!(skipped.is_empty(), "{skipped:?}");
        // Byte-identical across renders: the sync event id stays the same.
        assert_eq!(
            rendered(&[order("ord_1", "active")]),
            rendered(&[order("ord_1", "active")])
        );
    }

    /// An order with its recent invoice embedded, as raw text so amounts stay as written.
    fn order_with_invoice(invoice: &str) -> String {
        let order = serde_json::to_string(&order("ord_1", "active")).unwrap();
        format!(
            "[{},\"_embedded\":{{\"recentInvoice\":{invoice}}}}}]",
            &order[..order.len() - 1]
        )
    }

    #[test]
    fn a_paid_recent_invoice_renders_invoice_paid_with_its_exact_amount() {
        let body = order_with_invoice(
            r#"{"id":"inv_1","type":"renewal","subscriptionId":"ord_1","customerId":"cus_1",
               "websiteId":"web_1","currency":"USD","amount":49.95,"amountDue":0,
               "status":"paid","paidTime":"2019-08-24T14:15:22Z","transactions":[]}"#,
        );
        let page = only_page(&body, 1);
        let keys: Vec<_> = page.records.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["order:ord_1", "invoice:inv_1"]);
        for record in &page.records {
            checked_body(record);
        }
        let text = String::from_utf8(page.records[1].body.clone()).unwrap();
        assert!(text.contains("\"amount\":49.95"), "{text}");
        let a = attempt(&page.records[1]);
        assert_eq!(
            (a.attempt_id.as_str(), a.status),
            ("invoice-paid:inv_1", AttemptStatus::Succeeded)
        );
        assert_eq!(
            (a.cycle_id.as_deref(), a.subscription_id.as_deref()),
            (Some("inv_1"), Some("ord_1"))
        );
        assert_eq!(
            a.amount,
            Some(Money {
                minor: 4995,
                currency: "USD".into()
            })
        );
        assert_eq!(
            a.attempted_at,
            Some(Utc.with_ymd_and_hms(2019, 8, 24, 14, 15, 22).unwrap())
        );
    }

    #[test]
    fn recent_invoice_transactions_render_as_attempts() {
        let body = order_with_invoice(
            r#"{"id":"inv_2","type":"renewal","subscriptionId":"ord_1","customerId":"cus_1",
               "websiteId":"web_1","currency":"USD","amount":49.95,"status":"past-due",
               "transactions":[
                 {"id":"txn_1","type":"sale","status":"completed","result":"declined",
                  "amount":49.95,"currency":"USD","invoiceIds":["inv_2"],
                  "subscriptionIds":["ord_1"],"processedTime":"2019-08-24T14:15:22Z",
                  "gateway":{"response":{"code":"51","message":"Insufficient funds"}}},
                 {"id":"txn_2","type":"sale","status":"completed","result":"approved",
                  "amount":49.95,"currency":"USD","invoiceIds":["inv_2"],
                  "processedTime":"2019-08-25T14:15:22Z"},
                 {"id":"txn_3","type":"refund","result":"approved","amount":49.95,"currency":"USD"},
                 {"id":"txn_4","type":"sale","result":"who-knows"}]}"#,
        );
        let page = only_page(&body, 1);
        let keys: Vec<_> = page.records.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(
            keys,
            ["order:ord_1", "transaction:txn_1", "transaction:txn_2"],
            "not paid: no invoice-paid; refunds and unknown words are not rendered"
        );
        for record in &page.records {
            checked_body(record);
        }
        let declined: Value = serde_json::from_slice(&page.records[1].body).unwrap();
        assert_eq!(declined["eventType"], "renewal-invoice-payment-declined");
        assert_eq!(declined["invoiceId"], "inv_2");
        assert!(
            declined["_embedded"]["invoice"]
                .get("transactions")
                .is_none()
        );

        let failed = attempt(&page.records[1]);
        assert_eq!(
            (failed.attempt_id.as_str(), failed.status),
            ("txn_1", AttemptStatus::Failed)
        );
        assert_eq!(
            (
                failed.cycle_id.as_deref(),
                failed.subscription_id.as_deref()
            ),
            (Some("inv_2"), Some("ord_1"))
        );
        assert_eq!(failed.error_code.as_deref(), Some("51"));
        assert_eq!(failed.error_message.as_deref(), Some("Insufficient funds"));
        assert_eq!(failed.amount.as_ref().map(|m| m.minor), Some(4995));

        let paid = attempt(&page.records[2]);
        assert_eq!(
            (
                paid.attempt_id.as_str(),
                paid.status,
                paid.provider_status.as_str()
            ),
            ("txn_2", AttemptStatus::Succeeded, "approved")
        );
        assert_eq!(paid.cycle_id.as_deref(), Some("inv_2"));
        assert_eq!(
            paid.attempted_at,
            Some(Utc.with_ymd_and_hms(2019, 8, 25, 14, 15, 22).unwrap())
        );
    }

    #[test]
    fn embedded_as_an_array_is_read_too() {
        let order = serde_json::to_string(&order("ord_1", "canceled")).unwrap();
        let body = format!(
            "[{},\"_embedded\":[{{\"recentInvoice\":{{\"id\":\"inv_3\",\"customerId\":\"cus_1\",\"websiteId\":\"web_1\",\"status\":\"paid\",\"currency\":\"EUR\",\"amount\":10,\"paidTime\":\"2019-08-24T14:15:22Z\"}}}}]}}]",
            &order[..order.len() - 1]
        );
        // The definitions give `_embedded` as an object; an array of them is tolerated.
        let page = unchecked_page(&body);
        let keys: Vec<_> = page.records.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["order:ord_1", "invoice:inv_3"]);
        for record in &page.records {
            checked_body(record);
        }
        assert_eq!(
            attempt(&page.records[1]).amount.map(|m| m.minor),
            Some(1000)
        );
    }

    /// A paid invoice whose transactions are listed: `invoice-paid` names the approved sale,
    /// so it and that sale's `transaction-processed` are one attempt, not two.
    #[test]
    fn a_paid_invoice_and_its_approved_sale_are_one_attempt() {
        let body = order_with_invoice(
            r#"{"id":"inv_5","type":"renewal","subscriptionId":"ord_1","customerId":"cus_1",
               "websiteId":"web_1","currency":"USD","amount":49.95,"status":"paid",
               "paidTime":"2019-08-26T14:15:22Z","transactions":[
                 {"id":"txn_5","type":"sale","status":"completed","result":"declined",
                  "amount":49.95,"currency":"USD","invoiceIds":["inv_5"],
                  "processedTime":"2019-08-25T14:15:22Z"},
                 {"id":"txn_6","type":"sale","status":"completed","result":"approved",
                  "amount":49.95,"currency":"USD","invoiceIds":["inv_5"],
                  "subscriptionIds":["ord_1"],"processedTime":"2019-08-26T14:15:22Z"}]}"#,
        );
        let page = only_page(&body, 1);
        let keys: Vec<_> = page.records.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "order:ord_1",
                "invoice:inv_5",
                "transaction:txn_5",
                "transaction:txn_6"
            ]
        );
        for record in &page.records {
            checked_body(record);
        }
        let (paid, sale) = (attempt(&page.records[1]), attempt(&page.records[3]));
        assert_eq!(
            (paid.attempt_id.as_str(), paid.status),
            ("txn_6", AttemptStatus::Succeeded)
        );
        assert_eq!(
            (
                paid.attempt_id.as_str(),
                paid.status,
                paid.amount.as_ref(),
                paid.cycle_id.as_deref()
            ),
            (
                sale.attempt_id.as_str(),
                sale.status,
                sale.amount.as_ref(),
                sale.cycle_id.as_deref()
            )
        );
        assert_eq!(attempt(&page.records[2]).status, AttemptStatus::Failed);
    }
}
