//! Dunning end to end: failure webhook → retry scheduled at the computed time → (time
//! advanced) the provider called once with the idempotency key → success webhook → the
//! ledger shows the recovery. The fake Stripe counts charges and, like Stripe, answers a
//! repeated idempotency key with the first response instead of charging again.

use crate::common;
mod final_appstle;
mod final_stripe;
mod panics;
mod parked;
mod polar;
mod shopify;
mod support;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use chrono::{DateTime, Utc};
use common::{ADMIN_TOKEN, TestApp, TestConfig, eventually, spawn_app};
use subsync::{
    app::Role,
    dunning::{
        scheduler::{Scheduler, clients, idempotency_key},
        views::{self, RetriesQuery, RetryView},
    },
};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers};

/// Stripe's `POST /v1/invoices/{id}/pay`, idempotent by `Idempotency-Key`.
#[derive(Clone, Default)]
struct FakeStripe {
    charges: Arc<Mutex<HashMap<String, u32>>>,
    requests: Arc<Mutex<Vec<String>>>,
    /// Delay of the first response, to die in the middle of a call.
    slow_first: Option<Duration>,
}

impl FakeStripe {
    fn charges(&self) -> u32 {
        self.charges.lock().unwrap().values().sum()
    }
    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Respond for FakeStripe {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let key = request
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let invoice = request
            .url
            .path()
            .split('/')
            .nth(3)
            .unwrap_or_default()
            .to_owned();
        self.requests.lock().unwrap().push(key.clone());
        let mut charges = self.charges.lock().unwrap();
        let first = !charges.contains_key(&key);
        if first {
            charges.insert(key, 1); // the charge happens once per key
        }
        // Stripe's definitions: the parameters are `InvoicePayParams`, the answer an
        // `Invoice` (generated from the SDK's types).
        let types = crate::sync::stripe_types();
        let form = std::str::from_utf8(&request.body).unwrap_or("\u{fffd}");
        let form = reqwest::Url::parse(&format!("http://form.test/?{form}")).unwrap();
        let pairs: Vec<(String, String)> = form.query_pairs().into_owned().collect();
        let problems = types.validate_form(
            pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            "InvoicePayParams",
        );
        if !problems.is_empty() {
            return ResponseTemplate::new(400).set_body_json(serde_json::json!({"error": {
                "type": "invalid_request_error", "message": problems.join("; ") }}));
        }
        let mut body = types.generate("Invoice");
        body["id"] = serde_json::json!(invoice);
        body["status"] = serde_json::json!("paid");
        body["currency"] = serde_json::json!("usd");
        let errors = types.validate(&body, "Invoice");
        assert!(errors.is_empty(), "{errors:#?}");
        let response = ResponseTemplate::new(200).set_body_json(body);
        match (first, self.slow_first) {
            (true, Some(delay)) => response.set_delay(delay),
            _ => response,
        }
    }
}

async fn fake_stripe(fake: FakeStripe) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(matchers::method("POST"))
        .and(matchers::path_regex(r"^/v1/invoices/in_[A-Za-z0-9_]+/pay$"))
        .and(matchers::header("authorization", "Bearer sk_test_dunning"))
        .and(matchers::header_exists("idempotency-key"))
        .respond_with(fake)
        .mount(&server)
        .await;
    server
}

/// The fake Stripe and a service (ingress, workers; its own scheduler idle) pointed at it.
async fn stripe_app(fake: FakeStripe) -> (FakeStripe, MockServer, TestConfig, TestApp) {
    let server = fake_stripe(fake.clone()).await;
    let mut config = TestConfig::new().await;
    config_with(&server, &mut config);
    let app = spawn_app(&config, Role::All).await;
    (fake, server, config, app)
}

fn config_with(server: &MockServer, config: &mut TestConfig) {
    config.extra = format!(
        r#"
[[sources]]
id = "stripe"
provider = "stripe"
secrets = ["whsec_dunning"]
api = {{ base_url = "{}", token = "sk_test_dunning" }}
retry = {{ jitter = false }}

# The service's own scheduler stays out of the way: these tests drive the clock.
[dunning]
interval_ms = 3600000
"#,
        server.uri()
    );
}

/// An invoice event in the shape of API versions before 2025-03 (top-level `subscription`
/// and an expanded `payment_intent`, both still read): the only shape in which a webhook's
/// invoice carries a decline code.
fn invoice_event(
    id: &str,
    kind: &str,
    invoice: &str,
    attempt: u32,
    decline: Option<&str>,
    at: DateTime<Utc>,
) -> Vec<u8> {
    let paid = kind == "invoice.paid";
    let error =
        decline.map(|code| serde_json::json!({ "code": "card_declined", "decline_code": code }));
    serde_json::to_vec(&serde_json::json!({
        "id": id, "object": "event", "type": kind, "created": at.timestamp(),
        "data": { "object": {
            "id": invoice, "object": "invoice", "customer": "cus_1", "subscription": "sub_1",
            "amount_due": 4995, "amount_paid": if paid { 4995 } else { 0 }, "currency": "usd",
            "attempt_count": attempt, "status": if paid { "paid" } else { "open" },
            "payment_intent": { "id": "pi_1", "last_payment_error": error },
        } }
    }))
    .unwrap()
}

async fn send(app: &TestApp, id: &str, body: Vec<u8>) {
    let source = crate::common::source(app.settings.source("stripe").unwrap()).unwrap();
    let headers = source.sign(id, &body, SystemTime::now());
    assert_eq!(app.post("stripe", &headers, body).await.status(), 202);
    let archived = eventually(Duration::from_secs(20), || async {
        app.db.archived_count("stripe", id).await.unwrap() == 1
    })
    .await;
    assert!(archived, "{id} reconciled");
}

fn scheduler(app: &TestApp, in_flight_timeout: Duration) -> Scheduler {
    let catalogue = common::catalogue(&app.settings);
    Scheduler::new(
        app.db.clone(),
        catalogue.dunning,
        clients(&catalogue.sources),
        in_flight_timeout,
    )
}

async fn retry(app: &TestApp, cycle: &str) -> RetryView {
    let all = views::list(
        &app.db,
        &RetriesQuery {
            source_id: Some("stripe".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    all.into_iter()
        .find(|r| r.cycle_key == cycle)
        .expect("retry row")
}

/// The only retry row, once the worker has written it.
async fn first_retry(app: &TestApp) -> RetryView {
    let written = eventually(Duration::from_secs(20), || async {
        views::list(&app.db, &RetriesQuery::default())
            .await
            .unwrap()
            .len()
            == 1
    })
    .await;
    assert!(written, "one retry row");
    views::list(&app.db, &RetriesQuery::default())
        .await
        .unwrap()
        .remove(0)
}

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap()
}

#[tokio::test]
async fn failure_is_retried_once_at_the_computed_time_and_recovers() {
    let (fake, _server, config, app) = stripe_app(FakeStripe::default()).await;
    let t0 = t0();
    send(
        &app,
        "evt_f1",
        invoice_event(
            "evt_f1",
            "invoice.payment_failed",
            "in_1",
            1,
            Some("insufficient_funds"),
            t0,
        ),
    )
    .await;

    let r = retry(&app, "in_1").await;
    assert_eq!(
        (r.status.as_str(), r.bucket.as_str(), r.retries_done),
        ("scheduled", "retry_soon", 0)
    );
    assert_eq!(
        r.due_at,
        Some(t0 + chrono::Duration::hours(6)),
        "base 6 h, no jitter"
    );
    assert!(r.policy.contains("6h"), "{}", r.policy);
    // The subscription view shows it, over HTTP too.
    let view: serde_json::Value = app
        .admin_get("/admin/subscriptions/stripe/sub_1", Some(ADMIN_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["retry"]["status"], "scheduled");
    let listed: serde_json::Value = app
        .admin_get("/admin/retries?source_id=stripe", Some(ADMIN_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["retries"][0]["cycle_key"], "in_1");

    let config_path = config.write();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_subsync"))
        .args(["retries", "list", "--source", "stripe", "--json"])
        .env("SUBSYNC_CONFIG", &config_path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&config_path);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            listed[0]["cycle_key"].as_str(),
            listed[0]["status"].as_str()
        ),
        (Some("in_1"), Some("scheduled"))
    );

    let scheduler = scheduler(&app, Duration::from_secs(300));
    assert_eq!(
        scheduler
            .run_once(t0 + chrono::Duration::hours(5))
            .await
            .unwrap()
            .called,
        0,
        "not due yet"
    );
    assert_eq!(fake.charges(), 0);
    assert_eq!(
        scheduler
            .run_once(t0 + chrono::Duration::hours(6))
            .await
            .unwrap()
            .called,
        1
    );
    assert_eq!(fake.requests(), vec![idempotency_key("stripe", "in_1", 1)]);
    assert_eq!(fake.charges(), 1);
    assert_eq!(retry(&app, "in_1").await.status, "recovered");

    // Stripe then sends invoice.paid for the retried attempt: the ledger shows the recovery.
    send(
        &app,
        "evt_p2",
        invoice_event(
            "evt_p2",
            "invoice.paid",
            "in_1",
            2,
            None,
            t0 + chrono::Duration::hours(6),
        ),
    )
    .await;
    let view = app
        .db
        .subscription("stripe", "sub_1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.balances["collected"]["USD"], 4995);
    assert!(view.retry.is_none(), "nothing open any more");
    assert_eq!(
        scheduler
            .run_once(t0 + chrono::Duration::days(30))
            .await
            .unwrap()
            .called,
        0
    );
    assert_eq!(fake.charges(), 1, "never charged twice");
    app.stop().await;
}

#[tokio::test]
async fn hard_declines_are_never_retried_and_settled_cycles_complete_without_a_call() {
    let (fake, _server, _config, app) = stripe_app(FakeStripe::default()).await;
    let t0 = t0();
    send(
        &app,
        "evt_s1",
        invoice_event(
            "evt_s1",
            "invoice.payment_failed",
            "in_stolen",
            1,
            Some("stolen_card"),
            t0,
        ),
    )
    .await;
    let stolen = retry(&app, "in_stolen").await;
    assert_eq!(
        (stolen.status.as_str(), stolen.bucket.as_str()),
        ("stopped", "never_retry")
    );
    assert_eq!(stolen.final_action.as_deref(), Some("mark_unpaid"));

    // Due, but paid by the provider's own retry before we got to it.
    send(
        &app,
        "evt_a1",
        invoice_event(
            "evt_a1",
            "invoice.payment_failed",
            "in_paid",
            1,
            Some("do_not_honor"),
            t0,
        ),
    )
    .await;
    send(
        &app,
        "evt_a2",
        invoice_event("evt_a2", "invoice.paid", "in_paid", 2, None, t0),
    )
    .await;
    assert_eq!(retry(&app, "in_paid").await.status, "recovered");
    // Due, but the contract was cancelled: the scheduler's re-check completes it.
    send(
        &app,
        "evt_c1",
        invoice_event(
            "evt_c1",
            "invoice.payment_failed",
            "in_cancel",
            1,
            Some("do_not_honor"),
            t0,
        ),
    )
    .await;
    let cancelled = serde_json::to_vec(&serde_json::json!({
        "id": "evt_c2", "object": "event", "type": "customer.subscription.deleted", "created": t0.timestamp() + 1,
        "data": { "object": { "id": "sub_1", "object": "subscription", "status": "canceled", "customer": "cus_1", "currency": "usd" } }
    }))
    .unwrap();
    send(&app, "evt_c2", cancelled).await;

    let pass = scheduler(&app, Duration::from_secs(300))
        .run_once(t0 + chrono::Duration::days(30))
        .await
        .unwrap();
    assert_eq!((pass.called, pass.completed_without_call), (0, 1));
    let done = retry(&app, "in_cancel").await;
    assert_eq!(done.status, "completed");
    assert!(done.last_outcome.unwrap().contains("contract cancelled"));
    assert!(fake.requests().is_empty(), "no call was made at all");
    app.stop().await;
}

#[tokio::test]
async fn two_schedulers_make_one_call_per_due_retry() {
    let (fake, _server, _config, app) = stripe_app(FakeStripe::default()).await;
    let t0 = t0();
    for i in 0..20 {
        let id = format!("evt_{i}");
        send(
            &app,
            &id,
            invoice_event(
                &id,
                "invoice.payment_failed",
                &format!("in_{i}"),
                1,
                Some("insufficient_funds"),
                t0,
            ),
        )
        .await;
    }
    let (a, b) = (
        scheduler(&app, Duration::from_secs(300)),
        scheduler(&app, Duration::from_secs(300)),
    );
    let later = t0 + chrono::Duration::hours(7);
    let (pa, pb) = tokio::join!(a.run_once(later), b.run_once(later));
    let (pa, pb) = (pa.unwrap(), pb.unwrap());
    assert_eq!(pa.called + pb.called, 20, "{pa:?} {pb:?}");
    let requests = fake.requests();
    assert_eq!(requests.len(), 20, "one call per due retry");
    assert_eq!(
        requests
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        20
    );
    assert_eq!(fake.charges(), 20);
    app.stop().await;
}

#[tokio::test]
async fn a_scheduler_killed_between_call_and_commit_never_charges_twice() {
    let slow = FakeStripe {
        slow_first: Some(Duration::from_secs(3)),
        ..Default::default()
    };
    let (fake, _server, _config, app) = stripe_app(slow).await;
    let t0 = t0();
    send(
        &app,
        "evt_k1",
        invoice_event(
            "evt_k1",
            "invoice.payment_failed",
            "in_k",
            1,
            Some("insufficient_funds"),
            t0,
        ),
    )
    .await;

    // The provider receives the call and charges; the scheduler dies before its commit.
    let doomed = scheduler(&app, Duration::from_secs(1));
    let due = t0 + chrono::Duration::hours(7);
    let task = tokio::spawn(async move { doomed.run_once(due).await });
    assert!(
        eventually(Duration::from_secs(10), || async {
            fake.requests().len() == 1
        })
        .await
    );
    task.abort();
    let _ = task.await;
    assert_eq!(fake.charges(), 1);
    assert_eq!(retry(&app, "in_k").await.status, "in_flight");

    // A restarted scheduler finds the unanswered call and re-sends the same key.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let restarted = scheduler(&app, Duration::from_secs(1));
    let pass = restarted
        .run_once(Utc::now() + chrono::Duration::hours(7))
        .await
        .unwrap();
    assert_eq!((pass.resent, pass.called), (1, 1));
    let key = idempotency_key("stripe", "in_k", 1);
    assert_eq!(
        fake.requests(),
        vec![key.clone(), key],
        "the same idempotency key both times"
    );
    assert_eq!(fake.charges(), 1, "the provider charged once");
    assert_eq!(retry(&app, "in_k").await.status, "recovered");
    app.stop().await;
}

#[tokio::test]
async fn needs_customer_action_waits_and_an_active_subscription_re_arms_it() {
    let (fake, _server, _config, app) = stripe_app(FakeStripe::default()).await;
    let t0 = t0();
    send(
        &app,
        "evt_e1",
        invoice_event(
            "evt_e1",
            "invoice.payment_failed",
            "in_exp",
            1,
            Some("expired_card"),
            t0,
        ),
    )
    .await;
    let waiting = retry(&app, "in_exp").await;
    assert_eq!(
        (waiting.status.as_str(), waiting.bucket.as_str()),
        ("awaiting_customer", "needs_customer_action")
    );
    let scheduler = scheduler(&app, Duration::from_secs(300));
    assert_eq!(
        scheduler
            .run_once(t0 + chrono::Duration::days(3))
            .await
            .unwrap()
            .called,
        0,
        "waits for the customer"
    );

    // The customer updates the card; Stripe reports the subscription active again.
    let active = serde_json::to_vec(&serde_json::json!({
        "id": "evt_e2", "object": "event", "type": "customer.subscription.updated", "created": t0.timestamp() + 60,
        "data": { "object": { "id": "sub_1", "object": "subscription", "status": "active", "customer": "cus_1", "currency": "usd" } }
    }))
    .unwrap();
    send(&app, "evt_e2", active).await;
    assert_eq!(retry(&app, "in_exp").await.status, "scheduled", "re-armed");
    assert_eq!(scheduler.run_once(Utc::now()).await.unwrap().called, 1);
    assert_eq!(fake.charges(), 1);
    app.stop().await;
}

const APPSTLE_PAST_ORDERS: &str = "/api/external/v2/subscription-billing-attempts/past-orders";
const APPSTLE_RETRY: &str = "/api/external/v2/subscription-billing-attempts/attempt-billing/123456";

/// The billing attempt of Appstle's sample failure (attempt 123456 of contract 5550001) as
/// `getPastOrdersV2` lists it, in `status`, last tried at `tried` (the fact sheet's fields).
fn appstle_attempt(status: &str, tried: DateTime<Utc>) -> serde_json::Value {
    serde_json::json!({
        "id": 123456, "shop": "demo.myshopify.com", "contractId": 5550001,
        "billingAttemptId": "gid://shopify/SubscriptionBillingAttempt/987654321",
        "status": status, "billingDate": tried.to_rfc3339(), "attemptTime": tried.to_rfc3339(),
        "attemptCount": 1, "orderAmount": 49.95, "retryingNeeded": true,
    })
}

/// Appstle as it behaves: `attempt-billing` takes the attempt in (it is tried at once and
/// fails again) but answers only after `answer_after`; the past orders list the attempt
/// as it stands. Counts the sends.
#[derive(Clone)]
struct FakeAppstle {
    tried: Arc<Mutex<Option<DateTime<Utc>>>>,
    sends: Arc<Mutex<u32>>,
    answer_after: Duration,
}

impl Respond for FakeAppstle {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        assert_eq!(
            request
                .headers
                .get("x-api-key")
                .map(|v| v.to_str().unwrap()),
            Some("apst_dunning_key"),
            "Appstle's API key header"
        );
        match (request.method.as_str(), request.url.path()) {
            ("PUT", APPSTLE_RETRY) => {
                *self.sends.lock().unwrap() += 1;
                *self.tried.lock().unwrap() = Some(Utc::now());
                ResponseTemplate::new(200).set_delay(self.answer_after)
            }
            ("GET", APPSTLE_PAST_ORDERS) => {
                let contract = request.url.query_pairs().find(|(k, _)| k == "contractId");
                assert_eq!(
                    contract.map(|(_, v)| v.into_owned()).as_deref(),
                    Some("5550001")
                );
                let tried = self
                    .tried
                    .lock()
                    .unwrap()
                    .unwrap_or(Utc::now() - chrono::Duration::days(1));
                ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!([appstle_attempt("FAILURE", tried)]))
            }
            (method, path) => panic!("unexpected {method} {path}"),
        }
    }
}

/// Appstle's `attempt-billing` has no idempotency key: a send that timed out may have
/// reached it. After a timeout the retry is not re-sent in that pass, and after a restart
/// the re-send reads the past orders first: the attempt was tried since the first send, so
/// the retry follows it. One send in all, for one billing date.
#[tokio::test]
async fn appstle_never_sends_a_second_attempt_after_a_timeout_and_a_restart() {
    let server = MockServer::start().await;
    let fake = FakeAppstle {
        tried: Arc::default(),
        sends: Arc::default(),
        answer_after: Duration::from_secs(2),
    };
    Mock::given(matchers::any())
        .respond_with(fake.clone())
        .mount(&server)
        .await;
    let mut config = TestConfig::new().await;
    config.extra = format!(
        r#"
[[sources]]
id = "appstle"
provider = "appstle"
secrets = ["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"]
api = {{ base_url = "{}", token = "apst_dunning_key", timeout_ms = 300 }}
retry = {{ jitter = false }}

[dunning]
interval_ms = 3600000
"#,
        server.uri()
    );
    let app = spawn_app(&config, Role::All).await;
    let source = crate::common::source(app.settings.source("appstle").unwrap()).unwrap();
    let now = SystemTime::now();
    let failure = source.sample_body("msg_fail", now);
    let headers = source.sign("msg_fail", &failure, now);
    assert_eq!(app.post("appstle", &headers, failure).await.status(), 202);
    let due = first_retry(&app).await.due_at.unwrap();

    // The send times out: no usable answer, and no second send in this pass.
    let pass = scheduler(&app, Duration::from_secs(300))
        .run_once(due)
        .await
        .unwrap();
    assert_eq!(pass.called, 1);
    assert_eq!(*fake.sends.lock().unwrap(), 1, "sent once");
    let after_timeout = first_retry(&app).await;
    assert_eq!(after_timeout.status, "scheduled", "the same retry, later");

    // The process dies and a new one takes over; the retry is due again.
    let restarted = scheduler(&app, Duration::from_secs(300));
    let later = after_timeout.due_at.unwrap();
    let pass = restarted.run_once(later).await.unwrap();
    assert_eq!(pass.called, 1, "the re-send is decided");
    assert_eq!(
        *fake.sends.lock().unwrap(),
        1,
        "never a second attempt-billing for the same billing date"
    );
    let followed = first_retry(&app).await;
    assert_eq!(
        followed.status, "in_flight",
        "the attempt tried since the first send is followed; its outcome comes by webhook"
    );
    assert!(app.db.verify_ledger().await.unwrap().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn appstle_retries_asynchronously_and_never_twice_while_in_flight() {
    let server = MockServer::start().await;
    // The attempt as the contract's past orders list it before the retry: failed.
    Mock::given(matchers::method("GET"))
        .and(matchers::path(APPSTLE_PAST_ORDERS))
        .and(matchers::header("x-api-key", "apst_dunning_key"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!([
            appstle_attempt("FAILURE", Utc::now() - chrono::Duration::days(1))
        ])))
        .mount(&server)
        .await;
    Mock::given(matchers::method("PUT"))
        .and(matchers::path(
            "/api/external/v2/subscription-billing-attempts/attempt-billing/123456",
        ))
        .and(matchers::header("x-api-key", "apst_dunning_key"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let mut config = TestConfig::new().await;
    config.extra = format!(
        r#"
[[sources]]
id = "appstle"
provider = "appstle"
secrets = ["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"]
api = {{ base_url = "{}", token = "apst_dunning_key" }}
retry = {{ jitter = false }}

[dunning]
interval_ms = 3600000
"#,
        server.uri()
    );
    let app = spawn_app(&config, Role::All).await;
    let source = crate::common::source(app.settings.source("appstle").unwrap()).unwrap();
    let now = SystemTime::now();
    let failure = source.sample_body("msg_fail", now);
    assert_eq!(
        app.post(
            "appstle",
            &source.sign("msg_fail", &failure, now),
            failure.clone()
        )
        .await
        .status(),
        202
    );
    let r = first_retry(&app).await;
    assert_eq!(
        (r.status.as_str(), r.bucket.as_str(), r.attempt_id.as_str()),
        ("scheduled", "retry_soon", "123456")
    );

    let scheduler = scheduler(&app, Duration::from_secs(300));
    let due = r.due_at.unwrap();
    assert_eq!(scheduler.run_once(due).await.unwrap().called, 1);
    let after = views::list(&app.db, &RetriesQuery::default())
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        after.status, "in_flight",
        "accepted: the outcome comes by webhook"
    );
    let pass = scheduler
        .run_once(due + chrono::Duration::hours(12))
        .await
        .unwrap();
    assert_eq!(
        (pass.called, pass.expired),
        (0, 0),
        "no second retry while one is in flight"
    );
    // No outcome for a day: the try counts as failed and the policy schedules the next.
    let pass = scheduler
        .run_once(Utc::now() + chrono::Duration::days(2))
        .await
        .unwrap();
    assert_eq!((pass.called, pass.expired), (0, 1));
    let next = views::list(&app.db, &RetriesQuery::default())
        .await
        .unwrap()
        .remove(0);
    assert_eq!((next.status.as_str(), next.retries_done), ("scheduled", 1));
    let why = next.last_outcome.unwrap();
    assert!(
        why.starts_with("no outcome reported for the accepted retry within 1day: no outcome → "),
        "{why}"
    );
    assert!(why.contains("] → retry at "), "{why}");

    // Appstle reports the same attempt succeeded.
    let success = String::from_utf8(failure)
        .unwrap()
        .replace(
            "subscription.billing-failure",
            "subscription.billing-success",
        )
        .replace("\"FAILURE\"", "\"SUCCESS\"");
    let success = success.into_bytes();
    assert_eq!(
        app.post("appstle", &source.sign("msg_ok", &success, now), success)
            .await
            .status(),
        202
    );
    let recovered = eventually(Duration::from_secs(20), || async {
        views::list(&app.db, &RetriesQuery::default())
            .await
            .unwrap()[0]
            .status
            == "recovered"
    })
    .await;
    assert!(recovered);
    app.stop().await;
    server.verify().await;
}

#[tokio::test]
async fn paynow_retries_on_its_side_and_is_only_tracked() {
    let mut config = TestConfig::new().await;
    config.extra = "[[sources]]\nid = \"paynow\"\nprovider = \"paynow\"\nsecrets = [\"pn_secret\"]\n\n[dunning]\ninterval_ms = 3600000\n".into();
    let app = spawn_app(&config, Role::All).await;
    let source = crate::common::source(app.settings.source("paynow").unwrap()).unwrap();
    let now = SystemTime::now();
    let body = source.sample_body("411486491630370900", now);
    assert_eq!(
        app.post(
            "paynow",
            &source.sign("411486491630370900", &body, now),
            body
        )
        .await
        .status(),
        202
    );
    let r = first_retry(&app).await;
    assert_eq!(r.status, "provider_managed");
    assert_eq!(
        r.due_at, None,
        "PayNow's failed payment carries no next attempt time"
    );
    let pass = scheduler(&app, Duration::from_secs(300))
        .run_once(Utc::now() + chrono::Duration::days(30))
        .await
        .unwrap();
    assert_eq!(pass.called, 0, "subsync never calls for PayNow");
    app.stop().await;
}

#[tokio::test]
async fn a_wait_for_the_customer_ends_at_its_deadline() {
    let server = fake_stripe(FakeStripe::default()).await;
    let mut config = TestConfig::new().await;
    config_with(&server, &mut config);
    config.extra = config.extra.replace(
        "retry = { jitter = false }",
        r#"retry = { jitter = false, awaiting_customer_secs = 86400, final_action = "leave" }"#,
    );
    let app = spawn_app(&config, Role::All).await;
    let t0 = t0();
    let expired = invoice_event(
        "evt_e1",
        "invoice.payment_failed",
        "in_exp",
        1,
        Some("expired_card"),
        t0,
    );
    send(&app, "evt_e1", expired).await;
    let waiting = retry(&app, "in_exp").await;
    assert_eq!(waiting.status, "awaiting_customer");
    assert_eq!(waiting.expires_at, Some(t0 + chrono::Duration::days(1)));
    assert!(
        waiting.last_outcome.as_deref().unwrap().contains(
            "expired_card → needs_customer_action [needs_customer_action: wait up to 1d for the customer] → await the customer"
        ),
        "{waiting:?}"
    );

    let scheduler = scheduler(&app, Duration::from_secs(300));
    let before = t0 + chrono::Duration::days(1) - chrono::Duration::seconds(1);
    assert_eq!(scheduler.run_once(before).await.unwrap().deadlines, 0);
    let pass = scheduler
        .run_once(t0 + chrono::Duration::days(1))
        .await
        .unwrap();
    assert_eq!((pass.deadlines, pass.called, pass.final_actions), (1, 0, 0));
    let ended = retry(&app, "in_exp").await;
    assert_eq!(
        (ended.status.as_str(), ended.final_action.as_deref()),
        ("exhausted", Some("leave"))
    );
    assert_eq!(ended.expires_at, None);
    let why = ended.last_outcome.unwrap();
    assert!(
        why.starts_with("awaiting_customer deadline ")
            && why.ends_with(" passed: stop (awaiting_customer_deadline), then leave"),
        "{why}"
    );
    // Nothing stays open: the gauge of the oldest open retry has none left to show.
    let oldest = views::oldest_open(&app.db).await.unwrap();
    assert!(oldest.iter().all(|(_, age)| *age == 0.0), "{oldest:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_failure_the_provider_retries_ends_at_its_deadline() {
    let mut config = TestConfig::new().await;
    config.extra =
        "[[sources]]\nid = \"paynow\"\nprovider = \"paynow\"\nsecrets = [\"pn_secret\"]\n\
        retry = { provider_managed_secs = 86400, final_action = \"cancel\" }\n\
        [dunning]\ninterval_ms = 3600000\n"
            .into();
    let app = spawn_app(&config, Role::All).await;
    let source = crate::common::source(app.settings.source("paynow").unwrap()).unwrap();
    let now = SystemTime::now();
    let body = source.sample_body("411486491630370900", now);
    let headers = source.sign("411486491630370900", &body, now);
    assert_eq!(app.post("paynow", &headers, body).await.status(), 202);
    let open = first_retry(&app).await;
    assert_eq!(open.status, "provider_managed");
    let deadline = open.expires_at.expect("a deadline");
    assert_eq!(deadline, open.first_failed_at + chrono::Duration::days(1));
    let oldest = views::oldest_open(&app.db).await.unwrap();
    assert!(
        oldest
            .iter()
            .any(|(status, age)| *status == "provider_managed" && *age >= 0.0),
        "{oldest:?}"
    );

    let scheduler = scheduler(&app, Duration::from_secs(300));
    let early = scheduler
        .run_once(deadline - chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(early.deadlines, 0, "PayNow is still retrying");
    let pass = scheduler.run_once(deadline).await.unwrap();
    assert_eq!((pass.deadlines, pass.called, pass.final_actions), (1, 0, 1));
    let detail = views::show(&app.db, "paynow", &open.cycle_key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(detail.retry.status, "exhausted");
    assert!(detail.retry.final_action_at.is_some());
    let action = detail.final_action.unwrap();
    assert_eq!(
        (action.action.as_str(), action.outcome.as_deref()),
        ("cancel", Some("unsupported"))
    );
    let reasons: Vec<String> = detail
        .timeline
        .iter()
        .filter_map(|e| e.reason.clone())
        .collect();
    assert!(
        reasons[0].contains("the provider retries itself, settled by "),
        "{reasons:#?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.ends_with("passed: stop (provider_managed_deadline), then cancel")),
        "{reasons:#?}"
    );
    assert_eq!(
        scheduler
            .run_once(deadline + chrono::Duration::days(9))
            .await
            .unwrap()
            .final_actions,
        0
    );
    app.stop().await;
}
