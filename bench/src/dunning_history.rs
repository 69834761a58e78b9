//! `dunning-history`: a recorded dunning history for `subsync dunning simulate`, made by
//! subsync's own dunning code over 90 simulated days, in a database of its own that is
//! kept (`subsync_dunning_history`, next to the configured one).
//!
//! - N failed renewals enter where reconciliation hands failures to dunning
//!   (`dunning::schedule::on_attempts`, in a transaction, as the worker does), spread over
//!   the first 60 days, two sources with the default policy (`stripe`: Stripe's decline
//!   codes; `shopify`: Shopify's, out-of-stock included).
//! - subsync's retry scheduler then runs one pass per simulated hour: it claims what is
//!   due, records each call, asks the policy, expires waits, carries out final actions.
//! - What is not subsync's is a seeded model in place of the providers' APIs: retry n is
//!   charged with probability `CHARGE[n]` (falling with each retry), else declined with a
//!   code drawn from the source's codes; final actions are carried out.
//!
//! The figures it prints are the history's counts; the model's rates are inputs, not
//! findings.

use std::{collections::HashMap, sync::Arc, sync::Mutex, time::Duration};

use anyhow::Context;
use chrono::{DateTime, TimeDelta, Utc};
use futures_util::future::BoxFuture;
use subsync::{
    app::Catalogue,
    canonical::AttemptStatus,
    config::Settings,
    db::Db,
    dunning::{
        schedule::{AttemptFact, on_attempts},
        scheduler::{Clients, Scheduler},
    },
    providers::contract::{
        CallOutcome, FinalActionClient, FinalCall, FinalOutcome, RetryCall, RetryClient,
    },
    providers::http::ProviderApiError,
};

use crate::env::{Bench, drop_database, fresh_database};

pub const DATABASE: &str = "subsync_dunning_history";

/// Decline codes by weight, per source: each lands in its bucket through the same
/// classification the webhooks go through.
const STRIPE_CODES: &[(&str, u32)] = &[
    ("insufficient_funds", 40),
    ("do_not_honor", 12),
    ("generic_decline", 10),
    ("card_velocity_exceeded", 4),
    ("expired_card", 8),
    ("authentication_required", 4),
    ("stolen_card", 3),
    ("lost_card", 2),
    ("fraudulent", 2),
    ("api_error", 5),
];
const SHOPIFY_CODES: &[(&str, u32)] = &[
    ("insufficient_funds", 30),
    ("card_declined", 20),
    ("expired_card", 8),
    ("insufficient_inventory", 8),
    ("out_of_stock", 4),
    ("payment_provider_error", 5),
    ("fraud_suspected", 3),
];
/// P(charged) of retry 1, 2, 3, ... (the last stands for later ones).
const CHARGE: &[f64] = &[0.22, 0.16, 0.11, 0.08, 0.06, 0.05];

/// A code drawn from `codes` by weight.
fn pick(codes: &'static [(&'static str, u32)], rng: &mut fastrand::Rng) -> &'static str {
    let total: u32 = codes.iter().map(|(_, w)| w).sum();
    let mut at = rng.u32(0..total);
    for (code, weight) in codes {
        if at < *weight {
            return code;
        }
        at -= weight;
    }
    codes[0].0
}

/// The seeded model of a provider answering retries.
struct Model {
    rng: Mutex<fastrand::Rng>,
    codes: &'static [(&'static str, u32)],
    /// Retries answered per cycle so far.
    tries: Mutex<HashMap<String, usize>>,
}

impl RetryClient for Model {
    fn retry<'a>(
        &'a self,
        call: &'a RetryCall,
    ) -> BoxFuture<'a, Result<CallOutcome, ProviderApiError>> {
        Box::pin(async move {
            let cycle = call
                .cycle_id
                .clone()
                .unwrap_or_else(|| call.attempt_id.clone());
            let n = {
                let mut tries = self.tries.lock().unwrap();
                let n = tries.entry(cycle).or_default();
                *n += 1;
                *n
            };
            let mut rng = self.rng.lock().unwrap();
            let code = pick(self.codes, &mut rng);
            Ok(if rng.f64() < CHARGE[(n - 1).min(CHARGE.len() - 1)] {
                CallOutcome::Charged
            } else {
                CallOutcome::Declined {
                    code: Some(code.to_owned()),
                    message: None,
                }
            })
        })
    }
}

impl FinalActionClient for Model {
    fn final_action<'a>(
        &'a self,
        call: &'a FinalCall,
    ) -> BoxFuture<'a, Result<FinalOutcome, ProviderApiError>> {
        Box::pin(async move {
            Ok(FinalOutcome::Done(format!(
                "{} (model)",
                call.action.as_str()
            )))
        })
    }
}

/// What the run made.
pub struct History {
    pub url: String,
    pub failures: usize,
    pub passes: usize,
    pub took: Duration,
    pub counts: Vec<(String, i64)>,
}

pub async fn generate(bench: &Bench, failures: usize, seed: u64) -> anyhow::Result<History> {
    let started = std::time::Instant::now();
    let admin = bench.admin_db_url();
    drop_database(admin, DATABASE).await.ok();
    let url = fresh_database(admin, DATABASE).await?;
    let sources = "[[sources]]\nid = \"stripe\"\nprovider = \"stripe\"\nsecrets = [\"whsec_history\"]\n\
        api = { base_url = \"http://127.0.0.1:9/\", token = \"sk_test_history\" }\n\
        [[sources]]\nid = \"shopify\"\nprovider = \"shopify\"\nsecrets = [\"shpss_history\"]\n\
        api = { base_url = \"http://127.0.0.1:9/\", token = \"shpat_history\" }\n";
    let mut base = bench.base.clone();
    base.database.url = url.clone().into();
    let any = "127.0.0.1:0".parse()?;
    let toml = crate::env::child_toml(&base, any, any, sources);
    let path = std::env::temp_dir().join(format!("subsync-history-{}.toml", std::process::id()));
    std::fs::write(&path, toml)?;
    let settings = Settings::load(&path);
    std::fs::remove_file(&path).ok();
    let settings = settings?;
    let db = Db::connect_lazy(&settings.database)?;
    db.migrate().await?;
    // The failures go in as the worker writes them: in a transaction of its own.
    let pool = sqlx::PgPool::connect(&url).await?;
    let catalogue = Catalogue::new(&settings)?;

    let start = Utc::now() - TimeDelta::days(90);
    let mut rng = fastrand::Rng::with_seed(seed);
    let models: HashMap<String, Arc<Model>> =
        [("stripe", STRIPE_CODES), ("shopify", SHOPIFY_CODES)]
            .into_iter()
            .enumerate()
            .map(|(i, (id, codes))| {
                let model = Model {
                    rng: Mutex::new(fastrand::Rng::with_seed(seed + 1 + i as u64)),
                    codes,
                    tries: Mutex::default(),
                };
                (id.to_owned(), Arc::new(model))
            })
            .collect();
    // The failures, in batches as the worker reconciles them.
    let mut facts = Vec::with_capacity(failures);
    for i in 0..failures {
        let (source, codes) = if i % 4 == 3 {
            ("shopify", SHOPIFY_CODES)
        } else {
            ("stripe", STRIPE_CODES)
        };
        let code = pick(codes, &mut rng);
        let at = start + TimeDelta::seconds(rng.i64(0..60 * 86_400));
        facts.push(AttemptFact {
            source_id: source.into(),
            attempt_id: format!("att_{i}"),
            cycle_id: Some(format!("cyc_{i}")),
            subscription_id: Some(format!("sub_{i}")),
            status: AttemptStatus::Failed,
            error_code: Some(code.into()),
            provider_status: "failed".into(),
            attempted_at: Some(at),
            next_attempt_at: None,
        });
    }
    facts.sort_by_key(|f| f.attempted_at);
    let clients = Clients {
        retry: (models.iter())
            .map(|(id, m)| (id.clone(), m.clone() as Arc<dyn RetryClient>))
            .collect(),
        final_action: (models.iter())
            .map(|(id, m)| (id.clone(), m.clone() as Arc<dyn FinalActionClient>))
            .collect(),
    };
    let scheduler = Scheduler::new(
        db.clone(),
        catalogue.dunning.clone(),
        clients,
        Duration::from_secs(300),
    );
    let mut next = 0;
    let mut passes = 0;
    let mut now: DateTime<Utc> = start;
    let end = start + TimeDelta::days(90);
    while now <= end {
        let due = facts[next..]
            .iter()
            .take_while(|f| f.attempted_at.is_some_and(|at| at <= now))
            .count();
        for batch in facts[next..next + due].chunks(500) {
            let mut tx = pool.begin().await?;
            on_attempts(&mut tx, &catalogue.dunning, batch).await?;
            tx.commit().await?;
        }
        next += due;
        // As many passes as it takes to claim everything due this hour.
        loop {
            let pass = scheduler.run_once(now).await.context("a scheduler pass")?;
            passes += 1;
            if pass.called < 50 && pass.final_actions < 50 && pass.deadlines < 50 {
                break;
            }
        }
        now += TimeDelta::hours(1);
    }
    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM retries GROUP BY status ORDER BY status")
            .fetch_all(&pool)
            .await?;
    Ok(History {
        url,
        failures,
        passes,
        took: started.elapsed(),
        counts,
    })
}

pub fn print(h: &History) {
    println!(
        "dunning history: {} failures over 90 simulated days, {} scheduler passes, {:.0} s",
        h.failures,
        h.passes,
        h.took.as_secs_f64()
    );
    for (status, n) in &h.counts {
        println!("  retries {status}: {n}");
    }
    println!("database (kept): {}", redact(&h.url));
    println!(
        "try a policy: SUBSYNC__DATABASE__URL=<that URL> subsync dunning simulate --policy FILE"
    );
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user_end = url[scheme + 3..at].find(':').map_or(at, |c| scheme + 3 + c);
            format!("{}:***{}", &url[..user_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}
