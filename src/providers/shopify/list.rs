//! Shopify: Admin GraphQL, `POST {base_url}/admin/api/{api_version}/graphql.json` with the
//! `X-Shopify-Access-Token` header (`api.api_version`, default `2026-04`, the same
//! conventions as the dunning client). Attempts are selected in the version's shape: the
//! `state` union from 2026-04, the flat `ready`/`order`/`nextActionUrl`/`processingError`
//! before (see `mod.rs`). Cursor pagination (`first`/`after`,
//! `pageInfo { hasNextPage endCursor }`) in two phases:
//!
//! 1. `subscriptionContracts(first: ≤25, after, query)`, each contract with its 10 most
//!    recent `billingAttempts(first: 10, reverse: true)`. With `since`, the query filter
//!    `updated_at:>='<since>'` (a documented filter of `subscriptionContracts`).
//! 2. `subscriptionBillingAttempts(first: ≤200, after, query)`, store-wide: every attempt
//!    of every contract (a full run), or with `since` those created since
//!    (`created_at:>='<since>'`). It reads the attempts beyond a contract's 10 latest, and
//!    those made on contracts whose own `updatedAt` did not move (Shopify does not
//!    document that a billing attempt touches its contract).
//!
//! The opaque cursor is `contracts:<endCursor>` or `attempts:<endCursor>` (`attempts:` =
//! the first page of phase 2). An empty API page ends its phase; `hasNextPage` without an
//! `endCursor`, or an `endCursor` equal to the one sent, is `Rejected { status: 200 }`.
//!
//! # Limits
//!
//! Cost-based leaky bucket: a query needs its *requested* cost in the bucket (1000 points,
//! restoring 50/s on the legacy standard plan, 100/s today) and one query may request at
//! most 1000. Requested cost: a connection is 2 + `first` × (1 + each nested object), so
//! a contract page costs 2 + n × (1 + customer 1 + 2 + 10 × (1 + order 1 +
//! processingError 1)) = 2 + 34n → at most 25 contracts (852); an attempt page 2 + 4n →
//! at most 200 attempts (802). The 2026-04 `state` costs the same per attempt: `state` 1
//! plus the dearest of its members (`action`, `error` or `order`, 1 each), a union costing
//! its most expensive member. [`ShopifyList::default_min_interval`] is 10 s: a
//! worst-case page (≈850 points) is restored in under 10 s at 100/s, and at 50/s the 150
//! points the bucket keeps above a page's requested cost cover pages whose actual cost is
//! up to ≈650 points; a heavier run gets a `THROTTLED` answer, which carries the exact wait.
//!
//! Errors: HTTP 429 → `RateLimited` (`Retry-After`); HTTP 200 with a GraphQL error whose
//! `extensions.code` is `THROTTLED` → `RateLimited`, the wait being `Retry-After` or else
//! (requestedQueryCost − currentlyAvailable) / restoreRate seconds from
//! `extensions.cost`; any other GraphQL error → `Rejected { status: 200 }`; 5xx →
//! `Transient`; 401/403 → authentication failure (body not echoed); other 4xx → `Rejected`.
//!
//! # Records (the REST webhook bodies `webhook.rs` reads)
//!
//! | GraphQL state (outcome, see `mod.rs`) | topic (`x-shopify-topic`) | canonical |
//! |---|---|---|
//! | contract, any status | `subscription_contracts/update` | subscription, status lowercased |
//! | attempt succeeded (order, or `SuccessState` whose order was deleted) | `subscription_billing_attempts/success` | `succeeded` |
//! | attempt challenged (`nextActionUrl`, `ActionRequiredState`) | `.../challenged` | `requires_action` |
//! | attempt failed (`processingError`, `FailedState`) | `.../failure` | `failed` |
//! | attempt processing (not `ready`, `PendingState`) | skipped | — |
//! | attempt whose outcome cannot be told | skipped | — |
//!
//! Ids are rendered as the webhooks carry them: `admin_graphql_api_*` gids (the GraphQL
//! `id`s) beside the numeric ids (the gid's last segment), so the canonical ids are the same
//! gids a webhook for the same contract or attempt gives. Contract bodies carry
//! `status` (lowercase, as webhooks write it), `currency_code`, the customer and
//! `revision_id` (a number, as in webhooks); attempt bodies carry `idempotency_key` (so an
//! attempt subsync's retry created is linked to its cycle as the webhook's is), the order,
//! `ready` and `error_code`/`error_message` (the code lowercased as the webhooks write it;
//! the normalizer gives both paths the enum's upper case). The record's own time is the
//! `x-shopify-triggered-at` header, which the normalizer reads: the contract's
//! `updatedAt`, the attempt's `completedAt` (else `createdAt`). Keys: `contract:<gid>`,
//! `attempt:<gid>`.
//!
//! Not covered: skipped billing cycles
//! (`subscription_billing_cycles/skip`, a different listing); the webhook fields the
//! normalizer ignores (`billing_policy`, `delivery_policy`, origin order). In the flat
//! shape a challenge that later failed still shows its `nextActionUrl` and is rendered
//! `challenged`; the `state` shape has no such ambiguity.

use std::time::Duration;

use chrono::SecondsFormat;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};

use super::admin::{AdminApi, GraphQlErrors};
use super::attempt::{AttemptState, Outcome, Shape};
use crate::config::ApiSettings;
use crate::providers::contract::{ListClient, Page, PageRequest, Record};
use crate::providers::http::{Cap, ProviderApiError, read, retry_after, snippet};
use crate::providers::support::{capped, json_body};

/// Contracts per page: 2 + 34 × 25 = 852 requested points, under the 1000 a query may ask.
const MAX_CONTRACTS: u32 = 25;
/// Attempts per page of phase 2: 2 + 4 × 200 = 802 requested points.
const MAX_ATTEMPTS: u32 = 200;

const CONTRACTS: &str = "contracts:";
const ATTEMPTS: &str = "attempts:";

const TOPIC: &str = "x-shopify-topic";
const TRIGGERED_AT: &str = "x-shopify-triggered-at";

/// The attempt fields both phases read, the outcome in `shape`.
fn attempt_fragment(shape: Shape) -> String {
    format!(
        "fragment SubsyncAttempt on SubscriptionBillingAttempt {{ \
id createdAt completedAt idempotencyKey {} }}",
        shape.selection()
    )
}

/// Phase 1: contracts with their latest attempts.
fn contracts_query(shape: Shape) -> String {
    format!(
        "query SubsyncContracts($first: Int!, $after: String, $query: String) {{ \
subscriptionContracts(first: $first, after: $after, query: $query) {{ \
pageInfo {{ hasNextPage endCursor }} \
nodes {{ id status updatedAt currencyCode revisionId customer {{ id }} \
billingAttempts(first: 10, reverse: true) {{ nodes {{ ...SubsyncAttempt }} }} }} }} }} \
{}",
        attempt_fragment(shape)
    )
}

/// Phase 2: attempts store-wide.
fn attempts_query(shape: Shape) -> String {
    format!(
        "query SubsyncAttempts($first: Int!, $after: String, $query: String) {{ \
subscriptionBillingAttempts(first: $first, after: $after, query: $query) {{ \
pageInfo {{ hasNextPage endCursor }} \
nodes {{ ...SubsyncAttempt subscriptionContract {{ id }} }} }} }} \
{}",
        attempt_fragment(shape)
    )
}

pub struct ShopifyList {
    admin: AdminApi,
}

/// Which listing a cursor continues, and after which `endCursor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase<'a> {
    Contracts(Option<&'a str>),
    Attempts(Option<&'a str>),
}

/// The `endCursor` after a phase prefix; nothing for the phase's first page.
fn after(rest: &str) -> Option<&str> {
    (!rest.is_empty()).then_some(rest)
}

fn phase(cursor: Option<&str>) -> Result<Phase<'_>, ProviderApiError> {
    match cursor {
        None => Ok(Phase::Contracts(None)),
        Some(c) => {
            if let Some(rest) = c.strip_prefix(CONTRACTS) {
                Ok(Phase::Contracts(after(rest)))
            } else if let Some(rest) = c.strip_prefix(ATTEMPTS) {
                Ok(Phase::Attempts(after(rest)))
            } else {
                Err(ProviderApiError::Rejected {
                    status: 0,
                    message: format!("not a Shopify sync cursor: {}", snippet(c)),
                })
            }
        }
    }
}

impl ShopifyList {
    pub fn new(api: &ApiSettings, http: crate::providers::http::ProviderHttp) -> Self {
        Self {
            admin: AdminApi::new(api, http),
        }
    }

    async fn fetch(&self, request: PageRequest<'_>) -> Result<Page, ProviderApiError> {
        let since = request
            .since
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true));
        match phase(request.cursor)? {
            Phase::Contracts(after) => {
                let filter = since.as_ref().map(|t| format!("updated_at:>='{t}'"));
                let first = capped(request.page_size, MAX_CONTRACTS);
                let body = self
                    .post(
                        &contracts_query(self.admin.shape()),
                        first,
                        after,
                        filter,
                        request.cap(),
                    )
                    .await?;
                let data: ContractsData = parse_data(&body)?;
                let connection = data.subscription_contracts.ok_or_else(|| {
                    rejected("no subscriptionContracts in the response".to_owned())
                })?;
                let more = next_cursor(&connection, after, CONTRACTS)?;
                let mut records = Vec::new();
                for contract in connection.nodes {
                    records.push(render_contract(&contract));
                    let contract_id = contract.id.as_str();
                    let attempts = contract.billing_attempts.map(|c| c.nodes);
                    for attempt in attempts.unwrap_or_default() {
                        records.extend(render_attempt(&attempt, contract_id));
                    }
                }
                // Contracts done: every attempt (of an incremental run: created since).
                let next = more.or_else(|| Some(ATTEMPTS.to_owned()));
                Ok(Page::new(records, next))
            }
            Phase::Attempts(after) => {
                let filter = since.as_ref().map(|t| format!("created_at:>='{t}'"));
                let first = capped(request.page_size, MAX_ATTEMPTS);
                let body = self
                    .post(
                        &attempts_query(self.admin.shape()),
                        first,
                        after,
                        filter,
                        request.cap(),
                    )
                    .await?;
                let data: AttemptsData = parse_data(&body)?;
                let connection = data.subscription_billing_attempts.ok_or_else(|| {
                    rejected("no subscriptionBillingAttempts in the response".to_owned())
                })?;
                let next = next_cursor(&connection, after, ATTEMPTS)?;
                let mut records = Vec::new();
                for attempt in &connection.nodes {
                    let contract = attempt.subscription_contract.as_ref().ok_or_else(|| {
                        rejected(format!("billing attempt {} has no contract", attempt.id))
                    })?;
                    records.extend(render_attempt(attempt, &contract.id));
                }
                Ok(Page::new(records, next))
            }
        }
    }

    /// One GraphQL request; the body of a 200 answer, or the HTTP status as an error.
    async fn post(
        &self,
        query: &str,
        first: u32,
        after: Option<&str>,
        filter: Option<String>,
        cap: Cap,
    ) -> Result<String, ProviderApiError> {
        let payload = json!({
            "query": query,
            "variables": { "first": first, "after": after, "query": filter },
        });
        let answer = read(self.admin.graphql(&payload)?, "Shopify", cap).await?;
        // The GraphQL errors of a 200 answer: `THROTTLED` is a rate limit, anything else final.
        let errors: GraphQlErrors = serde_json::from_str(&answer.body)
            .map_err(|e| rejected(format!("not a GraphQL response: {e}")))?;
        match errors.error(200, retry_after(&answer.headers)) {
            Some(error) => Err(error),
            None => Ok(answer.body),
        }
    }
}

impl ListClient for ShopifyList {
    fn page<'a>(
        &'a self,
        request: PageRequest<'a>,
    ) -> BoxFuture<'a, Result<Page, ProviderApiError>> {
        Box::pin(self.fetch(request))
    }

    /// See the module docs: a worst-case page (≈850 of the 1000 points) is restored in
    /// under 10 s at the standard plan's 100 points/s; `THROTTLED` answers carry the wait.
    fn default_min_interval(&self) -> Duration {
        Duration::from_secs(10)
    }

    /// A full run lists every subscription contract of the shop.
    fn lists_every_subscription(&self) -> bool {
        true
    }
}

fn rejected(message: String) -> ProviderApiError {
    ProviderApiError::Rejected {
        status: 200,
        message,
    }
}

#[derive(Deserialize)]
struct Response<T> {
    data: Option<T>,
}

fn parse_data<T: for<'de> Deserialize<'de>>(body: &str) -> Result<T, ProviderApiError> {
    let response: Response<T> = serde_json::from_str(body)
        .map_err(|e| rejected(format!("unexpected Shopify GraphQL response: {e}")))?;
    response
        .data
        .ok_or_else(|| rejected("a GraphQL response without data".to_owned()))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContractsData {
    subscription_contracts: Option<Connection<ContractNode>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AttemptsData {
    subscription_billing_attempts: Option<Connection<AttemptNode>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Connection<T> {
    page_info: PageInfo,
    nodes: Vec<T>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PageInfo {
    has_next_page: bool,
    end_cursor: Option<String>,
}

#[derive(Deserialize)]
struct Nodes<T> {
    nodes: Vec<T>,
}

#[derive(Deserialize)]
struct Node {
    id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContractNode {
    id: String,
    status: String,
    updated_at: String,
    currency_code: Option<String>,
    /// `UnsignedInt64`, a JSON string in GraphQL.
    revision_id: Option<Value>,
    customer: Option<Node>,
    billing_attempts: Option<Nodes<AttemptNode>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AttemptNode {
    id: String,
    created_at: String,
    completed_at: Option<String>,
    idempotency_key: Option<String>,
    /// `ready`, `order`, … or `state`, as the version selects them.
    #[serde(flatten)]
    state: AttemptState,
    /// Only in phase 2 (in phase 1 the attempt is nested in its contract).
    subscription_contract: Option<Node>,
}

/// The cursor of the next page of this phase, or `None` when it is done. An empty page
/// ends the phase; a next page without a new `endCursor` is a misbehaving API.
fn next_cursor<T>(
    connection: &Connection<T>,
    sent: Option<&str>,
    prefix: &str,
) -> Result<Option<String>, ProviderApiError> {
    if connection.nodes.is_empty() || !connection.page_info.has_next_page {
        return Ok(None);
    }
    match connection.page_info.end_cursor.as_deref() {
        None | Some("") => Err(rejected(
            "Shopify says hasNextPage but gives no endCursor".to_owned(),
        )),
        Some(end) if Some(end) == sent => Err(rejected(
            "Shopify returned the same endCursor again".to_owned(),
        )),
        Some(end) => Ok(Some(format!("{prefix}{end}"))),
    }
}

/// The numeric id of a gid (`gid://shopify/SubscriptionContract/7` → 7), as webhooks carry
/// it beside the gid; `null` when the gid does not end in a number.
fn legacy_id(gid: &str) -> Value {
    let last = gid.rsplit('/').next().unwrap_or_default();
    let last = last.split('?').next().unwrap_or_default();
    last.parse::<u64>().map_or(Value::Null, Value::from)
}

/// GraphQL's `UnsignedInt64` (a string) as the webhook's number.
fn revision(value: Option<&Value>) -> Value {
    match value {
        Some(Value::String(s)) => s.parse::<u64>().map_or_else(|_| json!(s), Value::from),
        Some(v) => v.clone(),
        None => Value::Null,
    }
}

/// `subscription_contracts/update` for the contract's current state.
fn render_contract(contract: &ContractNode) -> Record {
    let customer = contract.customer.as_ref().map(|c| c.id.as_str());
    let body = json!({
        "admin_graphql_api_id": contract.id,
        "id": legacy_id(&contract.id),
        "status": contract.status.to_ascii_lowercase(),
        "currency_code": contract.currency_code,
        "admin_graphql_api_customer_id": customer,
        "customer_id": customer.map_or(Value::Null, legacy_id),
        "revision_id": revision(contract.revision_id.as_ref()),
    });
    Record {
        key: format!("contract:{}", contract.id),
        body: json_body(&body),
        headers: vec![
            (TOPIC.to_owned(), "subscription_contracts/update".to_owned()),
            (TRIGGERED_AT.to_owned(), contract.updated_at.clone()),
        ],
    }
}

/// The `subscription_billing_attempts/*` webhook for a finished attempt, or `None` while it
/// is processing (or when its outcome cannot be told).
fn render_attempt(attempt: &AttemptNode, contract: &str) -> Option<Record> {
    // A success carries no error: the normalizer refuses one that does (the topic is not
    // signed, so the body must agree with it).
    let (action, order, error) = match attempt.state.outcome() {
        Outcome::Processing | Outcome::Unknown => return None,
        Outcome::Succeeded { order } => ("success", order, None),
        Outcome::Challenged => ("challenged", None, None),
        Outcome::Failed { code, message } => ("failure", None, Some((code, message))),
    };
    let (code, message) = error.unwrap_or_default();
    let body = json!({
        "id": legacy_id(&attempt.id),
        "admin_graphql_api_id": attempt.id,
        "idempotency_key": attempt.idempotency_key,
        "order_id": order.map_or(Value::Null, legacy_id),
        "admin_graphql_api_order_id": order,
        "subscription_contract_id": legacy_id(contract),
        "admin_graphql_api_subscription_contract_id": contract,
        "ready": true,
        "error_code": code.map(|c| c.to_ascii_lowercase()),
        "error_message": message,
    });
    let at = attempt.completed_at.as_ref().unwrap_or(&attempt.created_at);
    Some(Record {
        key: format!("attempt:{}", attempt.id),
        body: json_body(&body),
        headers: vec![
            (
                TOPIC.to_owned(),
                format!("subscription_billing_attempts/{action}"),
            ),
            (TRIGGERED_AT.to_owned(), at.clone()),
        ],
    })
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use wiremock::matchers::{body_partial_json, header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::canonical::{AttemptStatus, CanonicalEvent, SubscriptionStatus};
    use crate::config::ProviderKind;
    use crate::providers::testing::{EMPTY_END, normalize_with};
    use crate::providers::testing::{api_settings, assert_errors_map};

    const TOKEN: &str = "shpat_secret123";
    /// The default version's route.
    const ROUTE: &str = "/admin/api/2026-04/graphql.json";
    const CONTRACT: &str = "gid://shopify/SubscriptionContract/7";

    fn client(server: &MockServer, version: Option<&str>) -> ShopifyList {
        let api = ApiSettings {
            api_version: version.map(str::to_owned),
            ..api_settings(format!("{}/", server.uri()), TOKEN)
        };
        ShopifyList::new(&api, crate::providers::http::http_client().unwrap())
    }

    fn request(cursor: Option<&str>) -> PageRequest<'_> {
        PageRequest {
            page_size: 100,
            ..crate::providers::testing::request(cursor)
        }
    }

    fn at(text: &str) -> Option<DateTime<Utc>> {
        Some(DateTime::parse_from_rfc3339(text).unwrap().to_utc())
    }

    /// An attempt node in the flat shape (before 2026-04); `ready` with nothing else says
    /// nothing about its outcome.
    fn attempt(id: u64, ready: bool) -> Value {
        json!({
            "id": format!("gid://shopify/SubscriptionBillingAttempt/{id}"),
            "createdAt": "2025-03-01T12:00:00Z", "completedAt": if ready { json!("2025-03-01T12:00:05Z") } else { Value::Null },
            "idempotencyKey": format!("key-{id}"), "ready": ready, "nextActionUrl": null,
            "order": null, "processingError": null
        })
    }

    fn succeeded(id: u64, order: u64) -> Value {
        let mut a = attempt(id, true);
        a["order"] = json!({ "id": format!("gid://shopify/Order/{order}") });
        a
    }

    fn failed(id: u64, code: &str, message: &str) -> Value {
        let mut a = attempt(id, true);
        a["processingError"] = json!({ "code": code, "message": message });
        a
    }

    fn challenged(id: u64) -> Value {
        let mut a = attempt(id, true);
        a["nextActionUrl"] = json!("https://shop.example/3ds/challenge");
        a
    }

    /// An attempt node in the 2026-04 shape, in the `state` member `typename` with `fields`.
    fn in_state(id: u64, typename: &str, fields: Value) -> Value {
        let mut state = json!({ "__typename": format!("SubscriptionBillingAttempt{typename}") });
        for (k, v) in fields.as_object().unwrap() {
            state[k] = v.clone();
        }
        let done = typename != "PendingState";
        json!({
            "id": format!("gid://shopify/SubscriptionBillingAttempt/{id}"),
            "createdAt": "2025-03-01T12:00:00Z", "completedAt": if done { json!("2025-03-01T12:00:05Z") } else { Value::Null },
            "idempotencyKey": format!("key-{id}"), "state": state
        })
    }

    fn payment_error(id: u64, code: &str) -> Value {
        let error =
            json!({ "__typename": "SubscriptionBillingAttemptPaymentError", "paymentCode": code });
        in_state(id, "FailedState", json!({ "error": error }))
    }

    fn contract(id: u64, status: &str, attempts: Vec<Value>) -> Value {
        json!({
            "id": format!("gid://shopify/SubscriptionContract/{id}"), "status": status,
            "updatedAt": "2025-02-01T05:00:00Z", "currencyCode": "CAD", "revisionId": "42",
            "customer": { "id": "gid://shopify/Customer/3" },
            "billingAttempts": { "nodes": attempts }
        })
    }

    fn page(key: &str, nodes: Vec<Value>, next: Option<&str>) -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json(json!({
            "data": { key: {
                "pageInfo": { "hasNextPage": next.is_some(), "endCursor": next },
                "nodes": nodes
            }},
            "extensions": { "cost": { "requestedQueryCost": 852, "actualQueryCost": 40,
                "throttleStatus": { "maximumAvailable": 1000.0, "currentlyAvailable": 960, "restoreRate": 50.0 } } }
        }))
    }

    fn contracts(nodes: Vec<Value>, next: Option<&str>) -> ResponseTemplate {
        page("subscriptionContracts", nodes, next)
    }

    fn attempts(nodes: Vec<Value>, next: Option<&str>) -> ResponseTemplate {
        page("subscriptionBillingAttempts", nodes, next)
    }

    fn keys(page: &Page) -> Vec<&str> {
        page.records.iter().map(|r| r.key.as_str()).collect()
    }

    fn topic(record: &Record) -> &str {
        &record.headers.iter().find(|(n, _)| n == TOPIC).unwrap().1
    }

    fn one(record: &Record) -> CanonicalEvent {
        let mut events = normalize_with(ProviderKind::Shopify, record);
        assert_eq!(events.len(), 1, "{}", record.key);
        events.remove(0)
    }

    #[tokio::test]
    async fn pages_contracts_with_after_until_has_next_page_is_false() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(ROUTE))
            .and(header("x-shopify-access-token", TOKEN))
            .and(body_partial_json(
                json!({ "variables": { "first": 25, "after": "c1" } }),
            ))
            .respond_with(contracts(vec![contract(8, "CANCELLED", vec![])], None))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path(ROUTE))
            .and(header("x-shopify-access-token", TOKEN))
            .and(body_partial_json(json!({
                "variables": { "first": 25, "after": null, "query": null }
            })))
            .respond_with(contracts(
                vec![contract(
                    7,
                    "ACTIVE",
                    vec![
                        in_state(
                            12,
                            "SuccessState",
                            json!({ "order": { "id": "gid://shopify/Order/99" } }),
                        ),
                        in_state(11, "PendingState", json!({ "processing": true })),
                    ],
                )],
                Some("c1"),
            ))
            .expect(1)
            .mount(&server)
            .await;
        let client = client(&server, None);

        let first = client.page(request(None)).await.unwrap();
        assert_eq!(first.next.as_deref(), Some("contracts:c1"));
        assert_eq!(
            keys(&first),
            [
                "contract:gid://shopify/SubscriptionContract/7",
                "attempt:gid://shopify/SubscriptionBillingAttempt/12"
            ],
            "the attempt still processing is skipped"
        );
        let last = client.page(request(Some("contracts:c1"))).await.unwrap();
        assert_eq!(
            last.next.as_deref(),
            Some("attempts:"),
            "a full run goes on with every attempt"
        );
        assert_eq!(
            keys(&last),
            ["contract:gid://shopify/SubscriptionContract/8"]
        );

        let requests = server.received_requests().await.unwrap();
        let sent: Value = serde_json::from_slice(&requests[0].body).unwrap();
        let query = sent["query"].as_str().unwrap();
        assert!(
            query.contains("subscriptionContracts(first: $first, after: $after, query: $query)")
        );
        assert!(query.contains("billingAttempts(first: 10, reverse: true)"));
        assert!(
            query.contains("idempotencyKey state { __typename"),
            "{query}"
        );
        assert!(!query.contains("processingError"), "deprecated in 2026-04");
    }

    #[tokio::test]
    async fn since_filters_contracts_then_reads_the_attempts_created_since() {
        let server = MockServer::start().await;
        let updated = "updated_at:>='2025-01-02T03:04:05Z'";
        let created = "created_at:>='2025-01-02T03:04:05Z'";
        Mock::given(method("POST"))
            .and(path("/admin/api/2024-10/graphql.json"))
            .and(body_partial_json(
                json!({ "variables": { "query": updated, "after": null } }),
            ))
            .respond_with(contracts(vec![], None))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/admin/api/2024-10/graphql.json"))
            .and(header("x-shopify-access-token", TOKEN))
            .and(body_partial_json(
                json!({ "variables": { "query": created, "first": 100, "after": null } }),
            ))
            .respond_with(attempts(
                vec![{
                    let mut a = failed(21, "INSUFFICIENT_FUNDS", "Insufficient funds");
                    a["subscriptionContract"] = json!({ "id": CONTRACT });
                    a
                }],
                Some("a1"),
            ))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/admin/api/2024-10/graphql.json"))
            .and(body_partial_json(
                json!({ "variables": { "query": created, "after": "a1" } }),
            ))
            .respond_with(attempts(vec![], Some("a2")))
            .expect(1)
            .mount(&server)
            .await;
        let client = client(&server, Some("2024-10"));
        let since = at("2025-01-02T03:04:05.678Z");
        let with = |cursor| PageRequest {
            since,
            ..request(cursor)
        };

        let first = client.page(with(None)).await.unwrap();
        assert_eq!(first.records, vec![]);
        assert_eq!(first.next.as_deref(), Some("attempts:"));
        let second = client.page(with(Some("attempts:"))).await.unwrap();
        assert_eq!(second.next.as_deref(), Some("attempts:a1"));
        assert_eq!(
            keys(&second),
            ["attempt:gid://shopify/SubscriptionBillingAttempt/21"]
        );
        let CanonicalEvent::BillingAttempt(a) = one(&second.records[0]) else {
            panic!("not an attempt");
        };
        assert_eq!(a.subscription_id.as_deref(), Some(CONTRACT));
        assert_eq!(a.status, AttemptStatus::Failed);
        let last = client.page(with(Some("attempts:a1"))).await.unwrap();
        assert_eq!(last, EMPTY_END, "an empty page ends");

        let requests = server.received_requests().await.unwrap();
        let sent: Value = serde_json::from_slice(&requests[1].body).unwrap();
        let query = sent["query"].as_str().unwrap();
        assert!(query.contains("subscriptionBillingAttempts(first: $first"));
        assert!(query.contains("subscriptionContract { id }"));
    }

    #[tokio::test]
    async fn misbehaving_pagination_is_rejected_and_an_empty_page_ends() {
        let server = MockServer::start().await;
        let client = client(&server, None);
        let answers = [
            (
                contracts(vec![contract(7, "ACTIVE", vec![])], Some("same")),
                Some("contracts:same"),
            ),
            (
                ResponseTemplate::new(200).set_body_json(
                    json!({ "data": { "subscriptionContracts": {
                    "pageInfo": { "hasNextPage": true, "endCursor": null },
                    "nodes": [contract(7, "ACTIVE", vec![])] } } }),
                ),
                None,
            ),
        ];
        for (answer, cursor) in answers {
            server.reset().await;
            Mock::given(method("POST"))
                .respond_with(answer)
                .mount(&server)
                .await;
            match client.page(request(cursor)).await {
                Err(ProviderApiError::Rejected { status: 200, .. }) => {}
                other => panic!("{cursor:?}: {other:?}"),
            }
        }
        server.reset().await;
        Mock::given(method("POST"))
            .respond_with(contracts(vec![], Some("more")))
            .mount(&server)
            .await;
        let empty = client.page(request(None)).await.unwrap();
        assert_eq!(
            (empty.records.len(), empty.next.as_deref()),
            (0, Some("attempts:"))
        );
        server.reset().await;
        Mock::given(method("POST"))
            .respond_with(attempts(vec![], Some("more")))
            .mount(&server)
            .await;
        let empty = client.page(request(Some("attempts:"))).await.unwrap();
        assert_eq!(empty, EMPTY_END);
        // A cursor this client did not write is refused before any request.
        server.reset().await;
        Mock::given(method("POST"))
            .respond_with(contracts(vec![], None))
            .expect(0)
            .mount(&server)
            .await;
        assert!(matches!(
            client.page(request(Some("42"))).await,
            Err(ProviderApiError::Rejected { status: 0, .. })
        ));
    }

    #[tokio::test]
    async fn http_and_graphql_errors_map_to_api_errors() {
        let server = MockServer::start().await;
        let client = client(&server, None);
        assert_errors_map(&server, || client.page(request(None)), TOKEN).await;
        let throttled = json!({
            "errors": [{ "message": "Throttled", "extensions": { "code": "THROTTLED",
                "documentation": "https://shopify.dev/api/usage/limits" } }],
            "extensions": { "cost": { "requestedQueryCost": 852, "actualQueryCost": null,
                "throttleStatus": { "maximumAvailable": 1000.0, "currentlyAvailable": 100, "restoreRate": 50.0 } } }
        });
        let cases = [
            (
                ResponseTemplate::new(200).set_body_json(throttled.clone()),
                "rate 16",
            ),
            (
                ResponseTemplate::new(200)
                    .set_body_json(throttled)
                    .insert_header("retry-after", "2"),
                "rate 2",
            ),
            (
                ResponseTemplate::new(200).set_body_json(json!({ "errors": [{
                    "message": "Field 'nope' doesn't exist on type 'SubscriptionContract'",
                    "extensions": { "code": "undefinedField" } }] })),
                "rejected 200",
            ),
            (
                ResponseTemplate::new(200).set_body_string("<html>maintenance</html>"),
                "rejected 200",
            ),
        ];
        for (answer, expected) in cases {
            server.reset().await;
            Mock::given(method("POST"))
                .respond_with(answer)
                .mount(&server)
                .await;
            let err = client.page(request(None)).await.unwrap_err();
            match (expected, err) {
                // (852 − 100) / 50 = 15.04 → 16 s.
                ("rate 16", ProviderApiError::RateLimited { retry_after }) => {
                    assert_eq!(retry_after, Some(Duration::from_secs(16)))
                }
                ("rate 2", ProviderApiError::RateLimited { retry_after }) => {
                    assert_eq!(retry_after, Some(Duration::from_secs(2)))
                }
                (
                    "rejected 200",
                    ProviderApiError::Rejected {
                        status: 200,
                        message,
                    },
                ) => {
                    assert!(!message.is_empty())
                }
                (expected, err) => panic!("expected {expected}, got {err:?}"),
            }
        }
    }

    #[test]
    fn contracts_render_as_update_webhooks() {
        use SubscriptionStatus as S;
        for (graphql, status) in [
            ("ACTIVE", S::Active),
            ("PAUSED", S::Paused),
            ("CANCELLED", S::Cancelled),
            ("EXPIRED", S::Expired),
            ("FAILED", S::Failed),
            ("STALE", S::Expired),
        ] {
            let node: ContractNode = serde_json::from_value(contract(7, graphql, vec![])).unwrap();
            let record = render_contract(&node);
            assert_eq!(topic(&record), "subscription_contracts/update");
            let CanonicalEvent::Subscription(s) = one(&record) else {
                panic!("{graphql}: not a change");
            };
            assert_eq!(s.status, status, "{graphql}");
            assert_eq!(s.provider_status, graphql.to_ascii_lowercase());
            assert_eq!(s.subscription_id, CONTRACT);
            assert_eq!(s.customer_id.as_deref(), Some("gid://shopify/Customer/3"));
            assert_eq!(s.currency.as_deref(), Some("CAD"));
            assert_eq!(s.version, Some(42));
            assert_eq!(s.updated_at, at("2025-02-01T05:00:00Z"));
        }
        // The same contract renders byte-identically on every run.
        let node: ContractNode = serde_json::from_value(contract(7, "ACTIVE", vec![])).unwrap();
        assert_eq!(render_contract(&node), render_contract(&node));
        let body: Value = serde_json::from_slice(&render_contract(&node).body).unwrap();
        assert_eq!((&body["id"], &body["revision_id"]), (&json!(7), &json!(42)));
    }

    /// Both shapes render the same webhooks: codes as the webhooks write them (lower case)
    /// in the body and in the enum's upper case once normalized; the 2026-04 error members
    /// other than `UnexpectedError` have no message.
    #[test]
    fn attempts_render_as_success_failure_or_challenged() {
        let unexpected = json!({ "error": { "__typename": "SubscriptionBillingAttemptUnexpectedError",
            "message": "The payment couldn't be processed" } });
        let cases = [
            (succeeded(11, 99), "success", AttemptStatus::Succeeded, None),
            (
                in_state(
                    11,
                    "SuccessState",
                    json!({ "order": { "id": "gid://shopify/Order/99" } }),
                ),
                "success",
                AttemptStatus::Succeeded,
                None,
            ),
            (
                failed(11, "INSUFFICIENT_FUNDS", "Insufficient funds"),
                "failure",
                AttemptStatus::Failed,
                Some((
                    "insufficient_funds",
                    "INSUFFICIENT_FUNDS",
                    Some("Insufficient funds"),
                )),
            ),
            (
                payment_error(11, "INSUFFICIENT_FUNDS"),
                "failure",
                AttemptStatus::Failed,
                Some(("insufficient_funds", "INSUFFICIENT_FUNDS", None)),
            ),
            (
                in_state(11, "FailedState", unexpected),
                "failure",
                AttemptStatus::Failed,
                Some((
                    "unexpected_error",
                    "UNEXPECTED_ERROR",
                    Some("The payment couldn't be processed"),
                )),
            ),
            (
                challenged(11),
                "challenged",
                AttemptStatus::RequiresAction,
                None,
            ),
            (
                in_state(
                    11,
                    "ActionRequiredState",
                    json!({ "action": {
                    "__typename": "SubscriptionBillingAttemptPaymentChallenge" } }),
                ),
                "challenged",
                AttemptStatus::RequiresAction,
                None,
            ),
        ];
        for (node, action, status, error) in cases {
            let label = node.to_string();
            let node: AttemptNode = serde_json::from_value(node).unwrap();
            let record = render_attempt(&node, CONTRACT).expect(action);
            assert_eq!(
                topic(&record),
                format!("subscription_billing_attempts/{action}")
            );
            assert_eq!(
                record.key,
                "attempt:gid://shopify/SubscriptionBillingAttempt/11"
            );
            let body: Value = serde_json::from_slice(&record.body).unwrap();
            assert_eq!(body["error_code"].as_str(), error.map(|e| e.0), "{label}");
            assert_eq!(body["idempotency_key"], json!("key-11"));
            let CanonicalEvent::BillingAttempt(a) = one(&record) else {
                panic!("{action}: not an attempt");
            };
            assert_eq!((a.status, a.provider_status.as_str()), (status, action));
            assert_eq!(a.attempt_id, "gid://shopify/SubscriptionBillingAttempt/11");
            assert_eq!(a.subscription_id.as_deref(), Some(CONTRACT));
            assert_eq!(a.error_code.as_deref(), error.map(|e| e.1), "{label}");
            assert_eq!(
                a.error_message.as_deref(),
                error.and_then(|e| e.2),
                "{label}"
            );
            assert_eq!(a.idempotency_key.as_deref(), Some("key-11"));
            assert_eq!(a.attempted_at, at("2025-03-01T12:00:05Z"), "completedAt");
        }
        for node in [
            succeeded(11, 99),
            in_state(
                11,
                "SuccessState",
                json!({ "order": { "id": "gid://shopify/Order/99" } }),
            ),
        ] {
            let node: AttemptNode = serde_json::from_value(node).unwrap();
            let body: Value =
                serde_json::from_slice(&render_attempt(&node, CONTRACT).unwrap().body).unwrap();
            assert_eq!(body["order_id"], json!(99));
            assert_eq!(
                body["admin_graphql_api_order_id"],
                json!("gid://shopify/Order/99")
            );
        }
        // A success whose order was deleted is still a success.
        let deleted: AttemptNode =
            serde_json::from_value(in_state(11, "SuccessState", json!({ "order": null }))).unwrap();
        let record = render_attempt(&deleted, CONTRACT).unwrap();
        assert_eq!(topic(&record), "subscription_billing_attempts/success");
        // Still processing, or finished with nothing to tell its outcome (in either shape):
        // no record.
        for node in [
            attempt(11, false),
            attempt(11, true),
            in_state(11, "PendingState", json!({ "processing": true })),
            in_state(11, "LaterState", json!({})),
        ] {
            let node: AttemptNode = serde_json::from_value(node).unwrap();
            assert_eq!(render_attempt(&node, CONTRACT), None);
        }
    }

    /// The list client's queries use only what the copied schema of their version has:
    /// the flat shape against 2025-01, the `state` shape against 2026-04.
    #[test]
    fn the_queries_conform_to_the_schema_of_their_version() {
        for (shape, version) in [(Shape::Flat, "2025-01"), (Shape::State, "2026-04")] {
            let schema = crate::providers::shopify::schema::copied(version);
            for query in [contracts_query(shape), attempts_query(shape)] {
                assert_eq!(
                    schema.check_document(&query),
                    Vec::<String>::new(),
                    "{query}"
                );
            }
        }
        // And the 2026-04 query is not valid before 2026-04 (the check can fail).
        let old = crate::providers::shopify::schema::copied("2025-01");
        assert!(
            !old.check_document(&contracts_query(Shape::State))
                .is_empty()
        );
    }

    /// The webhook bodies of `webhook/tests.rs` and the records rendered from the
    /// GraphQL objects of the same contract and attempt give the same canonical ids, so the
    /// ledger converges whichever arrives first.
    #[test]
    fn rendered_records_and_real_webhooks_name_the_same_objects() {
        let webhook = |topic: &str, body: Value| Record {
            key: "webhook".to_owned(),
            body: json_body(&body),
            headers: vec![(TOPIC.to_owned(), topic.to_owned())],
        };
        let attempt_webhook = json!({
            "id": 11, "admin_graphql_api_id": "gid://shopify/SubscriptionBillingAttempt/11",
            "idempotency_key": "foo-bar-baz", "order_id": null, "admin_graphql_api_order_id": null,
            "subscription_contract_id": 7, "admin_graphql_api_subscription_contract_id": CONTRACT,
            "ready": true, "error_code": "insufficient_funds", "error_message": "Insufficient funds"
        });
        // Webhooks that carry only the numeric ids name the objects the same way too (a
        // failure always carries its error: Shopify's payload type requires it).
        let numeric_only = json!({ "id": 11, "subscription_contract_id": "7",
            "idempotency_key": "k", "error_code": "insufficient_funds" });
        let failure = "subscription_billing_attempts/failure";
        let from_webhooks = [
            one(&webhook(failure, attempt_webhook)),
            one(&webhook(failure, numeric_only)),
        ];
        let node: AttemptNode =
            serde_json::from_value(failed(11, "INSUFFICIENT_FUNDS", "Insufficient funds")).unwrap();
        let CanonicalEvent::BillingAttempt(synced) = one(&render_attempt(&node, CONTRACT).unwrap())
        else {
            panic!("not an attempt");
        };
        for event in from_webhooks {
            let CanonicalEvent::BillingAttempt(hooked) = event else {
                panic!("not an attempt");
            };
            assert_eq!(hooked.attempt_id, synced.attempt_id);
            assert_eq!(hooked.subscription_id, synced.subscription_id);
            assert_eq!(hooked.status, synced.status);
        }

        let contract_webhook = json!({
            "admin_graphql_api_customer_id": "gid://shopify/Customer/3",
            "admin_graphql_api_id": CONTRACT,
            "admin_graphql_api_origin_order_id": "gid://shopify/Order/1",
            "billing_policy": { "interval": "month", "interval_count": 1, "max_cycles": null, "min_cycles": null },
            "currency_code": "CAD", "customer_id": 3,
            "delivery_policy": { "interval": "month", "interval_count": 1 },
            "id": 7, "origin_order_id": 1, "revision_id": 42, "status": "active"
        });
        let CanonicalEvent::Subscription(hooked) =
            one(&webhook("subscription_contracts/update", contract_webhook))
        else {
            panic!("not a change");
        };
        let node: ContractNode = serde_json::from_value(contract(7, "ACTIVE", vec![])).unwrap();
        let CanonicalEvent::Subscription(synced) = one(&render_contract(&node)) else {
            panic!("not a change");
        };
        assert_eq!(hooked.subscription_id, synced.subscription_id);
        assert_eq!(hooked.customer_id, synced.customer_id);
        assert_eq!(
            (
                hooked.status,
                hooked.provider_status,
                hooked.version,
                hooked.currency
            ),
            (
                synced.status,
                synced.provider_status,
                synced.version,
                synced.currency
            )
        );
    }

    #[test]
    fn ids_and_revisions_render_as_webhook_numbers() {
        assert_eq!(legacy_id("gid://shopify/SubscriptionContract/7"), json!(7));
        assert_eq!(legacy_id("gid://shopify/Order/5?x=1"), json!(5));
        assert_eq!(legacy_id("gid://shopify/Order/abc"), Value::Null);
        assert_eq!(
            revision(Some(&json!("18446744073709551615"))),
            json!(u64::MAX)
        );
        assert_eq!(revision(Some(&json!(5))), json!(5));
        assert_eq!(revision(Some(&json!("v2"))), json!("v2"));
        assert_eq!(revision(None), Value::Null);
    }

    #[test]
    fn cursors_name_their_phase() {
        assert_eq!(phase(None).unwrap(), Phase::Contracts(None));
        assert_eq!(
            phase(Some("contracts:abc")).unwrap(),
            Phase::Contracts(Some("abc"))
        );
        assert_eq!(phase(Some("attempts:")).unwrap(), Phase::Attempts(None));
        assert_eq!(
            phase(Some("attempts:x:y")).unwrap(),
            Phase::Attempts(Some("x:y"))
        );
        assert!(phase(Some("other")).is_err());
    }
}
