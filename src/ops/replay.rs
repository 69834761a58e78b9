//! Replays of archived events: every event a source received in a time range is
//! normalized again (with the mapping as it is now, e.g. after a fix) and reconciled
//! again. The events were verified when they arrived, so no signature or time window
//! applies. Reconciliation only moves forward, so an event whose meaning did not change
//! changes nothing, and nothing posts twice; running a replay again is safe (an
//! interrupted replay is resumed by running it again). `dry_run` reconciles in rolled-back
//! transactions and reports what would change.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Actor, OpsError, Progress, audit};
use crate::db::Db;
use crate::dunning::schedule::Dunning;
use crate::ledger::{Change, NewEvent, Reconciled};
use crate::providers::{Source, Sources};

/// Events per transaction.
const BATCH: i64 = 500;
/// At most this many changed events are listed in a report.
const MAX_LISTED: usize = 200;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplayRequest {
    pub source_id: String,
    /// Events received at or after this time.
    pub since: DateTime<Utc>,
    /// Events received before this time; now when absent.
    #[serde(default)]
    pub until: Option<DateTime<Utc>>,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct ReplayArchiveReport {
    pub dry_run: bool,
    /// Events read from the archive.
    pub events: u64,
    /// Dry run: events that would change the ledger (a real run reports `outcomes`).
    pub changed: u64,
    /// Events that no longer normalize (left as they were; see `failures`).
    pub failed: u64,
    /// Outcomes of the reconciliation (`applied`, `stale`, `ignored`), for real runs.
    pub outcomes: std::collections::BTreeMap<String, u64>,
    /// The changing events (dry run) and the failures (at most 200 each).
    pub changes: Vec<ReplayedEvent>,
    pub failures: Vec<ReplayedEvent>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReplayedEvent {
    pub event_id: String,
    pub changes: Vec<Change>,
    pub error: Option<String>,
}

/// A replay's source, checked window and, unless it is a dry run, its audit entry for
/// `action`.
pub(super) async fn begin<'a>(
    db: &Db,
    sources: &'a Sources,
    request: &ReplayRequest,
    actor: &Actor,
    action: &str,
) -> Result<(&'a Source, Option<audit::Entry>), OpsError> {
    let source = sources
        .get(&request.source_id)
        .ok_or_else(|| OpsError::UnknownSource(request.source_id.clone()))?;
    if request.until.is_some_and(|until| until <= request.since) {
        return Err(OpsError::Invalid("until must be after since".to_owned()));
    }
    let entry = if request.dry_run {
        None
    } else {
        let filter = serde_json::to_value(request).unwrap_or_default();
        Some(audit::start(db, actor, action, &filter).await?)
    };
    Ok((source, entry))
}

pub async fn replay_archived(
    db: &Db,
    sources: &Sources,
    dunning: &Dunning,
    request: &ReplayRequest,
    actor: &Actor,
    progress: &dyn Progress,
) -> Result<ReplayArchiveReport, OpsError> {
    let (source, entry) = begin(db, sources, request, actor, "replay").await?;
    let mut report = ReplayArchiveReport {
        dry_run: request.dry_run,
        ..ReplayArchiveReport::default()
    };
    let result: Result<(), OpsError> = async {
        let mut after = 0;
        loop {
            let batch = db
                .archived(
                    &request.source_id,
                    request.since,
                    request.until,
                    after,
                    BATCH,
                )
                .await?;
            let Some(last) = batch.last() else { break };
            after = last.id;
            report.events += batch.len() as u64;
            let mut ready = Vec::new();
            for archived in &batch {
                match source.normalize(&archived.envelope) {
                    Ok(n) => ready.push((archived, n)),
                    Err(error) => {
                        report.failed += 1;
                        if report.failures.len() < MAX_LISTED {
                            report.failures.push(ReplayedEvent {
                                event_id: archived.envelope.event_id.clone(),
                                changes: Vec::new(),
                                error: Some(error.to_string()),
                            });
                        }
                    }
                }
            }
            let events: Vec<NewEvent<'_>> = ready
                .iter()
                .map(|(a, n)| NewEvent {
                    envelope: &a.envelope,
                    event_type: &n.event_type,
                    events: &n.events,
                })
                .collect();
            let ids: Vec<i64> = ready.iter().map(|(a, _)| a.id).collect();
            if request.dry_run {
                let previews = db.preview_archived(&events, &ids, dunning).await?;
                for ((archived, _), preview) in ready.iter().zip(previews) {
                    if preview.changes.is_empty() {
                        continue;
                    }
                    report.changed += 1;
                    if report.changes.len() < MAX_LISTED {
                        report.changes.push(ReplayedEvent {
                            event_id: archived.envelope.event_id.clone(),
                            changes: preview.changes,
                            error: None,
                        });
                    }
                }
            } else {
                for outcome in db.rereconcile(&events, &ids, dunning).await? {
                    let word = match outcome {
                        Reconciled::Applied => "applied",
                        Reconciled::Stale => "stale",
                        Reconciled::Ignored => "ignored",
                        Reconciled::Duplicate => "duplicate",
                    };
                    *report.outcomes.entry(word.to_owned()).or_default() += 1;
                }
            }
            progress.step(report.events);
        }
        Ok(())
    }
    .await;
    if let Some(entry) = entry {
        let outcome = match &result {
            Ok(()) => "ok".to_owned(),
            Err(error) => format!("error: {error}"),
        };
        entry.finish(db, report.events, &outcome).await?;
        metrics::counter!("subsync_replays_total", "source" => request.source_id.clone())
            .increment(1);
    }
    result.map(|()| report)
}
