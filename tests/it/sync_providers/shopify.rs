//! Shopify pull sync end to end against a fake of the Admin GraphQL API
//! (`POST /admin/api/{version}/graphql.json`, `X-Shopify-Access-Token`): the fake parses
//! the GraphQL request (`variables.first/after/query`), serves `subscriptionContracts` with
//! each contract's 10 newest `billingAttempts` and `subscriptionBillingAttempts`
//! store-wide, with opaque cursors and `pageInfo { hasNextPage endCursor }`, and filters
//! by `updated_at:>=` / `created_at:>=` as the real search syntax does. Webhooks lost
//! before the run (a success, a failure, a contract creation and a cancellation) are
//! healed by one full run; an incremental run (both phases) changes nothing.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use super::harness;
use base64::Engine as _;
use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};
use subsync::sync::{Disappeared, RunOptions};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers};

use crate::common::{self, TestApp, TestConfig, attempt_states, eventually, sync};

const SOURCE: &str = "shopify";
const TOKEN: &str = "shpat_sync_0123456789";
const API_VERSION: &str = "2025-04";
/// A time long before the runs (outside any incremental window).
const OLD: &str = "2025-06-01T10:00:00Z";
const OLDER: &str = "2025-05-01T10:00:00Z";

fn contract_gid(id: u64) -> String {
    format!("gid://shopify/SubscriptionContract/{id}")
}

fn attempt_gid(id: u64) -> String {
    format!("gid://shopify/SubscriptionBillingAttempt/{id}")
}

/// The numeric id of a gid (its last segment).
fn legacy(gid: &str) -> u64 {
    gid.rsplit('/').next().unwrap().parse().unwrap()
}

/// Shopify's opaque cursors: base64 of `{"last_id":N,"last_value":N}`.
fn cursor(id: u64) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(format!(r#"{{"last_id":{id},"last_value":{id}}}"#))
}

fn cursor_id(cursor: &str) -> Option<u64> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(cursor)
        .ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    value["last_id"].as_u64()
}

/// A contract as the store holds it: its GraphQL node (without `billingAttempts`) and its
/// billing attempts (GraphQL nodes, without `subscriptionContract`).
#[derive(Clone)]
struct Contract {
    node: Value,
    attempts: Vec<Value>,
}

fn contract(
    id: u64,
    status: &str,
    revision: u64,
    updated_at: &str,
    attempts: Vec<Value>,
) -> Contract {
    Contract {
        node: json!({
            "id": contract_gid(id), "status": status, "updatedAt": updated_at,
            "currencyCode": "CAD", "revisionId": revision.to_string(),
            "customer": { "id": format!("gid://shopify/Customer/{}", id - 1000) },
        }),
        attempts,
    }
}

/// A billing attempt node; `ready` with nothing else says nothing about its outcome.
fn attempt(id: u64, at: &str, ready: bool) -> Value {
    json!({
        "id": attempt_gid(id), "createdAt": at,
        "completedAt": if ready { json!(at) } else { Value::Null },
        "idempotencyKey": format!("subsync-{id}"), "ready": ready, "nextActionUrl": null,
        "order": null, "processingError": null
    })
}

fn succeeded(id: u64, at: &str, order: u64) -> Value {
    let mut a = attempt(id, at, true);
    a["order"] = json!({ "id": format!("gid://shopify/Order/{order}") });
    a
}

fn failed(id: u64, at: &str, code: &str, message: &str) -> Value {
    let mut a = attempt(id, at, true);
    a["processingError"] = json!({ "code": code, "message": message });
    a
}

fn challenged(id: u64, at: &str) -> Value {
    let mut a = attempt(id, at, true);
    a["nextActionUrl"] = json!(format!("https://shop.example/3ds/{id}"));
    a
}

/// One GraphQL request as the fake understood it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    connection: &'static str,
    first: u64,
    after: Option<String>,
    query: Option<String>,
}

/// The Admin GraphQL API over a fixed store: contracts and attempts in id order, `first`
/// per page, `after` an opaque cursor, `hasNextPage`/`endCursor` as Shopify sets them
/// (`endCursor` null on an empty page), search filters applied, the single-query cost
/// limit enforced.
#[derive(Clone)]
struct FakeShopify {
    contracts: Arc<Vec<Contract>>,
    requests: Arc<Mutex<Vec<Seen>>>,
}

impl FakeShopify {
    fn new(mut contracts: Vec<Contract>) -> Self {
        contracts.sort_by_key(|c| legacy(c.node["id"].as_str().unwrap()));
        Self {
            contracts: Arc::new(contracts),
            requests: Arc::default(),
        }
    }

    fn requests(&self) -> Vec<Seen> {
        self.requests.lock().unwrap().clone()
    }
}

fn graphql_error(message: &str, code: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "errors": [{ "message": message, "extensions": { "code": code } }]
    }))
}

/// `<field>:>='<RFC 3339>'`, the only search term the fake (and the client) uses.
fn filter_since(filter: &str, field: &str) -> Option<chrono::DateTime<Utc>> {
    let time = filter
        .strip_prefix(field)?
        .strip_prefix(":>='")?
        .strip_suffix('\'')?;
    Some(chrono::DateTime::parse_from_rfc3339(time).ok()?.to_utc())
}

fn time_of(node: &Value, field: &str) -> chrono::DateTime<Utc> {
    chrono::DateTime::parse_from_rfc3339(node[field].as_str().unwrap())
        .unwrap()
        .to_utc()
}

impl Respond for FakeShopify {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
            return ResponseTemplate::new(400).set_body_json(
                json!({ "errors": { "query": "Required parameter missing or invalid" } }),
            );
        };
        let query = body["query"].as_str().unwrap_or_default();
        let variables = &body["variables"];
        let (connection, field, per_node) = if query
            .contains("subscriptionContracts(first: $first, after: $after, query: $query)")
            && query.contains("billingAttempts(first: 10, reverse: true)")
        {
            // 1 + customer 1 + billingAttempts 2 + 10 × (1 + order 1 + processingError 1).
            ("subscriptionContracts", "updated_at", 34)
        } else if query
            .contains("subscriptionBillingAttempts(first: $first, after: $after, query: $query)")
        {
            ("subscriptionBillingAttempts", "created_at", 4)
        } else {
            return graphql_error("Unexpected query", "undefinedField");
        };
        let Some(first) = variables["first"]
            .as_u64()
            .filter(|f| (1..=250).contains(f))
        else {
            return graphql_error(
                "first must be between 1 and 250",
                "argumentLiteralsIncompatible",
            );
        };
        let cost = 2 + first * per_node;
        if cost > 1000 {
            return ResponseTemplate::new(200).set_body_json(json!({ "errors": [{
                "message": format!("Query cost is {cost}, which exceeds the single query max cost limit (1000)."),
                "extensions": { "code": "MAX_COST_EXCEEDED", "cost": cost, "maxCost": 1000 } }] }));
        }
        let after = variables["after"].as_str().map(str::to_owned);
        let filter = variables["query"].as_str().map(str::to_owned);
        self.requests.lock().unwrap().push(Seen {
            connection,
            first,
            after: after.clone(),
            query: filter.clone(),
        });
        let since = match &filter {
            None => None,
            Some(f) => match filter_since(f, field) {
                Some(since) => Some(since),
                None => return graphql_error(&format!("Unexpected search query {f}"), "BAD_QUERY"),
            },
        };
        let last_id = match &after {
            None => 0,
            Some(c) => match cursor_id(c) {
                Some(id) => id,
                None => {
                    return graphql_error(
                        "Invalid cursor for current pagination sort.",
                        "BAD_REQUEST",
                    );
                }
            },
        };
        let (time_field, nodes): (&str, Vec<Value>) = if connection == "subscriptionContracts" {
            let nodes = self
                .contracts
                .iter()
                .map(|c| {
                    let mut node = c.node.clone();
                    let mut newest = c.attempts.clone();
                    newest.sort_by_key(|a| std::cmp::Reverse(legacy(a["id"].as_str().unwrap())));
                    newest.truncate(10);
                    node["billingAttempts"] = json!({ "nodes": newest });
                    node
                })
                .collect();
            ("updatedAt", nodes)
        } else {
            let mut nodes: Vec<Value> = (self.contracts.iter())
                .flat_map(|c| {
                    c.attempts.iter().map(|a| {
                        let mut node = a.clone();
                        node["subscriptionContract"] = json!({ "id": c.node["id"] });
                        node
                    })
                })
                .collect();
            nodes.sort_by_key(|a| legacy(a["id"].as_str().unwrap()));
            ("createdAt", nodes)
        };
        let matching: Vec<Value> = nodes
            .into_iter()
            .filter(|n| since.is_none_or(|s| time_of(n, time_field) >= s))
            .filter(|n| legacy(n["id"].as_str().unwrap()) > last_id)
            .collect();
        let page: Vec<Value> = matching.iter().take(first as usize).cloned().collect();
        let end_cursor = page
            .last()
            .map(|n| json!(cursor(legacy(n["id"].as_str().unwrap()))))
            .unwrap_or(Value::Null);
        ResponseTemplate::new(200).set_body_json(json!({
            "data": { connection: {
                "pageInfo": { "hasNextPage": matching.len() > page.len(), "endCursor": end_cursor },
                "nodes": page,
            }},
            "extensions": { "cost": { "requestedQueryCost": cost, "actualQueryCost": 2 + page.len() as u64 * 3,
                "throttleStatus": { "maximumAvailable": 2000.0, "currentlyAvailable": 1990, "restoreRate": 100.0 } } }
        }))
    }
}

async fn shopify_api(fake: FakeShopify) -> MockServer {
    let route = Mock::given(matchers::method("POST"))
        .and(matchers::path(format!(
            "/admin/api/{API_VERSION}/graphql.json"
        )))
        .and(matchers::header("x-shopify-access-token", TOKEN))
        .and(matchers::header("content-type", "application/json"));
    harness::serve(route, fake).await
}

/// The `[[sources]]` keys of source `id` on the fake at `server`.
fn source(id: &str, server: &MockServer) -> String {
    format!(
        r#"id = "{id}"
provider = "shopify"
secrets = ["shpss_sync_client_secret"]
api = {{ base_url = "{}", token = "{TOKEN}", api_version = "{API_VERSION}" }}"#,
        server.uri()
    )
}

async fn app_with(server: &MockServer) -> (TestConfig, TestApp) {
    harness::app_with(&source(SOURCE, server), 60).await
}

/// A `subscription_contracts/*` webhook body (the fields Shopify sends).
fn contract_webhook(id: u64, status: &str, revision: u64) -> Value {
    json!({
        "admin_graphql_api_customer_id": format!("gid://shopify/Customer/{}", id - 1000),
        "admin_graphql_api_id": contract_gid(id),
        "admin_graphql_api_origin_order_id": "gid://shopify/Order/1",
        "billing_policy": { "interval": "month", "interval_count": 1, "max_cycles": null, "min_cycles": null },
        "currency_code": "CAD", "customer_id": id - 1000,
        "delivery_policy": { "interval": "month", "interval_count": 1 },
        "id": id, "origin_order_id": 1, "revision_id": revision, "status": status
    })
}

/// A `subscription_billing_attempts/*` webhook body.
fn attempt_webhook(
    id: u64,
    contract: u64,
    order: Option<u64>,
    error: Option<(&str, &str)>,
) -> Value {
    json!({
        "id": id, "admin_graphql_api_id": attempt_gid(id),
        "idempotency_key": format!("subsync-{id}"),
        "order_id": order, "admin_graphql_api_order_id": order.map(|o| format!("gid://shopify/Order/{o}")),
        "subscription_contract_id": contract,
        "admin_graphql_api_subscription_contract_id": contract_gid(contract),
        "ready": true,
        "error_code": error.map(|e| e.0), "error_message": error.map(|e| e.1)
    })
}

/// Posts a webhook signed with the source's secret, as Shopify sends it for `topic`
/// (`post_signed` always names the success topic; the HMAC covers the body only).
async fn deliver(app: &TestApp, webhook_id: &str, topic: &str, triggered_at: &str, body: &Value) {
    deliver_to(app, SOURCE, webhook_id, topic, triggered_at, body).await
}

/// [`deliver`] to source `source_id`.
async fn deliver_to(
    app: &TestApp,
    source_id: &str,
    webhook_id: &str,
    topic: &str,
    triggered_at: &str,
    body: &Value,
) {
    let body = serde_json::to_vec(body).unwrap();
    let source = crate::common::source(app.settings.source(source_id).unwrap()).unwrap();
    let mut headers = source.sign(webhook_id, &body, SystemTime::now());
    let mut replaced = 0;
    for (name, value) in &mut headers {
        match name.as_str() {
            "x-shopify-topic" => *value = topic.to_owned(),
            "x-shopify-triggered-at" => *value = triggered_at.to_owned(),
            _ => continue,
        }
        replaced += 1;
    }
    assert_eq!(replaced, 2, "{headers:?}");
    let response = app.post(source_id, &headers, body).await;
    assert_eq!(response.status(), 202, "{webhook_id}");
}

fn states(list: &[(u64, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(id, s)| (attempt_gid(*id), (*s).to_owned()))
        .collect()
}

async fn contract_status(app: &TestApp, id: u64) -> Option<String> {
    app.db
        .subscription(SOURCE, &contract_gid(id))
        .await
        .unwrap()
        .and_then(|v| v.status)
}

async fn contract_statuses(app: &TestApp) -> Vec<Option<String>> {
    let mut statuses = Vec::new();
    for id in 7001..=7005 {
        statuses.push(contract_status(app, id).await);
    }
    statuses
}

fn statuses(list: [Option<&str>; 5]) -> Vec<Option<String>> {
    list.map(|s| s.map(str::to_owned)).to_vec()
}

#[tokio::test]
async fn missed_contract_and_attempt_webhooks_are_healed_and_an_incremental_run_changes_nothing() {
    // Inside the incremental window of the second run (its watermark minus 60 s).
    let recent =
        (Utc::now() - chrono::Duration::seconds(5)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let recent = recent.as_str();
    let store = vec![
        // Its renewal failed, then a retry succeeded: the success webhook was lost.
        contract(
            7001,
            "ACTIVE",
            3,
            OLD,
            vec![
                failed(8001, OLDER, "INSUFFICIENT_FUNDS", "Insufficient funds"),
                succeeded(8002, OLD, 9002),
            ],
        ),
        // Created and never seen (creation webhook lost); its attempt is still processing.
        contract(
            7002,
            "ACTIVE",
            1,
            recent,
            vec![attempt(8003, recent, false)],
        ),
        // A 3-D Secure challenge, and an attempt with nothing to tell its outcome.
        contract(
            7003,
            "ACTIVE",
            2,
            OLD,
            vec![challenged(8004, recent), attempt(8005, recent, true)],
        ),
        // Cancelled after a declined renewal: both webhooks lost, the ledger says active.
        contract(
            7004,
            "CANCELLED",
            5,
            recent,
            vec![failed(
                8006,
                OLD,
                "CARD_DECLINED",
                "Your card was declined.",
            )],
        ),
        contract(7005, "PAUSED", 1, OLD, vec![succeeded(8007, recent, 9007)]),
    ];
    let fake = FakeShopify::new(store);
    let server = shopify_api(fake.clone()).await;
    let (_config, app) = app_with(&server).await;

    let update = "subscription_contracts/update";
    deliver(
        &app,
        "wh-7001",
        update,
        OLD,
        &contract_webhook(7001, "active", 3),
    )
    .await;
    deliver(
        &app,
        "wh-8001",
        "subscription_billing_attempts/failure",
        OLDER,
        &attempt_webhook(
            8001,
            7001,
            None,
            Some(("insufficient_funds", "Insufficient funds")),
        ),
    )
    .await;
    deliver(
        &app,
        "wh-7003",
        update,
        OLD,
        &contract_webhook(7003, "active", 2),
    )
    .await;
    deliver(
        &app,
        "wh-8004",
        "subscription_billing_attempts/challenged",
        recent,
        &attempt_webhook(8004, 7003, None, None),
    )
    .await;
    deliver(
        &app,
        "wh-7004",
        "subscription_contracts/activate",
        OLDER,
        &contract_webhook(7004, "active", 4),
    )
    .await;
    deliver(
        &app,
        "wh-7005",
        update,
        OLD,
        &contract_webhook(7005, "paused", 1),
    )
    .await;
    // The success topic is the one `post_signed` signs.
    let success = serde_json::to_vec(&attempt_webhook(8007, 7005, Some(9007), None)).unwrap();
    assert_eq!(
        app.post_signed(SOURCE, "wh-8007", &success).await.status(),
        202
    );

    let before_states = states(&[
        (8001, "failed"),
        (8004, "requires_action"),
        (8007, "succeeded"),
    ]);
    let before_contracts = statuses([
        Some("active"),
        None,
        Some("active"),
        Some("active"),
        Some("paused"),
    ]);
    assert!(
        eventually(Duration::from_secs(15), || async {
            attempt_states(&app.db, SOURCE).await == before_states
                && contract_statuses(&app).await == before_contracts
        })
        .await,
        "{:?} {:?}",
        attempt_states(&app.db, SOURCE).await,
        contract_statuses(&app).await
    );
    assert_eq!(app.db.count_events(Some(SOURCE)).await.unwrap(), 7);

    // A full run: the contracts (2 + 2 + 1, each with its 10 newest attempts), then every
    // attempt of the store (2 + 2 + 2 + 1), so a contract's older attempts are read too.
    let report = sync(&app, SOURCE, RunOptions::default()).await.unwrap();
    assert_eq!(report.since, None, "a first run reads everything");
    // Every live contract of the ledger is listed.
    assert_eq!(report.disappeared, Some(Disappeared::default()));
    let contract_pages = [None, Some(cursor(7002)), Some(cursor(7004))].map(|after| Seen {
        connection: "subscriptionContracts",
        first: 2,
        after,
        query: None,
    });
    let attempt_pages = [
        None,
        Some(cursor(8002)),
        Some(cursor(8004)),
        Some(cursor(8006)),
    ]
    .map(|after| Seen {
        connection: "subscriptionBillingAttempts",
        first: 2,
        after,
        query: None,
    });
    assert_eq!(
        fake.requests(),
        [&contract_pages[..], &attempt_pages[..]].concat()
    );
    // 5 contracts + attempts 8001, 8002, 8004, 8006, 8007 (8003 and 8005 render nothing),
    // read in both phases.
    assert_eq!((report.pages, report.records, report.changed), (7, 15, 4));
    let mut changed: Vec<&str> = report.changes.iter().map(|c| c.key.as_str()).collect();
    changed.sort();
    assert_eq!(
        changed,
        [
            "attempt:gid://shopify/SubscriptionBillingAttempt/8002",
            "attempt:gid://shopify/SubscriptionBillingAttempt/8006",
            "contract:gid://shopify/SubscriptionContract/7002",
            "contract:gid://shopify/SubscriptionContract/7004",
        ]
    );
    let watermark = report.watermark.expect("a complete run sets the watermark");

    let healed_states = states(&[
        (8001, "failed"),
        (8002, "succeeded"),
        (8004, "requires_action"),
        (8006, "failed"),
        (8007, "succeeded"),
    ]);
    let healed_contracts = statuses([
        Some("active"),
        Some("active"),
        Some("active"),
        Some("cancelled"),
        Some("paused"),
    ]);
    assert!(
        eventually(Duration::from_secs(15), || async {
            attempt_states(&app.db, SOURCE).await == healed_states
                && contract_statuses(&app).await == healed_contracts
        })
        .await,
        "{:?} {:?}",
        attempt_states(&app.db, SOURCE).await,
        contract_statuses(&app).await
    );
    let cancelled = app
        .db
        .subscription(SOURCE, &contract_gid(7004))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cancelled.provider_status.as_deref(), Some("cancelled"));
    assert_eq!(cancelled.currency.as_deref(), Some("CAD"));
    let declined = &cancelled.attempts[0];
    assert_eq!(
        (declined.attempt_id.as_str(), declined.error_code.as_deref()),
        (attempt_gid(8006).as_str(), Some("CARD_DECLINED"))
    );
    assert_eq!(
        declined.error_message.as_deref(),
        Some("Your card was declined.")
    );
    assert!(app.db.verify_ledger().await.unwrap().is_empty());
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.db.count_events(Some(SOURCE)).await.unwrap() == 11
        })
        .await,
        "the 7 webhooks and the 4 healed records, each once"
    );
    let contracts: Vec<String> = (7001..=7005).map(contract_gid).collect();
    let healed = common::snapshot(&app.db, SOURCE, &contracts).await;

    // Incremental: contracts updated since (watermark − 60 s), then attempts created since.
    let again = sync(&app, SOURCE, RunOptions::default()).await.unwrap();
    let since = watermark - chrono::Duration::seconds(60);
    assert_eq!(again.since, Some(since));
    let at = since.to_rfc3339_opts(SecondsFormat::Secs, true);
    let updated = Some(format!("updated_at:>='{at}'"));
    let created = Some(format!("created_at:>='{at}'"));
    assert_eq!(
        fake.requests()[7..],
        [
            Seen {
                connection: "subscriptionContracts",
                first: 2,
                after: None,
                query: updated
            },
            Seen {
                connection: "subscriptionBillingAttempts",
                first: 2,
                after: None,
                query: created.clone()
            },
            Seen {
                connection: "subscriptionBillingAttempts",
                first: 2,
                after: Some(cursor(8004)),
                query: created
            },
        ]
    );
    // Contracts 7002, 7004 (with 8006); attempts 8003..8007 created since: 8004, 8007.
    assert_eq!((again.pages, again.records, again.changed), (3, 5, 0));
    assert!(again.watermark > Some(watermark));
    assert!(eventually(Duration::from_secs(5), || async { app.queued().await == 0 }).await);
    assert_eq!(app.db.count_events(Some(SOURCE)).await.unwrap(), 11);
    assert_eq!(attempt_states(&app.db, SOURCE).await, healed_states);
    assert_eq!(common::snapshot(&app.db, SOURCE, &contracts).await, healed);
    assert!(app.db.verify_ledger().await.unwrap().is_empty());
    app.stop().await;
}

/// A two-hour webhook outage over a shop's history: a renewal is declined and the app's
/// retry pays it, a second contract's renewal is declined and the contract is cancelled, a
/// third is paused. One incremental run after the outage (contracts updated and attempts
/// created since it began) gives the same ledger as a second source that got every
/// webhook; the missed webhooks, delivered late, and a second run change nothing.
#[tokio::test]
async fn a_two_hour_outage_is_healed_to_the_ledger_of_the_uninterrupted_stream() {
    const LIVE: &str = "shopify_live";
    let now = Utc::now();
    let ago = |minutes: i64| {
        (now - chrono::Duration::minutes(minutes)).to_rfc3339_opts(SecondsFormat::Secs, true)
    };
    let (before_at, retry_at) = (ago(3 * 24 * 60), ago(100));
    let store = vec![
        contract(
            7101,
            "ACTIVE",
            2,
            &ago(100),
            vec![
                succeeded(8101, &before_at, 9101),
                failed(8102, &ago(140), "INSUFFICIENT_FUNDS", "Insufficient funds"),
                succeeded(8103, &retry_at, 9103),
            ],
        ),
        contract(
            7102,
            "CANCELLED",
            3,
            &ago(40),
            vec![
                succeeded(8104, &before_at, 9104),
                failed(8105, &ago(90), "CARD_DECLINED", "Your card was declined."),
            ],
        ),
        contract(
            7103,
            "PAUSED",
            2,
            &ago(60),
            vec![succeeded(8106, &before_at, 9106)],
        ),
    ];
    let server = shopify_api(FakeShopify::new(store)).await;
    let (_config, app) =
        harness::app_with_sources(&[&source(SOURCE, &server), &source(LIVE, &server)], 60).await;
    let success = "subscription_billing_attempts/success";
    let failure = "subscription_billing_attempts/failure";
    let before: Vec<(String, &str, String, Value)> = vec![
        (
            "wh-7101".into(),
            "subscription_contracts/activate",
            before_at.clone(),
            contract_webhook(7101, "active", 1),
        ),
        (
            "wh-7102".into(),
            "subscription_contracts/activate",
            before_at.clone(),
            contract_webhook(7102, "active", 1),
        ),
        (
            "wh-7103".into(),
            "subscription_contracts/activate",
            before_at.clone(),
            contract_webhook(7103, "active", 1),
        ),
        (
            "wh-8101".into(),
            success,
            before_at.clone(),
            attempt_webhook(8101, 7101, Some(9101), None),
        ),
        (
            "wh-8104".into(),
            success,
            before_at.clone(),
            attempt_webhook(8104, 7102, Some(9104), None),
        ),
        (
            "wh-8106".into(),
            success,
            before_at.clone(),
            attempt_webhook(8106, 7103, Some(9106), None),
        ),
    ];
    let during: Vec<(String, &str, String, Value)> = vec![
        (
            "wh-8102".into(),
            failure,
            ago(140),
            attempt_webhook(
                8102,
                7101,
                None,
                Some(("insufficient_funds", "Insufficient funds")),
            ),
        ),
        (
            "wh-8103".into(),
            success,
            retry_at.clone(),
            attempt_webhook(8103, 7101, Some(9103), None),
        ),
        (
            "wh-7101-2".into(),
            "subscription_contracts/update",
            ago(100),
            contract_webhook(7101, "active", 2),
        ),
        (
            "wh-7103-2".into(),
            "subscription_contracts/pause",
            ago(60),
            contract_webhook(7103, "paused", 2),
        ),
        (
            "wh-8105".into(),
            failure,
            ago(90),
            attempt_webhook(
                8105,
                7102,
                None,
                Some(("card_declined", "Your card was declined.")),
            ),
        ),
        (
            "wh-7102-3".into(),
            "subscription_contracts/cancel",
            ago(40),
            contract_webhook(7102, "cancelled", 3),
        ),
    ];
    for (source, events) in [(SOURCE, &before), (LIVE, &before), (LIVE, &during)] {
        for (id, topic, at, body) in events {
            deliver_to(&app, source, id, topic, at, body).await;
        }
    }
    harness::archived(&app, SOURCE, 6).await;
    harness::archived(&app, LIVE, 12).await;

    let outage = harness::after_outage(now - chrono::Duration::minutes(150));
    let report = sync(&app, SOURCE, outage.clone()).await.unwrap();
    assert_eq!(
        (report.records, report.changed, report.malformed),
        (12, 6, 0),
        "3 contracts with their 6 attempts (phase 1), then the 3 attempts created since \
         (phase 2, read again and queued once); 3 contracts and 3 attempts changed: \
         {report:#?}"
    );
    assert_eq!(
        report
            .waited
            .as_ref()
            .map(|w| (w.queued, w.applied, w.timed_out)),
        Some((6, 6, false))
    );
    let subs: Vec<String> = [7101, 7102, 7103].map(contract_gid).to_vec();
    let live = common::snapshot(&app.db, LIVE, &subs).await;
    assert_eq!(
        common::snapshot(&app.db, SOURCE, &subs).await,
        live,
        "the ledger of the uninterrupted stream"
    );
    let attempts = states(&[
        (8101, "succeeded"),
        (8102, "failed"),
        (8103, "succeeded"),
        (8104, "succeeded"),
        (8105, "failed"),
        (8106, "succeeded"),
    ]);
    assert_eq!(attempt_states(&app.db, SOURCE).await, attempts);
    assert_eq!(attempt_states(&app.db, LIVE).await, attempts);
    let mut contracts = Vec::new();
    for id in [7101, 7102, 7103] {
        contracts.push(contract_status(&app, id).await);
    }
    assert_eq!(
        contracts,
        [Some("active"), Some("cancelled"), Some("paused")].map(|s| s.map(str::to_owned))
    );
    assert!(app.db.verify_ledger().await.unwrap().is_empty());

    // The missed webhooks, delivered late, find the ledger they would have made.
    for (id, topic, at, body) in &during {
        deliver_to(&app, SOURCE, &format!("{id}-late"), topic, at, body).await;
    }
    harness::archived(&app, SOURCE, 6 + 6 + 6).await;
    assert_eq!(common::snapshot(&app.db, SOURCE, &subs).await, live);

    let again = sync(&app, SOURCE, outage).await.unwrap();
    assert_eq!(again.changed, 0, "{again:#?}");
    assert_eq!(app.queued().await, 0);
    assert!(app.db.verify_ledger().await.unwrap().is_empty());
    app.stop().await;
}
