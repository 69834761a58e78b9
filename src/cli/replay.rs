use std::process::ExitCode;

use chrono::{DateTime, Utc};

use super::{Spinner, dlq::status, parse_time};
use crate::app::Catalogue;
use crate::config::Settings;
use crate::db::Db;
use crate::dunning::schedule::Dunning;
use crate::ops::{Actor, correct::correct_archived, replay};
use crate::providers::Sources;

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
    /// Recompute each subscription (or attempt without one) the window's events touch from
    /// ALL its archived events and correct the ledger to it: statuses may go down, the
    /// journal gets compensating `correction` entries (never edits).
    #[arg(long)]
    correct: bool,
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
    if args.correct {
        return correct(&db, &sources, &dunning, &request, args.json).await;
    }
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

/// `--correct`: the differences (attempt and subscription statuses, each account's
/// balance per subscription) before → after, and what was appended.
async fn correct(
    db: &Db,
    sources: &Sources,
    dunning: &Dunning,
    request: &replay::ReplayRequest,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let spinner = Spinner::new(json);
    let result = correct_archived(db, sources, dunning, request, &Actor::cli(), &spinner).await;
    spinner.finish();
    let report = result?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if report.dry_run {
        "WOULD CORRECT"
    } else {
        "CORRECTED"
    };
    for c in &report.corrections {
        let unit = match (&c.subscription_id, &c.attempt_id) {
            (Some(s), _) => format!("subscription {s}"),
            (None, Some(a)) => format!("attempt {a} (no subscription)"),
            (None, None) => "-".to_owned(),
        };
        println!("{verb} {unit}");
        for change in &c.changes {
            println!(
                "  {} {}: {}",
                change.entity,
                change.id,
                differences(&change.before, &change.after)
            );
        }
        for b in &c.balances {
            println!(
                "  balance {} {}: {} -> {}",
                b.account, b.currency, b.before, b.after
            );
        }
        match (c.appended, report.dry_run) {
            (0, _) => {}
            (n, true) => println!("  {n} journal {} would be appended", entries(n)),
            (n, false) => println!("  {n} journal {} appended: {:?}", entries(n), c.entry_ids),
        }
    }
    for f in &report.failures {
        println!(
            "FAILED {} ({})",
            f.event_id,
            f.error.as_deref().unwrap_or("-")
        );
    }
    let (prefix, outcome, appended) = if report.dry_run {
        ("dry run: ", "nothing changed", "would be appended")
    } else {
        ("", "corrected", "appended")
    };
    println!(
        "{prefix}{} event(s) in the window; {} subscription(s) or attempt(s) recomputed from {} archived event(s); {} differ ({outcome}); {} journal {} {appended}; {} no longer normalize",
        report.events,
        report.examined,
        report.recomputed_events,
        report.corrected,
        report.appended,
        entries(report.appended),
        report.failed
    );
    Ok(ExitCode::SUCCESS)
}

fn entries(n: u64) -> &'static str {
    if n == 1 { "entry" } else { "entries" }
}

/// The status `a -> b` when it changed, then each other column that did; `(none)` for a
/// row that appears or goes.
fn differences(before: &Option<serde_json::Value>, after: &Option<serde_json::Value>) -> String {
    let (Some(b), Some(a)) = (
        before.as_ref().and_then(|v| v.as_object()),
        after.as_ref().and_then(|v| v.as_object()),
    ) else {
        return format!("{} -> {}", status(before), status(after));
    };
    let mut columns: Vec<&String> = b.keys().chain(a.keys()).collect();
    columns.sort();
    columns.dedup();
    columns.sort_by_key(|c| c.as_str() != "status");
    let show = |v: Option<&serde_json::Value>| match v {
        None | Some(serde_json::Value::Null) => "null".to_owned(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    columns
        .into_iter()
        .filter(|c| b.get(*c) != a.get(*c))
        .map(|c| format!("{c} {} -> {}", show(b.get(c)), show(a.get(c))))
        .collect::<Vec<_>>()
        .join(", ")
}
