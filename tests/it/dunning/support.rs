//! Helpers of the parked-retry tests: sources pointed at fake or dead APIs, retry rows
//! written as a failure (or a dead process) would have left them, test retry clients.

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
use serde_json::Value;
use sqlx::Connection;
use subsync::{
    app::Role,
    dunning::scheduler::Scheduler,
    providers::contract::{CallOutcome, RetryCall, RetryClient},
    providers::http::ProviderApiError,
};

use super::common::{ADMIN_TOKEN, TestApp, TestConfig, spawn_app};

/// A Stripe source named `id` whose API is `base_url`.
pub(super) fn stripe_source(id: &str, base_url: &str) -> String {
    format!(
        "[[sources]]\nid = \"{id}\"\nprovider = \"stripe\"\nsecrets = [\"whsec_{id}\"]\n\
         api = {{ base_url = \"{base_url}\", token = \"sk_test_dunning\" }}\n\
         retry = {{ jitter = false }}\n"
    )
}

/// The service (its own scheduler idle: these tests drive the clock) with these sources.
pub(super) async fn app_with(sources: &[String]) -> (TestConfig, TestApp) {
    let mut config = TestConfig::new().await;
    // The service's own scheduler makes its first pass at start, then idles for a day and
    // re-arms nothing: rows these tests write (due an hour ahead) are theirs alone.
    config.extra = format!(
        "{}\n[dunning]\ninterval_ms = 86400000\nin_flight_timeout_secs = 86400\n",
        sources.concat()
    );
    let app = spawn_app(&config, Role::All).await;
    (config, app)
}

/// A retry row due at `due`, as a failure webhook would have left it.
pub(super) async fn insert_retry(
    config: &TestConfig,
    source: &str,
    cycle: &str,
    due: DateTime<Utc>,
) {
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
pub(super) async fn listed(app: &TestApp, source: &str, cycle: &str) -> Value {
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

pub(super) async fn resume_over_http(app: &TestApp, id: &str) -> (u16, Value) {
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
pub(super) async fn subsync(config: &TestConfig, args: &[&str]) -> bool {
    let path = config.write();
    let path = path.to_str().unwrap();
    let head = ["subsync", "--config", path];
    let argv = head.iter().chain(args);
    let cli = subsync::cli::Cli::try_parse_from(argv).expect("valid arguments");
    let code = cli.run().await.map(|code| format!("{code:?}"));
    let _ = std::fs::remove_file(path);
    code.is_ok_and(|code| code == format!("{:?}", std::process::ExitCode::SUCCESS))
}

/// The Prometheus text of `/metrics`.
pub(super) async fn metrics(app: &TestApp) -> String {
    let response = app.admin_get("/metrics", Some(ADMIN_TOKEN)).await;
    response.text().await.unwrap()
}

/// A retry left `in_flight` with a call that never finished: the process died during it.
pub(super) async fn insert_unanswered(
    config: &TestConfig,
    source: &str,
    cycle: &str,
    failures: i32,
) {
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

/// A client that panics on every call.
pub(super) struct Panicking;

impl RetryClient for Panicking {
    fn retry<'a>(
        &'a self,
        call: &'a RetryCall,
    ) -> BoxFuture<'a, Result<CallOutcome, ProviderApiError>> {
        Box::pin(async move { panic!("test client panics on {}", call.attempt_id) })
    }
}

/// A client that charges and counts.
#[derive(Clone, Default)]
pub(super) struct Charging(pub(super) Arc<AtomicUsize>);

impl RetryClient for Charging {
    fn retry<'a>(
        &'a self,
        _: &'a RetryCall,
    ) -> BoxFuture<'a, Result<CallOutcome, ProviderApiError>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(CallOutcome::Charged) })
    }
}

pub(super) fn with_clients(app: &TestApp, clients: Vec<(&str, Arc<dyn RetryClient>)>) -> Scheduler {
    let clients: std::collections::HashMap<_, _> = clients
        .into_iter()
        .map(|(id, c)| (id.to_owned(), c))
        .collect();
    let dunning = super::common::catalogue(&app.settings).dunning;
    Scheduler::new(app.db.clone(), dunning, clients, Duration::from_secs(300))
}
