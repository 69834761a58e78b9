use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};

use super::parse_time;
use crate::config::{RetryPolicySettings, Settings};
use crate::db::Db;
use crate::dunning::{policy::RetryPolicy, simulate};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Try a retry policy on the recorded history: per decline bucket, the retries it would
    /// make and when, those the current policy did not make, and the outcomes observed after
    /// comparable retries. Reads only; calls no provider.
    Simulate {
        /// The candidate policy: a TOML file with the fields of a source's `retry`.
        #[arg(long)]
        policy: PathBuf,
        /// Only this source's failures.
        #[arg(long)]
        source: Option<String>,
        /// Failures since this time: RFC 3339 or an age (`90d`).
        #[arg(long, value_parser = parse_time)]
        since: Option<DateTime<Utc>>,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(settings: &Settings, command: Command) -> anyhow::Result<ExitCode> {
    let Command::Simulate {
        policy,
        source,
        since,
        json,
    } = command;
    let candidate = RetryPolicySettings::load(&policy)
        .map_err(|e| anyhow::anyhow!("{}: {e}", policy.display()))?;
    let db = Db::connect_lazy(&settings.database)?;
    let cycles = simulate::load(&db, source.as_deref(), since).await?;
    let mut report = simulate::simulate(&RetryPolicy::new(&candidate), &cycles);
    report.since = since;
    report.source = source;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(ExitCode::SUCCESS)
}
