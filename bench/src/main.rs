//! Benchmarks that print figures (never timed tests), issue 8 ("Prove it"):
//!
//! - `publish`, `http`, `insert`: the ceilings: confirmed publishes through `Broker` to a
//!   quorum work queue (no HTTP), a trivial axum handler (no broker), batched `UNNEST`
//!   inserts into a copy of `events`;
//! - `ingress`: `subsync serve --role ingress` (a child process) alone, closed loop;
//! - `drain`: the worker draining a queued backlog, batched vs one transaction per event;
//! - `sustained`: `subsync serve --role all` at a fixed offered rate (open loop);
//! - `dunning-history`: a recorded dunning history for `subsync dunning simulate`;
//! - `backfill`: a pull sync of a large Stripe account against a rate-limited fake list,
//!   killed half way and resumed;
//! - `all`: everything in one go, one markdown table with the machine and the targets.
//!
//! `bash scripts/bench.sh all` (starts RabbitMQ and PostgreSQL if needed, builds the release
//! `subsync` and `subsync-bench`); `bash scripts/bench.sh all --quick` for a smoke run.

mod backfill;
mod ceilings;
mod cpu;
/// Values checked against, and generated from, Stripe's SDK types (the tests' checker).
#[path = "../../src/providers/testing/digest.rs"]
mod digest;
mod drain;
mod dunning_history;
mod env;
mod load;
mod payloads;
mod runs;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use subsync::config::Settings;

use crate::env::Bench;

/// Signature window of the bench sources: requests are signed before a run starts.
pub const TOLERANCE_SECS: u64 = 3600;

#[derive(Parser)]
#[command(name = "subsync-bench")]
struct Cli {
    /// Base configuration (service URLs, pool sizes, publish channels, worker batches).
    #[arg(long, env = "SUBSYNC_CONFIG", default_value = subsync::config::DEFAULT_PATH)]
    config: PathBuf,
    /// The `subsync` binary to run as the service [default: next to this binary].
    #[arg(long)]
    subsync_bin: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// Durations of a closed-loop run.
#[derive(clap::Args, Clone, Copy)]
struct Timing {
    /// Short durations for a smoke run (warm-up 1 s, 4 s measured).
    #[arg(long)]
    quick: bool,
    /// Concurrent connections (in-flight publishes for `publish`).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Warm-up seconds, not measured [default: 3; quick 1].
    #[arg(long)]
    warmup: Option<f64>,
    /// Measured seconds [default: 20; quick 4].
    #[arg(long)]
    duration: Option<f64>,
}

impl Timing {
    fn warmup(&self) -> Duration {
        secs(self.warmup.unwrap_or(if self.quick { 1.0 } else { 3.0 }))
    }
    fn duration(&self) -> Duration {
        secs(self.duration.unwrap_or(if self.quick { 4.0 } else { 20.0 }))
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

#[derive(clap::Subcommand)]
enum Command {
    /// A pull sync of N Stripe invoices against a fake list API at Stripe's test-mode rate
    /// limit, killed half way and resumed: records/s, requests against the minimum, the
    /// share of the rate budget used.
    Backfill {
        #[arg(long, default_value_t = 100_000)]
        records: u64,
        /// The fake's limit, requests per second.
        #[arg(long, default_value_t = backfill::STRIPE_TEST_RATE)]
        rate: u32,
    },
    /// A recorded dunning history of N failures over 90 simulated days, made by subsync's
    /// own dunning code against a seeded model of the providers, kept in its own database
    /// for `subsync dunning simulate`.
    DunningHistory {
        #[arg(long, default_value_t = 10_000)]
        failures: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Worker drain rate of a queued backlog, batched vs one transaction per event.
    Drain {
        /// Backlog size for the batched run.
        #[arg(long, default_value_t = 200_000)]
        events: usize,
        /// Backlog size for the one-transaction-per-event run (it is slower).
        #[arg(long, default_value_t = 20_000)]
        single_events: usize,
    },
    /// Ceiling (a): confirmed publishes through `Broker::publish_single`, no HTTP.
    Publish {
        /// Through the ingress's group commit (`Broker::publish`) instead: (a″).
        #[arg(long)]
        batched: bool,
        #[command(flatten)]
        timing: Timing,
    },
    /// Ceiling (b): a trivial axum server answering 202, no broker, same load generator.
    Http {
        #[command(flatten)]
        timing: Timing,
    },
    /// Ceiling (c): batched UNNEST inserts into a scratch copy of `events`.
    Insert {
        /// Fewer rows (20000) for a smoke run.
        #[arg(long)]
        quick: bool,
        #[command(flatten)]
        insert: InsertArgs,
    },
    /// The ingress alone (`subsync serve --role ingress`, workers off), closed loop.
    Ingress {
        #[command(flatten)]
        timing: Timing,
    },
    /// Ingress and workers together (`subsync serve --role all`) at a fixed offered rate.
    Sustained {
        /// A short run (8 s) for a smoke test.
        #[arg(long)]
        quick: bool,
        /// Diagnostic: the same open loop against `--role ingress` (no workers), to see the
        /// ingress latency without the workers competing for the cores.
        #[arg(long)]
        ingress_only: bool,
        #[command(flatten)]
        sustained: SustainedArgs,
    },
    /// Everything above in one go; prints one markdown table.
    All {
        #[command(flatten)]
        timing: Timing,
        #[command(flatten)]
        insert: InsertArgs,
        #[command(flatten)]
        sustained: SustainedArgs,
        /// Backlog of the batched drain [default: 200000; quick 20000].
        #[arg(long)]
        events: Option<usize>,
        /// Backlog of the one-transaction-per-event drain [default: 20000; quick 2000].
        #[arg(long)]
        single_events: Option<usize>,
        /// Pause between runs, letting the broker settle [default: 5; quick 1].
        #[arg(long)]
        settle: Option<f64>,
        /// Also measure the publish ceiling with this many publishes in flight (what the
        /// broker takes when the client is not the limit); 0 skips it.
        #[arg(long, default_value_t = 512)]
        deep_inflight: usize,
    },
    /// The trivial server of ceiling (b) (run as a child process by `http` and `all`).
    #[command(hide = true)]
    TrivialServer {
        #[arg(long)]
        addr: SocketAddr,
    },
}

#[derive(clap::Args, Clone, Copy)]
struct InsertArgs {
    /// Rows inserted [default: 200000; quick 20000].
    #[arg(long)]
    rows: Option<usize>,
    /// Rows per UNNEST batch (one transaction each) [default: worker.batch_size].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Concurrent connections [default: worker.consumers].
    #[arg(long)]
    insert_concurrency: Option<usize>,
}

#[derive(clap::Args, Clone, Copy)]
struct SustainedArgs {
    /// Offered rate (requests/s), open loop.
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    /// Seconds at the offered rate [default: 60; quick 8].
    #[arg(long)]
    sustained_duration: Option<f64>,
    /// Connections of the sustained run. An open loop measures the server only while the
    /// generator has a free connection for every due request: at 5,000/s, 64 connections
    /// queue requests as soon as latency passes 12.8 ms (rate × latency > 64); 256 leave
    /// room up to 51 ms.
    #[arg(long, default_value_t = 256)]
    sustained_connections: usize,
    /// How long to wait for the workers to commit the backlog after the load (s).
    #[arg(long, default_value_t = 120.0)]
    drain_timeout: f64,
}

impl SustainedArgs {
    fn duration(&self, quick: bool) -> Duration {
        secs(
            self.sustained_duration
                .unwrap_or(if quick { 8.0 } else { 60.0 }),
        )
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    if let Command::TrivialServer { addr } = cli.command {
        return runtime.block_on(ceilings::trivial_server(addr));
    }
    let mut settings = Settings::load(&cli.config)?;
    if std::env::var_os("RUST_LOG").is_none() {
        settings.log.level = "warn".into();
    }
    subsync::telemetry::init_tracing(&settings.log, std::io::stderr);
    let bench = Bench::new(settings, cli.subsync_bin)?;
    let result = runtime.block_on(async {
        let outcome = tokio::select! {
            r = run(&bench, cli.command) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        // Whatever a failed or interrupted run left: child processes were killed when
        // their handles dropped; databases and queues go here.
        bench.cleanup_leftovers().await;
        outcome
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

async fn run(bench: &Bench, command: Command) -> anyhow::Result<()> {
    match command {
        Command::DunningHistory { failures, seed } => {
            let history = dunning_history::generate(bench, failures, seed).await?;
            dunning_history::print(&history);
        }
        Command::Backfill { records, rate } => {
            let r = backfill::backfill(bench, records, rate).await?;
            backfill::print(&r);
        }
        Command::Drain {
            events,
            single_events,
        } => {
            let (batched, single) = drain::drain(bench, events, single_events).await?;
            drain::print(&batched, &single);
        }
        Command::Publish { batched, timing } => {
            let r = ceilings::publish(
                bench,
                timing.connections,
                batched,
                timing.warmup(),
                timing.duration(),
            )
            .await?;
            println!(
                "confirmed publish: {:.0} msg/s ({} in flight, {} channels, {} B mean body, {} failed); \
                 CPU cores: {}",
                r.rate,
                r.inflight,
                r.channels,
                r.mean_body,
                r.failed,
                r.cpu.text()
            );
        }
        Command::Http { timing } => {
            let r = ceilings::http(
                bench,
                timing.connections,
                timing.warmup(),
                timing.duration(),
            )
            .await?;
            println!(
                "trivial HTTP: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, failures: {}; \
                 CPU cores: {} (server as subsync)",
                r.rate(),
                r.pct_ms(0.5),
                r.pct_ms(0.99),
                r.pct_ms(0.999),
                r.failures_text(),
                r.cpu.text()
            );
        }
        Command::Insert { quick, insert } => {
            let r = run_insert(bench, &insert, quick).await?;
            println!(
                "Postgres UNNEST insert: {:.0} rows/s ({} rows, batches of {}, {} connections)",
                r.rate, r.rows, r.batch_size, r.concurrency
            );
        }
        Command::Ingress { timing } => {
            let r = runs::ingress(
                bench,
                timing.connections,
                timing.warmup(),
                timing.duration(),
            )
            .await?;
            println!(
                "ingress alone: {:.0} webhooks/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, \
                 failures: {}, queued {}, peak RSS {}; CPU cores: {}; subsync CPU {:.0} µs/webhook",
                r.load.rate(),
                r.load.pct_ms(0.5),
                r.load.pct_ms(0.99),
                r.load.pct_ms(0.999),
                r.load.failures_text(),
                r.queued,
                mib(r.peak_rss),
                r.load.cpu.text(),
                cpu_per_request(&r.load)
            );
        }
        Command::Sustained {
            quick,
            ingress_only,
            sustained,
        } => {
            let r = run_sustained(bench, &sustained, quick, ingress_only).await?;
            if let Some(started) = r.load.started {
                eprintln!("[sustained] started {}", started.format("%H:%M:%S%.3f"));
            }
            for (second, (p99, max)) in r.load.per_second().iter().enumerate() {
                eprintln!("[sustained] second {second}: p99 {p99:.1} ms, max {max:.1} ms");
            }
            println!(
                "sustained {:.0}/s for {} s: accepted {} (failures: {}), ingress p50 {:.2} ms, \
                 p99 {:.2} ms, p99.9 {:.2} ms; committed {} ({:.0}/s steady, last {:.1} s after \
                 the last request); queue depth max {} final {}; received→committed p50 {:.0} ms \
                 p99 {:.0} ms p99.9 {:.0} ms max {:.0} ms; dead letters {}; peak RSS {}; CPU cores: {}",
                r.rate,
                r.duration.as_secs(),
                r.load.ok_total,
                r.load.failures_text(),
                r.load.pct_ms(0.5),
                r.load.pct_ms(0.99),
                r.load.pct_ms(0.999),
                r.committed,
                r.steady_commit_rate,
                r.tail.as_secs_f64(),
                r.max_depth,
                r.final_depth,
                r.e2e_ms[0],
                r.e2e_ms[1],
                r.e2e_ms[2],
                r.e2e_ms[3],
                r.dead_letters,
                mib(r.peak_rss),
                r.load.cpu.text()
            );
        }
        Command::All {
            timing,
            insert,
            sustained,
            events,
            single_events,
            settle,
            deep_inflight,
        } => {
            let quick = timing.quick;
            let events = events.unwrap_or(if quick { 20_000 } else { 200_000 });
            let single_events = single_events.unwrap_or(if quick { 2_000 } else { 20_000 });
            let settle = secs(settle.unwrap_or(if quick { 1.0 } else { 5.0 }));
            let load_before = env::load_average();
            let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
            let machine = env::machine(bench).await;
            let started = std::time::Instant::now();

            // One publish ceiling, then the pause that lets the broker settle.
            let publish_ceiling = async |label: &str, inflight: usize, batched: bool| {
                eprintln!("[all] {label}...");
                let run =
                    ceilings::publish(bench, inflight, batched, timing.warmup(), timing.duration())
                        .await?;
                eprintln!("[all]     {:.0} per second", run.rate);
                tokio::time::sleep(settle).await;
                anyhow::Ok(run)
            };
            let publish =
                publish_ceiling("(a) confirmed publish ceiling", timing.connections, false).await?;
            let grouped = publish_ceiling(
                "(a\") confirmed publish through the group commit",
                timing.connections,
                true,
            )
            .await?;
            let deep = if deep_inflight > 0 {
                let label = format!("(a') confirmed publish, {deep_inflight} in flight");
                Some(publish_ceiling(&label, deep_inflight, false).await?)
            } else {
                None
            };
            eprintln!("[all] (b) trivial HTTP ceiling...");
            let http = ceilings::http(
                bench,
                timing.connections,
                timing.warmup(),
                timing.duration(),
            )
            .await?;
            eprintln!("[all]     {:.0} req/s", http.rate());
            eprintln!("[all] (c) Postgres insert ceiling...");
            let insert = run_insert(bench, &insert, quick).await?;
            eprintln!("[all]     {:.0} rows/s", insert.rate);
            tokio::time::sleep(settle).await;
            eprintln!("[all] ingress alone...");
            let ingress = runs::ingress(
                bench,
                timing.connections,
                timing.warmup(),
                timing.duration(),
            )
            .await?;
            eprintln!("[all]     {:.0} webhooks/s", ingress.load.rate());
            tokio::time::sleep(settle).await;
            eprintln!("[all] worker drain...");
            let (batched, single) = drain::drain(bench, events, single_events).await?;
            tokio::time::sleep(settle).await;
            eprintln!("[all] sustained...");
            let sustained = run_sustained(bench, &sustained, quick, false).await?;
            let report = Report {
                machine,
                date,
                load_before,
                total: started.elapsed(),
                timing,
                publish,
                grouped,
                deep,
                http,
                insert,
                ingress,
                batched,
                single,
                sustained,
            };
            report.print(bench);
        }
        Command::TrivialServer { .. } => unreachable!("handled before the configuration"),
    }
    Ok(())
}

async fn run_insert(
    bench: &Bench,
    args: &InsertArgs,
    quick: bool,
) -> anyhow::Result<ceilings::InsertCeiling> {
    ceilings::insert(
        bench,
        args.rows.unwrap_or(if quick { 20_000 } else { 200_000 }),
        args.batch_size.unwrap_or(bench.base.worker.batch_size),
        args.insert_concurrency
            .unwrap_or(bench.base.worker.consumers),
    )
    .await
}

async fn run_sustained(
    bench: &Bench,
    args: &SustainedArgs,
    quick: bool,
    ingress_only: bool,
) -> anyhow::Result<runs::SustainedRun> {
    runs::sustained(
        bench,
        args.sustained_connections,
        args.rate,
        args.duration(quick),
        secs(args.drain_timeout),
        ingress_only,
    )
    .await
}

/// CPU time of the server per 2xx answer, in µs.
fn cpu_per_request(load: &load::LoadResult) -> f64 {
    load.cpu.subsync * load.window.as_secs_f64() * 1e6 / load.ok().max(1) as f64
}

fn mib(bytes: Option<u64>) -> String {
    match bytes {
        Some(b) => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
        None => "unknown".into(),
    }
}

/// 12345.6 -> "12,346".
fn thousands(value: f64) -> String {
    let n = value.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn met(ok: bool) -> &'static str {
    if ok { "yes" } else { "**no**" }
}

struct Report {
    machine: String,
    date: String,
    load_before: String,
    total: Duration,
    timing: Timing,
    publish: ceilings::PublishCeiling,
    grouped: ceilings::PublishCeiling,
    deep: Option<ceilings::PublishCeiling>,
    http: load::LoadResult,
    insert: ceilings::InsertCeiling,
    ingress: runs::IngressRun,
    batched: drain::DrainResult,
    single: drain::DrainResult,
    sustained: runs::SustainedRun,
}

impl Report {
    fn print(&self, bench: &Bench) {
        const MIB_100: u64 = 100 * 1024 * 1024;
        let (p, h, i, s) = (&self.publish, &self.http, &self.ingress, &self.sustained);
        let conns = self.timing.connections;
        let secs_measured = self.timing.duration().as_secs_f64();
        let ingress_rate = i.load.rate();
        let vs_publish = ingress_rate / p.rate;
        let vs_grouped = ingress_rate / self.grouped.rate;
        let vs_http = ingress_rate / h.rate();
        let base = &bench.base;
        let rss_ok = |r: Option<u64>| r.is_some_and(|b| b <= MIB_100);
        // Kept up: commits/s of the steady window within 2% of the offered rate, everything
        // committed, the last commit within 5 s of the last request.
        let sustained_ok = s.rate >= 5000.0
            && s.steady_commit_rate >= 0.98 * s.rate
            && s.load.failed() == 0
            && s.committed >= s.load.ok_total as i64
            && s.tail < Duration::from_secs(5);
        let mut rows: Vec<[String; 5]> = Vec::new();
        let mut row = |what: &str, how: String, measured: String, target: &str, ok: &str| {
            rows.push([what.into(), how, measured, target.into(), ok.into()]);
        };
        row(
            "(a) ceiling: confirmed publish",
            format!(
                "`Broker::publish_single` (one message per webhook) to a quorum work queue (same \
                 declaration), {} in flight on {} channels, the ingress's envelopes ({} B mean \
                 body), no HTTP, {secs_measured:.0} s",
                p.inflight, p.channels, p.mean_body
            ),
            format!("{} msg/s", thousands(p.rate)),
            "",
            "",
        );
        let g = &self.grouped;
        row(
            "(a″) confirmed publish, grouped",
            format!(
                "as (a) through `Broker::publish`, the ingress's group commit (webhooks waiting \
                 together go as one message, up to {} each), {} in flight",
                base.amqp.publish_batch_max, g.inflight
            ),
            format!("{} webhooks/s", thousands(g.rate)),
            "",
            "",
        );
        if let Some(d) = &self.deep {
            row(
                "(a′) confirmed publish, deep",
                format!(
                    "as (a) with {} in flight: the broker's rate when the client is not the limit",
                    d.inflight
                ),
                format!("{} msg/s", thousands(d.rate)),
                "",
                "",
            );
        }
        row(
            "(b) ceiling: trivial HTTP",
            format!(
                "axum 202 to `POST /webhooks/{{id}}` (body read, no broker), own process, \
                 {conns} connections closed loop, {secs_measured:.0} s"
            ),
            format!(
                "{} req/s (p50 {:.2} / p99 {:.2} ms)",
                thousands(h.rate()),
                h.pct_ms(0.5),
                h.pct_ms(0.99)
            ),
            "",
            "",
        );
        row(
            "(c) ceiling: Postgres batched insert",
            format!(
                "archive's `UNNEST` insert into `LIKE events INCLUDING ALL`, {} rows/transaction, \
                 {} connections, {} rows",
                self.insert.batch_size,
                self.insert.concurrency,
                thousands(self.insert.rows as f64)
            ),
            format!("{} rows/s", thousands(self.insert.rate)),
            "",
            "",
        );
        row(
            "CPU during (a)",
            "average cores; the publisher is the bench process (\"load generator\"); other = \
             kernel softirq (loopback TCP), kernel threads, other users"
                .into(),
            p.cpu.text(),
            "",
            "",
        );
        row("CPU during (a″)", "as for (a)".into(), g.cpu.text(), "", "");
        row(
            "CPU during (b)",
            "average cores; \"subsync\" is the trivial server".into(),
            h.cpu.text(),
            "",
            "",
        );
        row(
            "ingress alone: verified webhooks/s",
            format!(
                "`subsync serve --role ingress` child, workers off, {conns} connections closed \
                 loop, 9 providers round robin ({} B mean body), {secs_measured:.0} s after {:.0} s warm-up",
                i.mean_body,
                self.timing.warmup().as_secs_f64()
            ),
            format!("{} req/s", thousands(ingress_rate)),
            "≥ 15,000",
            met(ingress_rate >= 15_000.0),
        );
        row(
            "ingress / ceiling (a)",
            "confirmed-publish ceiling".into(),
            format!("{:.0}%", vs_publish * 100.0),
            "≥ 75%",
            met(vs_publish >= 0.75),
        );
        row(
            "ingress / ceiling (a″)",
            "the same publishes, grouped the same way, without HTTP".into(),
            format!("{:.0}%", vs_grouped * 100.0),
            "",
            "",
        );
        row(
            "ingress / ceiling (b)",
            "trivial-HTTP ceiling".into(),
            format!("{:.0}%", vs_http * 100.0),
            "",
            "",
        );
        row(
            "ingress latency p50 / p99 / p99.9",
            "send → whole answer, 2xx only".into(),
            format!(
                "{:.2} / {:.2} / {:.2} ms",
                i.load.pct_ms(0.5),
                i.load.pct_ms(0.99),
                i.load.pct_ms(0.999)
            ),
            "p99 ≤ 15 ms",
            met(i.load.pct_ms(0.99) <= 15.0),
        );
        row(
            "ingress failures",
            format!(
                "non-2xx and transport errors; in the work queue after the run: {} webhooks for \
                 {} 2xx answers (warm-up included)",
                thousands(i.queued as f64),
                thousands(i.load.ok_total as f64)
            ),
            i.load.failures_text(),
            "",
            "",
        );
        row(
            "CPU during ingress alone",
            format!(
                "average cores; subsync {:.0} µs CPU per webhook",
                cpu_per_request(&i.load)
            ),
            i.load.cpu.text(),
            "",
            "",
        );
        row(
            "ingress peak RSS",
            "`VmHWM` of the child at the end".into(),
            mib(i.peak_rss),
            "≤ 100 MiB",
            met(rss_ok(i.peak_rss)),
        );
        row(
            "worker drain",
            format!(
                "backlog of {} signed Stripe webhooks, batches of {}, {} consumers, ledger verified",
                thousands(self.batched.events as f64),
                self.batched.batch_size,
                self.batched.consumers
            ),
            format!("{} events/s", thousands(self.batched.drain_rate)),
            "≥ 10,000",
            met(self.batched.drain_rate >= 10_000.0),
        );
        row(
            "drain, one transaction per event",
            format!(
                "backlog of {}, batch size 1",
                thousands(self.single.events as f64)
            ),
            format!(
                "{} events/s (batched = {:.1}×)",
                thousands(self.single.drain_rate),
                self.batched.drain_rate / self.single.drain_rate
            ),
            "",
            "",
        );
        row(
            "sustained: end to end",
            format!(
                "`subsync serve --role all` child ({} consumers × {}), open loop {}/s for {} s, \
                 {} connections; commits/s between 10% and 90% of the run (met: within 2% of \
                 the offered rate, all committed, the last within 5 s)",
                base.worker.consumers,
                base.worker.batch_size,
                thousands(s.rate),
                s.duration.as_secs(),
                s.connections
            ),
            format!(
                "{} events/s; {} of {} accepted committed, the last {:.1} s after the last request",
                thousands(s.steady_commit_rate),
                thousands(s.committed as f64),
                thousands(s.load.ok_total as f64),
                s.tail.as_secs_f64()
            ),
            "≥ 5,000",
            met(sustained_ok),
        );
        row(
            "sustained: ingress latency p50 / p99 / p99.9",
            "from each request's due time (queueing included)".into(),
            format!(
                "{:.2} / {:.2} / {:.2} ms",
                s.load.pct_ms(0.5),
                s.load.pct_ms(0.99),
                s.load.pct_ms(0.999)
            ),
            "p99 ≤ 25 ms",
            met(s.load.pct_ms(0.99) <= 25.0),
        );
        row(
            "sustained: failures",
            "non-2xx, transport errors, never sent".into(),
            s.load.failures_text(),
            "",
            "",
        );
        row(
            "sustained: queue depth max / final",
            "`Broker::stats` every second; final = at the end of the load".into(),
            format!(
                "{} / {}",
                thousands(s.max_depth as f64),
                thousands(s.final_depth as f64)
            ),
            "",
            "",
        );
        row(
            "sustained: received → committed p50 / p99 / p99.9 / max",
            "`events.processed_at − received_at` (set by the service)".into(),
            format!(
                "{:.0} / {:.0} / {:.0} / {:.0} ms",
                s.e2e_ms[0], s.e2e_ms[1], s.e2e_ms[2], s.e2e_ms[3]
            ),
            "",
            "",
        );
        row(
            "sustained: dead letters",
            "dead-letter queue after the run".into(),
            thousands(s.dead_letters as f64),
            "",
            "",
        );
        row(
            "CPU during sustained",
            "average cores over the load".into(),
            s.load.cpu.text(),
            "",
            "",
        );
        row(
            "sustained peak RSS",
            "`VmHWM` of the `--role all` child at the end".into(),
            mib(s.peak_rss),
            "≤ 100 MiB",
            met(rss_ok(s.peak_rss)),
        );

        println!();
        println!("### subsync benchmark ({})", self.date);
        println!();
        println!("Machine: {}.", self.machine);
        let args: Vec<String> = std::env::args().skip(1).collect();
        println!("Command: `subsync-bench {}`.", args.join(" "));
        println!(
            "Load average before the run: {}. Whole run: {:.0} s. Everything (load generator, \
             subsync, RabbitMQ, PostgreSQL) on this one machine.",
            self.load_before,
            self.total.as_secs_f64()
        );
        println!();
        println!("| measurement | how | measured | target | met |");
        println!("|---|---|---:|---|:---:|");
        for [what, how, measured, target, ok] in rows {
            println!("| {what} | {how} | {measured} | {target} | {ok} |");
        }
    }
}
