use std::process::ExitCode;

use crate::config::Settings;
use crate::db::Db;
use crate::dunning::views::{self, RetriesQuery, RetryDetail, RetryView};
use crate::ops::{Actor, retries};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// What is scheduled and why: policy, bucket, retries made, next time, last outcome.
    List {
        /// Only retries due now.
        #[arg(long)]
        due: bool,
        #[arg(long)]
        source: Option<String>,
        /// Only retries in this status (e.g. `parked`).
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// One retry's history: every decision with its reason, its calls, its final action.
    Show {
        /// `SOURCE_ID:CYCLE_KEY`, as `retries list` shows it.
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Puts a parked retry back on the schedule: due now, its failure count reset (audited).
    Resume {
        /// `SOURCE_ID:CYCLE_KEY`, as `retries list` shows it.
        id: String,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(settings: &Settings, command: Command) -> anyhow::Result<ExitCode> {
    let db = Db::connect_lazy(&settings.database)?;
    match command {
        Command::List {
            due,
            source,
            status,
            limit,
            json,
        } => {
            let query = RetriesQuery {
                source_id: source,
                subscription_id: None,
                due,
                status,
                limit: Some(limit),
            };
            let retries = views::list(&db, &query).await?;
            print_list(&retries, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { id, json } => {
            let Some(detail) = retries::show(&db, &id).await? else {
                eprintln!("no retry {id:?} (see `subsync retries list`)");
                return Ok(ExitCode::FAILURE);
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&detail)?);
            } else {
                print_detail(&detail);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Resume { id, json } => {
            let Some(view) = retries::resume(&db, &id, &Actor::cli()).await? else {
                eprintln!("no retry {id:?} (see `subsync retries list`)");
                return Ok(ExitCode::FAILURE);
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                println!("resumed {}: {} (due now)", view.id, view.status);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_detail(detail: &RetryDetail) {
    let r = &detail.retry;
    let time = |at: Option<chrono::DateTime<chrono::Utc>>| {
        at.map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "retry {} ({}), subscription {}",
        r.id,
        r.status,
        r.subscription_id.as_deref().unwrap_or("-")
    );
    println!("policy: {}", r.policy);
    println!(
        "first failed {}, {} retries made, due {}, deadline {}",
        time(Some(r.first_failed_at)),
        r.retries_done,
        time(r.due_at),
        time(r.expires_at)
    );
    match (&r.final_action, &detail.final_action) {
        (_, Some(f)) => println!(
            "final action {}: {} at {} after {} send(s), key {}: {}",
            f.action,
            f.outcome.as_deref().unwrap_or("sending"),
            time(f.finished_at),
            f.sends,
            if f.idempotency_key.is_empty() {
                "-"
            } else {
                &f.idempotency_key
            },
            f.answer
                .as_deref()
                .or(f.last_error.as_deref())
                .unwrap_or("-")
        ),
        (Some(action), None) => println!("final action {action}: pending"),
        (None, None) => {}
    }
    println!("timeline:");
    for e in &detail.timeline {
        println!(
            "  {} {:<17} {:<22} done {:>2} due {} — {}",
            time(Some(e.at)),
            e.status,
            e.bucket,
            e.retries_done,
            time(e.due_at),
            e.reason.as_deref().unwrap_or("-")
        );
    }
}

fn print_list(retries: &[RetryView], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(retries)?);
        return Ok(());
    }
    println!(
        "{:<14} {:<24} {:<18} {:<22} {:>4} {:<25} LAST OUTCOME / POLICY",
        "SOURCE", "CYCLE", "STATUS", "BUCKET", "DONE", "DUE"
    );
    for r in retries {
        let due_at = r
            .due_at
            .map(|d| d.to_rfc3339())
            .unwrap_or_else(|| "-".into());
        let outcome = r.last_outcome.as_deref().unwrap_or("-");
        println!(
            "{:<14} {:<24} {:<18} {:<22} {:>4} {due_at:<25} {outcome} / {}",
            r.source_id, r.cycle_key, r.status, r.bucket, r.retries_done, r.policy
        );
    }
    println!(
        "{} retr{}",
        retries.len(),
        if retries.len() == 1 { "y" } else { "ies" }
    );
    Ok(())
}
