//! The fault-injection harness: per-scenario environments (fresh database, own queue
//! names, free ports), the real `subsync` binary as child processes that can be killed
//! with SIGKILL and restarted, stopping and starting the shared RabbitMQ and PostgreSQL
//! (restarted on drop, so a failing scenario never leaves them down), drains and the
//! ledger checks every scenario ends with.

use std::{
    collections::{BTreeMap, HashSet},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sqlx::Connection;
use subsync::{config::Settings, db::Db, queue::Broker};
use tokio_util::sync::CancellationToken;

use crate::common;

pub const BIN: &str = env!("CARGO_BIN_EXE_subsync");
pub const ADMIN_TOKEN: &str = "faults-admin-token-0123456789";
pub const STRIPE_SECRET: &str = "whsec_faults_stripe_signing";
/// Every invoice in the load is for this many cents.
pub const AMOUNT: i64 = 4995;

/// Webhooks per scenario: `FAULTS_WEBHOOKS` (for quicker development runs), else 10,000.
pub fn webhooks() -> usize {
    std::env::var("FAULTS_WEBHOOKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `host:port` of the broker the tests use.
pub fn broker_addr() -> std::net::SocketAddr {
    let url = common::amqp_url();
    let after_at = url.rsplit_once('@').map_or(url.as_str(), |(_, r)| r);
    let host_port = after_at.split('/').next().unwrap();
    host_port.parse().expect("amqp URL with an IP:port")
}

/// Prints one figure line of a scenario (collected into docs/reliability.md).
#[macro_export]
macro_rules! figure {
    ($scenario:expr, $($arg:tt)*) => {
        eprintln!("[faults] {:<22} {}", $scenario, format!($($arg)*))
    };
}

/// How the processes of a scenario are configured.
#[derive(Clone)]
pub struct Options {
    pub delivery_limit: u32,
    pub consumers: usize,
    pub prefetch: u16,
    pub batch_size: usize,
    pub reconnect_max_delay_ms: u64,
    pub confirm_timeout_ms: u64,
    /// Appended to the configuration (more sources, `[dunning]`).
    pub extra: String,
    /// TOML fragment added to the `stripe` source (e.g. `api` and `retry`).
    pub stripe_extra: String,
    /// TOML lines added to `[http]` (connection limits).
    pub http_extra: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            delivery_limit: 5,
            consumers: 2,
            prefetch: 256,
            batch_size: 64,
            reconnect_max_delay_ms: 1000,
            confirm_timeout_ms: 5000,
            extra: String::new(),
            stripe_extra: String::new(),
            http_extra: String::new(),
        }
    }
}

/// One scenario's world: its own database and queue names, configs and logs in a
/// temporary directory, and the test's own handles on the database and the broker.
pub struct Env {
    pub name: &'static str,
    pub database_url: String,
    pub prefix: String,
    pub dir: PathBuf,
    pub options: Options,
    pub settings: Settings,
    pub db: Db,
    /// For the checks' own SQL (the ledger's pool is private to the crate).
    pub sql: sqlx::PgPool,
    pub broker: Broker,
    broker_stop: CancellationToken,
}

impl Env {
    pub async fn new(name: &'static str, options: Options) -> Self {
        let database_url = common::fresh_database().await;
        let prefix = format!(
            "subsync_f_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        );
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).unwrap();
        let path = write_config(
            &dir,
            &database_url,
            &prefix,
            &options,
            "test",
            &common::amqp_url(),
            0,
            0,
        );
        let settings = Settings::load(&path).expect("scenario settings load");
        let db = Db::connect_lazy(&settings.database).unwrap();
        db.migrate().await.expect("migrations");
        let sql = sqlx::postgres::PgPoolOptions::new()
            .max_connections(3)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy(&database_url)
            .unwrap();
        let broker_stop = CancellationToken::new();
        let broker = Broker::start(&settings.amqp, broker_stop.clone());
        assert!(
            broker.wait_connected(Duration::from_secs(30)).await,
            "the test's broker connection"
        );
        figure!(
            name,
            "database {} queues {}.* logs {}",
            database_url.rsplit('/').next().unwrap(),
            prefix,
            dir.display()
        );
        Self {
            name,
            database_url,
            prefix,
            dir,
            options,
            settings,
            db,
            sql,
            broker,
            broker_stop,
        }
    }

    /// Writes a configuration for one process and returns its path.
    pub fn config(&self, label: &str, amqp_url: &str, ingress: u16, admin: u16) -> PathBuf {
        write_config(
            &self.dir,
            &self.database_url,
            &self.prefix,
            &self.options,
            label,
            amqp_url,
            ingress,
            admin,
        )
    }

    /// Starts `subsync serve --role ROLE` as a child process and waits until it is ready.
    pub async fn service(&self, label: &str, role: &'static str, amqp_url: &str) -> Service {
        let ingress = if role == "ingress" || role == "all" {
            Some(free_port())
        } else {
            None
        };
        let admin = free_port();
        let config = self.config(label, amqp_url, ingress.unwrap_or(0), admin);
        let mut service = Service {
            label: format!("{}/{label}", self.name),
            role,
            config,
            admin_port: admin,
            ingress_port: ingress,
            child: None,
            dir: self.dir.clone(),
            logs: Vec::new(),
            starts: 0,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        };
        service.spawn();
        service.ready().await;
        service
    }

    /// Messages in the work queue and in the dead-letter queue, unacked ones included
    /// (`rabbitmqctl`). For quorum queues these figures are refreshed every 5 s (the
    /// queue's tick), so they may lag; [`Env::ready`] is exact but counts ready ones only.
    pub async fn queue_depths(&self) -> Option<(u64, u64)> {
        let (work, dlq) = (
            format!("{}.work", self.prefix),
            format!("{}.dlq", self.prefix),
        );
        tokio::task::spawn_blocking(move || {
            let out = privileged("rabbitmqctl")
                .args([
                    "list_queues",
                    "-q",
                    "--no-table-headers",
                    "name",
                    "messages",
                ])
                .stderr(Stdio::null())
                .output()
                .ok()?;
            if !out.status.success() {
                return None;
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let find = |name: &str| {
                text.lines().find_map(|line| {
                    let mut cols = line.split_whitespace();
                    (cols.next()? == name).then(|| cols.next()?.parse::<u64>().ok())?
                })
            };
            Some((find(&work)?, find(&dlq)?))
        })
        .await
        .unwrap()
    }

    /// Ready messages in the work queue and the dead-letter queue, right now (a passive
    /// declare; the dead-letter queue has no consumer, so that is all of it).
    pub async fn ready(&self) -> Option<(u32, u32)> {
        if !self.broker.wait_connected(Duration::from_secs(30)).await {
            return None;
        }
        let (work, dlq) = self.broker.stats().await.ok()?;
        Some((work.messages, dlq.messages))
    }

    /// Waits until the dead-letter queue holds `n` messages.
    pub async fn wait_dead_letters(&self, n: u32, timeout: Duration) -> u32 {
        let started = Instant::now();
        loop {
            let dead = self.ready().await.map_or(0, |(_, d)| d);
            if dead >= n || started.elapsed() > timeout {
                return dead;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    pub async fn count_events(&self) -> Option<i64> {
        self.db.count_events(None).await.ok()
    }

    /// How many of `ids` are archived.
    pub async fn count_archived(&self, ids: &[String]) -> Option<i64> {
        let (n,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM events WHERE provider_event_id = ANY($1)")
                .bind(ids)
                .fetch_one(&self.sql)
                .await
                .ok()?;
        Some(n)
    }

    /// Waits until the backlog is worked off: nothing ready in the work queue, every id
    /// of `expected` archived, the archive no longer growing, and `rabbitmqctl` (unacked
    /// deliveries included) agreeing that the work queue is empty. Returns how long it
    /// took; fails after `timeout` naming what was still missing.
    pub async fn drain(&self, expected: &HashSet<String>, timeout: Duration) -> Duration {
        let started = Instant::now();
        let expected: Vec<String> = expected.iter().cloned().collect();
        let mut last = None;
        let mut stable = 0;
        loop {
            let ready = self.ready().await;
            let present = self.count_archived(&expected).await;
            let count = self.count_events().await;
            let settled = ready.is_some_and(|(work, _)| work == 0)
                && present == Some(expected.len() as i64)
                && count.is_some()
                && count == last;
            stable = if settled { stable + 1 } else { 0 };
            if stable >= 3 && self.queue_depths().await.is_some_and(|(work, _)| work == 0) {
                return started.elapsed();
            }
            last = count;
            if started.elapsed() > timeout {
                let archived = self.archived_ids("stripe").await;
                let mut missing: Vec<_> = expected
                    .iter()
                    .filter(|id| !archived.contains(*id))
                    .collect();
                missing.sort();
                panic!(
                    "{}: the backlog did not drain in {timeout:?} (ready {ready:?}, events {count:?}, rabbitmqctl {:?}); {} expected ids not archived: {:?}",
                    self.name,
                    self.queue_depths().await,
                    missing.len(),
                    &missing[..missing.len().min(20)]
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Provider event ids archived for `source`.
    pub async fn archived_ids(&self, source: &str) -> HashSet<String> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT provider_event_id FROM events WHERE source_id = $1")
                .bind(source)
                .fetch_all(&self.sql)
                .await
                .unwrap();
        rows.into_iter().map(|(id,)| id).collect()
    }

    /// Everything in the dead-letter queue: (event id, reason). Read and handed back.
    pub async fn dead_letters(&self) -> Vec<(String, String)> {
        let mut session = self.broker.dead_letter_session().await.unwrap();
        let mut out = Vec::new();
        while let Some(letter) = session.next().await.unwrap() {
            let summary = letter.summary();
            out.push((
                summary.event_id.unwrap_or(summary.id),
                summary.reason.unwrap_or_default(),
            ));
        }
        session.close().await;
        out
    }

    /// Deletes the scenario's queues and database (on success only: a failed scenario
    /// leaves them for inspection, and `FAULTS_KEEP=1` keeps them always).
    pub async fn cleanup(self) {
        if std::env::var_os("FAULTS_KEEP").is_some() {
            self.broker_stop.cancel();
            return;
        }
        let _ = self.broker.delete_topology().await;
        self.broker_stop.cancel();
        self.sql.close().await;
        let name = self.database_url.rsplit('/').next().unwrap().to_owned();
        if let Ok(mut conn) = sqlx::PgConnection::connect(&common::database_url()).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[allow(clippy::too_many_arguments)]
fn write_config(
    dir: &std::path::Path,
    database_url: &str,
    prefix: &str,
    o: &Options,
    label: &str,
    amqp_url: &str,
    ingress: u16,
    admin: u16,
) -> PathBuf {
    let toml = format!(
        r#"
[database]
url = "{database_url}"
max_connections = 8
acquire_timeout_ms = 2000
[amqp]
url = "{amqp_url}"
prefix = "{prefix}"
delivery_limit = {limit}
publish_channels = 4
confirm_timeout_ms = {confirm}
reconnect_max_delay_ms = {reconnect}
[http]
ingress_addr = "127.0.0.1:{ingress}"
admin_addr = "127.0.0.1:{admin}"
body_limit_bytes = 1048576
request_timeout_ms = 10000
{http_extra}
[admin]
token = "{ADMIN_TOKEN}"
[worker]
consumers = {consumers}
prefetch = {prefetch}
batch_size = {batch}
batch_wait_ms = 5
[log]
level = "warn"
[[sources]]
id = "stripe"
provider = "stripe"
secrets = ["{STRIPE_SECRET}"]
{stripe_extra}
{extra}
"#,
        limit = o.delivery_limit,
        confirm = o.confirm_timeout_ms,
        reconnect = o.reconnect_max_delay_ms,
        consumers = o.consumers,
        prefetch = o.prefetch,
        batch = o.batch_size,
        stripe_extra = o.stripe_extra,
        http_extra = o.http_extra,
        extra = o.extra,
    );
    let path = dir.join(format!("{label}.toml"));
    std::fs::write(&path, toml).unwrap();
    path
}

/// The real binary as a child process, restartable on the same ports and config.
pub struct Service {
    pub label: String,
    pub role: &'static str,
    config: PathBuf,
    pub admin_port: u16,
    pub ingress_port: Option<u16>,
    child: Option<Child>,
    dir: PathBuf,
    logs: Vec<PathBuf>,
    /// How many times the process was started.
    pub starts: usize,
    http: reqwest::Client,
}

impl Service {
    fn spawn(&mut self) {
        self.starts += 1;
        let log = self.dir.join(format!(
            "{}-{}.log",
            self.label.replace('/', "-"),
            self.starts
        ));
        let stderr = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--role", self.role])
            .env("SUBSYNC_CONFIG", &self.config)
            .env_remove("RUST_LOG")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("the subsync binary starts");
        self.logs.push(log);
        self.child = Some(child);
    }

    pub fn ingress_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.ingress_port.expect("an ingress role")
        )
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// Waits until `/readyz` answers 200 (what the role uses is reachable).
    pub async fn ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "{} exited during start-up ({status}); log tail:\n{}",
                    self.label,
                    self.log_tail()
                );
            }
            let ok = self
                .http
                .get(format!("{}/readyz", self.admin_url()))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready in 60 s; log tail:\n{}",
                self.label,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `/readyz` status right now (None when the listener does not answer).
    pub async fn readyz(&self) -> Option<u16> {
        self.http
            .get(format!("{}/readyz", self.admin_url()))
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    /// SIGKILL: no shutdown, no flush, no goodbye to the broker or the database.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again (same ports, same config) and waits until it is ready.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is still running", self.label);
        self.spawn();
        self.ready().await;
    }

    /// SIGTERM, then waits (SIGKILL after 30 s) and asserts a clean exit.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                assert!(
                    status.success(),
                    "{}: exit {status} after SIGTERM",
                    self.label
                );
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not stop within 30 s of SIGTERM", self.label);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The sum of every series of `metric` whose labels contain all of `labels`
    /// (`outcome="duplicate"`), from `/metrics`; None when the process does not answer.
    pub async fn metric(&self, metric: &str, labels: &[&str]) -> Option<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.admin_url()))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(metric_sum(&text, metric, labels))
    }

    /// The last lines this service logged (for failure messages).
    pub fn log_tail(&self) -> String {
        let log = self.log_text();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Every log line this service wrote, over all its runs.
    pub fn log_text(&self) -> String {
        self.logs
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// No run of this service panicked.
    pub fn assert_no_panic(&self) {
        let log = self.log_text();
        assert!(
            !log.contains("panicked"),
            "{} panicked:\n{}",
            self.label,
            log.lines()
                .filter(|l| l.contains("panicked"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn metric_sum(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| labels.iter().all(|l| line.contains(l)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

/// A command that needs root (as `scripts/services.sh` runs them): through `sudo -n`
/// unless the tests already run as root.
fn privileged(program: &str) -> Command {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let root = *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
    });
    if root {
        Command::new(program)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.args(["-n", program]);
        sudo
    }
}

fn run(what: &str, cmd: &mut Command) -> bool {
    match cmd.stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(status) if status.success() => true,
        Ok(status) => {
            eprintln!("[faults] {what}: exit {status}");
            false
        }
        Err(error) => {
            eprintln!("[faults] {what}: {error}");
            false
        }
    }
}

/// The shared RabbitMQ node, stopped for real (`rabbitmqctl shutdown`): started again by
/// [`RabbitDown::start`], or on drop when a scenario fails while it is down.
pub struct RabbitDown {
    down: bool,
}

impl RabbitDown {
    pub async fn stop() -> Self {
        let guard = Self { down: true };
        let ok = tokio::task::spawn_blocking(|| {
            run(
                "rabbitmqctl shutdown",
                privileged("rabbitmqctl").arg("shutdown"),
            )
        })
        .await
        .unwrap();
        assert!(ok, "RabbitMQ stopped");
        guard
    }

    pub async fn start(mut self) {
        let up = tokio::task::spawn_blocking(start_rabbitmq).await.unwrap();
        self.down = !up;
        assert!(up, "RabbitMQ started again");
    }
}

/// Starts the node and waits until it has booted (as `scripts/services.sh` does).
fn start_rabbitmq() -> bool {
    run(
        "rabbitmq-server -detached",
        privileged("rabbitmq-server").arg("-detached"),
    );
    for _ in 0..120 {
        let up = privileged("rabbitmqctl")
            .args(["-q", "await_startup"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if up {
            return true;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!("[faults] RabbitMQ did not start within 120 s");
    false
}

impl Drop for RabbitDown {
    fn drop(&mut self) {
        if self.down {
            eprintln!("[faults] restarting RabbitMQ after a failure");
            // No panic here: this may run while a failed scenario unwinds.
            start_rabbitmq();
        }
    }
}

/// The shared PostgreSQL cluster, stopped for real (`pg_ctlcluster ... stop -m fast`):
/// started again by [`PostgresDown::start`], or on drop.
pub struct PostgresDown {
    cluster: (String, String),
    down: bool,
}

fn pg_cluster() -> (String, String) {
    let out = Command::new("pg_lsclusters")
        .arg("-h")
        .output()
        .expect("pg_lsclusters");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("5432"))
        .or_else(|| text.lines().next())
        .expect("a PostgreSQL cluster");
    let mut cols = line.split_whitespace();
    (
        cols.next().unwrap().to_owned(),
        cols.next().unwrap().to_owned(),
    )
}

impl PostgresDown {
    pub async fn stop() -> Self {
        let cluster = tokio::task::spawn_blocking(pg_cluster).await.unwrap();
        let guard = Self {
            cluster: cluster.clone(),
            down: true,
        };
        let ok = tokio::task::spawn_blocking(move || {
            run(
                "pg_ctlcluster stop",
                privileged("pg_ctlcluster").args([&cluster.0, &cluster.1, "stop", "-m", "fast"]),
            )
        })
        .await
        .unwrap();
        assert!(ok, "PostgreSQL stopped");
        guard
    }

    pub async fn start(mut self) {
        let cluster = self.cluster.clone();
        let up = tokio::task::spawn_blocking(move || start_postgres(&cluster))
            .await
            .unwrap();
        self.down = !up;
        assert!(up, "PostgreSQL started again");
    }
}

fn start_postgres(cluster: &(String, String)) -> bool {
    run(
        "pg_ctlcluster start",
        privileged("pg_ctlcluster").args([&cluster.0, &cluster.1, "start"]),
    );
    for _ in 0..120 {
        let up = Command::new("pg_isready")
            .args(["-q", "-h", "127.0.0.1"])
            .status()
            .is_ok_and(|s| s.success());
        if up {
            return true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("[faults] PostgreSQL did not come back within 60 s");
    false
}

impl Drop for PostgresDown {
    fn drop(&mut self) {
        if self.down {
            eprintln!("[faults] restarting PostgreSQL after a failure");
            // No panic here: this may run while a failed scenario unwinds.
            start_postgres(&self.cluster);
        }
    }
}

/// What the ledger holds after a scenario, checked against what was sent.
pub struct LedgerFigures {
    pub events: usize,
    pub paid: usize,
    pub failed: usize,
    pub collected_minor: i64,
}

/// Journal and archive invariants that must hold whatever happened: no journal entry twice
/// for one attempt or cycle, exactly one collection of [`AMOUNT`] per archived payment,
/// one attempt per archived attempt event, `ledger verify` clean.
pub async fn check_ledger(env: &Env, source: &str, archived: &HashSet<String>) -> LedgerFigures {
    let pool = &env.sql;
    // The unique constraint makes this impossible; checked anyway, not assumed.
    let archived_twice: Vec<(String, i64)> = sqlx::query_as(
        "SELECT provider_event_id, count(*) FROM events WHERE source_id = $1
         GROUP BY provider_event_id HAVING count(*) > 1",
    )
    .bind(source)
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(
        archived_twice.is_empty(),
        "{}: events archived more than once: {archived_twice:?}",
        env.name
    );
    let twice: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT attempt_id, kind, count(*) FROM journal_entries WHERE source_id = $1
         GROUP BY attempt_id, kind HAVING count(*) > 1
         UNION ALL
         SELECT cycle_id, kind, count(*) FROM journal_entries WHERE source_id = $1 AND cycle_id IS NOT NULL
         GROUP BY cycle_id, kind HAVING count(*) > 1",
    )
    .bind(source)
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(
        twice.is_empty(),
        "{}: journal entries posted twice: {twice:?}",
        env.name
    );
    let paid = archived.iter().filter(|id| id.ends_with("_p")).count();
    let failed = archived.iter().filter(|id| id.ends_with("_f")).count();
    let (entries, collected): (i64, i64) = sqlx::query_as(
        "SELECT count(DISTINCT e.id), COALESCE(sum(p.amount_minor), 0)::int8
         FROM journal_entries e JOIN postings p ON p.entry_id = e.id
         WHERE e.source_id = $1 AND e.kind = 'collection' AND p.account = 'collected'",
    )
    .bind(source)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        (entries, collected),
        (paid as i64, paid as i64 * AMOUNT),
        "{}: exactly one collection per archived payment",
        env.name
    );
    let states: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM billing_attempts WHERE source_id = $1 GROUP BY status",
    )
    .bind(source)
    .fetch_all(pool)
    .await
    .unwrap();
    let states: BTreeMap<String, i64> = states.into_iter().collect();
    assert_eq!(
        (
            states.get("succeeded").copied().unwrap_or(0),
            states.get("failed").copied().unwrap_or(0),
            states.values().sum::<i64>()
        ),
        (paid as i64, failed as i64, (paid + failed) as i64),
        "{}: one attempt per archived attempt event: {states:?}",
        env.name
    );
    let breaches = env.db.verify_ledger().await.unwrap();
    assert!(
        breaches.is_empty(),
        "{}: ledger verify: {breaches:?}",
        env.name
    );
    LedgerFigures {
        events: archived.len(),
        paid,
        failed,
        collected_minor: collected,
    }
}
