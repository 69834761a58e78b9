//! Test harness: each test gets its own database, its own queue names and the app on
//! port 0, against the real RabbitMQ and PostgreSQL started by scripts/test.sh.
#![allow(dead_code)]

pub mod proxy;

use std::{future::Future, path::PathBuf, time::Duration};

use subsync::{
    app::{self, Role, Running},
    config::Settings,
    db::Db,
    queue::Broker,
};
use tokio_util::sync::CancellationToken;

/// A source built from its settings, as the service builds it (with its own provider
/// HTTP client).
pub fn source(
    settings: &subsync::config::SourceSettings,
) -> Result<subsync::providers::Source, subsync::providers::SourceError> {
    let http = subsync::providers::http::http_client()?;
    subsync::providers::Source::new(settings, &http)
}

/// The catalogue of `settings`, as `serve` builds it once for every role.
pub fn catalogue(settings: &Settings) -> app::Catalogue {
    app::Catalogue::new(settings).expect("catalogue")
}

pub const DEMO_SECRET: &str = "whsec_c3Vic3luYy1kZW1vLXNpZ25pbmcta2V5LTAwMDE=";
/// One source of each provider with a webhook scheme other than Stripe and Standard
/// Webhooks, with the secrets of their published test vectors.
pub const PROVIDER_SOURCES: &str = r#"
[[sources]]
id = "shopify"
provider = "shopify"
secrets = ["test_secret_key"]
[[sources]]
id = "appstle"
provider = "appstle"
secrets = ["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"]
[[sources]]
id = "svix"
provider = "svix"
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
[[sources]]
id = "polar"
provider = "polar"
secrets = ["whsec_ExampleExampleExampleExampleExampl0AbCdE"]
[[sources]]
id = "paynow"
provider = "paynow"
secrets = ["test_secret"]
[[sources]]
id = "rebilly"
provider = "rebilly"
basic_auth = { username = "rebilly", password = "s3cret-basic-pass" }
allow_ips = ["127.0.0.1"]
[[sources]]
id = "hmac"
provider = "hmac"
secrets = ["ls_secret"]
hmac = { signature_header = "X-Signature", encoding = "hex" }
"#;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub fn database_url() -> String {
    std::env::var("SUBSYNC_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://subsync:subsync@127.0.0.1:5432/subsync".into())
}

pub fn amqp_url() -> String {
    std::env::var("SUBSYNC_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Creates an empty database and returns its URL.
pub async fn fresh_database() -> String {
    use sqlx::Connection;
    let base = database_url();
    let name = format!("subsync_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .expect("test database server reachable");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    format!("{prefix}/{name}")
}

/// The settings a test app runs with; `extra` is appended to the TOML (more sources...).
pub struct TestConfig {
    pub database_url: String,
    pub amqp_url: String,
    pub prefix: String,
    pub body_limit: usize,
    pub confirm_timeout_ms: u64,
    pub delivery_limit: u32,
    pub request_timeout_ms: u64,
    pub extra: String,
}

impl TestConfig {
    pub async fn new() -> Self {
        Self {
            database_url: fresh_database().await,
            amqp_url: amqp_url(),
            prefix: format!(
                "subsync_t_{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            ),
            body_limit: 1024 * 1024,
            confirm_timeout_ms: 2000,
            delivery_limit: 3,
            request_timeout_ms: 10_000,
            extra: String::new(),
        }
    }

    pub fn toml(&self) -> String {
        format!(
            r#"
[database]
url = "{db}"
max_connections = 5
acquire_timeout_ms = 1000
[amqp]
url = "{amqp}"
prefix = "{prefix}"
delivery_limit = {limit}
publish_channels = 2
confirm_timeout_ms = {confirm}
reconnect_max_delay_ms = 500
[http]
ingress_addr = "127.0.0.1:0"
admin_addr = "127.0.0.1:0"
body_limit_bytes = {body}
request_timeout_ms = {timeout}
[admin]
token = "{ADMIN_TOKEN}"
[worker]
consumers = 1
prefetch = 64
batch_size = 32
batch_wait_ms = 5
[log]
level = "warn"
[[sources]]
id = "demo"
provider = "standard"
secrets = ["{DEMO_SECRET}"]
{extra}
"#,
            db = self.database_url,
            amqp = self.amqp_url,
            prefix = self.prefix,
            limit = self.delivery_limit,
            confirm = self.confirm_timeout_ms,
            body = self.body_limit,
            timeout = self.request_timeout_ms,
            extra = self.extra,
        )
    }

    pub fn write(&self) -> PathBuf {
        let path = std::env::temp_dir().join(format!("{}.toml", self.prefix));
        std::fs::write(&path, self.toml()).unwrap();
        path
    }

    pub fn settings(&self) -> Settings {
        let path = self.write();
        let settings = Settings::load(&path).expect("test settings load");
        let _ = std::fs::remove_file(path);
        settings
    }
}

pub struct TestApp {
    pub ingress: String,
    pub admin: String,
    pub settings: Settings,
    pub broker: Broker,
    pub db: Db,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    running: Option<Running>,
}

pub async fn spawn_app(config: &TestConfig, role: Role) -> TestApp {
    subsync::telemetry::init_tracing(
        &subsync::config::LogSettings::default(),
        tracing_subscriber_test_writer(),
    );
    let settings = config.settings();
    let shutdown = CancellationToken::new();
    let running = app::start(&settings, role, shutdown.clone())
        .await
        .expect("app starts");
    assert!(
        running.broker.wait_connected(Duration::from_secs(20)).await,
        "broker connection"
    );
    TestApp {
        ingress: running
            .ingress_addr
            .map(|a| format!("http://{a}"))
            .unwrap_or_default(),
        admin: format!("http://{}", running.admin_addr),
        settings,
        broker: running.broker.clone(),
        db: running.db.clone(),
        http: reqwest::Client::new(),
        shutdown,
        running: Some(running),
    }
}

fn tracing_subscriber_test_writer()
-> impl for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static {
    tracing_subscriber::fmt::TestWriter::new()
}

impl TestApp {
    /// Signs `body` as the configured source `source_id` would and posts it.
    pub async fn post_signed(
        &self,
        source_id: &str,
        event_id: &str,
        body: &[u8],
    ) -> reqwest::Response {
        let source = source(self.settings.source(source_id).unwrap()).unwrap();
        let headers = source.sign(event_id, body, std::time::SystemTime::now());
        self.post(source_id, &headers, body.to_vec()).await
    }

    pub async fn post(
        &self,
        source_id: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}/webhooks/{source_id}", self.ingress))
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.body(body).send().await.expect("ingress reachable")
    }

    /// GET on the admin listener, with the bearer token when given.
    pub async fn admin_get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(format!("{}{path}", self.admin));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("admin listener reachable")
    }

    /// Messages waiting in the work queue.
    pub async fn queued(&self) -> u32 {
        self.broker.stats().await.expect("queue stats").0.messages
    }

    /// Stops the app and deletes its queues and exchanges.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            running.wait().await;
        }
        let token = CancellationToken::new();
        let cleaner = Broker::start(&self.settings.amqp, token.clone());
        if cleaner.wait_connected(Duration::from_secs(10)).await {
            let _ = cleaner.delete_topology().await;
        }
        token.cancel();
    }
}

/// A Standard Webhooks body with `type` set.
pub fn body(event_type: &str, n: usize) -> Vec<u8> {
    format!(r#"{{"type":"{event_type}","timestamp":"2026-11-21T00:00:00Z","data":{{"n":{n}}}}}"#)
        .into_bytes()
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Everything the ledger says about `source` (attempt states, subscription states,
/// balances per account and currency), as comparable text.
pub async fn snapshot(db: &Db, source: &str, subscriptions: &[String]) -> String {
    let q = subsync::ledger::AttemptsQuery {
        source_id: Some(source.into()),
        limit: Some(1000),
        ..Default::default()
    };
    let mut lines: std::collections::BTreeSet<String> = db
        .billing_attempts(&q)
        .await
        .unwrap()
        .into_iter()
        .map(|a| {
            let bucket = a.decline_bucket.unwrap_or_default();
            format!(
                "{} {} {} {:?} {:?} {bucket}",
                a.attempt_id, a.status, a.provider_status, a.amount_minor, a.currency
            )
        })
        .collect();
    for sub in subscriptions {
        if let Some(v) = db.subscription(source, sub).await.unwrap() {
            lines.insert(format!(
                "{sub} {:?} {:?} {:?}",
                v.status, v.currency, v.balances
            ));
        }
    }
    lines.into_iter().collect::<Vec<_>>().join("\n")
}

/// One posting of an attempt's entries: (kind, refund id, account, amount, currency).
pub type Posting = (String, Option<String>, String, i64, String);

/// Every posting of the entries of `source`'s `attempt`, in entry order.
pub async fn postings(app: &TestApp, source: &str, attempt: &str) -> Vec<Posting> {
    use secrecy::ExposeSecret;
    use sqlx::Connection;
    let url = app.settings.database.url.expose_secret();
    let mut db = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_as(
        "SELECT e.kind, e.refund_id, p.account, p.amount_minor, p.currency
         FROM journal_entries e JOIN postings p ON p.entry_id = e.id
         WHERE e.source_id = $1 AND e.attempt_id = $2 ORDER BY e.id, p.account",
    )
    .bind(source)
    .bind(attempt)
    .fetch_all(&mut db)
    .await
    .unwrap()
}

/// Runs one pull sync of `source_id` against the app's database and broker, as
/// `subsync sync` does.
pub async fn sync(
    app: &TestApp,
    source_id: &str,
    options: subsync::sync::RunOptions,
) -> Result<subsync::sync::SyncReport, subsync::sync::SyncError> {
    let app::Catalogue { sources, dunning } = catalogue(&app.settings);
    let syncer = subsync::sync::Syncer::new(
        &app.settings,
        app.db.clone(),
        Some(app.broker.clone()),
        sources,
        dunning,
    );
    syncer.run(source_id, &options, &subsync::sync::Quiet).await
}

/// Attempts of `source` as `(attempt id, status)`, sorted.
pub async fn attempt_states(db: &Db, source: &str) -> Vec<(String, String)> {
    let q = subsync::ledger::AttemptsQuery {
        source_id: Some(source.into()),
        limit: Some(1000),
        ..Default::default()
    };
    let mut states: Vec<_> = db
        .billing_attempts(&q)
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.attempt_id, a.status))
        .collect();
    states.sort();
    states
}
