use std::process::ExitCode;

use anyhow::Context;

use crate::config::Settings;
use crate::db::Db;
use crate::ledger::SubscriptionView;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// One subscription: status, attempts, balances per account and currency, retry.
    Subscription {
        source_id: String,
        subscription_id: String,
        /// Print the JSON object instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Check every journal invariant; exits non-zero on any breach.
    Verify,
    /// Lookups: money lookups (attempts whose money is read from the provider's API) and
    /// payment links (refunded payments whose attempt is read from it); newest change
    /// first, parked ones by default.
    Lookups {
        /// `pending`, `done`, `parked` (default) or `not_applicable`; `all` for every row.
        #[arg(long, default_value = "parked")]
        status: String,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Put a source's parked (or not applicable) lookups back in the queue, due now: all
    /// of them, or one attempt's or payment's.
    LookupsResume {
        source_id: String,
        /// An attempt id (a money lookup) or a provider's payment id (a payment link).
        key: Option<String>,
    },
}

pub async fn run(settings: &Settings, command: Command) -> anyhow::Result<ExitCode> {
    let db = Db::connect_lazy(&settings.database)?;
    match command {
        Command::Subscription {
            source_id,
            subscription_id,
            json,
        } => {
            let view = db
                .subscription(&source_id, &subscription_id)
                .await?
                .with_context(|| format!("nothing is known about {source_id}/{subscription_id}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print_summary(&view);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify => {
            let breaches = db.verify_ledger().await?;
            for breach in &breaches {
                println!("BREACH {breach}");
            }
            if breaches.is_empty() {
                println!("ledger sound: every invariant holds");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("{} breach(es)", breaches.len());
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Lookups { status, limit } => {
            let status = (status != "all").then_some(status.as_str());
            print_lookups(&db.lookups(status, limit).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::LookupsResume { source_id, key } => {
            // Audited like the other operator writes.
            let filter = serde_json::json!({ "source_id": source_id, "key": key });
            let actor = crate::ops::Actor::cli();
            let entry = crate::ops::audit::start(&db, &actor, "lookups.resume", &filter).await?;
            let n = db.resume_lookups(&source_id, key.as_deref()).await?;
            entry.finish(&db, n, "ok").await?;
            println!("{n} lookup(s) due again");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_lookups(rows: &[crate::ledger::LookupView]) {
    if rows.is_empty() {
        println!("no lookups");
    }
    for r in rows {
        let due = r
            .due_at
            .map(|d| d.to_rfc3339())
            .unwrap_or_else(|| "-".to_owned());
        let key = match (&r.payment_ref, &r.attempt_id) {
            (Some(payment), Some(attempt)) => format!("{payment} -> {attempt}"),
            (Some(payment), None) => payment.clone(),
            (None, attempt) => attempt.clone().unwrap_or_default(),
        };
        println!(
            "{} {}/{}  {}  tries {}  due {}  {}",
            r.kind,
            r.source_id,
            key,
            r.status,
            r.tries,
            due,
            r.last_error.as_deref().unwrap_or("")
        );
    }
}

fn print_summary(view: &SubscriptionView) {
    let status = view
        .status
        .as_deref()
        .unwrap_or("unknown (no subscription event yet)");
    println!(
        "{}/{}  status: {status}",
        view.source_id, view.subscription_id
    );
    println!(
        "{:<28} {:<16} {:<22} {:>14} {:<8} DECLINE",
        "ATTEMPT", "STATUS", "PROVIDER STATUS", "AMOUNT", "CUR"
    );
    for a in &view.attempts {
        let amount = a
            .amount_minor
            .map(|m| m.to_string())
            .unwrap_or_else(|| "-".into());
        let decline = match (&a.error_code, &a.decline_bucket) {
            (Some(code), Some(bucket)) => format!("{code} ({bucket})"),
            (Some(code), None) => code.clone(),
            (None, Some(bucket)) => format!("({bucket})"),
            (None, None) => String::new(),
        };
        let currency = a.currency.as_deref().unwrap_or("-");
        println!(
            "{:<28} {:<16} {:<22} {amount:>14} {currency:<8} {decline}",
            a.attempt_id, a.status, a.provider_status
        );
    }
    for (account, by_currency) in &view.balances {
        for (currency, minor) in by_currency {
            println!("balance {account:<12} {currency} {minor} (minor units)");
        }
    }
    match &view.retry {
        Some(r) => println!(
            "retry: {} (bucket {}, {} done, due {}) - {}",
            r.status,
            r.bucket,
            r.retries_done,
            r.due_at
                .map(|d| d.to_rfc3339())
                .unwrap_or_else(|| "-".into()),
            r.policy
        ),
        None => println!("retry: none"),
    }
}
