//! The ceilings the ingress and the worker are compared with, measured in the same run:
//! (a) confirmed publishes through `Broker::publish_single` (one message per webhook; and,
//! as (a″), through `Broker::publish`, grouped like the ingress's) to a work queue declared
//! exactly like the service's, with the envelopes the ingress publishes (no HTTP); (b) a trivial axum
//! server answering 202 to `POST /webhooks/{id}` (no broker) under the same load generator,
//! in its own process like `subsync`; (c) batched `UNNEST` inserts into a copy of `events`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use axum::{Router, extract::Path, http::StatusCode, routing::post};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use subsync::{envelope::Envelope, providers::Sources, queue::Broker};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cpu::{CpuUsage, CpuWatch};
use crate::env::{Bench, Child, ConfigFile, free_port};
use crate::load::{self, LoadResult};
use crate::payloads;

/// Distinct signed requests a closed-loop run cycles through.
pub const POOL: usize = 18_000;

/// Sources of every provider, built from the same TOML a child would load.
pub fn bench_sources(bench: &Bench, name: &str) -> anyhow::Result<(ConfigFile, Arc<Sources>)> {
    let config = ConfigFile::write(
        name,
        &crate::env::child_toml(
            &bench.base,
            "127.0.0.1:0".parse()?,
            "127.0.0.1:0".parse()?,
            &payloads::sources_toml(crate::TOLERANCE_SECS),
        ),
    )?;
    let settings = config.load()?;
    let sources = Sources::from_settings(&settings.sources).map_err(anyhow::Error::msg)?;
    Ok((config, Arc::new(sources)))
}

pub struct PublishCeiling {
    pub rate: f64,
    pub failed: u64,
    pub mean_body: usize,
    pub inflight: usize,
    pub channels: usize,
    /// The publisher is this process ("load generator").
    pub cpu: CpuUsage,
}

/// (a) Confirmed publishes with `inflight` concurrent publishers for `warmup + duration`,
/// one message per envelope, or `batched` through the ingress's group commit.
pub async fn publish(
    bench: &Bench,
    inflight: usize,
    batched: bool,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<PublishCeiling> {
    let scratch = bench.scratch("pub", false).await?;
    let result = async {
        let (_config, sources) = bench_sources(bench, &format!("{}_src", scratch.name))?;
        let now = SystemTime::now();
        let requests = payloads::prepare(&sources, POOL, "pub", "127.0.0.1", now)?;
        let envelopes: Vec<Envelope> = requests
            .iter()
            .map(|r| r.verify(&sources, now))
            .collect::<anyhow::Result<_>>()?;
        let envelopes = Arc::new(envelopes);
        let stop = CancellationToken::new();
        let broker = Broker::start(&scratch.settings.amqp, stop.clone());
        anyhow::ensure!(
            broker.wait_connected(Duration::from_secs(20)).await,
            "broker unreachable"
        );
        let next = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let (measure_from, end) = (start + warmup, start + warmup + duration);
        let watch = tokio::spawn(async move {
            tokio::time::sleep_until(measure_from).await;
            CpuWatch::start(None)
        });
        let tasks: Vec<_> = (0..inflight)
            .map(|_| {
                let (broker, envelopes, next) = (broker.clone(), envelopes.clone(), next.clone());
                tokio::spawn(async move {
                    let (mut ok, mut failed) = (0u64, 0u64);
                    loop {
                        let sent = Instant::now();
                        if sent >= end {
                            break;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed) % envelopes.len();
                        let envelope = &envelopes[i];
                        let outcome = if batched {
                            broker.publish(envelope).await
                        } else {
                            broker.publish_single(envelope).await
                        };
                        if sent >= measure_from {
                            match outcome {
                                Ok(()) => ok += 1,
                                Err(_) => failed += 1,
                            }
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        let (mut ok, mut failed) = (0, 0);
        for task in tasks {
            let (o, f) = task.await?;
            ok += o;
            failed += f;
        }
        let cpu = watch.await?.finish();
        stop.cancel();
        Ok(PublishCeiling {
            cpu,
            rate: ok as f64 / duration.as_secs_f64(),
            failed,
            mean_body: payloads::mean_body(&requests),
            inflight,
            channels: scratch.settings.amqp.publish_channels,
        })
    }
    .await;
    bench.release(scratch).await?;
    result
}

/// The `trivial-server` subcommand: 202 to `POST /webhooks/{id}` after reading the body.
pub async fn trivial_server(addr: SocketAddr) -> anyhow::Result<()> {
    let app = Router::new().route(
        "/webhooks/{source_id}",
        post(|Path(_): Path<String>, _body: Bytes| async { StatusCode::ACCEPTED }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let stop = CancellationToken::new();
    subsync::app::cancel_on_signals(stop.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await?;
    Ok(())
}

/// (b) The trivial server, in its own process, under the closed-loop load generator.
pub async fn http(
    bench: &Bench,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let (_config, sources) =
        bench_sources(bench, &format!("subsync_bench_http_{}", std::process::id()))?;
    let addr = free_port()?;
    let requests = payloads::prepare(&sources, POOL, "http", &addr.to_string(), SystemTime::now())?;
    let exe = std::env::current_exe()?;
    let mut child = Child::spawn(
        &exe,
        &["trivial-server", "--addr", &addr.to_string()],
        "trivial server",
    )?;
    child.wait_ready(addr, None).await?;
    let result = load::closed_loop(
        addr,
        Arc::new(requests),
        connections,
        warmup,
        duration,
        Some(child.pid()),
    )
    .await;
    child.stop().await?;
    result
}

pub struct InsertCeiling {
    pub rows: usize,
    pub batch_size: usize,
    pub concurrency: usize,
    pub rate: f64,
}

/// Column vectors of one `UNNEST` batch, as the worker's archive insert binds them.
struct Batch {
    sources: Vec<String>,
    providers: Vec<&'static str>,
    ids: Vec<String>,
    types: Vec<String>,
    received: Vec<DateTime<Utc>>,
    content_types: Vec<Option<String>>,
    headers: Vec<serde_json::Value>,
    bodies: Vec<Vec<u8>>,
    normalized: Vec<serde_json::Value>,
    outcomes: Vec<&'static str>,
}

/// (c) `rows` rows shaped like the archive's (bodies, kept headers and canonical events of
/// the signed samples, unique event ids) inserted into `scratch_events (LIKE events
/// INCLUDING ALL)` with the archive's statement, in batches of `batch_size` (one
/// transaction each) on `concurrency` connections.
pub async fn insert(
    bench: &Bench,
    rows: usize,
    batch_size: usize,
    concurrency: usize,
) -> anyhow::Result<InsertCeiling> {
    let scratch = bench.scratch("pg", true).await?;
    let result = async {
        let db = subsync::db::Db::connect_lazy(&scratch.settings.database)?;
        db.migrate().await?;
        let url = secrecy::ExposeSecret::expose_secret(&scratch.settings.database.url).to_owned();
        let mut setup = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await?;
        sqlx::query("CREATE TABLE scratch_events (LIKE events INCLUDING ALL)")
            .execute(&mut setup)
            .await?;

        let (_config, sources) = bench_sources(bench, &format!("{}_src", scratch.name))?;
        let now = SystemTime::now();
        let pool = payloads::prepare(&sources, POOL.min(rows), "pg", "127.0.0.1", now)?;
        let mut shaped = Vec::with_capacity(pool.len());
        for request in &pool {
            let envelope = request.verify(&sources, now)?;
            let normalized = sources
                .get(request.kind.as_str())
                .expect("prepared from these sources")
                .normalize(&envelope)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            shaped.push((envelope, normalized));
        }
        let batches: Vec<Batch> = (0..rows)
            .collect::<Vec<_>>()
            .chunks(batch_size)
            .map(|chunk| {
                let mut b = Batch {
                    sources: vec![],
                    providers: vec![],
                    ids: vec![],
                    types: vec![],
                    received: vec![],
                    content_types: vec![],
                    headers: vec![],
                    bodies: vec![],
                    normalized: vec![],
                    outcomes: vec![],
                };
                for &k in chunk {
                    let (env, norm) = &shaped[k % shaped.len()];
                    b.sources.push(env.source_id.clone());
                    b.providers.push(env.provider.as_str());
                    b.ids.push(format!("{}_{k}", env.event_id));
                    b.types.push(norm.event_type.clone());
                    b.received.push(env.received_at);
                    b.content_types.push(env.content_type.clone());
                    b.headers.push(serde_json::Value::Object(
                        env.headers
                            .iter()
                            .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
                            .collect(),
                    ));
                    b.bodies.push(env.body.to_vec());
                    b.normalized
                        .push(serde_json::to_value(&norm.events).expect("serializable"));
                    b.outcomes.push("applied");
                }
                b
            })
            .collect();
        let batches = Arc::new(batches);
        let mut conns = Vec::with_capacity(concurrency);
        for _ in 0..concurrency {
            conns.push(<sqlx::PgConnection as sqlx::Connection>::connect(&url).await?);
        }
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let tasks: Vec<_> = conns
            .into_iter()
            .map(|mut conn| {
                let (batches, next) = (batches.clone(), next.clone());
                tokio::spawn(async move {
                    let mut inserted = 0u64;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(b) = batches.get(i) else { break };
                        let rows = insert_batch(&mut conn, b).await?;
                        inserted += rows as u64;
                    }
                    anyhow::Ok(inserted)
                })
            })
            .collect();
        let mut inserted = 0;
        for task in tasks {
            inserted += task.await??;
        }
        let elapsed = started.elapsed();
        anyhow::ensure!(
            inserted == rows as u64,
            "inserted {inserted} of {rows} rows"
        );
        drop(setup);
        Ok(InsertCeiling {
            rows,
            batch_size,
            concurrency,
            rate: rows as f64 / elapsed.as_secs_f64(),
        })
    }
    .await;
    bench.release(scratch).await?;
    result
}

async fn insert_batch(conn: &mut sqlx::PgConnection, b: &Batch) -> anyhow::Result<usize> {
    let inserted: Vec<(i64, String, String)> = sqlx::query_as(
        "INSERT INTO scratch_events (source_id, provider, provider_event_id, event_type, received_at,
                                     content_type, headers, body, envelope_version, normalized, outcome)
         SELECT s, p, i, t, r, c, h, b, $9, n, o
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                     $6::text[], $7::jsonb[], $8::bytea[], $10::jsonb[], $11::text[])
              AS u(s, p, i, t, r, c, h, b, n, o)
         ON CONFLICT (source_id, provider_event_id) DO NOTHING
         RETURNING id, source_id, provider_event_id",
    )
    .bind(&b.sources)
    .bind(&b.providers)
    .bind(&b.ids)
    .bind(&b.types)
    .bind(&b.received)
    .bind(&b.content_types)
    .bind(&b.headers)
    .bind(&b.bodies)
    .bind(i16::from(subsync::envelope::ENVELOPE_VERSION))
    .bind(&b.normalized)
    .bind(&b.outcomes)
    .fetch_all(&mut *conn)
    .await?;
    Ok(inserted.len())
}
