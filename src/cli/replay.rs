use std::process::ExitCode;

use chrono::{DateTime, Utc};

use super::{Spinner, dlq::status, parse_time};
use crate::app::Catalogue;
use crate::config::Settings;
use crate::db::Db;
use crate::ops::{Actor, replay};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    source: String,
    /// Events received at or after (RFC 3339 or an age like 7d).
    #[arg(long, value_parser = parse_time)]
    since: DateTime<Utc>,
    /// Events received before (default: now).
    #[arg(long, value_parser = parse_time)]
    until: Option<DateTime<Utc>>,
    /// Show what would change; change nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
}

pub async fn run(settings: &Settings, args: Args) -> anyhow::Result<ExitCode> {
    let db = Db::connect_lazy(&settings.database)?;
    let Catalogue { sources, dunning } = Catalogue::new(settings)?;
    let request = replay::ReplayRequest {
        source_id: args.source,
        since: args.since,
        until: args.until,
        dry_run: args.dry_run,
    };
    let spinner = Spinner::new(args.json);
    let result =
        replay::replay_archived(&db, &sources, &dunning, &request, &Actor::cli(), &spinner).await;
    spinner.finish();
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    for e in &report.changes {
        for c in &e.changes {
            println!(
                "WOULD {} {} {}: {} -> {}",
                e.event_id,
                c.entity,
                c.id,
                status(&c.before),
                status(&c.after)
            );
        }
    }
    for f in &report.failures {
        println!(
            "FAILED {} ({})",
            f.event_id,
            f.error.as_deref().unwrap_or("-")
        );
    }
    if report.dry_run {
        println!(
            "dry run: {} event(s) read, {} would change the ledger, {} no longer normalize",
            report.events, report.changed, report.failed
        );
    } else {
        println!(
            "{} event(s) replayed: {:?}; {} no longer normalize",
            report.events, report.outcomes, report.failed
        );
    }
    Ok(ExitCode::SUCCESS)
}
