//! Corrective replays: after a mapping fix, a plain replay cannot lower an attempt that
//! was wrongly mapped to `succeeded` nor reverse a collection posted from a wrong amount
//! (reconciliation only moves forward). A corrective replay finds the subscriptions (and
//! attempts without a subscription) that the source's archived events of a time range
//! touch, recomputes each from ALL of its archived events with the current mapping
//! (`Db::correct`), sets attempt and subscription rows to the recomputed state, and fixes
//! the journal only by appending. Running it again right after changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::replay::{self, ReplayRequest, ReplayedEvent};
use super::{Actor, OpsError, Progress, audit};
use crate::canonical::CanonicalEvent;
use crate::db::Db;
use crate::dunning::schedule::Dunning;
use crate::ledger::{CorrectError, Correction, CorrectionScope};
use crate::providers::{Source, Sources};

/// Window events read per page.
const PAGE: i64 = 500;
/// Subscriptions (or attempts without one) recomputed per transaction.
const CHUNK: usize = 50;
/// At most this many corrections and failures are listed in a report.
const MAX_LISTED: usize = 200;

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct CorrectionReport {
    pub dry_run: bool,
    /// Archived events of the window read.
    pub events: u64,
    /// Archived events reconciled to recompute (the whole history of what the window
    /// touched).
    pub recomputed_events: u64,
    /// Subscriptions and attempts without a subscription compared.
    pub examined: u64,
    /// Those that differed (and were corrected, unless a dry run).
    pub corrected: u64,
    /// Journal entries appended (a dry run: that would be).
    pub appended: u64,
    /// Window events, or subscriptions whose history has an event, that no longer
    /// normalize: left as they are (see `failures`).
    pub failed: u64,
    /// What differed, per subscription (at most 200).
    pub corrections: Vec<Correction>,
    pub failures: Vec<ReplayedEvent>,
}

pub async fn correct_archived(
    db: &Db,
    sources: &Sources,
    dunning: &Dunning,
    request: &ReplayRequest,
    actor: &Actor,
    progress: &dyn Progress,
) -> Result<CorrectionReport, OpsError> {
    let (source, entry) = replay::begin(db, sources, request, actor, "replay.correct").await?;
    let mut report = CorrectionReport {
        dry_run: request.dry_run,
        ..CorrectionReport::default()
    };
    let audit_id = entry.as_ref().map(audit::Entry::id);
    let result = async {
        let window = touched(db, source, request, &mut report).await?;
        let mut done = Done::default();
        for chunk in window.units.chunks(CHUNK) {
            let chunk: Vec<&Key> = chunk.iter().filter(|k| !done.covers(k)).collect();
            if chunk.is_empty() {
                continue;
            }
            let outcome = correct_chunk(
                db,
                source,
                dunning,
                &window,
                &chunk,
                request.dry_run,
                audit_id,
                &mut report,
            )
            .await?;
            done.add(&outcome);
            progress.step(report.examined);
        }
        Ok::<(), OpsError>(())
    }
    .await;
    if let Some(entry) = entry {
        let outcome = match &result {
            Ok(()) => "ok".to_owned(),
            Err(error) => format!("error: {error}"),
        };
        entry.finish(db, report.corrected, &outcome).await?;
        metrics::counter!("subsync_replays_total", "source" => request.source_id.clone())
            .increment(1);
    }
    result.map(|()| report)
}

/// What the window touches: subscriptions, or attempts that name none.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Subscription(String),
    Attempt(String),
}

struct Window {
    units: Vec<Key>,
    /// The window's events by what they touch, so each is part of its history whatever
    /// its archived normalization said.
    events: BTreeMap<Key, Vec<i64>>,
}

/// Reads the window's events, normalized with the current code.
async fn touched(
    db: &Db,
    source: &Source,
    request: &ReplayRequest,
    report: &mut CorrectionReport,
) -> Result<Window, OpsError> {
    let mut events: BTreeMap<Key, Vec<i64>> = BTreeMap::new();
    let mut after = 0;
    loop {
        let batch = db
            .archived(
                &request.source_id,
                request.since,
                request.until,
                after,
                PAGE,
            )
            .await?;
        let Some(last) = batch.last() else { break };
        after = last.id;
        report.events += batch.len() as u64;
        for archived in &batch {
            let normalized = match source.normalize(&archived.envelope) {
                Ok(n) => n,
                Err(error) => {
                    fail(report, &archived.envelope.event_id, error.to_string());
                    continue;
                }
            };
            for canonical in &normalized.events {
                let key = match canonical {
                    CanonicalEvent::BillingAttempt(a) => match &a.subscription_id {
                        Some(s) => Key::Subscription(s.clone()),
                        None => Key::Attempt(a.attempt_id.clone()),
                    },
                    CanonicalEvent::Subscription(c) => Key::Subscription(c.subscription_id.clone()),
                    // A refund that names only its payment (not linked yet at
                    // normalization) is found under the payment's id: its history then
                    // links it through `payment_links`.
                    CanonicalEvent::Refund(r) => match (&r.subscription_id, &r.attempt_id) {
                        (Some(s), _) => Key::Subscription(s.clone()),
                        (None, Some(a)) => Key::Attempt(a.clone()),
                        (None, None) => match &r.payment_ref {
                            Some(p) => Key::Attempt(p.clone()),
                            None => continue,
                        },
                    },
                };
                events.entry(key).or_default().push(archived.id);
            }
        }
    }
    Ok(Window {
        units: events.keys().cloned().collect(),
        events,
    })
}

fn fail(report: &mut CorrectionReport, event_id: &str, error: String) {
    report.failed += 1;
    if report.failures.len() < MAX_LISTED {
        report.failures.push(ReplayedEvent {
            event_id: event_id.to_owned(),
            changes: Vec::new(),
            error: Some(error),
        });
    }
}

/// Subscriptions and attempts whose history an earlier chunk already recomputed.
#[derive(Default)]
struct Done {
    subscriptions: BTreeSet<String>,
    attempts: BTreeSet<String>,
}

impl Done {
    fn covers(&self, key: &Key) -> bool {
        match key {
            Key::Subscription(s) => self.subscriptions.contains(s),
            Key::Attempt(a) => self.attempts.contains(a),
        }
    }

    fn add(&mut self, outcome: &crate::ledger::CorrectionOutcome) {
        self.subscriptions
            .extend(outcome.subscriptions.iter().cloned());
        self.attempts.extend(outcome.attempts.iter().cloned());
    }
}

/// Recomputes one chunk; when an event of its history no longer normalizes, each of its
/// units alone, so only the ones whose history has that event are left as they are.
#[allow(clippy::too_many_arguments)]
async fn correct_chunk(
    db: &Db,
    source: &Source,
    dunning: &Dunning,
    window: &Window,
    chunk: &[&Key],
    dry_run: bool,
    audit_id: Option<i64>,
    report: &mut CorrectionReport,
) -> Result<crate::ledger::CorrectionOutcome, OpsError> {
    let normalize = |envelope: &crate::envelope::Envelope| {
        source
            .normalize(envelope)
            .map(|n| (n.event_type, n.events))
            .map_err(|e| e.to_string())
    };
    let scope_of = |keys: &[&Key]| {
        let (mut subscriptions, mut attempts, mut event_ids) = (Vec::new(), Vec::new(), Vec::new());
        for key in keys {
            match key {
                Key::Subscription(s) => subscriptions.push(s.clone()),
                Key::Attempt(a) => attempts.push(a.clone()),
            }
            event_ids.extend(window.events.get(key).into_iter().flatten().copied());
        }
        (subscriptions, attempts, event_ids)
    };
    let (subscriptions, attempts, event_ids) = scope_of(chunk);
    let scope = CorrectionScope {
        source_id: source.id(),
        subscriptions: &subscriptions,
        attempts: &attempts,
        event_ids: &event_ids,
    };
    match db
        .correct(scope, &normalize, dunning, dry_run, audit_id)
        .await
    {
        Ok(outcome) => {
            record(report, &outcome);
            Ok(outcome)
        }
        Err(CorrectError::Unnormalizable { .. }) if chunk.len() > 1 => {
            let mut all = crate::ledger::CorrectionOutcome::default();
            for key in chunk {
                let one = Box::pin(correct_chunk(
                    db,
                    source,
                    dunning,
                    window,
                    &[*key],
                    dry_run,
                    audit_id,
                    report,
                ))
                .await?;
                all.subscriptions.extend(one.subscriptions);
                all.attempts.extend(one.attempts);
            }
            Ok(all)
        }
        Err(CorrectError::Unnormalizable { event_id, error }) => {
            fail(
                report,
                &event_id,
                format!("{error} (its history was left as it is)"),
            );
            Ok(crate::ledger::CorrectionOutcome::default())
        }
        Err(CorrectError::Db(e)) => Err(e.into()),
        Err(e @ (CorrectError::Unbalanced(_) | CorrectError::NotShadowed)) => {
            Err(OpsError::Ledger(e.to_string()))
        }
    }
}

fn record(report: &mut CorrectionReport, outcome: &crate::ledger::CorrectionOutcome) {
    report.recomputed_events += outcome.events;
    report.examined += outcome.examined;
    report.corrected += outcome.corrections.len() as u64;
    for c in &outcome.corrections {
        report.appended += c.appended;
        if report.corrections.len() < MAX_LISTED {
            report.corrections.push(c.clone());
        }
    }
}
