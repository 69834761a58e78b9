//! Appstle pull sync end to end: a fake of `GET
//! /api/external/v2/subscription-billing-attempts/past-orders` (`X-API-Key`, one
//! `contractId` per request, Spring's 0-based `page` and `size`, JHipster's
//! `X-Total-Count` and `Link` headers, queued orders never listed, newest billing date
//! first), the real broker and the real database. Where the shop-wide report is not served
//! (a 404 here) the run walks the contracts the ledger knows, page by page, and heals
//! their missed attempts; an in-flight attempt is not synced; incremental and full re-runs
//! change nothing; a contract is walked once the ledger learns about it. Where it is
//! served (`past-orders/report`, `status` required, `contractId` optional), one
//! incremental run finds every contract's outcomes, those of contracts the ledger never
//! heard of included, for a two-hour outage compared with a source that got every webhook.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use super::harness::{self, at, pairs};
use crate::common::{TestApp, attempt_states, eventually, snapshot, sync};
use serde_json::{Value, json};
use subsync::sync::RunOptions;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers};

const SOURCE: &str = "appstle";
const TOKEN: &str = "apst_sync_key_1";
const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const PATH: &str = "/api/external/v2/subscription-billing-attempts/past-orders";

/// Fields the past-orders endpoint adds from the Shopify order at read time; Appstle's
/// webhooks carry the bare attempt record.
const READ_TIME_FIELDS: &[&str] = &[
    "variantList",
    "orderClosed",
    "orderDisplayFulfillmentStatus",
    "orderProcessedAt",
];

/// Appstle's past orders of the shop: per `contractId`, the attempts whose status is not
/// `QUEUED`, newest billing date first, cut into Spring pages (`page` from 0, `size`
/// default 20), with JHipster's `X-Total-Count` and `Link` (`next` while a later page
/// exists, `prev`, `last`, `first`).
#[derive(Clone)]
struct FakePastOrders {
    attempts: Arc<Vec<Value>>,
    /// `(contractId, page, size)` of each request, in order.
    requests: Arc<Mutex<Vec<(String, String, String)>>>,
}

impl FakePastOrders {
    fn new(attempts: Vec<Value>) -> Self {
        Self {
            attempts: Arc::new(attempts),
            requests: Arc::default(),
        }
    }

    /// `(contractId, page)` of each request, in order.
    fn requests(&self) -> Vec<(String, String)> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|(c, p, _)| (c.clone(), p.clone()))
            .collect()
    }

    fn sizes(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|(_, _, s)| s.clone())
            .collect()
    }
}

fn bad_request(detail: &str) -> ResponseTemplate {
    ResponseTemplate::new(400).set_body_json(json!({
        "type": "https://www.jhipster.tech/problem/problem-with-message",
        "title": "Bad Request", "status": 400, "detail": detail,
    }))
}

/// The statuses the report's required `status` takes, as Appstle's prose lists them.
const REPORT_STATUSES: &[&str] = &["SUCCESS", "FAILURE", "QUEUED", "SKIPPED"];

impl Respond for FakePastOrders {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let query = |name: &str| {
            request
                .url
                .query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        if request.url.path().ends_with("/report") {
            return self.report(
                request,
                query("status"),
                query("contractId"),
                query("page"),
                query("size"),
            );
        }
        let contract = query("contractId").unwrap_or_default();
        let page = query("page").unwrap_or_else(|| "0".to_owned());
        let size = query("size").unwrap_or_else(|| "20".to_owned());
        self.requests
            .lock()
            .unwrap()
            .push((contract.clone(), page.clone(), size.clone()));
        let Ok(contract_id) = contract.parse::<u64>() else {
            return bad_request("Required parameter 'contractId' is not present or not a number");
        };
        let (Ok(page), Ok(size)) = (page.parse::<usize>(), size.parse::<usize>()) else {
            return bad_request("Failed to convert 'page' or 'size'");
        };
        let size = size.clamp(1, 2000);
        let mut listed: Vec<&Value> = self
            .attempts
            .iter()
            .filter(|a| a["contractId"] == contract_id && a["status"] != "QUEUED")
            .collect();
        listed.sort_by(|a, b| b["billingDate"].as_str().cmp(&a["billingDate"].as_str()));
        let total = listed.len();
        let pages = total.div_ceil(size);
        let items: Vec<&Value> = listed.into_iter().skip(page * size).take(size).collect();

        let link = |n: usize, rel: &str| {
            let mut url = request.url.clone();
            url.query_pairs_mut()
                .clear()
                .append_pair("contractId", &contract)
                .append_pair("page", &n.to_string())
                .append_pair("size", &size.to_string());
            format!("<{url}>; rel=\"{rel}\"")
        };
        let mut links = Vec::new();
        if page + 1 < pages {
            links.push(link(page + 1, "next"));
        }
        if page > 0 {
            links.push(link(page - 1, "prev"));
        }
        links.push(link(pages.saturating_sub(1), "last"));
        links.push(link(0, "first"));
        ResponseTemplate::new(200)
            .insert_header("x-total-count", total.to_string().as_str())
            .insert_header("link", links.join(",").as_str())
            .set_body_json(items)
    }
}

impl FakePastOrders {
    /// The shop's report: the attempts of `status` (required, one of [`REPORT_STATUSES`]),
    /// of `contractId` when given, newest billing date first, paged as past orders are.
    fn report(
        &self,
        request: &Request,
        status: Option<String>,
        contract: Option<String>,
        page: Option<String>,
        size: Option<String>,
    ) -> ResponseTemplate {
        let Some(status) = status.filter(|s| REPORT_STATUSES.contains(&s.as_str())) else {
            return bad_request("Required parameter 'status' is not present or not valid");
        };
        let contract = match contract.map(|c| c.parse::<u64>()) {
            None => None,
            Some(Ok(id)) => Some(id),
            Some(Err(_)) => return bad_request("Failed to convert 'contractId'"),
        };
        let (Ok(page), Ok(size)) = (
            page.as_deref().unwrap_or("0").parse::<usize>(),
            size.as_deref().unwrap_or("20").parse::<usize>(),
        ) else {
            return bad_request("Failed to convert 'page' or 'size'");
        };
        self.requests.lock().unwrap().push((
            format!("report:{status}"),
            page.to_string(),
            size.to_string(),
        ));
        let mut listed: Vec<&Value> = (self.attempts.iter())
            .filter(|a| a["status"] == status.as_str())
            .filter(|a| contract.is_none_or(|c| a["contractId"] == c))
            .collect();
        listed.sort_by(|a, b| b["billingDate"].as_str().cmp(&a["billingDate"].as_str()));
        let total = listed.len();
        let size = size.clamp(1, 2000);
        let items: Vec<&Value> = listed.into_iter().skip(page * size).take(size).collect();
        let mut response =
            ResponseTemplate::new(200).insert_header("x-total-count", total.to_string().as_str());
        if (page + 1) * size < total {
            let mut next = request.url.clone();
            next.query_pairs_mut()
                .clear()
                .append_pair("status", &status)
                .append_pair("page", &(page + 1).to_string())
                .append_pair("size", &size.to_string());
            response = response.insert_header("link", format!("<{next}>; rel=\"next\"").as_str());
        }
        response.set_body_json(items)
    }
}

/// A past order as Appstle lists it (read-time Shopify order fields included).
fn attempt(id: u64, contract: u64, status: &str, billed: &str, tried: &str, count: u32) -> Value {
    json!({
        "id": id, "shop": "demo.myshopify.com", "retryingNeeded": false,
        "billingAttemptId": format!("gid://shopify/SubscriptionBillingAttempt/{id}9"),
        "status": status, "billingDate": billed, "contractId": contract,
        "attemptCount": count, "attemptTime": tried, "orderId": 7000 + id,
        "orderAmount": 29.99, "orderName": format!("#{id}"),
        "billingAttemptResponseMessage": null, "transactionFailedEmailSentStatus": "UNSENT",
        "variantList": [{"variantId": 1, "quantity": 1, "title": "Coffee"}],
        "orderClosed": false, "orderDisplayFulfillmentStatus": "FULFILLED",
        "orderProcessedAt": tried, "orderAmountUSD": 29.99, "orderAmountContractCurrency": 29.99
    })
}

fn declined() -> Value {
    json!(
        json!({"id": 42, "error_code": "insufficient_funds",
            "error_message": "Your card has insufficient funds."})
        .to_string()
    )
}

/// Contract 5550001: an upcoming (queued, never listed) order, an in-flight one (listed,
/// no webhook exists for it), a declined renewal and a paid one. Contract 5550002: a paid
/// renewal, an inventory skip, and attempt 201 that dunning retried in place to success.
/// Contract 5550003 has a paid order, but the ledger does not know that contract.
fn attempts() -> Vec<Value> {
    let mut failed = attempt(
        102,
        5550001,
        "FAILURE",
        "2024-03-01T09:00:00Z",
        "2024-03-01T09:00:05Z",
        1,
    );
    failed["retryingNeeded"] = json!(true);
    failed["billingAttemptResponseMessage"] = declined();
    vec![
        attempt(
            101,
            5550001,
            "SUCCESS",
            "2024-02-01T09:00:00Z",
            "2024-02-01T09:00:05Z",
            1,
        ),
        failed,
        attempt(
            103,
            5550001,
            "PROGRESS",
            "2024-04-01T09:00:00Z",
            "2024-04-01T09:00:05Z",
            1,
        ),
        attempt(
            104,
            5550001,
            "QUEUED",
            "2024-05-01T09:00:00Z",
            "2024-05-01T09:00:00Z",
            0,
        ),
        attempt(
            201,
            5550002,
            "SUCCESS",
            "2024-02-05T09:00:00Z",
            "2024-02-07T09:00:05Z",
            2,
        ),
        attempt(
            202,
            5550002,
            "SKIPPED_INVENTORY_MGMT",
            "2024-03-05T09:00:00Z",
            "2024-03-05T09:00:05Z",
            1,
        ),
        attempt(
            203,
            5550002,
            "SUCCESS",
            "2024-04-05T09:00:00Z",
            "2024-04-05T09:00:05Z",
            1,
        ),
        attempt(
            301,
            5550003,
            "SUCCESS",
            "2024-03-10T09:00:00Z",
            "2024-03-10T09:00:05Z",
            1,
        ),
    ]
}

/// The listed attempt `id`.
fn listed(id: u64) -> Value {
    attempts().into_iter().find(|a| a["id"] == id).unwrap()
}

/// Appstle's billing webhook for an attempt record.
fn billing_webhook(event_type: &str, attempt: &Value) -> Vec<u8> {
    let mut data = attempt.clone();
    for field in READ_TIME_FIELDS {
        data.as_object_mut().unwrap().remove(*field);
    }
    serde_json::to_vec(&json!({"type": event_type, "data": data})).unwrap()
}

/// Appstle's `subscription.created` for a contract.
fn contract_created(contract: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({"type": "subscription.created", "data": {
        "id": contract - 5549000, "subscriptionContractId": contract, "status": "ACTIVE",
        "currencyCode": "USD", "customerId": 777, "nextBillingDate": "2024-06-01T09:00:00Z",
        "updatedAt": "2024-01-15T10:00:00Z",
    }}))
    .unwrap()
}

async fn appstle_api(fake: FakePastOrders) -> MockServer {
    let route = Mock::given(matchers::method("GET"))
        .and(matchers::path(PATH))
        .and(matchers::header("x-api-key", TOKEN))
        .and(matchers::query_param_is_missing("api_key"));
    harness::serve(route, fake).await
}

/// The `[[sources]]` keys of source `id` on the fake at `server`.
fn source(id: &str, server: &MockServer) -> String {
    format!(
        r#"id = "{id}"
provider = "appstle"
secrets = ["{SECRET}"]
api = {{ base_url = "{}", token = "{TOKEN}" }}"#,
        server.uri()
    )
}

async fn app_with(server: &MockServer) -> TestApp {
    harness::app_with(&source(SOURCE, server), 60).await.1
}

async fn deliver(app: &TestApp, event_id: &str, body: &[u8]) {
    harness::deliver(app, SOURCE, event_id, body).await
}

/// Waits until `n` events of the source are archived.
async fn archived(app: &TestApp, n: i64) {
    harness::archived(app, SOURCE, n).await
}

/// Posts an event the normalizer ignores (archived, no ledger change) and waits until it
/// is archived: everything queued before it has been reconciled by then.
async fn barrier(app: &TestApp, event_id: &str) -> i64 {
    let ignored = serde_json::to_vec(&json!({
        "type": "subscription.next-order-date-changed",
        "data": {"id": 1, "subscriptionContractId": 5550001,
            "nextBillingDate": "2024-06-01T09:00:00Z"},
    }))
    .unwrap();
    harness::barrier(app, SOURCE, event_id, &ignored).await
}

fn contracts() -> Vec<String> {
    ["5550001", "5550002", "5550003", "5550004"]
        .map(str::to_owned)
        .to_vec()
}

#[tokio::test]
async fn missed_attempts_of_known_contracts_are_healed_and_re_runs_change_nothing() {
    let fake = FakePastOrders::new(attempts());
    let server = appstle_api(fake.clone()).await;
    let app = app_with(&server).await;

    // One webhook per contract the ledger should know: 101's success on 5550001, 201's
    // first (declined) try on 5550002, and 5550004's creation (no past orders yet).
    // 5550003 never sent anything: the ledger does not know it.
    deliver(
        &app,
        "msg_101",
        &billing_webhook("subscription.billing-success", &listed(101)),
    )
    .await;
    let mut first_try = attempt(
        201,
        5550002,
        "FAILURE",
        "2024-02-05T09:00:00Z",
        "2024-02-05T09:00:05Z",
        1,
    );
    first_try["retryingNeeded"] = json!(true);
    first_try["billingAttemptResponseMessage"] = declined();
    deliver(
        &app,
        "msg_201_failed",
        &billing_webhook("subscription.billing-failure", &first_try),
    )
    .await;
    deliver(&app, "msg_5550004", &contract_created(5550004)).await;
    archived(&app, 3).await;
    assert_eq!(
        attempt_states(&app.db, SOURCE).await,
        pairs(&[("101", "succeeded"), ("201", "failed")])
    );

    let report = sync(&app, SOURCE, RunOptions::default()).await.unwrap();
    assert_eq!(report.since, None, "a first run reads everything");
    // 5550001 pages 0 and 1 (the queued 104 is not listed, the in-flight 103 renders
    // nothing), 5550002 pages 0 and 1, 5550004 one empty page; 5550003 is not walked.
    assert_eq!(
        (
            report.pages,
            report.records,
            report.changed,
            report.malformed
        ),
        (6, 5, 4, 0),
        "the report's page (this fake does not serve it: the run walks the contracts) and 5"
    );
    let first_walk = [
        ("5550001", "0"),
        ("5550001", "1"),
        ("5550002", "0"),
        ("5550002", "1"),
        ("5550004", "0"),
    ];
    assert_eq!(fake.requests(), pairs(&first_walk));
    assert!(fake.sizes().iter().all(|s| s == "2"), "{:?}", fake.sizes());
    let mut changed: Vec<&str> = report.changes.iter().map(|c| c.key.as_str()).collect();
    changed.sort();
    assert_eq!(
        changed,
        [
            "billing-attempt:102",
            "billing-attempt:201",
            "billing-attempt:202",
            "billing-attempt:203"
        ]
    );
    let watermark = report.watermark.expect("a complete run sets the watermark");

    let expected = pairs(&[
        ("101", "succeeded"),
        ("102", "failed"),
        ("201", "succeeded"),
        ("202", "skipped"),
        ("203", "succeeded"),
    ]);
    assert!(
        eventually(Duration::from_secs(15), || async {
            attempt_states(&app.db, SOURCE).await == expected
        })
        .await,
        "{:?}",
        attempt_states(&app.db, SOURCE).await
    );
    archived(&app, 3 + 4).await;
    let one = app
        .db
        .subscription(SOURCE, "5550001")
        .await
        .unwrap()
        .unwrap();
    let a102 = one.attempts.iter().find(|a| a.attempt_id == "102").unwrap();
    assert_eq!(
        (a102.error_code.as_deref(), a102.error_message.as_deref()),
        (
            Some("insufficient_funds"),
            Some("Your card has insufficient funds.")
        )
    );
    assert_eq!(
        a102.cycle_id.as_deref(),
        Some("5550001@2024-03-01T09:00:00Z")
    );
    let two = app
        .db
        .subscription(SOURCE, "5550002")
        .await
        .unwrap()
        .unwrap();
    let a201 = two.attempts.iter().find(|a| a.attempt_id == "201").unwrap();
    assert_eq!(
        (a201.provider_status.as_str(), a201.attempted_at),
        ("SUCCESS", Some(at("2024-02-07T09:00:05Z"))),
        "the retry in place succeeded"
    );
    let four = app
        .db
        .subscription(SOURCE, "5550004")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (four.status.as_deref(), four.attempts.len()),
        (Some("active"), 0)
    );
    assert!(
        app.db
            .subscription(SOURCE, "5550003")
            .await
            .unwrap()
            .is_none(),
        "an unknown contract is not discovered"
    );
    assert!(app.db.verify_ledger().await.unwrap().is_empty());
    let archived_events = barrier(&app, "msg_barrier_1").await;
    assert_eq!(archived_events, 3 + 4 + 1);
    let ledger = snapshot(&app.db, SOURCE, &contracts()).await;

    // Incremental: every contract's first page was billed before `since` minus the 60-day
    // late window, so each contract stops after it.
    let again = sync(&app, SOURCE, RunOptions::default()).await.unwrap();
    assert_eq!(again.since, Some(watermark - chrono::Duration::seconds(60)));
    assert_eq!(
        (again.pages, again.records, again.changed, again.malformed),
        (4, 3, 0, 0)
    );
    assert!(again.watermark > Some(watermark));
    let second_walk = [("5550001", "0"), ("5550002", "0"), ("5550004", "0")];
    assert_eq!(
        fake.requests(),
        pairs(&[&first_walk[..], &second_walk[..]].concat())
    );

    // A full re-read walks every page again and finds nothing to change either.
    let full = RunOptions {
        since: Some(at("2024-01-01T00:00:00Z")),
        dry_run: false,
        ..RunOptions::default()
    };
    let full = sync(&app, SOURCE, full).await.unwrap();
    assert_eq!(
        (full.pages, full.records, full.changed, full.malformed),
        (6, 5, 0, 0)
    );
    assert_eq!(
        fake.requests(),
        pairs(&[&first_walk[..], &second_walk[..], &first_walk[..]].concat())
    );

    assert_eq!(
        barrier(&app, "msg_barrier_2").await,
        archived_events + 1,
        "nothing archived but the barrier"
    );
    assert_eq!(snapshot(&app.db, SOURCE, &contracts()).await, ledger);
    assert_eq!(attempt_states(&app.db, SOURCE).await, expected);
    assert!(app.db.verify_ledger().await.unwrap().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_contract_is_walked_once_the_ledger_knows_it() {
    let fake = FakePastOrders::new(attempts());
    let server = appstle_api(fake.clone()).await;
    let app = app_with(&server).await;

    // Only contract 5550001 is known.
    deliver(
        &app,
        "msg_101",
        &billing_webhook("subscription.billing-success", &listed(101)),
    )
    .await;
    archived(&app, 1).await;
    let report = sync(&app, SOURCE, RunOptions::default()).await.unwrap();
    assert_eq!(
        (report.pages, report.records, report.changed),
        (3, 2, 1),
        "102 healed"
    );
    assert_eq!(
        fake.requests(),
        pairs(&[("5550001", "0"), ("5550001", "1")]),
        "no other contract is asked for"
    );
    archived(&app, 2).await;
    assert_eq!(
        attempt_states(&app.db, SOURCE).await,
        pairs(&[("101", "succeeded"), ("102", "failed")])
    );

    // Contract 5550003's creation arrives: the next (incremental) run walks it too, and
    // heals its paid order whose webhook was lost.
    deliver(&app, "msg_5550003", &contract_created(5550003)).await;
    archived(&app, 3).await;
    let next = sync(&app, SOURCE, RunOptions::default()).await.unwrap();
    assert_eq!((next.pages, next.records, next.changed), (3, 2, 1));
    assert_eq!(
        fake.requests(),
        pairs(&[
            ("5550001", "0"),
            ("5550001", "1"),
            ("5550001", "0"),
            ("5550003", "0")
        ])
    );
    let expected = pairs(&[
        ("101", "succeeded"),
        ("102", "failed"),
        ("301", "succeeded"),
    ]);
    assert!(
        eventually(Duration::from_secs(15), || async {
            attempt_states(&app.db, SOURCE).await == expected
        })
        .await,
        "{:?}",
        attempt_states(&app.db, SOURCE).await
    );
    archived(&app, 4).await;
    let three = app
        .db
        .subscription(SOURCE, "5550003")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (three.status.as_deref(), three.attempts.len()),
        (Some("active"), 1)
    );
    assert!(app.db.verify_ledger().await.unwrap().is_empty());
    app.stop().await;
}

/// A two-hour webhook outage: a declined renewal retried in place by Appstle's dunning to
/// success, a skipped order, and a contract the ledger never heard of (its creation
/// webhook lost too) with a paid and a declined order. One incremental run, reading the
/// shop's report (no request per contract), gives the attempts of a source that got
/// every webhook; the missed webhooks, delivered late, and a second run change nothing.
/// Contract states are not compared: Appstle documents no contract listing to heal them.
#[tokio::test]
async fn a_two_hour_outage_is_healed_from_the_report_to_the_uninterrupted_stream() {
    const LIVE: &str = "appstle_live";
    let now = chrono::Utc::now();
    let ago = |minutes: i64| {
        (now - chrono::Duration::minutes(minutes))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let paid = attempt(
        401,
        5550001,
        "SUCCESS",
        &ago(3 * 24 * 60),
        &ago(3 * 24 * 60),
        1,
    );
    let mut declined_402 = attempt(402, 5550001, "FAILURE", &ago(140), &ago(140), 1);
    declined_402["retryingNeeded"] = json!(true);
    declined_402["billingAttemptResponseMessage"] = declined();
    let retried_402 = attempt(402, 5550001, "SUCCESS", &ago(140), &ago(100), 2);
    let skipped = attempt(403, 5550001, "SKIPPED", &ago(90), &ago(90), 1);
    let new_paid = attempt(901, 5550009, "SUCCESS", &ago(80), &ago(80), 1);
    let mut new_declined = attempt(902, 5550009, "FAILURE", &ago(50), &ago(50), 1);
    new_declined["billingAttemptResponseMessage"] = declined();
    let fake = FakePastOrders::new(vec![
        paid.clone(),
        retried_402.clone(),
        skipped.clone(),
        new_paid.clone(),
        new_declined.clone(),
    ]);
    let server = MockServer::start().await;
    Mock::given(matchers::method("GET"))
        .and(matchers::path_regex(format!("^{PATH}(/report)?$")))
        .and(matchers::header("x-api-key", TOKEN))
        .respond_with(fake.clone())
        .mount(&server)
        .await;
    let (_config, app) =
        harness::app_with_sources(&[&source(SOURCE, &server), &source(LIVE, &server)], 60).await;
    let before = [
        ("created_5550001", contract_created(5550001)),
        (
            "paid_401",
            billing_webhook("subscription.billing-success", &paid),
        ),
    ];
    let during = [
        (
            "declined_402",
            billing_webhook("subscription.billing-failure", &declined_402),
        ),
        (
            "retried_402",
            billing_webhook("subscription.billing-success", &retried_402),
        ),
        (
            "skipped_403",
            billing_webhook("subscription.billing-skipped", &skipped),
        ),
        ("created_5550009", contract_created(5550009)),
        (
            "paid_901",
            billing_webhook("subscription.billing-success", &new_paid),
        ),
        (
            "declined_902",
            billing_webhook("subscription.billing-failure", &new_declined),
        ),
    ];
    for (source, events) in [
        (SOURCE, &before[..]),
        (LIVE, &before[..]),
        (LIVE, &during[..]),
    ] {
        for (id, body) in events {
            harness::deliver(&app, source, &format!("msg_{source}_{id}"), body).await;
        }
    }
    harness::archived(&app, SOURCE, 2).await;
    harness::archived(&app, LIVE, 8).await;

    let outage = harness::after_outage(now - chrono::Duration::minutes(150));
    let report = sync(&app, SOURCE, outage.clone()).await.unwrap();
    assert_eq!(
        (
            report.pages,
            report.records,
            report.changed,
            report.malformed
        ),
        (4, 5, 4, 0),
        "FAILURE, SUCCESS (2 pages) and SKIPPED; 401 is known: {report:#?}"
    );
    assert_eq!(
        fake.requests(),
        pairs(&[
            ("report:FAILURE", "0"),
            ("report:SUCCESS", "0"),
            ("report:SUCCESS", "1"),
            ("report:SKIPPED", "0"),
        ]),
        "the report only: no request per contract"
    );
    assert_eq!(
        report
            .waited
            .as_ref()
            .map(|w| (w.queued, w.applied, w.timed_out)),
        Some((4, 4, false))
    );
    let attempts = pairs(&[
        ("401", "succeeded"),
        ("402", "succeeded"),
        ("403", "skipped"),
        ("901", "succeeded"),
        ("902", "failed"),
    ]);
    assert_eq!(attempt_states(&app.db, SOURCE).await, attempts);
    assert_eq!(attempt_states(&app.db, LIVE).await, attempts);
    let known = ["5550001".to_owned()];
    let live = snapshot(&app.db, LIVE, &known).await;
    assert_eq!(
        snapshot(&app.db, SOURCE, &known).await,
        live,
        "the ledger of the uninterrupted stream"
    );
    assert!(app.db.verify_ledger().await.unwrap().is_empty());

    for (id, body) in &during {
        harness::deliver(&app, SOURCE, &format!("msg_late_{id}"), body).await;
    }
    harness::archived(&app, SOURCE, 2 + 4 + 6).await;
    assert_eq!(snapshot(&app.db, SOURCE, &known).await, live);

    let again = sync(&app, SOURCE, outage).await.unwrap();
    assert_eq!((again.records, again.changed), (5, 0));
    assert_eq!(app.queued().await, 0);
    app.stop().await;
}
