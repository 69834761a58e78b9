//! What every run needs around it: scratch databases and queue prefixes that are always
//! cleaned up (even after an error or Ctrl-C), generated configurations, free ports, the
//! `subsync` child process and its peak RSS, and a description of the machine.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::Connection;
use subsync::{config::Settings, queue::Broker};
use tokio_util::sync::CancellationToken;

/// The loaded base configuration and where the `subsync` binary is.
pub struct Bench {
    /// `config/default.toml` (or `--config`) after `SUBSYNC__*` overrides: URLs, pool sizes,
    /// publish channels, worker batches... every child runs with these.
    pub base: Settings,
    pub subsync_bin: PathBuf,
    /// Unique per bench process, part of every scratch name.
    run: String,
}

/// Something a run created on the shared services, removed by [`Bench::release`] or, if a
/// run failed or was interrupted, by [`Bench::cleanup_leftovers`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resource {
    Database(String),
    Topology(String),
}

static LEFTOVERS: Mutex<Vec<Resource>> = Mutex::new(Vec::new());

fn register(resource: Resource) {
    LEFTOVERS.lock().expect("not poisoned").push(resource);
}

fn unregister(resource: &Resource) {
    LEFTOVERS
        .lock()
        .expect("not poisoned")
        .retain(|r| r != resource);
}

/// One run's own database and queue names.
pub struct Scratch {
    pub name: String,
    /// The base settings pointing at the scratch database and prefix.
    pub settings: Settings,
    database: bool,
}

impl Bench {
    pub fn new(base: Settings, subsync_bin: Option<PathBuf>) -> anyhow::Result<Self> {
        let subsync_bin = match subsync_bin {
            Some(path) => path,
            None => std::env::current_exe()?.with_file_name("subsync"),
        };
        let secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)?
            .as_secs();
        Ok(Self {
            base,
            subsync_bin,
            run: format!("{}_{}", secs % 100_000_000, std::process::id()),
        })
    }

    pub fn admin_db_url(&self) -> &str {
        self.base.database.url.expose_secret()
    }

    /// A fresh database (when `database`) and a unique queue prefix, both registered for
    /// cleanup before they exist.
    pub async fn scratch(&self, tag: &str, database: bool) -> anyhow::Result<Scratch> {
        let name = format!("subsync_bench_{tag}_{}", self.run);
        let mut settings = self.base.clone();
        settings.amqp.prefix = name.clone();
        register(Resource::Topology(name.clone()));
        if database {
            register(Resource::Database(name.clone()));
            settings.database.url = fresh_database(self.admin_db_url(), &name).await?.into();
        }
        Ok(Scratch {
            name,
            settings,
            database,
        })
    }

    /// Deletes the scratch queues and exchanges, then drops its database.
    pub async fn release(&self, scratch: Scratch) -> anyhow::Result<()> {
        let topology = Resource::Topology(scratch.name.clone());
        delete_topology(&scratch.settings).await?;
        unregister(&topology);
        if scratch.database {
            // An autovacuum worker on the fresh tables makes `DROP ... WITH (FORCE)` fail
            // for a non-superuser: the database stays registered, retried at exit.
            match drop_database(self.admin_db_url(), &scratch.name).await {
                Ok(()) => unregister(&Resource::Database(scratch.name)),
                Err(error) => eprintln!(
                    "[bench] {} not dropped yet ({error}); retried at exit",
                    scratch.name
                ),
            }
        }
        Ok(())
    }

    /// Removes whatever a failed or interrupted run left behind.
    pub async fn cleanup_leftovers(&self) {
        let left: Vec<Resource> = LEFTOVERS.lock().expect("not poisoned").drain(..).collect();
        for resource in left {
            // The services may be restarting (another user's fault test...): retry a while.
            for attempt in 1..=10 {
                let result = match &resource {
                    Resource::Topology(prefix) => {
                        let mut settings = self.base.clone();
                        settings.amqp.prefix = prefix.clone();
                        delete_topology(&settings).await
                    }
                    Resource::Database(name) => drop_database(self.admin_db_url(), name).await,
                };
                match result {
                    Ok(()) => {
                        eprintln!("cleaned up {resource:?}");
                        break;
                    }
                    Err(error) if attempt == 10 => {
                        eprintln!("could not clean up {resource:?}: {error:#}");
                    }
                    Err(_) => tokio::time::sleep(Duration::from_secs(3)).await,
                }
            }
        }
    }
}

/// Connects a short-lived broker handle (which declares the topology) and deletes it.
async fn delete_topology(settings: &Settings) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let broker = Broker::start(&settings.amqp, stop.clone());
    let result = async {
        anyhow::ensure!(
            broker.wait_connected(Duration::from_secs(20)).await,
            "broker unreachable"
        );
        broker.delete_topology().await?;
        Ok(())
    }
    .await;
    stop.cancel();
    result
}

/// Creates `name` next to the configured database and returns its URL.
pub async fn fresh_database(url: &str, name: &str) -> anyhow::Result<String> {
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .context("connecting to PostgreSQL")?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    let (prefix, _) = url.rsplit_once('/').context("database URL has no path")?;
    Ok(format!("{prefix}/{name}"))
}

pub async fn drop_database(url: &str, name: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await?;
    Ok(())
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// A TOML basic string.
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// A complete configuration for a child: `scratch`'s settings (so every tuning value of
/// the base configuration carries over), the given listeners, log level warn, and
/// `sources_toml` as its sources.
pub fn child_toml(
    scratch: &Settings,
    ingress: SocketAddr,
    admin: SocketAddr,
    sources_toml: &str,
) -> String {
    let (db, amqp, http, worker, dunning) = (
        &scratch.database,
        &scratch.amqp,
        &scratch.http,
        &scratch.worker,
        &scratch.dunning,
    );
    let max_queue_length = amqp
        .max_queue_length
        .map(|n| format!("max_queue_length = {n}\n"))
        .unwrap_or_default();
    format!(
        r#"# generated by subsync-bench
[database]
url = {db_url}
max_connections = {max_connections}
acquire_timeout_ms = {acquire}
[amqp]
url = {amqp_url}
prefix = {prefix}
delivery_limit = {delivery_limit}
publish_channels = {publish_channels}
confirm_timeout_ms = {confirm}
reconnect_max_delay_ms = {reconnect}
{max_queue_length}[http]
ingress_addr = "{ingress}"
admin_addr = "{admin}"
body_limit_bytes = {body_limit}
request_timeout_ms = {request_timeout}
[admin]
token = "subsync-bench-admin-token"
[worker]
consumers = {consumers}
prefetch = {prefetch}
batch_size = {batch_size}
batch_wait_ms = {batch_wait}
[dunning]
interval_ms = {interval}
in_flight_timeout_secs = {in_flight}
accepted_timeout_secs = {accepted}
[log]
format = "pretty"
level = "warn"
{sources_toml}"#,
        db_url = q(db.url.expose_secret()),
        max_connections = db.max_connections,
        acquire = db.acquire_timeout_ms,
        amqp_url = q(amqp.url.expose_secret()),
        prefix = q(&amqp.prefix),
        delivery_limit = amqp.delivery_limit,
        publish_channels = amqp.publish_channels,
        confirm = amqp.confirm_timeout_ms,
        reconnect = amqp.reconnect_max_delay_ms,
        body_limit = http.body_limit_bytes,
        request_timeout = http.request_timeout_ms,
        consumers = worker.consumers,
        prefetch = worker.prefetch,
        batch_size = worker.batch_size,
        batch_wait = worker.batch_wait_ms,
        interval = dunning.interval_ms,
        in_flight = dunning.in_flight_timeout_secs,
        accepted = dunning.accepted_timeout_secs,
    )
}

/// A generated configuration file (it holds the service URLs: owner-only, removed on drop).
pub struct ConfigFile {
    pub path: PathBuf,
}

impl ConfigFile {
    pub fn write(name: &str, toml: &str) -> anyhow::Result<Self> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = std::env::temp_dir().join(format!("{name}.toml"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        file.write_all(toml.as_bytes())?;
        Ok(Self { path })
    }

    /// The settings exactly as the child will load them.
    pub fn load(&self) -> anyhow::Result<Settings> {
        Ok(Settings::load(&self.path)?)
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A child process (`subsync serve` or the trivial server), killed if dropped running.
pub struct Child {
    child: std::process::Child,
    pid: u32,
    what: String,
}

impl Child {
    /// Starts `program args`, with no `SUBSYNC*` or `RUST_LOG` variables inherited (the
    /// generated configuration says everything).
    pub fn spawn(program: &Path, args: &[&str], what: &str) -> anyhow::Result<Self> {
        let mut command = std::process::Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (key, _) in std::env::vars_os() {
            let key_str = key.to_string_lossy();
            if key_str.starts_with("SUBSYNC") || key_str == "RUST_LOG" {
                command.env_remove(&key);
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let pid = child.id();
        Ok(Self {
            child,
            pid,
            what: what.to_owned(),
        })
    }

    /// Waits until `GET url` answers 200 (or `addr` accepts connections when `url` is
    /// None), failing if the child exits first.
    pub async fn wait_ready(&mut self, addr: SocketAddr, url: Option<&str>) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("{} exited before it was ready: {status}", self.what);
            }
            let ready = match url {
                Some(url) => http
                    .get(url)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success()),
                None => tokio::net::TcpStream::connect(addr).await.is_ok(),
            };
            if ready {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} not ready after 60 s",
                self.what
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Peak resident set size so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// Reads the peak RSS, then stops the child with SIGTERM (SIGKILL after 20 s).
    pub async fn stop(mut self) -> anyhow::Result<Option<u64>> {
        let rss = self.peak_rss();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    eprintln!("{} exited with {status}", self.what);
                }
                break;
            }
            if Instant::now() >= deadline {
                eprintln!("{} ignored SIGTERM for 20 s; killing it", self.what);
                self.child.kill()?;
                self.child.wait()?;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(rss)
    }
}

impl Drop for Child {
    /// A run that failed or was interrupted leaves no process behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Cores, CPU model, memory, OS, broker and database versions, as one line.
pub async fn machine(bench: &Bench) -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|x| x.1))
        .map(str::trim)
        .unwrap_or("unknown CPU")
        .to_owned();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let ram_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "unknown OS".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let rabbitmq = package_version("rabbitmq-server").unwrap_or_else(|| "unknown".into());
    let postgres = postgres_version(bench.admin_db_url())
        .await
        .unwrap_or_else(|| "unknown".into());
    let writeback = match std::fs::read_to_string("/proc/sys/vm/dirty_background_bytes") {
        Ok(b) if b.trim() != "0" => format!("vm.dirty_background_bytes {}", b.trim()),
        _ => "vm.dirty_background_bytes unset (ratio)".into(),
    };
    format!(
        "{cores} cores ({model}), {ram_gib:.1} GiB RAM, {os} (Linux {kernel}), \
         RabbitMQ {rabbitmq}, PostgreSQL {postgres}, {writeback}"
    )
}

fn package_version(package: &str) -> Option<String> {
    let out = std::process::Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", package])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let version = String::from_utf8(out.stdout).ok()?;
    // Debian revision off: 3.10.8-1.1+deb12u1 -> 3.10.8.
    let upstream = version.split('-').next()?.trim();
    (out.status.success() && !upstream.is_empty()).then(|| upstream.to_owned())
}

async fn postgres_version(url: &str) -> Option<String> {
    let mut conn = sqlx::PgConnection::connect(url).await.ok()?;
    let (v,): (String,) = sqlx::query_as("SHOW server_version")
        .fetch_one(&mut conn)
        .await
        .ok()?;
    Some(v.split_whitespace().next().unwrap_or(&v).to_owned())
}

/// The 1-, 5- and 15-minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
