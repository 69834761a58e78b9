//! `backfill`: a pull sync of a large Stripe account, against a fake of `GET /v1/invoices`
//! that computes its pages from N invoices (newest first, `limit` ≤ 100, `starting_after`,
//! `has_more`) and enforces Stripe's test-mode read limit (25 requests per second, a
//! 1-second window; above it a 429 with `Retry-After: 1`). Every request's query is
//! checked against `InvoiceListParams` and the listed invoice against `Invoice` (Stripe's
//! SDK types, `tests/fixtures/stripe/`).
//!
//! The sync runs in-process with a worker applying what it queues. The first run is
//! dropped (a killed process) once half the pages are served; the second resumes from its
//! stored cursor and waits for the worker. Printed: records/s, the requests used against
//! the minimum needed (pages) and the 429s, the share of the rate budget used, and the
//! events archived (every record exactly once: the inbox deduplicates a page re-queued
//! after the kill).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{Query, State},
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::get,
};
use serde_json::{Value, json};
use subsync::{
    app::Catalogue,
    db::Db,
    queue::Broker,
    sync::{Quiet, RunOptions, Syncer},
    worker::Worker,
};
use tokio_util::sync::CancellationToken;

use crate::digest::Digest;
use crate::env::{Bench, ConfigFile, child_toml, free_port};

/// Stripe's test-mode read limit (requests per second).
pub const STRIPE_TEST_RATE: u32 = 25;

pub struct BackfillResult {
    pub records: u64,
    pub pages: u64,
    pub requests: u64,
    pub rate_limited: u64,
    /// From the first request to the last page served.
    pub seconds: f64,
    /// From the first request until the worker had applied every record.
    pub applied_seconds: f64,
    pub rate: u32,
    pub archived: i64,
    pub killed_after_pages: u64,
}

impl BackfillResult {
    pub fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.seconds
    }

    /// Requests made over the requests the limit allowed in the time taken.
    pub fn budget_share(&self) -> f64 {
        self.requests as f64 / (self.seconds * f64::from(self.rate))
    }
}

pub fn print(r: &BackfillResult) {
    println!("| backfill | figure |");
    println!("|---|---|");
    println!("| invoices listed | {} |", r.records);
    println!(
        "| records/s (both runs, to the last page served) | {:.0} |",
        r.records_per_sec()
    );
    println!(
        "| seconds until the worker applied every record | {:.1} |",
        r.applied_seconds
    );
    println!(
        "| requests used / minimum (pages) | {} / {} (429 answered: {}) |",
        r.requests, r.pages, r.rate_limited
    );
    println!(
        "| share of the rate budget ({} requests/s) used | {:.0}% |",
        r.rate,
        r.budget_share() * 100.0
    );
    println!(
        "| first run killed after page | {} (resumed from its cursor) |",
        r.killed_after_pages
    );
    println!("| events archived | {} (one per invoice) |", r.archived);
}

/// The fake's state: N invoices, the requests seen, the rate window.
struct Fake {
    n: u64,
    rate: u32,
    template: Value,
    types: Arc<Digest>,
    requests: AtomicU64,
    served: AtomicU64,
    limited: AtomicU64,
    window: Mutex<(Instant, u32)>,
    /// When the last page was served.
    done: Mutex<Option<Instant>>,
}

impl Fake {
    /// The invoice at `index` (0 = newest): paid, its own subscription.
    fn invoice(&self, index: u64) -> Value {
        let mut invoice = self.template.clone();
        invoice["id"] = json!(format!("in_{index:07}"));
        invoice["parent"]["subscription_details"]["subscription"] =
            json!(format!("sub_{index:07}"));
        invoice["created"] = json!(1_760_000_000 - index as i64);
        invoice
    }

    /// Whether the request fits the 1-second window.
    fn admit(&self) -> bool {
        let mut window = self.window.lock().expect("not poisoned");
        if window.0.elapsed() >= Duration::from_secs(1) {
            *window = (Instant::now(), 0);
        }
        if window.1 >= self.rate {
            return false;
        }
        window.1 += 1;
        true
    }
}

async fn invoices(
    State(fake): State<Arc<Fake>>,
    Query(query): Query<Vec<(String, String)>>,
) -> impl IntoResponse {
    fake.requests.fetch_add(1, Ordering::Relaxed);
    let problems = (fake.types).validate_form(
        query.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        "InvoiceListParams",
    );
    if !problems.is_empty() {
        let error =
            json!({"error": {"type": "invalid_request_error", "message": problems.join("; ")}});
        return (StatusCode::BAD_REQUEST, HeaderMap::new(), error.to_string());
    }
    if !fake.admit() {
        fake.limited.fetch_add(1, Ordering::Relaxed);
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "1".parse().expect("a header value"));
        let error = json!({"error": {"type": "invalid_request_error", "code": "rate_limit"}});
        return (StatusCode::TOO_MANY_REQUESTS, headers, error.to_string());
    }
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let limit = param("limit")
        .and_then(|l| l.parse::<u64>().ok())
        .unwrap_or(10)
        .clamp(1, 100);
    let start = match param("starting_after") {
        None => 0,
        Some(id) => match id.strip_prefix("in_").and_then(|i| i.parse::<u64>().ok()) {
            Some(i) => i + 1,
            None => {
                let error =
                    json!({"error": {"type": "invalid_request_error", "code": "resource_missing"}});
                return (StatusCode::BAD_REQUEST, HeaderMap::new(), error.to_string());
            }
        },
    };
    let end = (start + limit).min(fake.n);
    let data: Vec<Value> = (start..end).map(|i| fake.invoice(i)).collect();
    fake.served.fetch_add(1, Ordering::Relaxed);
    if end == fake.n {
        *fake.done.lock().expect("not poisoned") = Some(Instant::now());
    }
    let body =
        json!({"object": "list", "url": "/v1/invoices", "has_more": end < fake.n, "data": data});
    (StatusCode::OK, HeaderMap::new(), body.to_string())
}

/// A paid invoice of the current API version, generated from the SDK's types and checked.
fn template(types: &Digest) -> anyhow::Result<Value> {
    let mut invoice = types.generate("Invoice");
    let mut parent = types.generate("Invoice.Parent");
    parent["type"] = json!("subscription_details");
    parent["subscription_details"] = types.generate("Invoice.Parent.SubscriptionDetails");
    for (key, value) in [
        ("status", json!("paid")),
        ("attempt_count", json!(1)),
        ("attempted", json!(true)),
        ("amount_due", json!(1500)),
        ("amount_paid", json!(1500)),
        ("currency", json!("usd")),
        ("parent", parent),
    ] {
        invoice[key] = value;
    }
    invoice["status_transitions"]["paid_at"] = json!(1_760_000_100);
    invoice["parent"]["subscription_details"]["subscription"] = json!("sub_0");
    let errors = types.validate(&invoice, "Invoice");
    anyhow::ensure!(errors.is_empty(), "the invoice template: {errors:?}");
    Ok(invoice)
}

pub async fn backfill(bench: &Bench, n: u64, rate: u32) -> anyhow::Result<BackfillResult> {
    let scratch = bench.scratch("backfill", true).await?;
    let result = backfill_in(&scratch.settings, n, rate).await;
    bench.release(scratch).await?;
    result
}

async fn backfill_in(
    base: &subsync::config::Settings,
    n: u64,
    rate: u32,
) -> anyhow::Result<BackfillResult> {
    let types = Arc::new(Digest::parse(include_str!(
        "../../tests/fixtures/stripe/stripe-node-types.2026-07-29.dahlia.subset.json"
    )));
    let fake = Arc::new(Fake {
        n,
        rate,
        template: template(&types)?,
        types,
        requests: AtomicU64::new(0),
        served: AtomicU64::new(0),
        limited: AtomicU64::new(0),
        window: Mutex::new((Instant::now(), 0)),
        done: Mutex::new(None),
    });
    let addr: SocketAddr = free_port()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = Router::new()
        .route("/v1/invoices", get(invoices))
        .with_state(fake.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let sources = format!(
        r#"[[sources]]
id = "stripe"
provider = "stripe"
secrets = ["whsec_bench_backfill"]
api = {{ base_url = "http://{addr}", token = "sk_test_backfill" }}
sync = {{ interval_secs = 0, page_size = 100 }}
"#
    );
    let toml = child_toml(base, free_port()?, free_port()?, &sources);
    let config = ConfigFile::write("backfill", &toml)?;
    let settings = config.load()?;
    let Catalogue { sources, dunning } = Catalogue::new(&settings)?;
    let db = Db::connect_lazy(&settings.database)?;
    db.migrate().await?;
    let stop = CancellationToken::new();
    let broker = Broker::start(&settings.amqp, stop.clone());
    let result = async {
        anyhow::ensure!(
            broker.wait_connected(Duration::from_secs(20)).await,
            "broker unreachable"
        );
        let workers = CancellationToken::new();
        let worker = Worker::new(
            broker.clone(),
            db.clone(),
            sources.clone(),
            dunning.clone(),
            settings.worker.clone(),
        );
        let handles: Vec<_> = (0..settings.worker.consumers)
            .map(|i| tokio::spawn(worker.clone().run(i, workers.clone())))
            .collect();
        let syncer = Syncer::new(
            &settings,
            db.clone(),
            Some(broker.clone()),
            sources,
            dunning,
        );
        let pages = n.div_ceil(100);
        let started = Instant::now();
        eprintln!("[backfill] {n} invoices, {pages} pages at {rate} requests/s; killed at half...");
        let half = async {
            while fake.served.load(Ordering::Relaxed) < pages / 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let first = RunOptions::default();
        tokio::select! {
            run = syncer.run("stripe", &first, &Quiet) => {
                anyhow::bail!("the first run ended before it was killed: {run:?}");
            }
            () = half => {}
        }
        let killed_after_pages = fake.served.load(Ordering::Relaxed);
        eprintln!("[backfill] killed after page {killed_after_pages}; resuming...");
        let options = RunOptions {
            wait: Some(Duration::from_secs(300)),
            ..RunOptions::default()
        };
        let report = syncer.run("stripe", &options, &Quiet).await?;
        let applied_seconds = started.elapsed().as_secs_f64();
        let done = fake
            .done
            .lock()
            .expect("not poisoned")
            .unwrap_or_else(Instant::now);
        let seconds = done.duration_since(started).as_secs_f64();
        anyhow::ensure!(report.resumed, "the second run resumed");
        let waited = report.waited.clone().unwrap_or_default();
        anyhow::ensure!(
            !waited.timed_out,
            "the worker did not apply everything: {waited:?}"
        );
        workers.cancel();
        for handle in handles {
            handle.await??;
        }
        let archived = db.count_events(Some("stripe")).await?;
        anyhow::ensure!(
            archived == n as i64,
            "{archived} events archived for {n} invoices"
        );
        anyhow::ensure!(
            db.verify_ledger().await?.is_empty(),
            "ledger invariants broken"
        );
        Ok(BackfillResult {
            records: n,
            pages,
            requests: fake.requests.load(Ordering::Relaxed),
            rate_limited: fake.limited.load(Ordering::Relaxed),
            seconds,
            applied_seconds,
            rate,
            archived,
            killed_after_pages,
        })
    }
    .await;
    stop.cancel();
    server.abort();
    result
}
