//! Worker drain: fills the work queue with signed, verified and queued Stripe webhooks,
//! then measures how fast the worker reconciles the backlog into the ledger, batched and
//! one transaction per event, in the same run against the same broker and database.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use futures_util::StreamExt;
use subsync::{
    config::{ProviderKind, SourceSettings},
    db::Db,
    providers::{Source, Sources, Unverified},
    queue::Broker,
    worker::Worker,
};
use tokio_util::sync::CancellationToken;

use crate::env::Bench;

pub struct DrainResult {
    pub events: usize,
    pub batch_size: usize,
    pub consumers: usize,
    pub publish_rate: f64,
    pub drain_rate: f64,
}

/// Both runs: batched (the configured batch size) and one transaction per event.
pub async fn drain(
    bench: &Bench,
    events: usize,
    single_events: usize,
) -> anyhow::Result<(DrainResult, DrainResult)> {
    let batched = drain_once(bench, "b", events, bench.base.worker.batch_size).await?;
    let single = drain_once(bench, "s", single_events, 1).await?;
    Ok((batched, single))
}

pub fn print(batched: &DrainResult, single: &DrainResult) {
    println!();
    println!("| run | events | batch size | consumers | publish (events/s) | drain (events/s) |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, r) in [("batched", batched), ("one transaction per event", single)] {
        println!(
            "| {name} | {} | {} | {} | {:.0} | {:.0} |",
            r.events, r.batch_size, r.consumers, r.publish_rate, r.drain_rate
        );
    }
    println!(
        "\nbatched / one-transaction-per-event = {:.2}x",
        batched.drain_rate / single.drain_rate
    );
}

async fn drain_once(
    bench: &Bench,
    tag: &str,
    n: usize,
    batch_size: usize,
) -> anyhow::Result<DrainResult> {
    let scratch = bench.scratch(&format!("drain{tag}"), true).await?;
    let result = drain_in(&scratch.settings, &scratch.name, n, batch_size).await;
    bench.release(scratch).await?;
    result
}

async fn drain_in(
    settings: &subsync::config::Settings,
    run: &str,
    n: usize,
    batch_size: usize,
) -> anyhow::Result<DrainResult> {
    let mut settings = settings.clone();
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
    let result = async {
        anyhow::ensure!(
            broker.wait_connected(Duration::from_secs(20)).await,
            "broker unreachable"
        );

        eprintln!("[{run}] signing, verifying and queueing {n} webhooks...");
        let started = Instant::now();
        let published = futures_util::stream::iter((0..n).map(|i| {
            let envelope = signed_envelope(source, i);
            let broker = &broker;
            async move { broker.publish_single(&envelope).await }
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
        let (mut last, mut last_progress) = (0, Instant::now());
        loop {
            let count = db.count_events(None).await?;
            if count >= n as i64 {
                break;
            }
            if count > last {
                (last, last_progress) = (count, Instant::now());
            }
            anyhow::ensure!(
                last_progress.elapsed() < Duration::from_secs(60),
                "the drain stalled at {count} of {n} events"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let drain_rate = n as f64 / started.elapsed().as_secs_f64();
        workers.cancel();
        for handle in handles {
            handle.await??;
        }
        anyhow::ensure!(
            db.verify_ledger().await?.is_empty(),
            "ledger invariants broken"
        );
        eprintln!("[{run}] {drain_rate:.0} events/s");
        Ok(DrainResult {
            events: n,
            batch_size,
            consumers: settings.worker.consumers,
            publish_rate,
            drain_rate,
        })
    }
    .await;
    stop.cancel();
    result
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
