//! Command-line entry points: one file per command, no business logic here.

mod dlq;
mod dunning;
mod ledger;
mod migrate;
mod replay;
mod retries;
mod send_test;
mod serve;
mod sync;

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::queue::Broker;

use crate::config::{DEFAULT_PATH, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "subsync",
    version,
    about = "Webhook-driven subscription-sync worker"
)]
pub struct Cli {
    /// Configuration file (TOML); `SUBSYNC__SECTION__KEY` variables override it.
    #[arg(long, global = true, env = "SUBSYNC_CONFIG", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: ingress, workers, admin listener.
    Serve(serve::Args),
    /// Apply pending database migrations and exit.
    Migrate,
    /// Sign a sample (or given) payload with a source's secret and post it to the ingress.
    SendTest(send_test::Args),
    /// Ledger views and checks.
    #[command(subcommand)]
    Ledger(ledger::Command),
    /// Payment retries (dunning).
    #[command(subcommand)]
    Retries(retries::Command),
    /// Retry policies: try one on the recorded history.
    #[command(subcommand)]
    Dunning(dunning::Command),
    /// Pull a source's records from its list API and heal what webhooks missed.
    Sync(sync::Args),
    /// The dead-letter queue: list, show, replay, purge.
    #[command(subcommand)]
    Dlq(dlq::Command),
    /// Re-run a source's archived events through reconciliation (after a mapping fix).
    Replay(replay::Args),
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<std::process::ExitCode> {
        let settings = Settings::load(&self.config)?;
        crate::telemetry::init_tracing(&settings.log, std::io::stderr);
        match self.command {
            Command::Serve(args) => serve::run(&settings, args).await,
            Command::Migrate => migrate::run(&settings).await,
            Command::SendTest(args) => send_test::run(&settings, args).await,
            Command::Ledger(command) => ledger::run(&settings, command).await,
            Command::Retries(command) => retries::run(&settings, command).await,
            Command::Dunning(command) => dunning::run(&settings, command).await,
            Command::Sync(args) => sync::run(&settings, args).await,
            Command::Dlq(command) => dlq::run(&settings, command).await,
            Command::Replay(args) => replay::run(&settings, args).await,
        }
    }
}

/// Connects to the broker for a command, or fails clearly.
async fn connect_broker(settings: &Settings, stop: &CancellationToken) -> anyhow::Result<Broker> {
    let broker = Broker::start(&settings.amqp, stop.clone());
    if !broker.wait_connected(Duration::from_secs(10)).await {
        anyhow::bail!("the broker is unreachable; nothing was done");
    }
    Ok(broker)
}

/// A spinner with a message on a terminal; hidden otherwise or when `hidden` (`--json`).
struct Spinner(ProgressBar);

impl Spinner {
    fn new(hidden: bool) -> Self {
        if hidden {
            return Self(ProgressBar::hidden());
        }
        let bar = ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("a valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Self(bar)
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl crate::sync::Progress for Spinner {
    fn page(&self, r: &crate::sync::SyncReport, pace: &crate::sync::Pace) {
        let eta = match pace.eta {
            Some(eta) => format!(
                " · {} left in this listing, ETA {}",
                pace.remaining.unwrap_or_default(),
                humantime::format_duration(Duration::from_secs(eta.as_secs()))
            ),
            None => String::new(),
        };
        self.0.set_message(format!(
            "pages {} · records {} · changed {} · {:.0} records/s{eta}",
            r.pages, r.records, r.changed, pace.records_per_second
        ));
    }
}

impl crate::ops::Progress for Spinner {
    fn step(&self, done: u64) {
        self.0.set_message(format!("{done} done"));
    }
}

/// RFC 3339, or an age before now (`36h`, `7d`).
fn parse_time(value: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(value) {
        return Ok(time.with_timezone(&Utc));
    }
    let age = humantime::parse_duration(value)
        .map_err(|e| format!("{value:?} is neither RFC 3339 nor an age like 36h or 7d: {e}"))?;
    let age = chrono::Duration::from_std(age).map_err(|e| e.to_string())?;
    Utc::now()
        .checked_sub_signed(age)
        .ok_or_else(|| format!("{value:?} is too far back"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_an_age() {
        assert_eq!(
            parse_time("2026-11-01T00:00:00Z").unwrap(),
            "2026-11-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        let day_ago = parse_time("1d").unwrap();
        let age = Utc::now() - day_ago;
        assert!(
            (age - chrono::Duration::days(1)).num_seconds().abs() < 5,
            "{age}"
        );
        assert!(parse_time("yesterday").is_err());
    }
}
