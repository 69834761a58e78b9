//! The service itself, as a separate `subsync serve` child process with a generated
//! configuration (fresh database, unique queue prefix, free ports, log level warn):
//! the ingress alone (closed loop, workers off) and ingress plus workers together at a
//! fixed offered rate (open loop).

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use sqlx::Connection;
use subsync::{providers::Sources, queue::Broker};
use tokio_util::sync::CancellationToken;

use crate::env::{Bench, Child, ConfigFile, Scratch, child_toml, free_port};
use crate::load::{self, LoadResult};
use crate::payloads::{self, Prepared};

/// A started `subsync serve --role <role>` on a scratch database and prefix.
struct Service {
    child: Child,
    ingress: std::net::SocketAddr,
    sources: Arc<Sources>,
    _config: ConfigFile,
}

async fn start_service(bench: &Bench, scratch: &Scratch, role: &str) -> anyhow::Result<Service> {
    let (ingress, admin) = (free_port()?, free_port()?);
    let config = ConfigFile::write(
        &scratch.name,
        &child_toml(
            &scratch.settings,
            ingress,
            admin,
            &payloads::sources_toml(crate::TOLERANCE_SECS),
        ),
    )?;
    let settings = config.load()?;
    let sources = Arc::new(Sources::from_settings(&settings.sources).map_err(anyhow::Error::msg)?);
    let path = config.path.to_string_lossy().into_owned();
    let mut child = Child::spawn(
        &bench.subsync_bin,
        &["--config", &path, "serve", "--role", role],
        &format!("subsync serve --role {role}"),
    )?;
    child
        .wait_ready(admin, Some(&format!("http://{admin}/readyz")))
        .await?;
    Ok(Service {
        child,
        ingress,
        sources,
        _config: config,
    })
}

/// A broker handle of the bench on the scratch prefix (queue depth).
async fn observer(scratch: &Scratch, stop: &CancellationToken) -> anyhow::Result<Broker> {
    let broker = Broker::start(&scratch.settings.amqp, stop.clone());
    anyhow::ensure!(
        broker.wait_connected(Duration::from_secs(20)).await,
        "broker unreachable"
    );
    Ok(broker)
}

pub struct IngressRun {
    pub load: LoadResult,
    pub peak_rss: Option<u64>,
    pub mean_body: usize,
    /// Webhooks in the work queue at the end (every 2xx of the run, warm-up included).
    pub queued: usize,
}

/// Ingress alone: `subsync serve --role ingress`, closed loop with `connections`.
pub async fn ingress(
    bench: &Bench,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<IngressRun> {
    let scratch = bench.scratch("ingress", true).await?;
    let result = async {
        let service = start_service(bench, &scratch, "ingress").await?;
        let requests = payloads::prepare(
            &service.sources,
            crate::ceilings::POOL,
            "ingress",
            &service.ingress.to_string(),
            SystemTime::now(),
        )?;
        let mean_body = payloads::mean_body(&requests);
        let load = load::closed_loop(
            service.ingress,
            Arc::new(requests),
            connections,
            warmup,
            duration,
            Some(service.child.pid()),
        )
        .await;
        let peak_rss = service.child.stop().await?;
        let load = load?;
        let stop = CancellationToken::new();
        let broker = observer(&scratch, &stop).await?;
        let queued = queued_webhooks(&broker).await;
        stop.cancel();
        let queued = queued?;
        Ok(IngressRun {
            load,
            peak_rss,
            mean_body,
            queued,
        })
    }
    .await;
    bench.release(scratch).await?;
    result
}

/// Webhooks in the work queue (a batch message counts its events), consumed and acked
/// until none arrives for a second: the scratch queue is deleted afterwards anyway.
async fn queued_webhooks(broker: &Broker) -> anyhow::Result<usize> {
    let mut sub = broker.subscribe(1000, "subsync-bench-count").await?;
    let mut count = 0;
    while let Ok(Some(next)) = tokio::time::timeout(Duration::from_secs(1), sub.next()).await {
        let events = next?;
        count += events.len();
        sub.ack_window(&events).await?;
    }
    sub.close().await;
    Ok(count)
}

pub struct SustainedRun {
    pub rate: f64,
    pub connections: usize,
    pub duration: Duration,
    pub load: LoadResult,
    pub max_depth: u32,
    pub final_depth: u32,
    pub dead_letters: u32,
    pub committed: i64,
    /// Commits per second between 10% and 90% of the schedule (steady state).
    pub steady_commit_rate: f64,
    /// From the last request's due time until the last commit.
    pub tail: Duration,
    /// `processed_at - received_at` quantiles (ms): p50, p99, p99.9, max.
    pub e2e_ms: [f64; 4],
    pub peak_rss: Option<u64>,
}

/// Ingress and workers together (`subsync serve --role all`), open loop at `rate` for
/// `duration`; queue depth sampled every second.
pub async fn sustained(
    bench: &Bench,
    connections: usize,
    rate: f64,
    duration: Duration,
    drain_timeout: Duration,
    ingress_only: bool,
) -> anyhow::Result<SustainedRun> {
    let scratch = bench.scratch("sustained", true).await?;
    let result = async {
        let role = if ingress_only { "ingress" } else { "all" };
        let service = start_service(bench, &scratch, role).await?;
        let n = (rate * duration.as_secs_f64()).round() as usize;
        eprintln!("[sustained] signing {n} webhooks...");
        let requests: Vec<Prepared> = payloads::prepare(
            &service.sources,
            n,
            "sustained",
            &service.ingress.to_string(),
            SystemTime::now(),
        )?;
        let stop = CancellationToken::new();
        let broker = observer(&scratch, &stop).await?;
        let sampling = CancellationToken::new();
        let sampler = tokio::spawn({
            let (broker, sampling) = (broker.clone(), sampling.clone());
            async move {
                let mut depths = Vec::new();
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = sampling.cancelled() => break,
                        _ = tick.tick() => {
                            if let Ok((work, _)) = broker.stats().await {
                                depths.push(work.messages);
                            }
                        }
                    }
                }
                depths
            }
        });
        eprintln!("[sustained] {rate:.0}/s for {} s...", duration.as_secs());
        let load = load::open_loop(
            service.ingress,
            Arc::new(requests),
            connections,
            rate,
            Duration::from_secs(10),
            Some(service.child.pid()),
        )
        .await;
        sampling.cancel();
        let mut depths = sampler.await?;
        let (work, dead) = broker.stats().await?;
        depths.push(work.messages);
        let load = match load {
            Ok(load) => load,
            Err(error) => {
                stop.cancel();
                service.child.stop().await?;
                return Err(error);
            }
        };

        let schedule = load.window;
        let started_at = load.started.unwrap_or_else(Utc::now);
        let commits = if ingress_only {
            Commits::default()
        } else {
            let url = scratch.settings.database.url.expose_secret();
            commits(
                url,
                load.ok_total as i64,
                drain_timeout,
                started_at,
                schedule,
            )
            .await?
        };
        let peak_rss = service.child.stop().await?;
        let dead_letters = broker
            .stats()
            .await
            .map(|s| s.1.messages)
            .unwrap_or(dead.messages);
        stop.cancel();
        Ok(SustainedRun {
            rate,
            connections,
            duration,
            load,
            max_depth: depths.iter().copied().max().unwrap_or(0),
            final_depth: work.messages,
            dead_letters,
            committed: commits.committed,
            steady_commit_rate: commits.steady_rate,
            tail: commits.tail,
            e2e_ms: commits.e2e_ms,
            peak_rss,
        })
    }
    .await;
    bench.release(scratch).await?;
    result
}

#[derive(Default)]
struct Commits {
    committed: i64,
    steady_rate: f64,
    tail: Duration,
    e2e_ms: [f64; 4],
}

/// Waits (up to `timeout`) until `accepted` events are committed, then reads the commit
/// figures of a load that started at `started_at` and was scheduled over `schedule`.
async fn commits(
    url: &str,
    accepted: i64,
    timeout: Duration,
    started_at: DateTime<Utc>,
    schedule: Duration,
) -> anyhow::Result<Commits> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    let committed = loop {
        let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM events")
            .fetch_one(&mut conn)
            .await?;
        if count >= accepted || tokio::time::Instant::now() >= deadline {
            break count;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let steady_from = started_at + schedule.mul_f64(0.1);
    let steady_to = started_at + schedule.mul_f64(0.9);
    let (steady,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM events WHERE processed_at >= $1 AND processed_at < $2",
    )
    .bind(steady_from)
    .bind(steady_to)
    .fetch_one(&mut conn)
    .await?;
    let (p50, p99, p999, max, last): (f64, f64, f64, f64, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT coalesce(percentile_disc(0.5) WITHIN GROUP (ORDER BY d), 0),
                    coalesce(percentile_disc(0.99) WITHIN GROUP (ORDER BY d), 0),
                    coalesce(percentile_disc(0.999) WITHIN GROUP (ORDER BY d), 0),
                    coalesce(max(d), 0),
                    max(processed_at)
             FROM (SELECT extract(epoch FROM processed_at - received_at)::float8 * 1000 AS d,
                          processed_at
                   FROM events) e",
    )
    .fetch_one(&mut conn)
    .await?;
    let last_due = started_at + schedule;
    Ok(Commits {
        committed,
        steady_rate: steady as f64 / (schedule.as_secs_f64() * 0.8),
        tail: last
            .map(|l| (l - last_due).to_std().unwrap_or_default())
            .unwrap_or_default(),
        e2e_ms: [p50, p99, p999, max],
    })
}
