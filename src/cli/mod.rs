//! Command-line entry points: one file per command, no business logic here.

mod ledger;
mod migrate;
mod retries;
mod send_test;
mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
        }
    }
}
