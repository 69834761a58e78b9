//! Pull sync: heals missed webhooks from the providers' list APIs.
//!
//! A run pages through a source's list API (its `providers::contract::ListClient`); every record is rendered as the
//! webhook the provider would have sent and normalized by the same adapter. Each page is
//! previewed against the ledger (reconciled in a rolled-back transaction): records that
//! would change it are drift — missed webhooks — and go through the same queue and
//! reconciliation path as webhooks, as events marked `x-subsync-origin: sync` with an id
//! derived from the record and its content. A record already known changes nothing and
//! is not queued; a record read twice in one run with the same content is queued once,
//! and one queued by two runs is deduplicated by the inbox.
//!
//! After each page is queued (publishes confirmed) the cursor is stored, so a crashed or
//! failed run resumes where it stopped; the watermark moves only when a run reaches the
//! end of the listing. One instance runs a source at a time (an advisory lock).

mod healing;
mod pages;
mod state;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::canonical::CanonicalEvent;
use crate::config::{Settings, SyncSettings};
use crate::db::{Db, DbError};
use crate::dunning::schedule::Dunning;
use crate::envelope::Envelope;
use crate::ledger::{Change, NewEvent};
use crate::providers::contract::{ListClient, Page, PageRequest, Record};
use crate::providers::http::ProviderApiError;
use crate::providers::{MAX_EVENT_ID_LEN, Source, Sources};
use crate::queue::{Broker, PublishError};
pub use healing::{Missed, Waited};
pub use pages::PaginationError;

/// The header that marks an event as coming from pull sync.
pub const ORIGIN_HEADER: &str = "x-subsync-origin";

/// At most this many record changes are kept in a report.
const MAX_REPORTED_CHANGES: usize = 200;

/// How long one wait for a rate limit may be (a longer `Retry-After` is capped).
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("unknown source {0:?}")]
    UnknownSource(String),
    #[error("source {0:?} has no api settings (base_url, token) to sync from")]
    NoApi(String),
    #[error("provider {0} has no list API to sync from")]
    NoListApi(&'static str),
    #[error("a sync of source {0:?} is already running")]
    Busy(String),
    #[error(
        "page {page} failed: {error} (the watermark is unchanged; the next run resumes at this page)"
    )]
    Page { page: u64, error: ProviderApiError },
    #[error(
        "stopped after page {page}: {error} (the watermark is unchanged; the next run resumes after this page)"
    )]
    Pagination { page: u64, error: PaginationError },
    #[error("queueing a synced record failed: {0} (the next run resumes at this page)")]
    Publish(#[from] PublishError),
    #[error("database: {0}")]
    Db(#[from] DbError),
}

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Read records from this time on; `None` = from the watermark (minus the look-back),
    /// or everything on a first run.
    pub since: Option<DateTime<Utc>>,
    /// Preview only: queue nothing, store nothing.
    pub dry_run: bool,
    /// After the run, wait up to this long for the worker to apply what it queued (the
    /// report's `waited`).
    pub wait: Option<Duration>,
}

/// What a run did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    pub source_id: String,
    pub dry_run: bool,
    /// This run continued an unfinished one.
    pub resumed: bool,
    pub since: Option<DateTime<Utc>>,
    pub pages: u64,
    /// Records read (that carry a billing fact).
    pub records: u64,
    /// Records that changed (dry: would change) the ledger: missed webhooks.
    pub changed: u64,
    /// Records the provider adapter could not normalize: queued all the same, so the
    /// worker dead-letters them with their reason (dry: only reported).
    pub malformed: u64,
    /// The watermark after the run (`None` for a dry run).
    pub watermark: Option<DateTime<Utc>>,
    /// The changing records and what they change (at most 200).
    pub changes: Vec<RecordChange>,
    /// What the missed webhooks were, by kind and age.
    pub missed: Missed,
    /// With a wait: what the worker applied of the queued records.
    pub waited: Option<Waited>,
    /// A full run of a provider whose listing has every subscription: the subscriptions
    /// live in the ledger (active, past due, paused) that the provider no longer lists
    /// (deleted, or ended without a webhook); at most 200 ids. `None` when not checked.
    pub disappeared: Option<Disappeared>,
}

/// Live subscriptions of the ledger a full run did not find at the provider.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Disappeared {
    pub count: u64,
    /// The first 200, by id.
    pub subscription_ids: Vec<String>,
}

/// What a run accumulates across its pages.
#[derive(Default)]
struct Seen {
    /// Event ids queued (dry: that would be), the ones a wait waits for. A record read
    /// twice in one run with the same content (Shopify's attempts, under their contract
    /// and store-wide) is the same event: queued and counted once.
    queued: std::collections::HashSet<String>,
    /// Subscription ids rendered, when the run checks for disappeared ones.
    subscriptions: Option<std::collections::HashSet<String>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecordChange {
    pub key: String,
    pub event_id: String,
    pub event_type: String,
    /// The ledger rows it changes, or why it cannot be normalized.
    pub changes: Vec<Change>,
    pub malformed: Option<String>,
}

/// Told about each page, for progress displays.
pub trait Progress: Send + Sync {
    fn page(&self, report: &SyncReport, pace: &Pace);
}

/// How fast a run goes, told with each page.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    /// Records read per second since the run began.
    pub records_per_second: f64,
    /// Records the current listing still holds, where the provider tells its total.
    pub remaining: Option<u64>,
    /// `remaining` at `records_per_second`: the time left in the current listing (a run
    /// with a later listing takes longer).
    pub eta: Option<Duration>,
}

impl Pace {
    fn of(records: u64, elapsed: Duration, remaining: Option<u64>) -> Self {
        let records_per_second = records as f64 / elapsed.as_secs_f64().max(1e-3);
        let eta = remaining
            .filter(|_| records_per_second > 0.0)
            .map(|left| Duration::from_secs_f64(left as f64 / records_per_second));
        Self {
            records_per_second,
            remaining,
            eta,
        }
    }
}

/// No progress display.
pub struct Quiet;

impl Progress for Quiet {
    fn page(&self, _: &SyncReport, _: &Pace) {}
}

/// One configured source that can be synced.
struct Target {
    settings: SyncSettings,
    client: Arc<dyn ListClient>,
}

/// Why a configured source cannot be synced.
enum Unsyncable {
    NoApi,
    NoListApi,
}

/// Runs syncs: the CLI's `subsync sync` and the periodic loops of `serve`.
pub struct Syncer {
    db: Db,
    /// `None`: dry runs only (no broker needed).
    broker: Option<Broker>,
    sources: Arc<Sources>,
    dunning: Dunning,
    /// Per source: its target, or why it cannot be synced.
    targets: HashMap<String, Result<Target, Unsyncable>>,
    /// The accounts' request budgets, shared with dunning (which comes first).
    budgets: crate::budget::Budgets,
}

impl Syncer {
    /// A syncer over the catalogue's sources (`sources` and `dunning` are the process's
    /// own, built once from `settings`).
    pub fn new(
        settings: &Settings,
        db: Db,
        broker: Option<Broker>,
        sources: Arc<Sources>,
        dunning: Dunning,
    ) -> Self {
        let targets = settings
            .sources
            .iter()
            .map(|s| {
                let client = sources.get(&s.id).and_then(Source::list_client);
                let target = match (&s.api, client) {
                    (None, _) => Err(Unsyncable::NoApi),
                    (Some(_), None) => Err(Unsyncable::NoListApi),
                    (Some(_), Some(client)) => Ok(Target {
                        settings: s.sync.clone().unwrap_or_default(),
                        client,
                    }),
                };
                (s.id.clone(), target)
            })
            .collect();
        Self {
            budgets: crate::budget::Budgets::new(settings, &db, &sources),
            db,
            broker,
            sources,
            dunning,
            targets,
        }
    }

    /// Sources with periodic sync configured (`sync.interval_secs` > 0), with the interval.
    pub fn periodic(settings: &Settings) -> Vec<(String, Duration)> {
        settings
            .sources
            .iter()
            .filter_map(|s| {
                let sync = s.sync.as_ref()?;
                s.api.as_ref()?;
                (sync.interval_secs > 0)
                    .then(|| (s.id.clone(), Duration::from_secs(sync.interval_secs)))
            })
            .collect()
    }

    /// One run over a source, under its lock.
    pub async fn run(
        &self,
        source_id: &str,
        options: &RunOptions,
        progress: &dyn Progress,
    ) -> Result<SyncReport, SyncError> {
        let unknown = || SyncError::UnknownSource(source_id.to_owned());
        let source = self.sources.get(source_id).ok_or_else(unknown)?;
        let target = match self.targets.get(source_id).ok_or_else(unknown)? {
            Ok(target) => target,
            Err(Unsyncable::NoApi) => return Err(SyncError::NoApi(source_id.to_owned())),
            Err(Unsyncable::NoListApi) => return Err(SyncError::NoListApi(source.kind().as_str())),
        };
        let lock = state::try_lock(&self.db, source_id)
            .await?
            .ok_or_else(|| SyncError::Busy(source_id.to_owned()))?;
        let result = self.run_locked(source, target, options, progress).await;
        lock.release(source_id).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!("subsync_sync_runs_total", "source" => source_id.to_owned(), "outcome" => outcome)
            .increment(1);
        result
    }

    async fn run_locked(
        &self,
        source: &Source,
        target: &Target,
        options: &RunOptions,
        progress: &dyn Progress,
    ) -> Result<SyncReport, SyncError> {
        let source_id = source.id();
        let row = state::load(&self.db, source_id).await?;
        // Bounded at load (`sync.lookback_secs`); saturate anyway rather than panic.
        let lookback = i64::try_from(target.settings.lookback_secs)
            .ok()
            .and_then(chrono::Duration::try_seconds)
            .unwrap_or(chrono::Duration::MAX);
        // Postgres keeps microseconds: the watermark is stored and reported alike.
        let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
        let start = state::plan(&row, options.since, lookback, now);
        let mut report = SyncReport {
            source_id: source_id.to_owned(),
            dry_run: options.dry_run,
            resumed: start.resumed,
            since: start.since,
            watermark: row.watermark,
            ..SyncReport::default()
        };
        if !options.dry_run && !start.resumed {
            state::begin(&self.db, source_id, &start).await?;
        }
        let known = state::known_subscriptions(&self.db, source_id).await?;
        let min_interval = match target.settings.min_interval_ms {
            0 => target.client.default_min_interval(),
            ms => Duration::from_millis(ms),
        };
        // Only a whole listing, read in this run, can tell what is gone.
        let mut seen = Seen {
            subscriptions: (start.since.is_none()
                && !start.resumed
                && target.client.lists_every_subscription())
            .then(Default::default),
            ..Seen::default()
        };
        let mut cursor = start.cursor.clone();
        let mut pagination = pages::Pagination::new(cursor.as_deref(), target.settings.max_pages);
        let began = tokio::time::Instant::now();
        let mut last_request: Option<tokio::time::Instant> = None;
        // The next page, asked for while this one is applied (its pacing still applies).
        let mut prefetched: Option<Result<Page, ProviderApiError>> = None;
        loop {
            let fetched = match prefetched.take() {
                Some(fetched) => fetched,
                None => {
                    let request = PageRequest {
                        cursor: cursor.as_deref(),
                        since: start.since,
                        known_subscriptions: &known,
                        page_size: target.settings.page_size,
                        max_page_bytes: target.settings.max_page_bytes,
                    };
                    (self.fetch(target, request, min_interval, &mut last_request, source_id)).await
                }
            };
            let page = match fetched {
                Ok(page) => page,
                Err(error) => {
                    let page = report.pages + 1;
                    let error = SyncError::Page { page, error };
                    return Err(self.stop(source_id, options, error).await);
                }
            };
            // Where the listing goes next, checked before it is asked for.
            let follow = (page.next.as_ref()).map(|next| {
                pagination
                    .follow(report.pages + 1, next)
                    .map(|()| next.clone())
            });
            let next_request = match &follow {
                Some(Ok(next)) => Some(PageRequest {
                    cursor: Some(next.as_str()),
                    since: start.since,
                    known_subscriptions: &known,
                    page_size: target.settings.page_size,
                    max_page_bytes: target.settings.max_page_bytes,
                }),
                _ => None,
            };
            let mut prefetch = std::pin::pin!(async {
                match next_request {
                    Some(request) => Some(
                        (self.fetch(target, request, min_interval, &mut last_request, source_id))
                            .await,
                    ),
                    None => None,
                }
            });
            // The page's checkpoint never waits for the next page.
            let (applied, next_page) = {
                let mut apply = std::pin::pin!(self.apply(
                    source,
                    &page.records,
                    options.dry_run,
                    &mut report,
                    &mut seen,
                ));
                let mut next_page = None;
                let applied = loop {
                    tokio::select! {
                        applied = &mut apply => break applied,
                        fetched = &mut prefetch, if next_page.is_none() => {
                            next_page = Some(fetched);
                        }
                    }
                };
                (applied, next_page)
            };
            let (records, changed) = applied?;
            report.pages += 1;
            metrics::counter!("subsync_sync_pages_total", "source" => source_id.to_owned())
                .increment(1);
            metrics::counter!("subsync_sync_records_read_total", "source" => source_id.to_owned())
                .increment(records);
            if !options.dry_run {
                metrics::counter!("subsync_sync_drift_total", "source" => source_id.to_owned())
                    .increment(changed);
                state::page_done(&self.db, source_id, page.next.as_deref(), records, changed)
                    .await?;
            }
            let pace = Pace::of(report.records, began.elapsed(), page.remaining);
            let labels = [("source", source_id.to_owned())];
            metrics::gauge!("subsync_sync_records_per_second", &labels)
                .set(pace.records_per_second);
            metrics::gauge!("subsync_sync_eta_seconds", &labels)
                .set(pace.eta.map_or(f64::NAN, |eta| eta.as_secs_f64()));
            progress.page(&report, &pace);
            match &follow {
                None => break,
                Some(Err(error)) => {
                    let page = report.pages;
                    let error = SyncError::Pagination {
                        page,
                        error: error.clone(),
                    };
                    return Err(self.stop(source_id, options, error).await);
                }
                Some(Ok(next)) => {
                    prefetched = match next_page {
                        Some(fetched) => fetched,
                        None => prefetch.await,
                    };
                    cursor = Some(next.clone());
                }
            }
        }
        metrics::gauge!("subsync_sync_eta_seconds", "source" => source_id.to_owned()).set(0.0);
        if !options.dry_run {
            state::finish(&self.db, source_id, start.started_at).await?;
            report.watermark = Some(start.started_at);
            metrics::gauge!("subsync_sync_watermark_seconds", "source" => source_id.to_owned())
                .set(start.started_at.timestamp() as f64);
            if let Some(wait) = options.wait {
                let queued: Vec<String> = seen.queued.iter().cloned().collect();
                report.waited = Some(self.wait_applied(source_id, &queued, wait).await?);
            }
        }
        if let Some(listed) = &seen.subscriptions {
            let gone: Vec<String> = state::live_subscriptions(&self.db, source_id)
                .await?
                .into_iter()
                .filter(|id| !listed.contains(id))
                .collect();
            if !options.dry_run {
                metrics::gauge!("subsync_sync_disappeared_subscriptions", "source" => source_id.to_owned())
                    .set(gone.len() as f64);
            }
            report.disappeared = Some(Disappeared {
                count: gone.len() as u64,
                subscription_ids: gone.into_iter().take(MAX_REPORTED_CHANGES).collect(),
            });
        }
        Ok(report)
    }

    /// Waits up to `wait` for the worker to archive the queued events `ids`; what it
    /// archived and applied by then.
    async fn wait_applied(
        &self,
        source_id: &str,
        ids: &[String],
        wait: Duration,
    ) -> Result<Waited, SyncError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let (archived, applied) = self.db.archived_outcomes(source_id, ids).await?;
            let done = archived >= ids.len() as u64;
            if done || tokio::time::Instant::now() >= deadline {
                return Ok(Waited {
                    queued: ids.len() as u64,
                    archived,
                    applied,
                    timed_out: !done,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A run stopped by a page or its pagination: the error is recorded (not for a dry
    /// run); the watermark and the cursor stay, so the next run resumes there.
    async fn stop(&self, source_id: &str, options: &RunOptions, error: SyncError) -> SyncError {
        if !options.dry_run
            && let Err(db) = state::failed(&self.db, source_id, &error.to_string()).await
        {
            return db.into();
        }
        error
    }

    /// One page request, paced to the provider's limit and within the account's request
    /// budget (dunning first); 429s are waited out (their
    /// `Retry-After`, or a backoff) and transient errors retried on a backoff, up to
    /// `max_page_retries` times.
    async fn fetch(
        &self,
        target: &Target,
        request: PageRequest<'_>,
        min_interval: Duration,
        last_request: &mut Option<tokio::time::Instant>,
        source_id: &str,
    ) -> Result<Page, ProviderApiError> {
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(30))
            .with_jitter()
            .without_max_times()
            .build();
        let mut retries = 0;
        loop {
            if let Some(last) = *last_request {
                tokio::time::sleep_until(last + min_interval).await;
            }
            if let Err(error) = (self.budgets)
                .take(source_id, crate::budget::Priority::Background)
                .await
            {
                return Err(ProviderApiError::Transient(format!(
                    "the request budget could not be read: {error}"
                )));
            }
            *last_request = Some(tokio::time::Instant::now());
            let error = match target.client.page(request).await {
                Ok(page) => return Ok(page),
                Err(error) => error,
            };
            if retries >= target.settings.max_page_retries {
                return Err(error);
            }
            retries += 1;
            let wait = match &error {
                ProviderApiError::RateLimited { retry_after } => {
                    metrics::counter!("subsync_sync_rate_limited_total", "source" => source_id.to_owned())
                        .increment(1);
                    retry_after.unwrap_or_else(|| backoff.next().unwrap_or_default())
                }
                ProviderApiError::Transient(_) => backoff.next().unwrap_or_default(),
                ProviderApiError::Rejected { .. } => return Err(error),
            };
            tracing::warn!(source = source_id, %error, wait_ms = wait.as_millis() as u64, "sync page retried");
            tokio::time::sleep(wait.min(MAX_RATE_LIMIT_WAIT)).await;
        }
    }

    /// Normalizes a page's records, previews them against the ledger and (unless dry)
    /// queues those that change it, noting in `seen` their event ids and the subscriptions
    /// rendered. Returns (records, changed).
    async fn apply(
        &self,
        source: &Source,
        records: &[Record],
        dry_run: bool,
        report: &mut SyncReport,
        seen: &mut Seen,
    ) -> Result<(u64, u64), SyncError> {
        let now = Utc::now();
        let envelopes: Vec<Envelope> = records.iter().map(|r| envelope(source, r, now)).collect();
        let normalized: Vec<_> = envelopes.iter().map(|e| source.normalize(e)).collect();
        let good: Vec<(usize, NewEvent<'_>)> = normalized
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let n = n.as_ref().ok()?;
                Some((
                    i,
                    NewEvent {
                        envelope: &envelopes[i],
                        event_type: &n.event_type,
                        events: &n.events,
                    },
                ))
            })
            .collect();
        if let Some(subscriptions) = &mut seen.subscriptions {
            let rendered = good
                .iter()
                .flat_map(|(_, e)| e.events)
                .filter_map(|c| match c {
                    CanonicalEvent::Subscription(change) => Some(change.subscription_id.clone()),
                    _ => None,
                });
            subscriptions.extend(rendered);
        }
        let batch: Vec<NewEvent<'_>> = good.iter().map(|(_, e)| e.clone()).collect();
        let previews = self.db.preview(&batch, &self.dunning).await?;
        let mut to_queue = Vec::new();
        let mut changed = 0;
        for ((i, event), preview) in good.iter().zip(previews) {
            if preview.changes.is_empty() || !seen.queued.insert(envelopes[*i].event_id.clone()) {
                continue;
            }
            changed += 1;
            to_queue.push(*i);
            let kinds = report.missed.note(&preview.changes, event.events, now);
            if !dry_run {
                for kind in kinds {
                    let labels = [("source", source.id().to_owned()), ("kind", kind)];
                    metrics::counter!("subsync_sync_missed_total", &labels).increment(1);
                }
            }
            report.note(RecordChange {
                key: records[*i].key.clone(),
                event_id: envelopes[*i].event_id.clone(),
                event_type: event.event_type.to_owned(),
                changes: preview.changes,
                malformed: None,
            });
        }
        for (i, result) in normalized.iter().enumerate() {
            if let Err(error) = result {
                report.malformed += 1;
                to_queue.push(i);
                report.note(RecordChange {
                    key: records[i].key.clone(),
                    event_id: envelopes[i].event_id.clone(),
                    event_type: String::new(),
                    changes: Vec::new(),
                    malformed: Some(error.to_string()),
                });
            }
        }
        report.records += records.len() as u64;
        report.changed += changed;
        if !dry_run && !to_queue.is_empty() {
            let broker = self.broker.as_ref().expect("a non-dry sync has a broker");
            futures_util::future::try_join_all(
                to_queue.iter().map(|&i| broker.publish(&envelopes[i])),
            )
            .await?;
        }
        Ok((records.len() as u64, changed))
    }
}

impl SyncReport {
    fn note(&mut self, change: RecordChange) {
        if self.changes.len() < MAX_REPORTED_CHANGES {
            self.changes.push(change);
        }
    }
}

/// The envelope of a synced record: marked as coming from sync, with an event id that is
/// the same for the same record content on every run (so the inbox deduplicates it) and
/// different once the record changes.
fn envelope(source: &Source, record: &Record, now: DateTime<Utc>) -> Envelope {
    let digest = crate::providers::sha256_hex(&[&record.body]);
    let mut event_id = format!("sync:{}:{}", record.key, &digest[..16]);
    if event_id.len() > MAX_EVENT_ID_LEN {
        let key = crate::providers::sha256_hex(&[record.key.as_bytes()]);
        event_id = format!("sync:{}:{}", &key[..32], &digest[..16]);
    }
    let mut headers = record.headers.clone();
    headers.push((ORIGIN_HEADER.to_owned(), "sync".to_owned()));
    Envelope {
        source_id: source.id().to_owned(),
        provider: source.kind(),
        event_id,
        received_at: now,
        content_type: Some("application/json".to_owned()),
        headers,
        body: record.body.clone().into(),
    }
}

/// Runs a source's sync every `interval` until `shutdown`; a run another instance holds
/// is skipped, a failed one logged and retried at the next tick.
pub async fn run_periodic(
    syncer: Arc<Syncer>,
    source_id: String,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let options = RunOptions::default();
        let run = syncer.run(&source_id, &options, &Quiet);
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = run => result,
        };
        match result {
            Ok(report) => tracing::info!(
                source = %source_id, pages = report.pages, records = report.records,
                changed = report.changed, "sync finished"
            ),
            Err(SyncError::Busy(_)) => {
                tracing::debug!(source = %source_id, "sync already running elsewhere")
            }
            Err(error) => tracing::warn!(source = %source_id, %error, "sync failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_is_the_rate_so_far_and_the_time_the_rest_takes_at_it() {
        let pace = Pace::of(500, Duration::from_secs(2), Some(1_000));
        assert_eq!(pace.records_per_second, 250.0);
        assert_eq!(pace.eta, Some(Duration::from_secs(4)));
        let unknown = Pace::of(500, Duration::from_secs(2), None);
        assert_eq!((unknown.remaining, unknown.eta), (None, None));
        let nothing_yet = Pace::of(0, Duration::ZERO, Some(10));
        assert_eq!(
            (nothing_yet.records_per_second, nothing_yet.eta),
            (0.0, None)
        );
    }
}
