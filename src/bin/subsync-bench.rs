//! Benchmarks that print figures (never timed tests). `drain`: fills the work queue with
//! signed, verified and queued Stripe webhooks, then measures how fast the worker
//! reconciles the backlog into the ledger, batched and one transaction per event, in the
//! same run against the same broker and database.
//!
//! `scripts/bench.sh drain --events 100000` (starts RabbitMQ and PostgreSQL if needed).

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;
use secrecy::ExposeSecret;
use sqlx::Connection;
use subsync::{
    config::{ProviderKind, Settings, SourceSettings},
    ledger::Db,
    providers::{Source, Sources, Unverified},
    queue::Broker,
    worker::Worker,
};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "subsync-bench")]
struct Cli {
    #[arg(long, env = "SUBSYNC_CONFIG", default_value = subsync::config::DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Worker drain rate of a queued backlog, batched vs one transaction per event.
    Drain {
        /// Backlog size for the batched run.
        #[arg(long, default_value_t = 100_000)]
        events: usize,
        /// Backlog size for the one-transaction-per-event run (it is slower).
        #[arg(long, default_value_t = 20_000)]
        single_events: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(&cli.config)?;
    subsync::telemetry::init_tracing(&settings.log, std::io::stderr);
    match cli.command {
        Command::Drain {
            events,
            single_events,
        } => drain(&settings, events, single_events).await,
    }
}

async fn drain(settings: &Settings, events: usize, single_events: usize) -> anyhow::Result<()> {
    let run = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_secs();
    let batched = drain_once(
        settings,
        &format!("b{run}"),
        events,
        settings.worker.batch_size,
    )
    .await?;
    let single = drain_once(settings, &format!("s{run}"), single_events, 1).await?;
    println!();
    println!("| run | events | batch size | consumers | publish (events/s) | drain (events/s) |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, r) in [
        ("batched", &batched),
        ("one transaction per event", &single),
    ] {
        println!(
            "| {name} | {} | {} | {} | {:.0} | {:.0} |",
            r.events, r.batch_size, settings.worker.consumers, r.publish_rate, r.drain_rate
        );
    }
    println!(
        "\nbatched / one-transaction-per-event = {:.2}x",
        batched.drain_rate / single.drain_rate
    );
    Ok(())
}

struct DrainResult {
    events: usize,
    batch_size: usize,
    publish_rate: f64,
    drain_rate: f64,
}

async fn drain_once(
    settings: &Settings,
    run: &str,
    n: usize,
    batch_size: usize,
) -> anyhow::Result<DrainResult> {
    let mut settings = settings.clone();
    let name = format!("subsync_bench_{run}");
    let admin_url = settings.database.url.expose_secret().to_owned();
    settings.amqp.prefix = name.clone();
    settings.database.url = fresh_database(&admin_url, &name).await?.into();
    settings.worker.batch_size = batch_size;
    let stripe = SourceSettings {
        id: "stripe".into(),
        provider: ProviderKind::Stripe,
        secrets: vec!["whsec_bench_secret".to_owned().into()],
        tolerance_secs: None,
        basic_auth: None,
        allow_ips: None,
        hmac: None,
        retry: Default::default(),
        api: None,
        sync: None,
    };
    let sources = Arc::new(
        Sources::from_settings(std::slice::from_ref(&stripe)).map_err(anyhow::Error::msg)?,
    );
    let source = sources.get("stripe").expect("configured");
    let db = Db::connect_lazy(&settings.database)?;
    db.migrate().await?;
    let stop = CancellationToken::new();
    let broker = Broker::start(&settings.amqp, stop.clone());
    anyhow::ensure!(
        broker.wait_connected(Duration::from_secs(20)).await,
        "broker unreachable"
    );

    eprintln!("[{run}] signing, verifying and queueing {n} webhooks...");
    let started = Instant::now();
    let published = futures_util::stream::iter((0..n).map(|i| {
        let envelope = signed_envelope(source, i);
        let broker = &broker;
        async move { broker.publish(&envelope).await }
    }))
    .buffer_unordered(512)
    .filter(|r| std::future::ready(r.is_ok()))
    .count()
    .await;
    anyhow::ensure!(
        published == n,
        "only {published} of {n} publishes were confirmed"
    );
    let publish_rate = n as f64 / started.elapsed().as_secs_f64();

    eprintln!("[{run}] draining with batch size {batch_size}...");
    let started = Instant::now();
    let workers = CancellationToken::new();
    let worker = Worker::new(
        broker.clone(),
        db.clone(),
        sources.clone(),
        Default::default(),
        settings.worker.clone(),
    );
    let handles: Vec<_> = (0..settings.worker.consumers)
        .map(|i| tokio::spawn(worker.clone().run(i, workers.clone())))
        .collect();
    while db.count_events(None).await? < n as i64 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drain_rate = n as f64 / started.elapsed().as_secs_f64();
    workers.cancel();
    for handle in handles {
        handle.await?;
    }
    anyhow::ensure!(
        db.verify_ledger().await?.is_empty(),
        "ledger invariants broken"
    );
    broker.delete_topology().await?;
    stop.cancel();
    drop_database(&admin_url, &name).await?;
    eprintln!("[{run}] {drain_rate:.0} events/s");
    Ok(DrainResult {
        events: n,
        batch_size,
        publish_rate,
        drain_rate,
    })
}

/// A Stripe webhook as the ingress would queue it: signed, then verified.
fn signed_envelope(source: &Source, i: usize) -> subsync::envelope::Envelope {
    let (sub, invoice) = (i % 10_000, i / 3);
    let kind = [
        "invoice.payment_failed",
        "invoice.payment_failed",
        "invoice.paid",
    ][i % 3];
    let id = format!("evt_{i}");
    let body = serde_json::to_vec(&serde_json::json!({
        "id": id, "object": "event", "type": kind, "created": 1_700_000_000 + i,
        "data": { "object": {
            "id": format!("in_{invoice}"), "object": "invoice", "customer": format!("cus_{sub}"),
            "subscription": format!("sub_{sub}"), "amount_due": 1999, "amount_paid": if kind == "invoice.paid" { 1999 } else { 0 },
            "currency": "usd", "attempt_count": i % 3 + 1, "status": "open",
        } }
    }))
    .expect("static JSON");
    let now = SystemTime::now();
    let mut headers = axum::http::HeaderMap::new();
    for (name, value) in source.sign(&id, &body, now) {
        headers.insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let body = Bytes::from(body);
    let request = Unverified {
        headers: &headers,
        body: &body,
        peer: None,
    };
    let verified = source
        .verify(request, Some("application/json".into()), now)
        .expect("signed");
    verified.envelope().clone()
}

/// Creates `name` next to the configured database and returns its URL.
async fn fresh_database(url: &str, name: &str) -> anyhow::Result<String> {
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .context("connecting to PostgreSQL")?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    let (prefix, _) = url.rsplit_once('/').context("database URL has no path")?;
    Ok(format!("{prefix}/{name}"))
}

async fn drop_database(url: &str, name: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await?;
    Ok(())
}
