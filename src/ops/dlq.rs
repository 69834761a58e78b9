//! Dead-letter queue operations. Each one opens a session on the queue, walks it (every
//! message is held unacked while the session lasts, so a walk sees each message once),
//! acts on the matching ones and closes the session, which hands the others back.
//!
//! Replay moves a message back to the work queue only after its republish was confirmed
//! (see `queue::dead_letters`). A message whose event is already archived (an earlier
//! replay interrupted between its confirm and its ack, or a duplicate) is removed instead
//! of replayed. `dry_run` moves nothing: each matching message is normalized and
//! reconciled in a rolled-back transaction to show what it would change.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Actor, OpsError, Progress, audit, dead_letter_index};
use crate::db::Db;
use crate::dunning::schedule::Dunning;
use crate::ledger::{Change, NewEvent};
use crate::providers::Sources;
use crate::queue::{Broker, DeadLetter, DeadLetterSummary};

/// At most this many messages are walked by one operation (each is held in memory).
pub const MAX_SCAN: usize = 100_000;

/// Which dead letters an operation applies to; every given criterion must match.
#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema, utoipa::IntoParams,
)]
#[serde(default)]
pub struct DlqFilter {
    /// Dead-letter ids (`{source_id}:{event_id}`); empty = any.
    #[param(style = Form, explode = true)]
    pub ids: Vec<String>,
    pub source: Option<String>,
    /// A case-insensitive part of the reason.
    pub reason: Option<String>,
    /// Last dead-lettered at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Last dead-lettered before this time.
    pub until: Option<DateTime<Utc>>,
    /// At most this many messages (list: 100 by default).
    #[schema(minimum = 1)]
    pub limit: Option<u64>,
}

impl DlqFilter {
    fn matches(&self, letter: &DeadLetter) -> bool {
        (self.ids.is_empty() || self.ids.contains(&letter.id))
            && self
                .source
                .as_ref()
                .is_none_or(|s| letter.source_id().as_ref() == Some(s))
            && self.reason.as_ref().is_none_or(|r| {
                letter
                    .reason
                    .as_ref()
                    .is_some_and(|reason| reason.to_lowercase().contains(&r.to_lowercase()))
            })
            && self
                .since
                .is_none_or(|t| letter.last_death_at.is_some_and(|d| d >= t))
            && self
                .until
                .is_none_or(|t| letter.last_death_at.is_some_and(|d| d < t))
    }

    fn limit(&self, default: u64) -> usize {
        self.limit.unwrap_or(default).clamp(1, MAX_SCAN as u64) as usize
    }
}

/// Walks the dead-letter queue and returns the matching messages (at most `limit`),
/// leaving every message in place.
async fn matching(
    broker: &Broker,
    filter: &DlqFilter,
    limit: usize,
) -> Result<Vec<DeadLetter>, OpsError> {
    let mut session = broker.dead_letter_session().await?;
    let mut found = Vec::new();
    let mut scanned = 0;
    while found.len() < limit && scanned < MAX_SCAN {
        let Some(letter) = session.next().await? else {
            break;
        };
        scanned += 1;
        if filter.matches(&letter) {
            found.push(letter);
        }
    }
    session.close().await;
    Ok(found)
}

pub async fn list(broker: &Broker, filter: &DlqFilter) -> Result<Vec<DeadLetterSummary>, OpsError> {
    let letters = matching(broker, filter, filter.limit(100)).await?;
    Ok(letters.iter().map(DeadLetter::summary).collect())
}

/// One dead letter in full.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeadLetterDetail {
    #[serde(flatten)]
    #[schema(inline)]
    pub summary: DeadLetterSummary,
    pub headers: BTreeMap<String, String>,
    pub content_type: Option<String>,
    /// The raw payload: JSON where it is JSON, else text, else `null` (see `body_base64`).
    pub body: serde_json::Value,
    pub body_base64: Option<String>,
}

pub async fn show(broker: &Broker, id: &str) -> Result<Option<DeadLetterDetail>, OpsError> {
    let filter = DlqFilter {
        ids: vec![id.to_owned()],
        ..DlqFilter::default()
    };
    let letters = matching(broker, &filter, 1).await?;
    Ok(letters.into_iter().next().map(|letter| {
        let (body, body_base64) = match serde_json::from_slice(&letter.body) {
            Ok(json) => (json, None),
            Err(_) => match std::str::from_utf8(&letter.body) {
                Ok(text) => (serde_json::Value::from(text), None),
                Err(_) => {
                    use base64::Engine;
                    let b64 = base64::engine::general_purpose::STANDARD.encode(&letter.body);
                    (serde_json::Value::Null, Some(b64))
                }
            },
        };
        DeadLetterDetail {
            summary: letter.summary(),
            headers: letter.headers.clone(),
            content_type: letter
                .envelope
                .as_ref()
                .ok()
                .and_then(|e| e.content_type.clone()),
            body,
            body_base64,
        }
    }))
}

/// What a replay did (or, dry, would do) with each matching message.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct ReplayReport {
    pub dry_run: bool,
    pub matched: u64,
    /// Moved back to the work queue (dry: would be).
    pub replayed: u64,
    /// Removed because their event is already archived.
    pub already_archived: u64,
    pub messages: Vec<ReplayedMessage>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReplayedMessage {
    pub id: String,
    pub reason: Option<String>,
    /// `replayed`, `already_archived`; dry: `would_apply`, `would_change_nothing`,
    /// `would_fail`.
    pub action: String,
    /// Dry run: the ledger rows it would change.
    pub changes: Vec<Change>,
    /// Dry run: why it would fail again (unknown source, malformed payload...).
    pub error: Option<String>,
}

/// Everything a replay needs.
pub struct Context<'a> {
    pub broker: &'a Broker,
    pub db: &'a Db,
    pub sources: &'a Sources,
    pub dunning: &'a Dunning,
}

pub async fn replay(
    ctx: &Context<'_>,
    filter: &DlqFilter,
    dry_run: bool,
    actor: &Actor,
    progress: &dyn Progress,
) -> Result<ReplayReport, OpsError> {
    let limit = filter.limit(MAX_SCAN as u64);
    if dry_run {
        let letters = matching(ctx.broker, filter, limit).await?;
        return preview(ctx, &letters).await;
    }
    let entry = audit::start(
        ctx.db,
        actor,
        "dlq.replay",
        &serde_json::to_value(filter).unwrap_or_default(),
    )
    .await?;
    let result = replay_now(ctx, filter, limit, progress).await;
    let (count, outcome) = match &result {
        Ok(report) => (report.replayed + report.already_archived, "ok".to_owned()),
        Err((done, error)) => (*done, format!("error: {error}")),
    };
    entry.finish(ctx.db, count, &outcome).await?;
    if let Ok(report) = &result {
        metrics::counter!("subsync_dlq_replayed_total").increment(report.replayed);
    }
    result.map_err(|(_, error)| error)
}

async fn replay_now(
    ctx: &Context<'_>,
    filter: &DlqFilter,
    limit: usize,
    progress: &dyn Progress,
) -> Result<ReplayReport, (u64, OpsError)> {
    let mut report = ReplayReport::default();
    let mut session = ctx
        .broker
        .dead_letter_session()
        .await
        .map_err(|e| (0, e.into()))?;
    let mut scanned = 0;
    let result: Result<(), OpsError> = async {
        while (report.matched as usize) < limit && scanned < MAX_SCAN {
            let Some(letter) = session.next().await? else {
                break;
            };
            scanned += 1;
            if !filter.matches(&letter) {
                continue;
            }
            report.matched += 1;
            let archived = match &letter.envelope {
                Ok(e) => ctx.db.archived_count(&e.source_id, &e.event_id).await? > 0,
                Err(_) => false,
            };
            let action = if archived {
                session.remove(&letter).await?;
                report.already_archived += 1;
                "already_archived"
            } else {
                session.replay(&letter).await?;
                report.replayed += 1;
                "replayed"
            };
            dead_letter_index::forget_logged(ctx.db, &letter.id).await;
            report.messages.push(ReplayedMessage {
                id: letter.id.clone(),
                reason: letter.reason.clone(),
                action: action.to_owned(),
                changes: Vec::new(),
                error: None,
            });
            progress.step(report.matched);
        }
        Ok(())
    }
    .await;
    session.close().await;
    match result {
        Ok(()) => Ok(report),
        Err(error) => Err((report.replayed + report.already_archived, error)),
    }
}

/// Dry run: what each message would do if replayed now.
async fn preview(ctx: &Context<'_>, letters: &[DeadLetter]) -> Result<ReplayReport, OpsError> {
    let mut report = ReplayReport {
        dry_run: true,
        matched: letters.len() as u64,
        ..ReplayReport::default()
    };
    // Normalize each (as the worker would); the good ones are previewed together.
    let mut ready = Vec::new();
    for (i, letter) in letters.iter().enumerate() {
        let normalized = letter
            .envelope
            .as_ref()
            .map_err(|e| e.to_string())
            .and_then(|envelope| {
                let source = ctx
                    .sources
                    .get(&envelope.source_id)
                    .ok_or_else(|| format!("source {:?} is not configured", envelope.source_id))?;
                source.normalize(envelope).map_err(|e| e.to_string())
            });
        report.messages.push(ReplayedMessage {
            id: letter.id.clone(),
            reason: letter.reason.clone(),
            action: "would_fail".to_owned(),
            changes: Vec::new(),
            error: None,
        });
        match normalized {
            Ok(n) => ready.push((i, n)),
            Err(error) => report.messages[i].error = Some(error),
        }
    }
    let events: Vec<NewEvent<'_>> = ready
        .iter()
        .map(|(i, n)| NewEvent {
            envelope: letters[*i].envelope.as_ref().expect("normalized"),
            event_type: &n.event_type,
            events: &n.events,
        })
        .collect();
    // One refused event (a constraint, a trigger: what dead-lettered it) must not hide
    // what the others would do: on a permanent error, preview them one by one.
    let previews = match ctx.db.preview(&events, ctx.dunning).await {
        Ok(previews) => previews.into_iter().map(Ok).collect(),
        Err(error) if !error.is_transient() && events.len() > 1 => {
            let mut each = Vec::with_capacity(events.len());
            for event in &events {
                each.push(
                    ctx.db
                        .preview(std::slice::from_ref(event), ctx.dunning)
                        .await
                        .map(|mut p| p.remove(0)),
                );
            }
            each
        }
        Err(error) => vec![Err(error)],
    };
    for ((i, _), preview) in ready.iter().zip(previews) {
        let message = &mut report.messages[*i];
        let preview = match preview {
            Ok(preview) => preview,
            Err(error) if error.is_transient() => return Err(error.into()),
            Err(error) => {
                message.error = Some(error.to_string());
                continue;
            }
        };
        message.action = if preview.changes.is_empty() {
            "would_change_nothing"
        } else {
            "would_apply"
        }
        .to_owned();
        message.changes = preview.changes;
        report.replayed += 1;
    }
    Ok(report)
}

/// What a purge removed.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct PurgeReport {
    pub purged: u64,
    pub ids: Vec<String>,
}

pub async fn purge(
    broker: &Broker,
    db: &Db,
    filter: &DlqFilter,
    confirmed: bool,
    actor: &Actor,
) -> Result<PurgeReport, OpsError> {
    if !confirmed {
        return Err(OpsError::NotConfirmed);
    }
    let entry = audit::start(
        db,
        actor,
        "dlq.purge",
        &serde_json::to_value(filter).unwrap_or_default(),
    )
    .await?;
    let mut report = PurgeReport::default();
    let limit = filter.limit(MAX_SCAN as u64);
    let result: Result<(), OpsError> = async {
        let mut session = broker.dead_letter_session().await?;
        let mut scanned = 0;
        let walk: Result<(), OpsError> = async {
            while (report.purged as usize) < limit && scanned < MAX_SCAN {
                let Some(letter) = session.next().await? else {
                    break;
                };
                scanned += 1;
                if filter.matches(&letter) {
                    session.remove(&letter).await?;
                    dead_letter_index::forget_logged(db, &letter.id).await;
                    report.purged += 1;
                    report.ids.push(letter.id.clone());
                }
            }
            Ok(())
        }
        .await;
        session.close().await;
        walk
    }
    .await;
    let outcome = match &result {
        Ok(()) => "ok".to_owned(),
        Err(error) => format!("error: {error}"),
    };
    entry.finish(db, report.purged, &outcome).await?;
    metrics::counter!("subsync_dlq_purged_total").increment(report.purged);
    result.map(|()| report)
}
