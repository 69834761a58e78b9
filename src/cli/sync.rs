use std::process::ExitCode;

use chrono::{DateTime, Utc};

use super::{Spinner, connect_broker, parse_time};
use crate::app::Catalogue;
use crate::config::Settings;
use crate::db::Db;
use crate::sync::{RunOptions, SyncReport, Syncer};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The source to sync (its `api` and list API are used).
    #[arg(long)]
    source: String,
    /// Read records from this time: RFC 3339 (`2026-11-01T00:00:00Z`) or an age (`36h`,
    /// `7d`). Default: from the last complete run's watermark minus the look-back window,
    /// or everything on a first run; an unfinished run is resumed.
    #[arg(long, value_parser = parse_time)]
    since: Option<DateTime<Utc>>,
    /// Show what would change in the ledger; queue nothing, store nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// After the run, wait up to SECS (default 60) for the worker to apply what the run
    /// queued, so the summary counts what changed in the ledger.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "60")]
    wait: Option<u64>,
}

pub async fn run(settings: &Settings, args: Args) -> anyhow::Result<ExitCode> {
    let db = Db::connect_lazy(&settings.database)?;
    db.migrate().await?;
    let broker_stop = tokio_util::sync::CancellationToken::new();
    let broker = match args.dry_run {
        true => None,
        false => Some(connect_broker(settings, &broker_stop).await?),
    };
    let Catalogue { sources, dunning } = Catalogue::new(settings)?;
    let syncer = Syncer::new(settings, db, broker, sources, dunning);
    let options = RunOptions {
        since: args.since,
        dry_run: args.dry_run,
        wait: args.wait.map(std::time::Duration::from_secs),
    };
    let spinner = Spinner::new(args.json);
    let result = syncer.run(&args.source, &options, &spinner).await;
    spinner.finish();
    broker_stop.cancel();
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_summary(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(r: &SyncReport) {
    let verb = if r.dry_run { "would change" } else { "changed" };
    for change in &r.changes {
        match &change.malformed {
            Some(reason) => println!("MALFORMED {} ({reason})", change.key),
            None => {
                for c in &change.changes {
                    let before = c
                        .before
                        .as_ref()
                        .and_then(|b| b.get("status"))
                        .map(|s| s.to_string());
                    let after = c
                        .after
                        .as_ref()
                        .and_then(|a| a.get("status"))
                        .map(|s| s.to_string());
                    println!(
                        "{:<10} {} {} {}: {} -> {}",
                        if r.dry_run { "WOULD" } else { "CHANGED" },
                        change.key,
                        c.entity,
                        c.id,
                        before.as_deref().unwrap_or("(new)"),
                        after.as_deref().unwrap_or("(none)"),
                    );
                }
            }
        }
    }
    let since = r
        .since
        .map(|s| s.to_rfc3339())
        .unwrap_or_else(|| "the beginning".into());
    println!(
        "source {}: {} page(s), {} record(s) read since {since}{}; {} {verb} the ledger, {} malformed",
        r.source_id,
        r.pages,
        r.records,
        if r.resumed { " (resumed)" } else { "" },
        r.changed,
        r.malformed,
    );
    let counts = |m: &mut dyn Iterator<Item = (String, u64)>| {
        m.map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !r.missed.by_kind.is_empty() {
        let by_kind = counts(&mut r.missed.by_kind.iter().map(|(k, n)| (k.clone(), *n)));
        let by_age = counts(&mut r.missed.by_age.iter().map(|(k, n)| ((*k).to_owned(), *n)));
        println!("missed by the webhooks: {by_kind}; by age: {by_age}");
    }
    if let Some(gone) = r.disappeared.as_ref().filter(|d| d.count > 0) {
        println!(
            "{} live subscription(s) no longer listed by the provider: {}",
            gone.count,
            gone.subscription_ids.join(", ")
        );
    }
    if let Some(w) = &r.waited {
        println!(
            "the worker applied {} of {} queued record(s) ({} archived{})",
            w.applied,
            w.queued,
            w.archived,
            if w.timed_out {
                "; the wait ran out"
            } else {
                ""
            }
        );
    }
    if let Some(watermark) = r.watermark.filter(|_| !r.dry_run) {
        println!("watermark: {}", watermark.to_rfc3339());
    }
}
