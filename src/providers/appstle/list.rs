//! Appstle Subscriptions: the shop's past-orders report (every contract's processed
//! attempts), then, on a full run, the past orders of each contract the ledger knows.
//!
//! - Report: `GET {base_url}/api/external/v2/subscription-billing-attempts/past-orders/report`
//!   ("Get paginated past or upcoming orders report") with `X-API-Key`, query `status`
//!   (required; read for `FAILURE`, `SUCCESS` and `SKIPPED` in turn, `QUEUED` being the
//!   upcoming orders), no `contractId` (optional: every contract of the shop, those the
//!   ledger never heard of included), `page` (0-based) and `size`. Cursor
//!   `report:<status index>:<page>`; the first page of a run. Appstle's prose documents no
//!   answer shape: it is read as the past-orders answer (a JSON array with JHipster's
//!   pagination headers, the same product and framework), or as a Spring `Page` object
//!   (`content`, `last`). Anything else, or a refusal that is not about the credential
//!   (a 404 of a path or plan that does not serve it, a 400), is logged, counted
//!   (`subsync_sync_appstle_report_unavailable_total`) and skipped: the run walks the
//!   known contracts instead, as below. No time filter or order is documented, so every
//!   run reads the report whole. After it, a full run (`since = None`) walks the contracts
//!   (for the statuses the report does not list: `SECURITY_CHALLENGE`, `REFUNDED`, ...);
//!   an incremental run ends, one request per report page instead of one per contract.
//!
//! - Endpoint: `GET {base_url}/api/external/v2/subscription-billing-attempts/past-orders`
//!   ("Get past orders", `getPastOrdersV2`) with `X-API-Key: <api.token>` (the deprecated
//!   `api_key` query parameter is not sent). Query `contractId=<numeric id>` (one contract
//!   at a time), Spring `Pageable` `page` (0-based) and `size` (capped at [`MAX_SIZE`]).
//! - Answer: a JSON array of billing-attempt DTOs with JHipster pagination headers
//!   (`X-Total-Count`, and `Link` with `rel="next"` while a later page exists). Appstle's
//!   query is `status != 'QUEUED' ... ORDER BY billingDate desc`, so attempts come newest
//!   billing date first and upcoming (queued) orders are never listed. Appstle may drop
//!   archived Shopify orders from a page after paging (`hideArchivedOrders`), so a short
//!   page is not the end: the `Link` header decides, else `X-Total-Count`, else a full page.
//!   An empty array ends the contract.
//! - Contracts: `PageRequest::known_subscriptions` (sorted by the ledger's database),
//!   numeric strings or Shopify GIDs
//!   `gid://shopify/SubscriptionContract/N` (sent as `N`); an id that is neither is
//!   skipped. No known contract: the walk is empty.
//! - Cursor: `"<index>:<page>:<known subscription>"`. On resume the contract is found
//!   again by value (at `index` when the list did not change), so a list that changed in
//!   between cannot shift the walk onto another contract; a contract that vanished resumes
//!   at the next one in sort order, page 0. A contract whose walk is done yields `next` =
//!   the following contract at page 0; after the last one, `None`. A contract with no past
//!   orders is an empty page whose `next` is the following contract.
//! - `since`: Appstle has no time filter. The walk of a contract stops once a whole page was
//!   billed more than [`LATE_WINDOW`] before `since`: the same attempt row is retried in
//!   place by dunning (status, `attemptTime`, `attemptCount` change after its billing date),
//!   so recent changes to older attempts are still read. A status change later than that
//!   (e.g. a refund months later) is only seen by a full run (`since = None`).
//! - Limits: Appstle documents no read rate limit (only 5 `attempt-billing` calls per
//!   contract per hour), and every past-orders page makes Appstle query Shopify for the
//!   orders' lines, so reads are paced at one page per second by default.
//!
//! Each attempt is rendered as Appstle's Svix webhook `{"type", "data"}` with `data` = the
//! attempt record as listed (numbers kept byte for byte), minus the fields the past-orders
//! endpoint adds from the Shopify order at read time (`variantList`, `orderClosed`,
//! fulfilment status, ...; see [`READ_TIME_FIELDS`]), which are no part of the attempt and
//! would change its rendering without a billing change. The webhook type follows the
//! status (the normalizer reads the status from `data.status`, never from the type):
//!
//! | `status` | webhook | canonical |
//! |---|---|---|
//! | `SUCCESS` | `subscription.billing-success` | succeeded |
//! | `REFUNDED` | `subscription.billing-success` | refunded |
//! | `FAILURE`, `SHOPIFY_EXCEPTION`, `FAILED` | `subscription.billing-failure` | failed (error code/message from `billingAttemptResponseMessage`) |
//! | `SECURITY_CHALLENGE` | `subscription.billing-failure` | requires action |
//! | `SKIPPED*`, `CONTRACT_*`, `AUTO_CHARGE_DISABLED`, `SOCIAL_CONNECTION_NULL` | `subscription.billing-skipped` | skipped |
//! | `QUEUED`, `REQUESTING`, `PROGRESS`, `IMMEDIATE_TRIGGERED`, `PENDING_CONSOLIDATION`, `PROCESSING`, `SCHEDULED` | not rendered | - |
//! | any other word | `subscription.billing-failure` | dead-lettered by the normalizer (a new status is noticed) |
//!
//! In-flight attempts are not rendered: Appstle sends no webhook for them (only the
//! outcome), and the outcome arrives by webhook or by a later sync. Headers: none (the
//! normalizer reads only the body). Key: `billing-attempt:<id>` (Appstle's attempt id, the
//! normalizer's `attempt_id`).
//!
//! Knowingly not covered: the attempt amount has no currency in Appstle's record, so the
//! canonical amount stays `None` exactly as for the webhook; contract states (Appstle's
//! contract listing is not in its documented external API; a contract is learnt from its
//! attempts and its webhooks); the customer-wide listing (`customerId`) is not used; an
//! incremental run sees a `SECURITY_CHALLENGE` or `REFUNDED` attempt of a contract only if
//! the report lists it.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures_util::future::BoxFuture;
use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderName, LINK};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::config::ApiSettings;
use crate::providers::contract::{ListClient, Page, PageRequest, Record};
use crate::providers::http::{Cap, Credential, Endpoint, ProviderApiError, read, snippet};
use crate::providers::support::capped;

use super::webhook::attempt_status;

/// Page size cap. Spring's own cap is 2000, but each page makes Appstle call Shopify for
/// the listed orders, so pages are kept moderate.
const MAX_SIZE: u32 = 100;

/// How long after its billing date an attempt may still change (dunning retries it in
/// place): an incremental run reads every attempt billed since `since - LATE_WINDOW`.
const LATE_WINDOW: TimeDelta = TimeDelta::days(60);

/// Fields the past-orders endpoint fills from the Shopify order at read time: not part of
/// the billing attempt, and not read by the normalizer.
const READ_TIME_FIELDS: &[&str] = &[
    "variantList",
    "orderCancelReason",
    "orderCancelledAt",
    "orderClosed",
    "orderClosedAt",
    "orderConfirmed",
    "orderDisplayFinancialStatus",
    "orderDisplayFulfillmentStatus",
    "orderProcessedAt",
    "lastShippingUpdatedAt",
];

/// The cursor prefix of the shop-wide report (a contract cursor is `<index>:<page>:<id>`).
const REPORT: &str = "report:";

/// The statuses the report is read for (its `status` is required; `QUEUED` is upcoming).
const REPORT_STATUSES: &[&str] = &["FAILURE", "SUCCESS", "SKIPPED"];

/// The `X-Total-Count` header of JHipster pagination.
const TOTAL_COUNT: &str = "x-total-count";

pub struct AppstleList {
    api: Endpoint,
}

/// One attempt as listed: its fields in raw JSON, so amounts are never re-formatted.
pub(super) type Attempt = BTreeMap<String, Box<RawValue>>;

impl AppstleList {
    pub fn new(api: &ApiSettings, http: crate::providers::http::ProviderHttp) -> Self {
        let key = Credential::Header(HeaderName::from_static("x-api-key"));
        Self {
            api: Endpoint::new(api, http, key),
        }
    }

    async fn fetch(&self, request: PageRequest<'_>) -> Result<Page, ProviderApiError> {
        let known = request.known_subscriptions;
        let (index, page) = match request.cursor {
            None => return self.report(0, 0, request).await,
            Some(cursor) => match cursor.strip_prefix(REPORT) {
                Some(report) => {
                    let (status, page) = report_cursor(report)?;
                    return self.report(status, page, request).await;
                }
                None => resume(cursor, known)?,
            },
        };
        let Some(entry) = known.get(index) else {
            return Ok(Page::new(Vec::new(), None));
        };
        let next_contract = known.get(index + 1).map(|next| cursor(index + 1, next, 0));
        let Some(contract) = contract_number(entry) else {
            // Not an Appstle contract id: nothing to ask Appstle about it.
            return Ok(Page::new(Vec::new(), next_contract));
        };
        let size = capped(request.page_size, MAX_SIZE);
        let (attempts, headers) =
            past_orders(&self.api, contract, page, size, request.cap()).await?;
        let more = !attempts.is_empty()
            && more_pages(&headers, page, size, attempts.len())
            && !all_billed_before(&attempts, request.since);
        let records = attempts.into_iter().filter_map(render).collect();
        let next = if more {
            Some(cursor(index, entry, page.saturating_add(1)))
        } else {
            next_contract
        };
        Ok(Page::new(records, next))
    }

    /// Page `page` of the shop's report of `REPORT_STATUSES[status]` attempts, every
    /// contract's. After the last status: the contracts' walk on a full run (or when the
    /// report cannot be read), the end on an incremental one.
    async fn report(
        &self,
        status: usize,
        page: u32,
        request: PageRequest<'_>,
    ) -> Result<Page, ProviderApiError> {
        let known = request.known_subscriptions;
        let walk = || known.first().map(|first| cursor(0, first, 0));
        let Some(word) = REPORT_STATUSES.get(status) else {
            return Ok(Page::new(Vec::new(), walk()));
        };
        let size = capped(request.page_size, MAX_SIZE);
        let list = self.api.request(
            Method::GET,
            &[
                "api",
                "external",
                "v2",
                "subscription-billing-attempts",
                "past-orders",
                "report",
            ],
        )?;
        let query = [
            ("status", (*word).to_owned()),
            ("page", page.to_string()),
            ("size", size.to_string()),
        ];
        let answer = match read(list.query(&query), "Appstle", request.cap()).await {
            Ok(answer) => answer,
            Err(ProviderApiError::Rejected { status, message })
                if !matches!(status, 0 | 401 | 403) =>
            {
                return Ok(report_unavailable(
                    &format!("HTTP {status}: {message}"),
                    walk(),
                ));
            }
            Err(error) => return Err(error),
        };
        let Some((attempts, last)) = report_items(&answer.body) else {
            return Ok(report_unavailable("not a list of billing attempts", walk()));
        };
        let more = !attempts.is_empty()
            && match last {
                Some(last) => !last,
                None => more_pages(&answer.headers, page, size, attempts.len()),
            };
        let next = if more {
            Some(format!("{REPORT}{status}:{}", page.saturating_add(1)))
        } else if status + 1 < REPORT_STATUSES.len() {
            Some(format!("{REPORT}{}:0", status + 1))
        } else if request.since.is_none() {
            walk()
        } else {
            None
        };
        let records = attempts.into_iter().filter_map(render).collect();
        Ok(Page::new(records, next))
    }
}

/// The report could not be read (a path or plan that does not serve it, an answer of
/// another shape): logged and counted, and the run walks the contracts instead.
fn report_unavailable(why: &str, walk: Option<String>) -> Page {
    tracing::warn!(
        reason = %snippet(why),
        "Appstle past-orders report unavailable; walking the known contracts instead"
    );
    metrics::counter!("subsync_sync_appstle_report_unavailable_total").increment(1);
    Page::new(Vec::new(), walk)
}

/// The report's attempts, and whether this is its last page when it says so: a JSON
/// array (JHipster's list, paged by headers, as past orders are), or a Spring `Page`
/// object (`content`, `last`). `None` for anything else.
fn report_items(body: &str) -> Option<(Vec<Attempt>, Option<bool>)> {
    if let Ok(attempts) = serde_json::from_str::<Vec<Attempt>>(body) {
        return Some((attempts, None));
    }
    #[derive(serde::Deserialize)]
    struct SpringPage {
        content: Vec<Attempt>,
        last: Option<bool>,
    }
    let page: SpringPage = serde_json::from_str(body).ok()?;
    Some((page.content, page.last))
}

/// `<status index>:<page>` of a report cursor.
fn report_cursor(text: &str) -> Result<(usize, u32), ProviderApiError> {
    let parsed = text
        .split_once(':')
        .and_then(|(status, page)| Some((status.parse().ok()?, page.parse().ok()?)));
    parsed.ok_or_else(|| ProviderApiError::Rejected {
        status: 0,
        message: format!(
            "invalid Appstle sync cursor {}",
            snippet(&format!("{REPORT}{text}"))
        ),
    })
}

/// One page of a contract's past orders (`getPastOrdersV2`, newest billing date first),
/// with the pagination headers. The retry client reads them too, before each send.
pub(super) async fn past_orders(
    api: &Endpoint,
    contract: &str,
    page: u32,
    size: u32,
    cap: Cap,
) -> Result<(Vec<Attempt>, HeaderMap), ProviderApiError> {
    let past_orders = api.request(
        Method::GET,
        &[
            "api",
            "external",
            "v2",
            "subscription-billing-attempts",
            "past-orders",
        ],
    )?;
    let query = [
        ("contractId", contract.to_owned()),
        ("page", page.to_string()),
        ("size", size.to_string()),
    ];
    let answer = read(past_orders.query(&query), "Appstle", cap).await?;
    let attempts: Vec<Attempt> =
        serde_json::from_str(&answer.body).map_err(|e| ProviderApiError::Rejected {
            status: 200,
            message: format!("not an Appstle list of past orders: {e}"),
        })?;
    Ok((attempts, answer.headers))
}

impl ListClient for AppstleList {
    fn page<'a>(
        &'a self,
        request: PageRequest<'a>,
    ) -> BoxFuture<'a, Result<Page, ProviderApiError>> {
        Box::pin(self.fetch(request))
    }

    /// Appstle documents no read limit; one page per second (each page makes Appstle
    /// query Shopify).
    fn default_min_interval(&self) -> Duration {
        Duration::from_secs(1)
    }
}

/// The cursor of `page` of the contract `known[index]`.
fn cursor(index: usize, entry: &str, page: u32) -> String {
    format!("{index}:{page}:{entry}")
}

/// Where a cursor continues: the index of its contract in `known` and the page. The
/// contract is found by value (at its stored index when the list did not change); one no
/// longer known continues at the next one in sort order, page 0.
fn resume(cursor: &str, known: &[String]) -> Result<(usize, u32), ProviderApiError> {
    let invalid = || ProviderApiError::Rejected {
        status: 0,
        message: format!("invalid Appstle sync cursor {}", snippet(cursor)),
    };
    let mut parts = cursor.splitn(3, ':');
    let (Some(index), Some(page), Some(entry)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid());
    };
    let index: usize = index.parse().map_err(|_| invalid())?;
    let page: u32 = page.parse().map_err(|_| invalid())?;
    if known.get(index).is_some_and(|k| k == entry) {
        return Ok((index, page));
    }
    // The list changed since the cursor was stored (or sorts differently from bytes).
    let found = known
        .binary_search_by(|k| k.as_str().cmp(entry))
        .ok()
        .or_else(|| known.iter().position(|k| k == entry));
    Ok(match found {
        Some(index) => (index, page),
        None => (known.partition_point(|k| k.as_str() < entry), 0),
    })
}

/// Appstle's numeric contract id: a Shopify GID is reduced to its number; anything not
/// numeric is not an Appstle contract.
pub(super) fn contract_number(entry: &str) -> Option<&str> {
    let id = match entry.rsplit_once('/') {
        Some((prefix, tail)) if prefix.starts_with("gid://") => tail,
        _ => entry,
    };
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then_some(id)
}

/// Whether the contract has a page after `page`: JHipster's `Link rel="next"`, else
/// `X-Total-Count`, else whether this page was full.
fn more_pages(headers: &HeaderMap, page: u32, size: u32, listed: usize) -> bool {
    if let Some(link) = headers.get(LINK).and_then(|v| v.to_str().ok()) {
        return link.split(',').any(|part| part.contains("rel=\"next\""));
    }
    let total = headers
        .get(TOTAL_COUNT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match total {
        Some(total) => (u64::from(page) + 1) * u64::from(size) < total,
        None => listed >= size as usize,
    }
}

/// Whether every attempt of the page was billed before `since - LATE_WINDOW` (the list is
/// sorted by billing date, newest first, so every later page is older still). An attempt
/// without a readable billing date is not old.
fn all_billed_before(attempts: &[Attempt], since: Option<DateTime<Utc>>) -> bool {
    let Some(since) = since else {
        return false;
    };
    let horizon = since
        .checked_sub_signed(LATE_WINDOW)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    attempts.iter().all(|attempt| {
        field(attempt, "billingDate")
            .and_then(|date| DateTime::parse_from_rfc3339(&date).ok())
            .is_some_and(|date| date < horizon)
    })
}

/// A field of the attempt that is a JSON string or integer, as text; `None` when missing,
/// null, empty or other JSON.
pub(super) fn field(attempt: &Attempt, name: &str) -> Option<String> {
    let raw = attempt.get(name)?.get().trim();
    let text = if raw.starts_with('"') {
        serde_json::from_str::<String>(raw).ok()?
    } else if raw.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        raw.to_owned()
    } else {
        return None;
    };
    (!text.trim().is_empty()).then_some(text)
}

/// The webhook Appstle sends for an attempt in this status (read with the normalizer's
/// own [`attempt_status`]); `None` while in flight (no webhook exists for those states).
/// An unknown word renders as a failure, which the normalizer dead-letters, as it would
/// the webhook.
fn event_type(status: &str) -> Option<&'static str> {
    use crate::canonical::AttemptStatus::*;
    match attempt_status(status) {
        Some(Pending) => None,
        Some(Succeeded | Refunded) => Some("subscription.billing-success"),
        Some(Skipped) => Some("subscription.billing-skipped"),
        Some(Failed | RequiresAction) | None => Some("subscription.billing-failure"),
    }
}

/// Appstle's webhook envelope.
#[derive(Serialize)]
struct Webhook<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    data: &'a Attempt,
}

/// The webhook for one listed attempt, or `None` (in flight, or no id/status).
fn render(mut attempt: Attempt) -> Option<Record> {
    let id = field(&attempt, "id")?;
    let status = field(&attempt, "status")?;
    let event_type = event_type(&status)?;
    for field in READ_TIME_FIELDS {
        attempt.remove(*field);
    }
    let webhook = Webhook {
        event_type,
        data: &attempt,
    };
    Some(Record::json(format!("billing-attempt:{id}"), &webhook))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use wiremock::matchers::{header, method, path, query_param};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::canonical::{AttemptStatus, CanonicalEvent};
    use crate::config::ProviderKind;
    use crate::providers::testing::{EMPTY_END, assert_unreadable, normalize_with};
    use crate::providers::testing::{api_settings, assert_errors_map};

    const TOKEN: &str = "apst_secret_key_1";
    const PATH: &str = "/api/external/v2/subscription-billing-attempts/past-orders";

    fn client(server: &MockServer) -> AppstleList {
        let api = api_settings(format!("{}/", server.uri()), TOKEN);
        AppstleList::new(&api, crate::providers::http::http_client().unwrap())
    }

    fn request<'a>(cursor: Option<&'a str>, known: &'a [String]) -> PageRequest<'a> {
        PageRequest {
            known_subscriptions: known,
            ..crate::providers::testing::request(cursor)
        }
    }

    fn known(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|id| id.to_string()).collect()
    }

    /// A past order as Appstle lists it (read-time fields included).
    fn attempt(id: u64, contract: u64, status: &str, billed: &str) -> Value {
        json!({
            "id": id, "shop": "demo.myshopify.com", "retryingNeeded": false,
            "billingAttemptId": format!("gid://shopify/SubscriptionBillingAttempt/{id}9"),
            "status": status, "billingDate": billed, "contractId": contract,
            "attemptCount": 1, "attemptTime": billed, "orderId": 7001,
            "orderAmount": 29.99, "orderName": "#1001", "billingAttemptResponseMessage": null,
            "transactionFailedEmailSentStatus": "UNSENT",
            "variantList": [{"variantId": 1, "quantity": 1, "title": "Coffee"}],
            "orderClosed": false, "orderDisplayFulfillmentStatus": "FULFILLED",
            "orderProcessedAt": billed, "orderAmountUSD": 29.99,
            "orderAmountContractCurrency": 29.99
        })
    }

    fn page_of(items: Vec<Value>) -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json(Value::Array(items))
    }

    /// JHipster's `Link` header for page `page` of `last + 1` pages of size 2.
    fn link(contract: &str, page: u32, last: u32) -> String {
        let at = |n: u32, rel: &str| {
            format!("<http://h{PATH}?contractId={contract}&page={n}&size=2>; rel=\"{rel}\"")
        };
        let mut parts = Vec::new();
        if page < last {
            parts.push(at(page + 1, "next"));
        }
        if page > 0 {
            parts.push(at(page - 1, "prev"));
        }
        parts.push(at(last, "last"));
        parts.push(at(0, "first"));
        parts.join(",")
    }

    async fn mount(server: &MockServer, contract: &str, page: &str, response: ResponseTemplate) {
        Mock::given(method("GET"))
            .and(path(PATH))
            .and(header("x-api-key", TOKEN))
            .and(query_param("contractId", contract))
            .and(query_param("page", page))
            .and(query_param("size", "2"))
            .respond_with(response)
            .expect(1)
            .mount(server)
            .await;
    }

    #[tokio::test]
    async fn walks_each_known_contract_page_by_page() {
        let server = MockServer::start().await;
        mount(
            &server,
            "5550001",
            "0",
            page_of(vec![
                attempt(11, 5550001, "SUCCESS", "2024-03-01T09:00:00Z"),
                attempt(10, 5550001, "FAILURE", "2024-02-01T09:00:00Z"),
            ])
            .insert_header("x-total-count", "3")
            .insert_header("link", link("5550001", 0, 1).as_str()),
        )
        .await;
        mount(
            &server,
            "5550001",
            "1",
            page_of(vec![attempt(
                9,
                5550001,
                "PROGRESS",
                "2024-01-01T09:00:00Z",
            )])
            .insert_header("x-total-count", "3")
            .insert_header("link", link("5550001", 1, 1).as_str()),
        )
        .await;
        // A contract without past orders: Appstle answers an empty array.
        mount(
            &server,
            "5550003",
            "0",
            page_of(vec![]).insert_header("x-total-count", "0"),
        )
        .await;
        // A GID is asked for by its number.
        mount(
            &server,
            "5550002",
            "0",
            page_of(vec![attempt(
                21,
                5550002,
                "SKIPPED_DUNNING_MGMT",
                "2024-03-05T09:00:00Z",
            )])
            .insert_header("x-total-count", "1")
            .insert_header("link", link("5550002", 0, 0).as_str()),
        )
        .await;
        let client = client(&server);
        let known = known(&[
            "5550001",
            "5550003",
            "gid://shopify/SubscriptionContract/5550002",
        ]);

        let mut cursors = Vec::new();
        let mut keys = Vec::new();
        // Where the report hands over on a full run.
        let mut cursor = Some("0:0:5550001".to_owned());
        loop {
            let page = client
                .page(request(cursor.as_deref(), &known))
                .await
                .unwrap();
            keys.extend(page.records.into_iter().map(|r| r.key));
            match page.next {
                Some(next) => {
                    cursors.push(next.clone());
                    cursor = Some(next);
                }
                None => break,
            }
            assert!(cursors.len() < 10, "the walk must end");
        }
        assert_eq!(
            cursors,
            [
                "0:1:5550001",
                "1:0:5550003",
                "2:0:gid://shopify/SubscriptionContract/5550002"
            ]
        );
        // The in-flight PROGRESS attempt 9 has no webhook and is not rendered.
        assert_eq!(
            keys,
            [
                "billing-attempt:11",
                "billing-attempt:10",
                "billing-attempt:21"
            ]
        );
    }

    const REPORT_PATH: &str = "/api/external/v2/subscription-billing-attempts/past-orders/report";

    async fn mount_report(
        server: &MockServer,
        status: &str,
        page: &str,
        response: ResponseTemplate,
    ) {
        Mock::given(method("GET"))
            .and(path(REPORT_PATH))
            .and(header("x-api-key", TOKEN))
            .and(query_param("status", status))
            .and(query_param("page", page))
            .and(query_param("size", "2"))
            .and(wiremock::matchers::query_param_is_missing("contractId"))
            .respond_with(response)
            .expect(1)
            .mount(server)
            .await;
    }

    /// Walks from `cursor` to the end; the cursors and the record keys.
    async fn walk(
        client: &AppstleList,
        known: &[String],
        since: Option<DateTime<Utc>>,
    ) -> (Vec<String>, Vec<String>) {
        let (mut cursors, mut keys) = (Vec::new(), Vec::new());
        let mut cursor: Option<String> = None;
        loop {
            let request = PageRequest {
                since,
                ..request(cursor.as_deref(), known)
            };
            let page = client.page(request).await.unwrap();
            keys.extend(page.records.into_iter().map(|r| r.key));
            let Some(next) = page.next else {
                return (cursors, keys);
            };
            cursors.push(next.clone());
            cursor = Some(next);
            assert!(cursors.len() < 20, "the walk must end");
        }
    }

    #[tokio::test]
    async fn the_report_reads_every_contract_by_status_then_hands_over_to_the_walk() {
        let server = MockServer::start().await;
        // Contract 7 is unknown to the ledger: the report finds its attempts.
        mount_report(
            &server,
            "FAILURE",
            "0",
            page_of(vec![
                attempt(31, 7, "FAILURE", "2024-03-02T09:00:00Z"),
                attempt(30, 1, "FAILURE", "2024-03-01T09:00:00Z"),
            ])
            .insert_header("x-total-count", "3"),
        )
        .await;
        mount_report(
            &server,
            "FAILURE",
            "1",
            page_of(vec![attempt(29, 7, "FAILURE", "2024-02-01T09:00:00Z")])
                .insert_header("x-total-count", "3"),
        )
        .await;
        // A Spring `Page` object is read too.
        mount_report(
            &server,
            "SUCCESS",
            "0",
            ResponseTemplate::new(200).set_body_json(json!({
                "content": [attempt(32, 7, "SUCCESS", "2024-03-03T09:00:00Z")],
                "last": true, "totalElements": 1, "number": 0, "size": 2
            })),
        )
        .await;
        mount_report(
            &server,
            "SKIPPED",
            "0",
            page_of(vec![]).insert_header("x-total-count", "0"),
        )
        .await;
        mount(
            &server,
            "1",
            "0",
            page_of(vec![]).insert_header("x-total-count", "0"),
        )
        .await;
        let client = client(&server);
        let known = known(&["1"]);

        let (cursors, keys) = walk(&client, &known, None).await;
        assert_eq!(
            cursors,
            ["report:0:1", "report:1:0", "report:2:0", "0:0:1"],
            "a full run walks the known contracts after the report"
        );
        assert_eq!(
            keys,
            [
                "billing-attempt:31",
                "billing-attempt:30",
                "billing-attempt:29",
                "billing-attempt:32"
            ]
        );
    }

    #[tokio::test]
    async fn an_incremental_run_ends_with_the_report() {
        let server = MockServer::start().await;
        for status in REPORT_STATUSES {
            mount_report(
                &server,
                status,
                "0",
                page_of(vec![]).insert_header("x-total-count", "0"),
            )
            .await;
        }
        let since = DateTime::parse_from_rfc3339("2024-06-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let (cursors, keys) = walk(&client(&server), &known(&["1", "2"]), Some(since)).await;
        assert_eq!(
            cursors,
            ["report:1:0", "report:2:0"],
            "no request per contract"
        );
        assert!(keys.is_empty());
    }

    #[tokio::test]
    async fn a_report_that_cannot_be_read_hands_over_to_the_walk_and_a_bad_key_stops() {
        let known = known(&["1"]);
        for (answer, why) in [
            (
                ResponseTemplate::new(404),
                "a path or plan that does not serve it",
            ),
            (
                ResponseTemplate::new(200).set_body_json(json!({"items": []})),
                "another shape",
            ),
        ] {
            let server = MockServer::start().await;
            mount_report(&server, "FAILURE", "0", answer).await;
            let since = Some(Utc::now());
            let page = client(&server)
                .page(PageRequest {
                    since,
                    ..request(None, &known)
                })
                .await
                .unwrap();
            assert_eq!(
                page.next.as_deref(),
                Some("0:0:1"),
                "{why}: the walk, even incremental"
            );
        }
        let server = MockServer::start().await;
        mount_report(&server, "FAILURE", "0", ResponseTemplate::new(401)).await;
        let error = client(&server)
            .page(request(None, &known))
            .await
            .unwrap_err();
        assert!(
            matches!(error, ProviderApiError::Rejected { status: 401, .. }),
            "{error:?}"
        );
        for bad in ["report:", "report:x:0", "report:0:y"] {
            assert!(
                matches!(
                    client(&server).page(request(Some(bad), &known)).await,
                    Err(ProviderApiError::Rejected { status: 0, .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn total_count_or_a_full_page_decides_without_a_link_header() {
        let server = MockServer::start().await;
        let two = || {
            vec![
                attempt(2, 1, "SUCCESS", "2024-03-01T09:00:00Z"),
                attempt(1, 1, "SUCCESS", "2024-02-01T09:00:00Z"),
            ]
        };
        // X-Total-Count 4 with size 2: page 0 has a successor, page 1 does not.
        mount(
            &server,
            "1",
            "0",
            page_of(two()).insert_header("x-total-count", "4"),
        )
        .await;
        mount(
            &server,
            "1",
            "1",
            page_of(two()).insert_header("x-total-count", "4"),
        )
        .await;
        // No pagination header at all: a full page means "maybe more".
        mount(&server, "2", "0", page_of(two())).await;
        mount(
            &server,
            "2",
            "1",
            page_of(vec![attempt(3, 2, "SUCCESS", "2024-01-01T09:00:00Z")]),
        )
        .await;
        let client = client(&server);
        let known = known(&["1", "2"]);

        let first = client.page(request(Some("0:0:1"), &known)).await.unwrap();
        assert_eq!(first.next.as_deref(), Some("0:1:1"));
        let second = client.page(request(Some("0:1:1"), &known)).await.unwrap();
        assert_eq!(second.next.as_deref(), Some("1:0:2"));
        let third = client.page(request(Some("1:0:2"), &known)).await.unwrap();
        assert_eq!(third.next.as_deref(), Some("1:1:2"));
        let last = client.page(request(Some("1:1:2"), &known)).await.unwrap();
        assert_eq!((last.records.len(), last.next), (1, None));
    }

    #[tokio::test]
    async fn since_stops_a_contract_once_a_page_is_older_than_the_late_window() {
        let server = MockServer::start().await;
        let since = DateTime::parse_from_rfc3339("2024-06-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        // Billed 70 and 65 days before `since`: older than the 60-day window. Appstle
        // says there are more pages, but they are older still.
        mount(
            &server,
            "1",
            "0",
            page_of(vec![
                attempt(2, 1, "SUCCESS", "2024-03-28T00:00:00Z"),
                attempt(1, 1, "SUCCESS", "2024-03-23T00:00:00Z"),
            ])
            .insert_header("link", link("1", 0, 5).as_str()),
        )
        .await;
        // Billed 50 days before `since` (in dunning): the walk goes on.
        mount(
            &server,
            "2",
            "0",
            page_of(vec![
                attempt(4, 2, "FAILURE", "2024-04-12T00:00:00Z"),
                attempt(3, 2, "SUCCESS", "2024-03-01T00:00:00Z"),
            ])
            .insert_header("link", link("2", 0, 5).as_str()),
        )
        .await;
        let client = client(&server);
        let known = known(&["1", "2"]);
        let with_since = |cursor| PageRequest {
            since: Some(since),
            ..request(cursor, &known)
        };

        let first = client.page(with_since(Some("0:0:1"))).await.unwrap();
        assert_eq!(first.records.len(), 2, "the page read is still rendered");
        assert_eq!(first.next.as_deref(), Some("1:0:2"), "contract 1 is done");
        let second = client.page(with_since(Some("1:0:2"))).await.unwrap();
        assert_eq!(second.next.as_deref(), Some("1:1:2"));
    }

    #[tokio::test]
    async fn resumes_by_contract_value_and_skips_ids_that_are_not_appstle_contracts() {
        let server = MockServer::start().await;
        for page in ["0", "2", "3"] {
            mount(
                &server,
                "300",
                page,
                page_of(vec![]).insert_header("x-total-count", "0"),
            )
            .await;
        }
        let client = client(&server);
        let known = known(&["100", "300", "sub_not_appstle"]);

        // Contract 200 vanished from the ledger since the cursor was stored: the walk
        // resumes at the next contract in sort order, from its first page.
        let page = client.page(request(Some("1:4:200"), &known)).await.unwrap();
        assert_eq!(page.next.as_deref(), Some("2:0:sub_not_appstle"));

        // A contract was removed before 300: found by value, at its page.
        let page = client.page(request(Some("2:3:300"), &known)).await.unwrap();
        assert_eq!(page.next.as_deref(), Some("2:0:sub_not_appstle"));

        // The ledger's order is not byte order: still found by value.
        let unsorted = known_ids_unsorted();
        let page = client
            .page(request(Some("0:2:300"), &unsorted))
            .await
            .unwrap();
        assert_eq!(page.next, None, "300 is the last of that list");

        // A non-numeric id is never sent to Appstle.
        let page = client
            .page(request(Some("2:0:sub_not_appstle"), &known))
            .await
            .unwrap();
        assert_eq!(page, EMPTY_END);

        // Past the end of the list: finished.
        let page = client.page(request(Some("3:0:zzz"), &known)).await.unwrap();
        assert_eq!(page.next, None);

        for bad in ["", "x:0:100", "0:x:100", "100", "0:100"] {
            assert!(
                matches!(
                    client.page(request(Some(bad), &known)).await,
                    Err(ProviderApiError::Rejected { status: 0, .. })
                ),
                "{bad:?}"
            );
        }
    }

    fn known_ids_unsorted() -> Vec<String> {
        known(&["gid://shopify/SubscriptionContract/7", "300"])
    }

    #[tokio::test]
    async fn errors_map_to_api_errors() {
        let server = MockServer::start().await;
        let client = client(&server);
        let known = known(&["5550001"]);
        let call = || client.page(request(Some("0:0:5550001"), &known));
        assert_errors_map(&server, call, TOKEN).await;
        let says = "not an Appstle list of past orders";
        assert_unreadable(&server, call, r#"{"content": []}"#, says).await;
    }

    fn one_attempt(record: &Record) -> crate::canonical::BillingAttempt {
        match normalize_with(ProviderKind::Appstle, record).as_slice() {
            [CanonicalEvent::BillingAttempt(a)] => a.clone(),
            other => panic!("{}: unexpected events {other:?}", record.key),
        }
    }

    fn rendered(value: Value) -> Option<Record> {
        render(serde_json::from_value(value).unwrap())
    }

    #[test]
    fn renders_the_webhook_of_each_status() {
        use AttemptStatus::*;
        let body = |record: &Record| -> Value { serde_json::from_slice(&record.body).unwrap() };

        let success = rendered(attempt(11, 5550001, "SUCCESS", "2024-03-01T09:00:00Z")).unwrap();
        assert_eq!(body(&success)["type"], "subscription.billing-success");
        let a = one_attempt(&success);
        assert_eq!(
            (a.attempt_id.as_str(), a.status, a.provider_status.as_str()),
            ("11", Succeeded, "SUCCESS")
        );
        assert_eq!(a.subscription_id.as_deref(), Some("5550001"));
        assert_eq!(a.cycle_id.as_deref(), Some("5550001@2024-03-01T09:00:00Z"));
        assert_eq!(
            a.attempted_at,
            DateTime::parse_from_rfc3339("2024-03-01T09:00:00Z")
                .ok()
                .map(|t| t.with_timezone(&Utc))
        );
        // Appstle's record names no currency: no amount, as for the webhook.
        assert_eq!((a.amount, a.attempt_count), (None, Some(1)));

        let mut failure = attempt(10, 5550001, "FAILURE", "2024-02-01T09:00:00Z");
        failure["attemptCount"] = json!(3);
        failure["billingAttemptResponseMessage"] = json!(
            json!({"id": 42, "error_code": "insufficient_funds",
                "error_message": "Your card has insufficient funds."})
            .to_string()
        );
        let failure = rendered(failure).unwrap();
        assert_eq!(body(&failure)["type"], "subscription.billing-failure");
        let a = one_attempt(&failure);
        assert_eq!((a.status, a.attempt_count), (Failed, Some(3)));
        assert_eq!(a.error_code.as_deref(), Some("insufficient_funds"));
        assert_eq!(
            a.error_message.as_deref(),
            Some("Your card has insufficient funds.")
        );

        let table = [
            ("SHOPIFY_EXCEPTION", "subscription.billing-failure", Failed),
            (
                "SECURITY_CHALLENGE",
                "subscription.billing-failure",
                RequiresAction,
            ),
            ("REFUNDED", "subscription.billing-success", Refunded),
            ("SKIPPED", "subscription.billing-skipped", Skipped),
            (
                "SKIPPED_INVENTORY_MGMT",
                "subscription.billing-skipped",
                Skipped,
            ),
            ("CONTRACT_PAUSED", "subscription.billing-skipped", Skipped),
            (
                "AUTO_CHARGE_DISABLED",
                "subscription.billing-skipped",
                Skipped,
            ),
            (
                "SOCIAL_CONNECTION_NULL",
                "subscription.billing-skipped",
                Skipped,
            ),
        ];
        for (word, event, status) in table {
            let record = rendered(attempt(12, 1, word, "2024-03-01T09:00:00Z")).unwrap();
            assert_eq!(body(&record)["type"], event, "{word}");
            assert_eq!(one_attempt(&record).status, status, "{word}");
        }

        for word in [
            "QUEUED",
            "REQUESTING",
            "PROGRESS",
            "IMMEDIATE_TRIGGERED",
            "PENDING_CONSOLIDATION",
        ] {
            assert_eq!(
                rendered(attempt(13, 1, word, "2024-03-01T09:00:00Z")),
                None,
                "{word}"
            );
        }
        // A status Appstle adds later reaches the normalizer (and its dead-letter queue).
        let new = rendered(attempt(
            14,
            1,
            "SKIPPED_SOMETHING_NEW",
            "2024-03-01T09:00:00Z",
        ));
        assert_eq!(body(&new.unwrap())["type"], "subscription.billing-failure");
        // No id or no status: nothing to render.
        let mut no_id = attempt(15, 1, "SUCCESS", "2024-03-01T09:00:00Z");
        no_id["id"] = Value::Null;
        assert_eq!(rendered(no_id), None);
    }

    #[test]
    fn rendering_keeps_amounts_verbatim_and_drops_read_time_order_fields() {
        let listed = r#"{"id": 11, "contractId": 5550001, "status": "SUCCESS",
            "billingDate": "2024-03-01T09:00:00Z", "orderAmount": 29.90,
            "orderAmountContractCurrency": {"amount": "12.345", "currencyCode": "KWD"},
            "orderClosed": true, "orderDisplayFulfillmentStatus": "FULFILLED",
            "variantList": [], "lastShippingUpdatedAt": "2024-03-02T00:00:00Z"}"#;
        let parse = || serde_json::from_str::<Attempt>(listed).unwrap();
        let record = render(parse()).unwrap();
        let text = String::from_utf8(record.body.clone()).unwrap();
        assert!(text.contains(r#""orderAmount":29.90"#), "{text}");
        for field in READ_TIME_FIELDS {
            assert!(!text.contains(field), "{field} in {text}");
        }
        assert_eq!(render(parse()).unwrap(), record, "byte-identical every run");
        // Shopify moved the order on (fulfilled, archived): same rendering.
        let moved = listed.replace("\"orderClosed\": true", "\"orderClosed\": false");
        assert_eq!(
            render(serde_json::from_str(&moved).unwrap()).unwrap().body,
            record.body
        );
        let a = one_attempt(&record);
        assert_eq!(
            a.amount.map(|m| (m.minor, m.currency)),
            Some((12345, "KWD".into()))
        );
    }
}
