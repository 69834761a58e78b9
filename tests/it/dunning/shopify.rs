//! Shopify retries end to end: a failed renewal is retried through
//! `subscriptionBillingAttemptCreate`, each retry creates a new attempt that fails, and its
//! failure webhook (carrying the idempotency key subsync sent, as Shopify echoes it) lands
//! on the retried cycle's row: after exactly `max_attempts` calls the retry is exhausted,
//! and no retry row of its own is opened for any attempt a retry created.
//!
//! The fake Admin API checks each request: method, route of the default API version,
//! access token, and variables that are a valid `SubscriptionBillingAttemptInput` of the
//! copied 2026-04 schema (its field names and required fields, read from the `.graphql`
//! text). Webhook bodies are the reference app's failure payload (`tests/fixtures/shopify/`)
//! with this test's ids and keys.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use serde_json::{Value, json};
use subsync::{
    app::Role,
    dunning::{
        scheduler::idempotency_key,
        views::{self, RetriesQuery, RetryView},
    },
    ledger::AttemptsQuery,
};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers};

use super::common::{TestApp, TestConfig, eventually, spawn_app};
use super::scheduler;

const SOURCE: &str = "shop";
const TOKEN: &str = "shpat_dunning_token";
const CONTRACT: &str = "gid://shopify/SubscriptionContract/4242";
/// The renewal that failed (created by the merchant's app, with its own key).
const FIRST: &str = "gid://shopify/SubscriptionBillingAttempt/1001";
/// The version a source without `api_version` calls.
const DEFAULT_ROUTE: &str = "/admin/api/2026-04/graphql.json";
const SCHEMA: &str =
    include_str!("../../fixtures/shopify/admin-2026-04.subscription-billing.subset.graphql");
const PAYLOADS: &str =
    include_str!("../../fixtures/shopify/webhook-payloads.subscription_billing_attempts.json");

/// The fields of input type `name` in the copied schema: (name, required = non-null
/// without a default). Descriptions (`"""` blocks) are skipped.
fn input_fields(schema: &str, name: &str) -> Vec<(String, bool)> {
    let start = schema
        .find(&format!("input {name} {{"))
        .unwrap_or_else(|| panic!("input {name} in the copied schema"));
    let body = &schema[start..];
    let body = &body[body.find('{').unwrap() + 1..body.find("\n}").unwrap()];
    let (mut fields, mut in_description) = (Vec::new(), false);
    for line in body.lines().map(str::trim) {
        let quotes = line.matches("\"\"\"").count();
        if quotes == 0 && !in_description && !line.is_empty() {
            let (field, ty) = line.split_once(':').expect("name: Type");
            let required = ty.trim().ends_with('!') && !ty.contains('=');
            fields.push((field.trim().to_owned(), required));
        }
        if quotes == 1 {
            in_description = !in_description;
        }
    }
    fields
}

/// Shopify's Admin GraphQL API creating billing attempts: every valid request creates a
/// new attempt (a repeated key returns the attempt it created), pending in the 2026-04
/// shape; a request that does not conform is answered 400 and its problem recorded.
#[derive(Clone, Default)]
struct FakeShopify {
    /// (idempotency key, attempt id) of every accepted request, in order.
    created: Arc<Mutex<Vec<(String, String)>>>,
    problems: Arc<Mutex<Vec<String>>>,
    /// The contract's `SubscriptionContractSubscriptionStatus` (`ACTIVE` until changed).
    contract: Arc<Mutex<Option<String>>>,
    /// The contract status mutations received, in order.
    mutations: Arc<Mutex<Vec<String>>>,
    /// Delay of the first mutation's answer, to die in the middle of the call.
    slow_first_mutation: Option<Duration>,
}

impl FakeShopify {
    fn created(&self) -> Vec<(String, String)> {
        self.created.lock().unwrap().clone()
    }

    fn problems(&self) -> Vec<String> {
        self.problems.lock().unwrap().clone()
    }

    fn check(body: &Value) -> Vec<String> {
        let mut problems = Vec::new();
        let query = body["query"].as_str().unwrap_or_default();
        if !query.contains("subscriptionBillingAttemptCreate(") {
            problems.push(format!("not the mutation: {query}"));
        }
        let variables = &body["variables"];
        if variables["subscriptionContractId"] != CONTRACT {
            problems.push(format!("contract {}", variables["subscriptionContractId"]));
        }
        let fields = input_fields(SCHEMA, "SubscriptionBillingAttemptInput");
        let Some(input) = variables["subscriptionBillingAttemptInput"].as_object() else {
            return vec!["no subscriptionBillingAttemptInput".to_owned()];
        };
        for name in input.keys() {
            if !fields.iter().any(|(f, _)| f == name) {
                problems.push(format!(
                    "SubscriptionBillingAttemptInput has no field {name}"
                ));
            }
        }
        for (field, required) in &fields {
            if *required && input.get(field).is_none_or(Value::is_null) {
                problems.push(format!(
                    "SubscriptionBillingAttemptInput.{field} is required"
                ));
            }
        }
        problems
    }
}

impl Respond for FakeShopify {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
        if let Some(answer) = self.contract_call(&body) {
            return answer;
        }
        let problems = Self::check(&body);
        if !problems.is_empty() {
            self.problems.lock().unwrap().extend(problems.clone());
            return ResponseTemplate::new(400).set_body_json(json!({ "errors": problems }));
        }
        let key = body["variables"]["subscriptionBillingAttemptInput"]["idempotencyKey"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut created = self.created.lock().unwrap();
        let attempt = match created.iter().find(|(k, _)| *k == key) {
            Some((_, attempt)) => attempt.clone(),
            None => {
                let attempt = format!(
                    "gid://shopify/SubscriptionBillingAttempt/{}",
                    2001 + created.len()
                );
                created.push((key, attempt.clone()));
                attempt
            }
        };
        ResponseTemplate::new(200).set_body_json(json!({
            "data": { "subscriptionBillingAttemptCreate": {
                "subscriptionBillingAttempt": { "id": attempt,
                    "state": { "__typename": "SubscriptionBillingAttemptPendingState" } },
                "userErrors": [] } }
        }))
    }
}

impl FakeShopify {
    /// `subscriptionContract(id:)` reads and the status mutations of the schema
    /// (`subscriptionContractCancel|Pause|Fail(subscriptionContractId: ID!)`, payload
    /// `contract` + `userErrors`); `None` for other requests.
    fn contract_call(&self, body: &Value) -> Option<ResponseTemplate> {
        let query = body["query"].as_str().unwrap_or_default();
        let variables = &body["variables"];
        let mut contract = self.contract.lock().unwrap();
        let status = contract.get_or_insert_with(|| "ACTIVE".to_owned());
        if query.contains("subscriptionContract(id: $id)") {
            assert_eq!(variables["id"], CONTRACT, "{body}");
            return Some(ResponseTemplate::new(200).set_body_json(json!({
                "data": { "subscriptionContract": { "id": CONTRACT, "status": status } } })));
        }
        let (mutation, after) = [
            ("subscriptionContractCancel", "CANCELLED"),
            ("subscriptionContractPause", "PAUSED"),
            ("subscriptionContractFail", "FAILED"),
        ]
        .into_iter()
        .find(|(name, _)| query.contains(&format!("{name}(")))?;
        assert!(
            SCHEMA.contains(&format!("  {mutation}(\n")),
            "{mutation} in the schema"
        );
        assert_eq!(variables["subscriptionContractId"], CONTRACT, "{body}");
        let mut mutations = self.mutations.lock().unwrap();
        let first = mutations.is_empty();
        mutations.push(mutation.to_owned());
        *status = after.to_owned();
        let answer = ResponseTemplate::new(200).set_body_json(json!({
            "data": { mutation: { "contract": { "id": CONTRACT, "status": after }, "userErrors": [] } } }));
        Some(match self.slow_first_mutation {
            Some(delay) if first => answer.set_delay(delay),
            _ => answer,
        })
    }
}

/// The reference app's insufficient-funds failure, naming `attempt` (a gid) of this
/// test's contract, created with `key`.
fn failure_webhook(attempt: &str, key: &str) -> Vec<u8> {
    let reference: Value = serde_json::from_str(PAYLOADS).unwrap();
    let file = "app/jobs/dunning/tests/fixtures/SUBSCRIPTION_BILLING_ATTEMPTS_FAILURE.ts";
    let mut body =
        reference["fixtures"][file]["SubscriptionBillingAttemptInsufficientFundsWebhook"].clone();
    assert_eq!(body["error_code"], "insufficient_funds");
    let number = |gid: &str| gid.rsplit('/').next().unwrap().parse::<u64>().unwrap();
    body["id"] = json!(number(attempt));
    body["admin_graphql_api_id"] = json!(attempt);
    body["idempotency_key"] = json!(key);
    body["subscription_contract_id"] = json!(number(CONTRACT));
    body["admin_graphql_api_subscription_contract_id"] = json!(CONTRACT);
    serde_json::to_vec(&body).unwrap()
}

/// Posts a failure webhook signed as Shopify signs it (the HMAC covers the body; the
/// topic header says failure) and waits until it is reconciled.
async fn deliver_failure(app: &TestApp, webhook_id: &str, body: Vec<u8>) {
    deliver(
        app,
        webhook_id,
        body,
        "subscription_billing_attempts/failure",
    )
    .await
}

/// Posts a billing-attempt webhook of `topic` and waits until it is reconciled.
async fn deliver(app: &TestApp, webhook_id: &str, body: Vec<u8>, topic: &str) {
    let source = super::common::source(app.settings.source(SOURCE).unwrap()).unwrap();
    let mut headers = source.sign(webhook_id, &body, SystemTime::now());
    let header = headers
        .iter_mut()
        .find(|(name, _)| name == "x-shopify-topic")
        .expect("the topic header");
    header.1 = topic.to_owned();
    assert_eq!(app.post(SOURCE, &headers, body).await.status(), 202);
    let archived = eventually(Duration::from_secs(20), || async {
        app.db.archived_count(SOURCE, webhook_id).await.unwrap() == 1
    })
    .await;
    assert!(archived, "{webhook_id} reconciled");
}

async fn rows(app: &TestApp) -> Vec<RetryView> {
    let q = RetriesQuery {
        source_id: Some(SOURCE.into()),
        ..Default::default()
    };
    views::list(&app.db, &q).await.unwrap()
}

/// The one retry row of the source: the renewal's cycle, however many attempts failed.
async fn the_row(app: &TestApp) -> RetryView {
    let mut rows = rows(app).await;
    assert_eq!(
        rows.iter()
            .map(|r| r.cycle_key.as_str())
            .collect::<Vec<_>>(),
        [FIRST],
        "one row, for the renewal's cycle"
    );
    rows.remove(0)
}

#[tokio::test]
async fn three_failed_shopify_retries_exhaust_the_cycle_after_exactly_three_calls() {
    let fake = FakeShopify::default();
    let server = MockServer::start().await;
    Mock::given(matchers::method("POST"))
        .and(matchers::path(DEFAULT_ROUTE))
        .and(matchers::header("x-shopify-access-token", TOKEN))
        .and(matchers::header("content-type", "application/json"))
        .respond_with(fake.clone())
        // Three retries, then the contract read and its cancellation.
        .expect(5)
        .mount(&server)
        .await;
    let schedule = [3600, 7200, 10_800];
    let mut config = TestConfig::new().await;
    config.extra = format!(
        r#"
[[sources]]
id = "{SOURCE}"
provider = "shopify"
secrets = ["shpss_dunning_secret"]
api = {{ base_url = "{}", token = "{TOKEN}" }}
retry = {{ max_attempts = 3, schedule_secs = [3600, 7200, 10800], jitter = false, final_action = "cancel" }}

# The service's own scheduler stays out of the way: this test drives the clock.
[dunning]
interval_ms = 3600000
"#,
        server.uri()
    );
    let app = spawn_app(&config, Role::All).await;

    // The merchant app's renewal fails.
    deliver_failure(
        &app,
        "wh-renewal",
        failure_webhook(FIRST, "merchant-renewal-1001"),
    )
    .await;
    let row = the_row(&app).await;
    assert_eq!(
        (row.status.as_str(), row.bucket.as_str(), row.retries_done),
        ("scheduled", "retry_soon", 0)
    );
    let first_failed_at = row.first_failed_at;
    assert_eq!(
        row.due_at,
        Some(first_failed_at + chrono::Duration::seconds(schedule[0]))
    );

    let scheduler = scheduler(&app, Duration::from_secs(300));
    let mut due = row.due_at.unwrap();
    for n in 1..=3 {
        let pass = scheduler.run_once(due).await.unwrap();
        assert_eq!(pass.called, 1, "retry {n}");
        let row = the_row(&app).await;
        assert_eq!((row.status.as_str(), row.retries_done), ("in_flight", n));

        // Shopify created attempt n with the key subsync sent; it fails, and its webhook
        // echoes that key.
        let created = fake.created();
        assert_eq!(created.len(), n as usize, "one new attempt per call");
        let (key, attempt) = created.last().unwrap().clone();
        assert_eq!(
            key,
            idempotency_key(SOURCE, FIRST, n),
            "the retry's own key"
        );
        deliver_failure(
            &app,
            &format!("wh-retry-{n}"),
            failure_webhook(&attempt, &key),
        )
        .await;

        let row = the_row(&app).await;
        assert_eq!(row.retries_done, n, "the count goes on on the same row");
        assert_eq!(row.attempt_id, attempt, "the latest failure of the cycle");
        if n < 3 {
            assert_eq!(row.status, "scheduled", "retry {n}: {:?}", row.last_outcome);
            let next = first_failed_at + chrono::Duration::seconds(schedule[n as usize]);
            assert_eq!(row.due_at, Some(next));
            due = next;
        } else {
            assert_eq!(row.status, "exhausted", "{:?}", row.last_outcome);
            assert_eq!(row.due_at, None);
            assert_eq!(row.final_action.as_deref(), Some("cancel"));
        }
    }

    // The next pass carries the final action out: the contract is read, then cancelled.
    let pass = scheduler.run_once(due).await.unwrap();
    assert_eq!((pass.called, pass.final_actions), (0, 1));
    assert_eq!(
        *fake.mutations.lock().unwrap(),
        ["subscriptionContractCancel"]
    );
    let detail = views::show(&app.db, SOURCE, FIRST).await.unwrap().unwrap();
    let action = detail.final_action.unwrap();
    assert_eq!(
        (
            action.action.as_str(),
            action.outcome.as_deref(),
            action.answer.as_deref()
        ),
        ("cancel", Some("done"), Some("contract CANCELLED"))
    );
    assert_eq!(
        action.idempotency_key,
        subsync::dunning::scheduler::final_action_key(
            SOURCE,
            FIRST,
            subsync::config::FinalAction::Cancel
        )
    );
    assert!(detail.retry.final_action_at.is_some());

    // Nothing more is ever called for this cycle, and nothing else was opened.
    let later = scheduler
        .run_once(first_failed_at + chrono::Duration::days(30))
        .await
        .unwrap();
    assert_eq!((later.called, later.expired), (0, 0));
    assert_eq!(fake.created().len(), 3, "exactly max_attempts calls");
    assert_eq!(fake.mutations.lock().unwrap().len(), 1, "cancelled once");
    assert_eq!(fake.problems(), Vec::<String>::new());
    assert_eq!(the_row(&app).await.status, "exhausted");

    // The ledger: the renewal and the three attempts the retries created, these in the
    // renewal's cycle (their outcome is that cycle's), all failed.
    let q = AttemptsQuery {
        source_id: Some(SOURCE.into()),
        limit: Some(100),
        ..Default::default()
    };
    let mut attempts: Vec<(String, Option<String>, String, Option<String>)> = app
        .db
        .billing_attempts(&q)
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.attempt_id, a.cycle_id, a.status, a.error_code))
        .collect();
    attempts.sort();
    let failed = |attempt: &str, cycle: Option<&str>| {
        (
            attempt.to_owned(),
            cycle.map(str::to_owned),
            "failed".to_owned(),
            Some("INSUFFICIENT_FUNDS".to_owned()),
        )
    };
    assert_eq!(
        attempts,
        [
            failed(FIRST, None),
            failed("gid://shopify/SubscriptionBillingAttempt/2001", Some(FIRST)),
            failed("gid://shopify/SubscriptionBillingAttempt/2002", Some(FIRST)),
            failed("gid://shopify/SubscriptionBillingAttempt/2003", Some(FIRST)),
        ]
    );
    assert!(app.db.verify_ledger().await.unwrap().is_empty());
    app.stop().await;
    server.verify().await;
}

/// The fake Admin API and a service pointed at it, with `retry` as the source's policy.
async fn shop_app(fake: &FakeShopify, retry: &str) -> (MockServer, TestConfig, TestApp) {
    let server = MockServer::start().await;
    Mock::given(matchers::method("POST"))
        .and(matchers::path(DEFAULT_ROUTE))
        .and(matchers::header("x-shopify-access-token", TOKEN))
        .respond_with(fake.clone())
        .mount(&server)
        .await;
    let mut config = TestConfig::new().await;
    config.extra = format!(
        "[[sources]]\nid = \"{SOURCE}\"\nprovider = \"shopify\"\nsecrets = [\"shpss_dunning_secret\"]\n\
         api = {{ base_url = \"{}\", token = \"{TOKEN}\" }}\nretry = {retry}\n\
         [dunning]\ninterval_ms = 3600000\n",
        server.uri()
    );
    let app = spawn_app(&config, Role::All).await;
    (server, config, app)
}

/// No retry at all: the renewal's failure exhausts its cycle, the cancellation due next pass.
const CANCEL_AT_ONCE: &str = r#"{ max_attempts = 0, jitter = false, final_action = "cancel" }"#;

#[tokio::test]
async fn a_crash_between_the_cancellation_and_its_commit_cancels_once() {
    let fake = FakeShopify {
        slow_first_mutation: Some(Duration::from_secs(3)),
        ..FakeShopify::default()
    };
    let (_server, _config, app) = shop_app(&fake, CANCEL_AT_ONCE).await;
    deliver_failure(
        &app,
        "wh-renewal",
        failure_webhook(FIRST, "merchant-renewal-1001"),
    )
    .await;
    assert_eq!(the_row(&app).await.status, "exhausted");
    let scheduler = scheduler(&app, Duration::from_secs(1));

    // The process dies while Shopify has cancelled the contract and not answered yet.
    let now = chrono::Utc::now();
    let died = tokio::time::timeout(Duration::from_millis(1500), scheduler.run_once(now)).await;
    assert!(died.is_err(), "the pass was cut off during the call");
    assert_eq!(
        *fake.mutations.lock().unwrap(),
        ["subscriptionContractCancel"]
    );

    // The re-send (same key) reads the contract first: already cancelled, nothing sent.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(scheduler.run_once(now).await.unwrap().final_actions, 1);
    assert_eq!(
        *fake.mutations.lock().unwrap(),
        ["subscriptionContractCancel"],
        "once"
    );
    let detail = views::show(&app.db, SOURCE, FIRST).await.unwrap().unwrap();
    let action = detail.final_action.unwrap();
    assert_eq!(
        (
            action.sends,
            action.outcome.as_deref(),
            action.answer.as_deref()
        ),
        (2, Some("already_done"), Some("contract CANCELLED"))
    );
    assert_eq!(
        action.idempotency_key,
        subsync::dunning::scheduler::final_action_key(
            SOURCE,
            FIRST,
            subsync::config::FinalAction::Cancel
        )
    );
    assert_eq!(fake.problems(), Vec::<String>::new());
    app.stop().await;
}

#[tokio::test]
async fn a_payment_before_the_cancellation_cancels_it() {
    let fake = FakeShopify::default();
    let (_server, _config, app) = shop_app(&fake, CANCEL_AT_ONCE).await;
    deliver_failure(
        &app,
        "wh-renewal",
        failure_webhook(FIRST, "merchant-renewal-1001"),
    )
    .await;
    assert_eq!(the_row(&app).await.status, "exhausted");

    // The merchant's app bills the contract again and it succeeds, before the scheduler's
    // next pass: the reference app's success payload, on this test's contract.
    let reference: Value = serde_json::from_str(PAYLOADS).unwrap();
    let file = "app/jobs/dunning/tests/fixtures/SUBSCRIPTION_BILLING_ATTEMPTS_SUCCESS.ts";
    let mut success =
        reference["fixtures"][file]["SubscriptionBillingAttemptSuccessWebhook"].clone();
    success["id"] = json!(1002);
    success["admin_graphql_api_id"] = json!("gid://shopify/SubscriptionBillingAttempt/1002");
    success["idempotency_key"] = json!("merchant-renewal-1002");
    success["subscription_contract_id"] = json!(4242);
    success["admin_graphql_api_subscription_contract_id"] = json!(CONTRACT);
    let body = serde_json::to_vec(&success).unwrap();
    deliver(
        &app,
        "wh-paid",
        body,
        "subscription_billing_attempts/success",
    )
    .await;

    let pass = scheduler(&app, Duration::from_secs(300))
        .run_once(chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(pass.final_actions, 0);
    assert!(
        fake.mutations.lock().unwrap().is_empty(),
        "nothing cancelled"
    );
    let detail = views::show(&app.db, SOURCE, FIRST).await.unwrap().unwrap();
    assert_eq!(detail.retry.status, "recovered");
    assert_eq!(
        detail.final_action.unwrap().outcome.as_deref(),
        Some("skipped")
    );
    app.stop().await;
}
