use std::process::ExitCode;

use chrono::{DateTime, Utc};

use super::{Spinner, connect_broker, parse_time};
use crate::app::Catalogue;
use crate::config::Settings;
use crate::db::Db;
use crate::ops::{Actor, dlq};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Dead letters: id, source, provider event id, reason, deaths, first/last death.
    List {
        #[command(flatten)]
        filter: Filter,
        #[arg(long)]
        json: bool,
    },
    /// One dead letter: headers, reason, the raw payload (pretty JSON where it is JSON).
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Move matching dead letters back to the work queue (each leaves the dead-letter
    /// queue only after its republish was confirmed).
    Replay {
        #[command(flatten)]
        filter: Filter,
        /// Show what each would change in the ledger; move nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete matching dead letters for good.
    Purge {
        #[command(flatten)]
        filter: Filter,
        /// Required: purging cannot be undone.
        #[arg(long)]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct Filter {
    /// Dead-letter ids (`source:event_id`), repeatable.
    #[arg(long = "id")]
    ids: Vec<String>,
    #[arg(long)]
    source: Option<String>,
    /// A case-insensitive part of the reason.
    #[arg(long)]
    reason: Option<String>,
    /// Dead-lettered at or after (RFC 3339 or an age like 36h).
    #[arg(long, value_parser = parse_time)]
    since: Option<DateTime<Utc>>,
    /// Dead-lettered before (RFC 3339 or an age).
    #[arg(long, value_parser = parse_time)]
    until: Option<DateTime<Utc>>,
    #[arg(long)]
    limit: Option<u64>,
}

impl From<Filter> for dlq::DlqFilter {
    fn from(f: Filter) -> Self {
        Self {
            ids: f.ids,
            source: f.source,
            reason: f.reason,
            since: f.since,
            until: f.until,
            limit: f.limit,
        }
    }
}

pub async fn run(settings: &Settings, command: Command) -> anyhow::Result<ExitCode> {
    if let Command::Purge { yes: false, .. } = &command {
        anyhow::bail!("{}", crate::ops::OpsError::NotConfirmed);
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let broker = connect_broker(settings, &stop).await?;
    let db = Db::connect_lazy(&settings.database)?;
    let result = execute(settings, command, &broker, &db).await;
    stop.cancel();
    result
}

async fn execute(
    settings: &Settings,
    command: Command,
    broker: &crate::queue::Broker,
    db: &Db,
) -> anyhow::Result<ExitCode> {
    match command {
        Command::List { filter, json } => {
            let letters = dlq::list(broker, &filter.into()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<40} {:<14} {:>6} {:<25} {:<25} REASON",
                "ID", "SOURCE", "DEATHS", "FIRST DEATH", "LAST DEATH"
            );
            let time = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or("-".into());
            for l in &letters {
                println!(
                    "{:<40} {:<14} {:>6} {:<25} {:<25} {}",
                    l.id,
                    l.source_id.as_deref().unwrap_or("-"),
                    l.deaths,
                    time(l.first_death_at),
                    time(l.last_death_at),
                    l.reason.as_deref().unwrap_or("-")
                );
            }
            println!("{} dead letter(s)", letters.len());
        }
        Command::Show { id, json } => {
            let Some(letter) = dlq::show(broker, &id).await? else {
                anyhow::bail!("no dead letter {id:?}");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&letter)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("id:      {}", letter.summary.id);
            println!(
                "reason:  {}",
                letter.summary.reason.as_deref().unwrap_or("-")
            );
            println!("deaths:  {}", letter.summary.deaths);
            println!("headers:");
            for (name, value) in &letter.headers {
                println!("  {name}: {value}");
            }
            println!("payload:");
            match (&letter.body, &letter.body_base64) {
                (_, Some(b64)) => println!("(binary, base64) {b64}"),
                (serde_json::Value::String(text), None) => println!("{text}"),
                (json, None) => println!("{}", serde_json::to_string_pretty(json)?),
            }
        }
        Command::Replay {
            filter,
            dry_run,
            json,
        } => {
            let Catalogue { sources, dunning } = Catalogue::new(settings)?;
            let ctx = dlq::Context {
                broker,
                db,
                sources: &sources,
                dunning: &dunning,
            };
            let spinner = Spinner::new(json);
            let result = dlq::replay(&ctx, &filter.into(), dry_run, &Actor::cli(), &spinner).await;
            spinner.finish();
            let report = result?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(ExitCode::SUCCESS);
            }
            for m in &report.messages {
                println!(
                    "{:<22} {}{}",
                    m.action,
                    m.id,
                    m.error
                        .as_ref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                );
                for c in &m.changes {
                    println!(
                        "    {} {}: {} -> {}",
                        c.entity,
                        c.id,
                        status(&c.before),
                        status(&c.after)
                    );
                }
            }
            if dry_run {
                println!(
                    "dry run: {} matched, {} would replay; nothing moved",
                    report.matched, report.replayed
                );
            } else {
                println!(
                    "{} matched: {} replayed, {} removed as already archived",
                    report.matched, report.replayed, report.already_archived
                );
            }
        }
        Command::Purge { filter, yes, json } => {
            let report = dlq::purge(broker, db, &filter.into(), yes, &Actor::cli()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("purged {} dead letter(s)", report.purged);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The `status` of a ledger row as shown in a change, or `(none)`.
pub(super) fn status(row: &Option<serde_json::Value>) -> String {
    row.as_ref()
        .and_then(|r| r.get("status"))
        .map(|s| s.to_string())
        .unwrap_or_else(|| "(none)".to_owned())
}
