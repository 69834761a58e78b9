//! Money lookups end to end: a succeeded attempt whose webhook carries no amount (Shopify)
//! or no currency (Appstle) goes through ingress and the worker, leaves a lookup row, and
//! the lookup (driven here with the pass's clock) reads the money from the provider's
//! fake API and posts exactly one balanced collection; redeliveries, repeated lookups and
//! a provider outage never post twice, and `ledger verify` stays clean.
//!
//! The fakes check what they get against the provider's definition: Shopify's query
//! against the copied 2026-04 Admin schema (the checker the unit tests use), its variables
//! and token; Appstle's routes, `X-API-Key` and query parameters (its fact sheet).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use chrono::Utc;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use subsync::{
    app::Role,
    ledger::Applied,
    lookups::{LookupClients, Lookups, Pass},
    money::Money,
    providers::{
        contract::{MoneyClient, MoneyQuery},
        http::ProviderApiError,
    },
};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers};

use crate::common::{
    ADMIN_TOKEN, Posting, TestApp, TestConfig, catalogue, eventually, postings, spawn_app,
};
use crate::shopify_schema;

const SHOP: &str = "shop";
const SHOP_TOKEN: &str = "shpat_money_token";
const APPSTLE: &str = "appstle";
const APPSTLE_KEY: &str = "apst_money_key";
const ATTEMPT: &str = "gid://shopify/SubscriptionBillingAttempt/5001";
const CONTRACT: &str = "gid://shopify/SubscriptionContract/4242";
const ROUTE: &str = "/admin/api/2026-04/graphql.json";
const PAYLOADS: &str =
    include_str!("../fixtures/shopify/webhook-payloads.subscription_billing_attempts.json");

/// Shopify's Admin API answering `subscriptionBillingAttempt(id:)`: the first `failing`
/// requests get a 503, the others the attempt's order total (shaped as the query selects
/// it). A request whose query the copied schema refuses, or that names another attempt,
/// gets a 400 and its problems are recorded.
#[derive(Clone, Default)]
struct FakeShopify {
    failing: usize,
    seen: Arc<Mutex<usize>>,
    problems: Arc<Mutex<Vec<String>>>,
}

impl FakeShopify {
    fn seen(&self) -> usize {
        *self.seen.lock().unwrap()
    }
}

impl Respond for FakeShopify {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let query = body["query"].as_str().unwrap_or_default();
        let mut problems = shopify_schema::copied("2026-04").check_document(query);
        if !query.contains("subscriptionBillingAttempt(id: $id)") {
            problems.push(format!("not the attempt query: {query}"));
        }
        if body["variables"] != json!({ "id": ATTEMPT }) {
            problems.push(format!("variables {}", body["variables"]));
        }
        if !problems.is_empty() {
            self.problems.lock().unwrap().extend(problems.clone());
            return ResponseTemplate::new(400).set_body_json(json!({ "errors": problems }));
        }
        let mut seen = self.seen.lock().unwrap();
        *seen += 1;
        if *seen <= self.failing {
            return ResponseTemplate::new(503).set_body_string("Service Unavailable");
        }
        ResponseTemplate::new(200).set_body_json(json!({ "data": { "subscriptionBillingAttempt": {
            "id": ATTEMPT,
            "state": { "__typename": "SubscriptionBillingAttemptSuccessState",
                "order": { "id": "gid://shopify/Order/1",
                    "totalPriceSet": { "presentmentMoney": {
                        "amount": "49.95", "currencyCode": "USD" } } } } } } }))
    }
}

/// The service with a Shopify and an Appstle source on these fake APIs. Its own lookup
/// loop makes its first pass at start (nothing is due yet) and then idles for a day: the
/// tests drive the passes.
async fn app(shopify: &MockServer, appstle: &MockServer) -> TestApp {
    let mut config = TestConfig::new().await;
    config.extra = format!(
        r#"
[[sources]]
id = "{SHOP}"
provider = "shopify"
secrets = ["shpss_money_secret"]
api = {{ base_url = "{}", token = "{SHOP_TOKEN}" }}

[[sources]]
id = "{APPSTLE}"
provider = "appstle"
secrets = ["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"]
api = {{ base_url = "{}", token = "{APPSTLE_KEY}" }}

[dunning]
interval_ms = 86400000

[lookups]
interval_ms = 86400000
"#,
        shopify.uri(),
        appstle.uri()
    );
    spawn_app(&config, Role::All).await
}

fn lookups(app: &TestApp) -> Lookups {
    let catalogue = catalogue(&app.settings);
    Lookups::new(
        app.db.clone(),
        LookupClients::of(&catalogue.sources),
        catalogue.dunning,
    )
}

/// The reference app's success payload naming this test's attempt and contract.
fn success_webhook() -> Vec<u8> {
    success_of(5001)
}

/// The same, naming attempt `number` of the contract.
fn success_of(number: u64) -> Vec<u8> {
    let reference: Value = serde_json::from_str(PAYLOADS).unwrap();
    let file = "app/jobs/dunning/tests/fixtures/SUBSCRIPTION_BILLING_ATTEMPTS_SUCCESS.ts";
    let mut body = reference["fixtures"][file]["SubscriptionBillingAttemptSuccessWebhook"].clone();
    body["id"] = json!(number);
    body["admin_graphql_api_id"] =
        json!(format!("gid://shopify/SubscriptionBillingAttempt/{number}"));
    body["subscription_contract_id"] = json!(4242);
    body["admin_graphql_api_subscription_contract_id"] = json!(CONTRACT);
    serde_json::to_vec(&body).unwrap()
}

/// Posts `body` as `source` signs it (with `topic` for Shopify) and waits until the
/// webhook is archived.
async fn deliver(app: &TestApp, source_id: &str, webhook_id: &str, body: Vec<u8>, topic: &str) {
    let source = crate::common::source(app.settings.source(source_id).unwrap()).unwrap();
    let mut headers = source.sign(webhook_id, &body, SystemTime::now());
    if let Some(header) = headers.iter_mut().find(|(n, _)| n == "x-shopify-topic") {
        header.1 = topic.to_owned();
    }
    assert_eq!(app.post(source_id, &headers, body).await.status(), 202);
    let archived = eventually(Duration::from_secs(20), || async {
        app.db.archived_count(source_id, webhook_id).await.unwrap() == 1
    })
    .await;
    assert!(archived, "{webhook_id} reconciled");
}

fn collection(amount: i64, currency: &str) -> Vec<Posting> {
    let posting = |account: &str, amount: i64| {
        let (kind, account, currency) = ("collection".into(), account.into(), currency.into());
        (kind, None, account, amount, currency)
    };
    vec![posting("collected", amount), posting("receivable", -amount)]
}

async fn lookup_status(app: &TestApp, source: &str, attempt: &str) -> Option<String> {
    let rows = app.db.lookups(None, 100).await.unwrap();
    rows.into_iter()
        .find(|r| r.source_id == source && r.attempt_id.as_deref() == Some(attempt))
        .map(|r| r.status)
}

async fn assert_ledger_sound(app: &TestApp) {
    assert_eq!(app.db.verify_ledger().await.unwrap(), Vec::<String>::new());
}

#[tokio::test]
async fn a_shopify_success_is_posted_once_with_its_orders_total() {
    let (shopify, appstle) = (MockServer::start().await, MockServer::start().await);
    let fake = FakeShopify::default();
    Mock::given(matchers::method("POST"))
        .and(matchers::path(ROUTE))
        .and(matchers::header("x-shopify-access-token", SHOP_TOKEN))
        .and(matchers::header("content-type", "application/json"))
        .respond_with(fake.clone())
        .mount(&shopify)
        .await;
    let app = app(&shopify, &appstle).await;
    let topic = "subscription_billing_attempts/success";
    deliver(&app, SHOP, "wh-success", success_webhook(), topic).await;

    // Stored without money, nothing posted, a lookup due.
    assert_eq!(postings(&app, SHOP, ATTEMPT).await, vec![]);
    assert_eq!(
        lookup_status(&app, SHOP, ATTEMPT).await.as_deref(),
        Some("pending")
    );
    assert_ledger_sound(&app).await;

    let lookups = lookups(&app);
    let pass = lookups.run_once(Utc::now()).await.unwrap();
    assert_eq!(
        pass,
        Pass {
            posted: 1,
            ..Pass::default()
        }
    );
    assert_eq!(postings(&app, SHOP, ATTEMPT).await, collection(4995, "USD"));
    assert_eq!(
        lookup_status(&app, SHOP, ATTEMPT).await.as_deref(),
        Some("done")
    );

    // The same webhook again (a redelivery, and the same body under a new webhook id),
    // and the lookup run twice more, and the money applied once more directly (another
    // instance finishing late): still one collection.
    deliver(&app, SHOP, "wh-success-again", success_webhook(), topic).await;
    let redelivered = success_webhook();
    let source = crate::common::source(app.settings.source(SHOP).unwrap()).unwrap();
    let mut headers = source.sign("wh-success", &redelivered, SystemTime::now());
    if let Some(header) = headers.iter_mut().find(|(n, _)| n == "x-shopify-topic") {
        header.1 = topic.to_owned();
    }
    assert_eq!(app.post(SHOP, &headers, redelivered).await.status(), 202);
    for _ in 0..2 {
        let later = Utc::now() + chrono::Duration::hours(1);
        assert_eq!(lookups.run_once(later).await.unwrap(), Pass::default());
    }
    let usd = Money::from_minor(4995, "USD").unwrap();
    let again = app
        .db
        .apply_money_lookup(SHOP, ATTEMPT, &usd)
        .await
        .unwrap();
    assert_eq!(again, Applied::AlreadyClosed);
    assert_eq!(postings(&app, SHOP, ATTEMPT).await, collection(4995, "USD"));
    assert_eq!(fake.seen(), 1, "one lookup");
    assert_eq!(fake.problems.lock().unwrap().clone(), Vec::<String>::new());

    let view = app.db.subscription(SHOP, CONTRACT).await.unwrap().unwrap();
    assert_eq!(view.attempts[0].amount_minor, Some(4995));
    assert_eq!(view.attempts[0].currency.as_deref(), Some("USD"));
    assert_eq!(view.balances["collected"]["USD"], 4995);
    assert_eq!(view.balances["receivable"]["USD"], -4995);
    assert_ledger_sound(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn a_provider_outage_is_retried_later_and_posted_once() {
    let (shopify, appstle) = (MockServer::start().await, MockServer::start().await);
    // Every request of the first pass fails (the first try and its quick retries).
    let fake = FakeShopify {
        failing: 3,
        ..FakeShopify::default()
    };
    Mock::given(matchers::method("POST"))
        .and(matchers::path(ROUTE))
        .and(matchers::header("x-shopify-access-token", SHOP_TOKEN))
        .respond_with(fake.clone())
        .mount(&shopify)
        .await;
    let app = app(&shopify, &appstle).await;
    let topic = "subscription_billing_attempts/success";
    deliver(&app, SHOP, "wh-outage", success_webhook(), topic).await;

    let lookups = lookups(&app);
    let now = Utc::now();
    let pass = lookups.run_once(now).await.unwrap();
    assert_eq!(
        pass,
        Pass {
            retried: 1,
            ..Pass::default()
        }
    );
    assert_eq!(fake.seen(), 3);
    let row = (app.db.lookups(Some("pending"), 10).await.unwrap()).remove(0);
    assert_eq!((row.failures, row.tries), (1, 1));
    assert!(row.last_error.unwrap().contains("503"));
    let backoff = now + chrono::Duration::seconds(60);
    let due = row.due_at.unwrap();
    assert_eq!(
        due.timestamp_micros(),
        backoff.timestamp_micros(),
        "backoff"
    );
    assert_eq!(postings(&app, SHOP, ATTEMPT).await, vec![]);

    // Not due before its backoff; posted once after it.
    assert_eq!(lookups.run_once(now).await.unwrap(), Pass::default());
    let later = now + chrono::Duration::minutes(2);
    let pass = lookups.run_once(later).await.unwrap();
    assert_eq!(
        pass,
        Pass {
            posted: 1,
            ..Pass::default()
        }
    );
    assert_eq!(lookups.run_once(later).await.unwrap(), Pass::default());
    assert_eq!(postings(&app, SHOP, ATTEMPT).await, collection(4995, "USD"));
    assert_eq!(fake.seen(), 4);
    assert_eq!(fake.problems.lock().unwrap().clone(), Vec::<String>::new());
    assert_ledger_sound(&app).await;
    app.stop().await;
}

/// Appstle's success webhook for attempt 901 of contract 77, with an amount and no
/// currency.
fn appstle_success() -> Vec<u8> {
    appstle_webhook(901, "SUCCESS", "2026-12-01T09:00:00Z")
}

/// Appstle's `billing-success` webhook (as Appstle sends it for a refunded attempt too:
/// the status says which) for attempt `id` of contract 77, with an amount and no currency.
fn appstle_webhook(id: u64, status: &str, billed: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({ "type": "subscription.billing-success", "data": {
        "id": id, "shop": "demo.myshopify.com", "contractId": 77, "status": status,
        "billingDate": billed, "attemptCount": 1,
        "attemptTime": "2026-12-01T09:00:05Z", "orderAmount": 49.95,
        "billingAttemptId": "gid://shopify/SubscriptionBillingAttempt/77001",
        "retryingNeeded": false } }))
    .unwrap()
}

#[tokio::test]
async fn an_appstle_amount_without_currency_is_posted_in_the_contracts_currency() {
    let (shopify, appstle) = (MockServer::start().await, MockServer::start().await);
    let listed = json!([
        { "id": 902, "shop": "demo.myshopify.com", "contractId": 77, "status": "QUEUED",
          "billingDate": "2027-01-01T09:00:00Z", "orderAmount": 49.95, "retryingNeeded": false },
        { "id": 901, "shop": "demo.myshopify.com", "contractId": 77, "status": "SUCCESS",
          "billingDate": "2026-12-01T09:00:00Z", "attemptCount": 1, "orderAmount": 49.95,
          "retryingNeeded": false },
        { "id": 900, "shop": "demo.myshopify.com", "contractId": 77, "status": "REFUNDED",
          "billingDate": "2026-11-01T09:00:00Z", "attemptCount": 1, "orderAmount": "20.00",
          "retryingNeeded": false },
    ]);
    Mock::given(matchers::method("GET"))
        .and(matchers::path(
            "/api/external/v2/subscription-billing-attempts/past-orders",
        ))
        .and(matchers::header("x-api-key", APPSTLE_KEY))
        .and(matchers::query_param("contractId", "77"))
        .and(matchers::query_param("page", "0"))
        .and(matchers::query_param("size", "50"))
        .respond_with(ResponseTemplate::new(200).set_body_json(listed))
        .expect(2)
        .mount(&appstle)
        .await;
    Mock::given(matchers::method("GET"))
        .and(matchers::path("/api/external/v2/contract-raw-response"))
        .and(matchers::header("x-api-key", APPSTLE_KEY))
        .and(matchers::query_param("contractId", "77"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "__typename": "SubscriptionContract", "id": "gid://shopify/SubscriptionContract/77",
            "status": "ACTIVE", "currencyCode": "EUR" })))
        .expect(2)
        .mount(&appstle)
        .await;
    let app = app(&shopify, &appstle).await;
    deliver(&app, APPSTLE, "msg_appstle_901", appstle_success(), "").await;
    // A refunded attempt without currency: its collection and its refund both wait.
    let refunded = appstle_webhook(900, "REFUNDED", "2026-11-01T09:00:00Z");
    deliver(&app, APPSTLE, "msg_appstle_900", refunded, "").await;
    assert_eq!(postings(&app, APPSTLE, "901").await, vec![]);
    assert_eq!(postings(&app, APPSTLE, "900").await, vec![]);
    assert_eq!(
        lookup_status(&app, APPSTLE, "901").await.as_deref(),
        Some("pending")
    );

    let lookups = lookups(&app);
    let pass = lookups.run_once(Utc::now()).await.unwrap();
    assert_eq!(
        pass,
        Pass {
            posted: 2,
            ..Pass::default()
        }
    );
    assert_eq!(
        postings(&app, APPSTLE, "901").await,
        collection(4995, "EUR")
    );
    let mut refund = collection(2000, "EUR");
    refund.push((
        "refund".into(),
        None,
        "collected".into(),
        -2000,
        "EUR".into(),
    ));
    refund.push(("refund".into(), None, "refunded".into(), 2000, "EUR".into()));
    assert_eq!(postings(&app, APPSTLE, "900").await, refund);
    // Redelivered: nothing more is looked up or posted.
    deliver(
        &app,
        APPSTLE,
        "msg_appstle_901_again",
        appstle_success(),
        "",
    )
    .await;
    let later = Utc::now() + chrono::Duration::hours(1);
    assert_eq!(lookups.run_once(later).await.unwrap(), Pass::default());
    assert_eq!(
        postings(&app, APPSTLE, "901").await,
        collection(4995, "EUR")
    );
    assert_ledger_sound(&app).await;
    app.stop().await;
}

/// A permanent answer parks the row with its reason, visible to operators; resuming it
/// puts it back in the queue.
#[tokio::test]
async fn an_attempt_the_provider_does_not_know_is_parked_with_its_reason() {
    let (shopify, appstle) = (MockServer::start().await, MockServer::start().await);
    Mock::given(matchers::method("POST"))
        .and(matchers::path(ROUTE))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({ "data": { "subscriptionBillingAttempt": null } })),
        )
        .expect(1)
        .mount(&shopify)
        .await;
    let app = app(&shopify, &appstle).await;
    let topic = "subscription_billing_attempts/success";
    deliver(&app, SHOP, "wh-unknown", success_webhook(), topic).await;
    let lookups = lookups(&app);
    let pass = lookups.run_once(Utc::now()).await.unwrap();
    assert_eq!(
        pass,
        Pass {
            parked: 1,
            ..Pass::default()
        }
    );
    let parked = app.db.lookups(Some("parked"), 10).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert!(
        parked[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("no billing attempt"),
        "{:?}",
        parked[0].last_error
    );
    // Operators see it on the admin listener too.
    let listed: Value = app
        .admin_get("/admin/money-lookups?status=parked", Some(ADMIN_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["money_lookups"][0]["attempt_id"], ATTEMPT,
        "{listed}"
    );
    assert_eq!(listed["money_lookups"][0]["status"], "parked");
    let later = Utc::now() + chrono::Duration::days(1);
    assert_eq!(lookups.run_once(later).await.unwrap(), Pass::default());
    assert_eq!(postings(&app, SHOP, ATTEMPT).await, vec![]);
    assert_eq!(app.db.resume_lookups(SHOP, Some(ATTEMPT)).await.unwrap(), 1);
    assert_eq!(
        lookup_status(&app, SHOP, ATTEMPT).await.as_deref(),
        Some("pending")
    );
    assert_ledger_sound(&app).await;
    app.stop().await;
}

/// A money client that misbehaves per attempt: 6001 panics, 6002 is rate limited for 30 s
/// (once), the others answer 10.00 USD.
#[derive(Default)]
struct Unruly {
    limited_once: Mutex<bool>,
}

impl MoneyClient for Unruly {
    fn money<'a>(
        &'a self,
        query: &'a MoneyQuery,
    ) -> BoxFuture<'a, Result<Money, ProviderApiError>> {
        Box::pin(async move {
            match query.attempt_id.rsplit('/').next() {
                Some("6001") => panic!("client bug for {}", query.attempt_id),
                Some("6002")
                    if !std::mem::replace(&mut *self.limited_once.lock().unwrap(), true) =>
                {
                    Err(ProviderApiError::RateLimited {
                        retry_after: Some(Duration::from_secs(30)),
                    })
                }
                _ => Ok(Money::from_minor(1000, "USD").unwrap()),
            }
        })
    }
}

/// A panicking client costs its own row (parked, with the panic's text), never the pass;
/// a rate limit defers its row and the rest of its source's batch by `Retry-After`.
#[tokio::test]
async fn a_panic_costs_one_row_and_a_rate_limit_defers_the_source() {
    let (shopify, appstle) = (MockServer::start().await, MockServer::start().await);
    let app = app(&shopify, &appstle).await;
    let topic = "subscription_billing_attempts/success";
    for n in [6001, 6002, 6003] {
        deliver(&app, SHOP, &format!("wh-{n}"), success_of(n), topic).await;
    }
    let catalogue = catalogue(&app.settings);
    let mut clients = LookupClients::of(&catalogue.sources);
    clients.set(SHOP, "shopify", Arc::new(Unruly::default()));
    let lookups = Lookups::new(app.db.clone(), clients, catalogue.dunning);
    let now = Utc::now();
    let pass = lookups.run_once(now).await.unwrap();
    assert_eq!(
        pass,
        Pass {
            parked: 1,
            rate_limited: 2,
            ..Pass::default()
        }
    );
    let parked = app.db.lookups(Some("parked"), 10).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert!(parked[0].attempt_id.as_deref().unwrap().ends_with("/6001"));
    let reason = parked[0].last_error.as_deref().unwrap();
    assert!(reason.contains("panicked: client bug"), "{reason}");
    let pending = app.db.lookups(Some("pending"), 10).await.unwrap();
    let waited = now + chrono::Duration::seconds(30);
    for row in &pending {
        assert_eq!(
            row.due_at.unwrap().timestamp_micros(),
            waited.timestamp_micros()
        );
    }
    assert_eq!(pending.len(), 2);

    assert_eq!(
        lookups.run_once(now).await.unwrap(),
        Pass::default(),
        "waiting"
    );
    let pass = lookups.run_once(waited).await.unwrap();
    assert_eq!(
        pass,
        Pass {
            posted: 2,
            ..Pass::default()
        }
    );
    for n in [6002, 6003] {
        let attempt = format!("gid://shopify/SubscriptionBillingAttempt/{n}");
        assert_eq!(
            postings(&app, SHOP, &attempt).await,
            collection(1000, "USD")
        );
    }
    let first = "gid://shopify/SubscriptionBillingAttempt/6001";
    assert_eq!(postings(&app, SHOP, first).await, vec![]);
    assert_ledger_sound(&app).await;
    app.stop().await;
}
