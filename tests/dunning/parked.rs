//! The scheduler never panics and never loops on a broken retry: a provider's absurd
//! `Retry-After` (or Shopify throttle) is clamped, a retry whose calls keep failing is
//! parked with its error while the other sources' retries go on, an operator resumes it,
//! and a panicking client parks only its own retry.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use clap::Parser;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use sqlx::Connection;
use subsync::{
    app::Role,
    dunning::{
        clients::{CallError, CallOutcome, RetryCall, RetryClient},
        schedule::Dunning,
        scheduler::Scheduler,
        views::{self, RetriesQuery},
    },
};
use tokio_util::sync::CancellationToken;
use wiremock::{Mock, MockServer, ResponseTemplate, matchers};

use super::common::{ADMIN_TOKEN, TestApp, TestConfig, eventually, spawn_app};
use super::{FakeStripe, fake_stripe, invoice_event, retry, scheduler, send, t0};

/// A Stripe source named `id` whose API is `base_url`.
fn stripe_source(id: &str, base_url: &str) -> String {
    format!(
        "[[sources]]\nid = \"{id}\"\nprovider = \"stripe\"\nsecrets = [\"whsec_{id}\"]\n\
         api = {{ base_url = \"{base_url}\", token = \"sk_test_dunning\" }}\n\
         retry = {{ jitter = false }}\n"
    )
}

/// The service (its own scheduler idle: these tests drive the clock) with these sources.
async fn app_with(sources: &[String]) -> (TestConfig, TestApp) {
    let mut config = TestConfig::new().await;
    config.extra = format!("{}\n[dunning]\ninterval_ms = 3600000\n", sources.concat());
    let app = spawn_app(&config, Role::All).await;
    (config, app)
}

/// A retry row due at `due`, as a failure webhook would have left it.
async fn insert_retry(config: &TestConfig, source: &str, cycle: &str, due: DateTime<Utc>) {
    let mut db = sqlx::PgConnection::connect(&config.database_url)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO retries (source_id, cycle_key, subscription_id, attempt_id, cycle_id, status,
                              bucket, retries_done, first_failed_at, due_at, policy)
         VALUES ($1, $2, '4242', $2, $2, 'scheduled', 'retry_soon', 0, $3, $3, 'test')",
    )
    .bind(source)
    .bind(cycle)
    .bind(due)
    .execute(&mut db)
    .await
    .unwrap();
}

/// The retry's row through the admin API (`id` is `source:cycle`, percent-encoded).
async fn listed(app: &TestApp, source: &str, cycle: &str) -> Value {
    let path = format!("/admin/retries?source_id={source}&limit=1000");
    let body: Value = app
        .admin_get(&path, Some(ADMIN_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    let rows = body["retries"].as_array().unwrap();
    rows.iter()
        .find(|r| r["cycle_key"] == cycle)
        .cloned()
        .unwrap_or_else(|| panic!("{source}:{cycle} in {body}"))
}

async fn resume_over_http(app: &TestApp, id: &str) -> (u16, Value) {
    let encoded: String = id.replace('/', "%2F");
    let response = app
        .http
        .post(format!("{}/admin/retries/{encoded}/resume", app.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// Runs `subsync ARGS` in this process (the binary under the shared target directory may
/// be another checkout's build); true when it exits successfully.
async fn subsync(config: &TestConfig, args: &[&str]) -> bool {
    let path = config.write();
    let path = path.to_str().unwrap();
    let head = ["subsync", "--config", path];
    let argv = head.iter().chain(args);
    let cli = subsync::cli::Cli::try_parse_from(argv).expect("valid arguments");
    let code = cli.run().await.map(|code| format!("{code:?}"));
    let _ = std::fs::remove_file(path);
    code.is_ok_and(|code| code == format!("{:?}", std::process::ExitCode::SUCCESS))
}

/// Shopify's GraphQL answer when the bucket cannot hold the cost for 10^15 seconds.
fn shopify_throttled() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
        "extensions": {"cost": {"requestedQueryCost": 1e15, "actualQueryCost": null,
            "throttleStatus": {"maximumAvailable": 2000.0, "currentlyAvailable": 0, "restoreRate": 1.0}}}
    }))
}

#[tokio::test]
async fn a_huge_retry_after_or_throttle_is_clamped_instead_of_panicking_the_scheduler() {
    let stripe = MockServer::start().await;
    Mock::given(matchers::method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "10000000000000"))
        .mount(&stripe)
        .await;
    let shopify = MockServer::start().await;
    Mock::given(matchers::method("POST"))
        .respond_with(shopify_throttled())
        .mount(&shopify)
        .await;
    let shop = format!(
        "[[sources]]\nid = \"shop\"\nprovider = \"shopify\"\nsecrets = [\"shpss\"]\n\
         api = {{ base_url = \"{}\", token = \"shpat_x\" }}\n",
        shopify.uri()
    );
    let (config, app) = app_with(&[stripe_source("stripe", &stripe.uri()), shop]).await;
    let t0 = t0();
    send(
        &app,
        "evt_big",
        invoice_event(
            "evt_big",
            "invoice.payment_failed",
            "in_big",
            1,
            Some("insufficient_funds"),
            t0,
        ),
    )
    .await;
    let shop_cycle = "gid://shopify/SubscriptionBillingAttempt/1";
    insert_retry(&config, "shop", shop_cycle, t0).await;

    let now = t0 + chrono::Duration::hours(7);
    let pass = scheduler(&app, Duration::from_secs(300))
        .run_once(now)
        .await;
    let pass = pass.expect("the pass completes");
    assert_eq!((pass.called, pass.parked), (2, 0));
    for (source, cycle) in [("stripe", "in_big"), ("shop", shop_cycle)] {
        let row = listed(&app, source, cycle).await;
        assert_eq!(row["status"], "scheduled", "{row}");
        assert_eq!(row["retries_done"], 0, "the same call again later: {row}");
        assert_eq!(row["consecutive_failures"], 1, "{row}");
        let error = row["last_error"].as_str().unwrap();
        assert!(error.starts_with("rate limited"), "{error}");
        let due: DateTime<Utc> = serde_json::from_value(row["due_at"].clone()).unwrap();
        assert!(
            now < due && due <= now + chrono::Duration::days(1),
            "clamped: {due}"
        );
    }
    // An id whose cycle key holds `/` reaches its row through the admin API (percent-encoded).
    let (status, body) = resume_over_http(&app, &format!("shop:{shop_cycle}")).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("is scheduled, not parked"),
        "{body}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_retry_that_keeps_failing_is_parked_while_other_sources_complete_and_resumes() {
    let fake = FakeStripe::default();
    let healthy = fake_stripe(fake.clone()).await;
    let down = MockServer::start().await;
    Mock::given(matchers::method("POST"))
        .respond_with(ResponseTemplate::new(503).set_body_string("upstream unavailable"))
        .mount(&down)
        .await;
    let sources = [
        stripe_source("stripe", &healthy.uri()),
        stripe_source("down", &down.uri()),
        stripe_source("refused", "http://127.0.0.1:1"),
    ];
    let (config, app) = app_with(&sources).await;
    let t0 = t0();
    send(
        &app,
        "evt_ok",
        invoice_event(
            "evt_ok",
            "invoice.payment_failed",
            "in_ok",
            1,
            Some("insufficient_funds"),
            t0,
        ),
    )
    .await;
    insert_retry(&config, "down", "in_down", t0).await;
    insert_retry(&config, "refused", "in_refused", t0).await;

    let scheduler = scheduler(&app, Duration::from_secs(300)).with_park_after_failures(3);
    let mut parked = 0;
    for i in 0..3 {
        let now = t0 + chrono::Duration::hours(7) + chrono::Duration::minutes(10 * i);
        let pass = scheduler.run_once(now).await.unwrap();
        parked += pass.parked;
        if i == 0 {
            assert_eq!(pass.called, 3, "every source's retry is called: {pass:?}");
            assert_eq!(retry(&app, "in_ok").await.status, "recovered");
        }
    }
    assert_eq!(parked, 2);
    assert_eq!(fake.charges(), 1, "the healthy source was charged once");
    for (source, cycle, text) in [
        ("down", "in_down", "503"),
        ("refused", "in_refused", "transient"),
    ] {
        let row = listed(&app, source, cycle).await;
        assert_eq!(
            (row["status"].as_str(), row["consecutive_failures"].as_i64()),
            (Some("parked"), Some(3)),
            "{row}"
        );
        assert_eq!(row["due_at"], Value::Null);
        assert_eq!(row["retries_done"], 0, "resuming re-sends the same key");
        assert!(row["last_error"].as_str().unwrap().contains(text), "{row}");
        assert!(
            row["last_outcome"]
                .as_str()
                .unwrap()
                .starts_with("parked after 3 consecutive failures")
        );
    }
    let pass = scheduler
        .run_once(t0 + chrono::Duration::days(3))
        .await
        .unwrap();
    assert_eq!(pass.called, 0, "parked retries are not picked");

    // Visible in `retries list` (the CLI's query), the admin API and the metrics.
    assert!(subsync(&config, &["retries", "list", "--status", "parked"]).await);
    let query = RetriesQuery {
        status: Some("parked".into()),
        ..Default::default()
    };
    let rows = views::list(&app.db, &query).await.unwrap();
    let mut ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["down:in_down", "refused:in_refused"]);
    let body: Value = app
        .admin_get("/admin/retries?status=parked", Some(ADMIN_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["retries"].as_array().unwrap().len(), 2, "{body}");
    let metrics = app
        .admin_get("/metrics", Some(ADMIN_TOKEN))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("subsync_retries{status=\"parked\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("subsync_retries_parked_total{source=\"down\"} 1"),
        "{metrics}"
    );

    // Resumed by the command line and by the admin API: due now, count reset, audited.
    assert!(subsync(&config, &["retries", "resume", "down:in_down"]).await);
    let (status, body) = resume_over_http(&app, "refused:in_refused").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["status"].as_str(),
            body["consecutive_failures"].as_i64()
        ),
        (Some("scheduled"), Some(0))
    );
    assert_eq!(
        resume_over_http(&app, "refused:in_refused").await.0,
        400,
        "not parked any more"
    );
    assert_eq!(resume_over_http(&app, "refused:in_nothing").await.0, 404);
    assert_eq!(resume_over_http(&app, "no-colon").await.0, 400);
    let spec: Value = app
        .admin_get("/admin/openapi.json", Some(ADMIN_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    let resume = &spec["paths"]["/admin/retries/{id}/resume"]["post"];
    assert_eq!(resume["tags"][0], "dunning", "documented: {resume}");
    assert!(!subsync(&config, &["retries", "resume", "down:in_nothing"]).await);
    assert!(!subsync(&config, &["retries", "resume", "refused:in_refused"]).await);
    let audit: Value = app
        .admin_get("/admin/audit", Some(ADMIN_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    let resumes: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "retries.resume" && e["outcome"] == "ok")
        .collect();
    assert_eq!(resumes.len(), 2, "{audit}");
    assert!(
        resumes
            .iter()
            .any(|e| e["actor"] == "admin" && e["filter"]["id"] == "refused:in_refused")
    );
    let metrics = app
        .admin_get("/metrics", Some(ADMIN_TOKEN))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("subsync_retries{status=\"parked\"} 0"),
        "{metrics}"
    );

    // Both are called again, with the same retry number and key.
    let pass = scheduler
        .run_once(Utc::now() + chrono::Duration::minutes(1))
        .await
        .unwrap();
    assert_eq!(pass.called, 2);
    let row = listed(&app, "down", "in_down").await;
    assert_eq!(
        (row["status"].as_str(), row["consecutive_failures"].as_i64()),
        (Some("scheduled"), Some(1))
    );
    app.stop().await;
}

/// A client that panics on every call.
struct Panicking;

impl RetryClient for Panicking {
    fn retry<'a>(&'a self, call: &'a RetryCall) -> BoxFuture<'a, Result<CallOutcome, CallError>> {
        Box::pin(async move { panic!("test client panics on {}", call.attempt_id) })
    }
}

/// A client that charges and counts.
#[derive(Clone, Default)]
struct Charging(Arc<AtomicUsize>);

impl RetryClient for Charging {
    fn retry<'a>(&'a self, _: &'a RetryCall) -> BoxFuture<'a, Result<CallOutcome, CallError>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(CallOutcome::Charged) })
    }
}

fn with_clients(app: &TestApp, clients: Vec<(&str, Box<dyn RetryClient>)>) -> Scheduler {
    let clients = clients
        .into_iter()
        .map(|(id, c)| (id.to_owned(), c))
        .collect();
    let dunning = Dunning::from_settings(&app.settings.sources);
    Scheduler::new(app.db.clone(), dunning, clients, Duration::from_secs(300))
}

#[tokio::test]
async fn a_panicking_client_parks_its_retry_and_the_scheduler_goes_on() {
    let sources = [
        stripe_source("boom", "http://127.0.0.1:1"),
        stripe_source("ok", "http://127.0.0.1:1"),
    ];
    let (config, app) = app_with(&sources).await;
    let t0 = t0();
    insert_retry(&config, "boom", "in_boom", t0).await;
    insert_retry(&config, "ok", "in_ok1", t0).await;
    insert_retry(&config, "ok", "in_ok2", t0 + chrono::Duration::minutes(6)).await;
    let charges = Charging::default();
    let scheduler = with_clients(
        &app,
        vec![
            ("boom", Box::new(Panicking)),
            ("ok", Box::new(charges.clone())),
        ],
    )
    .with_park_after_failures(2);
    let first = scheduler
        .run_once(t0)
        .await
        .expect("the panic stays in its retry");
    assert_eq!((first.called, first.parked), (2, 0));
    let row = listed(&app, "boom", "in_boom").await;
    assert_eq!(
        (row["status"].as_str(), row["consecutive_failures"].as_i64()),
        (Some("scheduled"), Some(1))
    );
    let second = scheduler
        .run_once(t0 + chrono::Duration::minutes(6))
        .await
        .unwrap();
    assert_eq!((second.called, second.parked), (2, 1));
    assert_eq!(
        charges.0.load(Ordering::SeqCst),
        2,
        "the other source's retries were made"
    );
    let row = listed(&app, "boom", "in_boom").await;
    assert_eq!(row["status"], "parked", "{row}");
    assert_eq!(
        row["last_error"],
        "the provider client panicked: test client panics on in_boom"
    );
    assert_eq!(listed(&app, "ok", "in_ok2").await["status"], "recovered");

    // The running loop too: a panic parks the retry (here at once) and the loop goes on.
    insert_retry(&config, "boom", "in_boom2", Utc::now()).await;
    insert_retry(&config, "ok", "in_ok3", Utc::now()).await;
    let looping = with_clients(
        &app,
        vec![
            ("boom", Box::new(Panicking)),
            ("ok", Box::new(charges.clone())),
        ],
    )
    .with_park_after_failures(1);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(looping.run(Duration::from_millis(50), shutdown.clone()));
    let parked = eventually(Duration::from_secs(10), || async {
        listed(&app, "boom", "in_boom2").await["status"] == "parked"
    })
    .await;
    assert!(parked);
    insert_retry(&config, "ok", "in_ok4", Utc::now()).await;
    let later = eventually(Duration::from_secs(10), || async {
        listed(&app, "ok", "in_ok4").await["status"] == "recovered"
    })
    .await;
    assert!(later && !task.is_finished(), "the loop outlived the panic");
    shutdown.cancel();
    task.await.unwrap();
    app.stop().await;
}

/// A retry left `in_flight` with a call that never finished: the process died during it.
async fn insert_unanswered(config: &TestConfig, source: &str, cycle: &str, failures: i32) {
    let mut db = sqlx::PgConnection::connect(&config.database_url)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO retries (source_id, cycle_key, subscription_id, attempt_id, cycle_id, status,
                              bucket, retries_done, first_failed_at, policy, consecutive_failures)
         VALUES ($1, $2, 'sub_1', $2, $2, 'in_flight', 'retry_soon', 1, now(), 'test', $3)",
    )
    .bind(source)
    .bind(cycle)
    .bind(failures)
    .execute(&mut db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO retry_calls (source_id, cycle_key, retry_number, idempotency_key, request, started_at)
         VALUES ($1, $2, 1, 'k', 'retry #1', now() - interval '10 minutes')",
    )
    .bind(source)
    .bind(cycle)
    .execute(&mut db)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_call_that_keeps_killing_the_process_is_parked_and_stays_parked_on_new_failures() {
    let (config, app) = app_with(&[stripe_source("stripe", "http://127.0.0.1:1")]).await;
    insert_unanswered(&config, "stripe", "in_crash", 4).await;
    insert_unanswered(&config, "stripe", "in_once", 0).await;
    let charges = Charging::default();
    let scheduler = with_clients(&app, vec![("stripe", Box::new(charges.clone()))]);
    let pass = scheduler.run_once(Utc::now()).await.unwrap();
    assert_eq!(
        (pass.resent, pass.parked, pass.called),
        (1, 1, 1),
        "{pass:?}"
    );
    let crash = listed(&app, "stripe", "in_crash").await;
    assert_eq!(
        (crash["status"].as_str(), crash["retries_done"].as_i64()),
        (Some("parked"), Some(0))
    );
    let error = crash["last_error"].as_str().unwrap();
    assert!(error.starts_with("no answer recorded"), "{error}");
    assert_eq!(
        listed(&app, "stripe", "in_once").await["status"],
        "recovered",
        "re-sent once"
    );
    assert_eq!(charges.0.load(Ordering::SeqCst), 1);

    // The provider reports another failure of the cycle: still parked, for the operator.
    let t0 = t0();
    send(
        &app,
        "evt_crash",
        invoice_event(
            "evt_crash",
            "invoice.payment_failed",
            "in_crash",
            2,
            Some("insufficient_funds"),
            t0,
        ),
    )
    .await;
    let crash = listed(&app, "stripe", "in_crash").await;
    assert_eq!(
        (crash["status"].as_str(), crash["due_at"].as_str()),
        (Some("parked"), None),
        "{crash}"
    );
    assert_eq!(
        scheduler
            .run_once(Utc::now() + chrono::Duration::days(1))
            .await
            .unwrap()
            .called,
        0
    );

    // A payment reported by webhook recovers a parked retry.
    insert_unanswered(&config, "stripe", "in_paid", 4).await;
    scheduler.run_once(Utc::now()).await.unwrap();
    assert_eq!(listed(&app, "stripe", "in_paid").await["status"], "parked");
    send(
        &app,
        "evt_paid",
        invoice_event("evt_paid", "invoice.paid", "in_paid", 2, None, t0),
    )
    .await;
    assert_eq!(
        listed(&app, "stripe", "in_paid").await["status"],
        "recovered"
    );
    app.stop().await;
}
