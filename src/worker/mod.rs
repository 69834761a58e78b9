//! The worker: consume a window of deliveries → normalize (provider adapter) → write their
//! effects in one Postgres transaction → ack with `multiple` after the commit.
//!
//! A delivery that can never be processed (bad envelope, unknown source, unparseable
//! payload, rejected by the database) is dead-lettered with its reason; the others in its
//! batch go on. A transient failure (database down) is retried with backoff while holding
//! the deliveries, so a short outage does not burn the delivery limit.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::WorkerSettings;
use crate::db::{Db, DbError};
use crate::dunning::schedule::Dunning;
use crate::ledger::{NewEvent, Reconciled};
use crate::ops::dead_letter_index;
use crate::providers::{NormalizeError, Normalized, Sources};
use crate::queue::{Broker, Incoming, QueueError, Subscription};

/// How long a cancelled consumer may take to hand over what it had already received.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("stopped during a transient failure")]
    Shutdown,
}

/// What happened to one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done(Reconciled),
    /// Dead-lettered, or handed back to the queue for another delivery.
    SetAside,
}

#[derive(Clone)]
pub struct Worker {
    broker: Broker,
    db: Db,
    sources: Arc<Sources>,
    dunning: Dunning,
    settings: WorkerSettings,
}

impl Worker {
    pub fn new(
        broker: Broker,
        db: Db,
        sources: Arc<Sources>,
        dunning: Dunning,
        settings: WorkerSettings,
    ) -> Self {
        Self {
            broker,
            db,
            sources,
            dunning,
            settings,
        }
    }

    /// Runs one consumer until `shutdown`, resubscribing whenever the broker connection
    /// drops. Fails when the broker is up but refuses the consumer (its work queue is gone,
    /// access denied): nothing in here heals that, so its supervisor restarts it with
    /// backoff and `/readyz` names it meanwhile.
    pub async fn run(self, index: usize, shutdown: CancellationToken) -> Result<(), QueueError> {
        let tag = format!(
            "subsync-{}-{index}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        while !shutdown.is_cancelled() {
            let connected = tokio::select! {
                _ = shutdown.cancelled() => break,
                ok = self.broker.wait_connected(Duration::from_secs(1)) => ok,
            };
            if !connected {
                continue;
            }
            let mut sub = match self.broker.subscribe(self.settings.prefetch, &tag).await {
                Ok(sub) => sub,
                Err(error) if self.broker.is_connected() => return Err(error),
                Err(error) => {
                    tracing::warn!(%error, "cannot subscribe to the work queue");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            tracing::info!(%tag, "worker consuming");
            match self.consume(&mut sub, &shutdown).await {
                Ok(()) => tracing::info!(%tag, "worker drained and stopped"),
                Err(error) => {
                    tracing::warn!(%error, %tag, "worker lost its channel; resubscribing")
                }
            }
            sub.close().await;
        }
        Ok(())
    }

    /// Consumes batches until the consumer is cancelled (on shutdown) and drained.
    async fn consume(
        &self,
        sub: &mut Subscription,
        shutdown: &CancellationToken,
    ) -> Result<(), StepError> {
        let mut cancelled = false;
        loop {
            let first = if cancelled {
                match tokio::time::timeout(DRAIN_GRACE, sub.next()).await {
                    Ok(next) => next,
                    Err(_) => return Ok(()),
                }
            } else {
                tokio::select! {
                    next = sub.next() => next,
                    _ = shutdown.cancelled() => {
                        sub.cancel().await;
                        cancelled = true;
                        continue;
                    }
                }
            };
            let Some(first) = first else { return Ok(()) };
            // Whole deliveries: the events of a batch message are acked together.
            let mut batch = first?;
            let deadline = Instant::now() + Duration::from_millis(self.settings.batch_wait_ms);
            while batch.len() < self.settings.batch_size {
                match tokio::time::timeout_at(deadline, sub.next()).await {
                    Ok(Some(next)) => batch.extend(next?),
                    Ok(None) | Err(_) => break,
                }
            }
            self.process(sub, batch, shutdown).await?;
        }
    }

    async fn process(
        &self,
        sub: &Subscription,
        batch: Vec<Incoming>,
        shutdown: &CancellationToken,
    ) -> Result<(), StepError> {
        let started = std::time::Instant::now();
        let mut ready: Vec<(&Incoming, Normalized)> = Vec::with_capacity(batch.len());
        for incoming in &batch {
            match self.normalize(incoming) {
                Ok(normalized) => ready.push((incoming, normalized)),
                Err(poison) => {
                    let reason = poison.to_string();
                    dead_letter(sub, &self.db, incoming, poison.kind(), &reason).await?
                }
            }
        }
        if ready.is_empty() {
            return Ok(sub.ack_window(&batch).await?);
        }

        let normalized_at = started.elapsed();
        let outcomes = match self.reconcile_with_retry(&ready, shutdown).await? {
            Ok(outcomes) => outcomes,
            // One bad event must not take its batch down: isolate it.
            Err(error) if ready.len() > 1 => {
                tracing::warn!(%error, size = ready.len(), "batch rejected; retrying events one by one");
                let mut outcomes = Vec::with_capacity(ready.len());
                for one in ready.chunks(1) {
                    outcomes.push(match self.reconcile_with_retry(one, shutdown).await? {
                        Ok(o) => o[0],
                        Err(error) => {
                            self.rejected(sub, one[0].0, &error).await?;
                            Outcome::SetAside
                        }
                    });
                }
                outcomes
            }
            Err(error) => {
                self.rejected(sub, ready[0].0, &error).await?;
                vec![Outcome::SetAside]
            }
        };
        // Every event of the window is now committed or set aside.
        sub.ack_window(&batch).await?;
        // Received → committed, and the age of the oldest event of the batch (queue lag).
        let now = chrono::Utc::now();
        let mut oldest = 0.0f64;
        for (incoming, _) in &ready {
            if let Ok(envelope) = &incoming.envelope {
                let delay = (now - envelope.received_at).as_seconds_f64().max(0.0);
                metrics::histogram!("subsync_event_delay_seconds").record(delay);
                oldest = oldest.max(delay);
            }
        }
        metrics::gauge!("subsync_work_lag_seconds").set(oldest);
        for ((incoming, _), outcome) in ready.iter().zip(&outcomes) {
            let source = incoming
                .envelope
                .as_ref()
                .map(|e| e.source_id.as_str())
                .unwrap_or("");
            let outcome = match outcome {
                Outcome::Done(Reconciled::Applied) => "applied",
                Outcome::Done(Reconciled::Stale) => "stale",
                Outcome::Done(Reconciled::Ignored) => "ignored",
                Outcome::Done(Reconciled::Duplicate) => "duplicate",
                Outcome::SetAside => continue,
            };
            metrics::counter!("subsync_events_processed_total", "source" => source.to_owned(), "outcome" => outcome)
                .increment(1);
        }
        let elapsed = started.elapsed();
        metrics::histogram!("subsync_worker_batch_seconds").record(elapsed.as_secs_f64());
        tracing::debug!(
            size = ready.len(),
            normalize_us = normalized_at.as_micros() as u64,
            total_us = elapsed.as_micros() as u64,
            "batch reconciled"
        );
        Ok(())
    }

    /// An event the database refused (not a transient failure): it goes back to the queue
    /// for another delivery (the cause may be fixed meanwhile, e.g. by a deploy), and on
    /// the last delivery the broker allows it is dead-lettered with the database's reason.
    async fn rejected(
        &self,
        sub: &Subscription,
        incoming: &Incoming,
        error: &DbError,
    ) -> Result<(), QueueError> {
        let limit = self.broker.topology().delivery_limit;
        let delivery = incoming.delivery_number();
        if delivery >= limit {
            let reason = format!("{error} (delivery {delivery} of {limit})");
            return dead_letter(sub, &self.db, incoming, "rejected", &reason).await;
        }
        tracing::warn!(%error, delivery, limit, "event rejected by the database; handing it back");
        metrics::counter!("subsync_worker_errors_total", "kind" => "rejected").increment(1);
        sub.requeue(incoming).await
    }

    /// Normalizes one delivery, or says why it can never be processed.
    fn normalize(&self, incoming: &Incoming) -> Result<Normalized, Poison> {
        let envelope = incoming
            .envelope
            .as_ref()
            .map_err(|e| Poison::Envelope(e.to_string()))?;
        let source = self
            .sources
            .get(&envelope.source_id)
            .ok_or_else(|| Poison::UnknownSource(envelope.source_id.clone()))?;
        Ok(source.normalize(envelope)?)
    }

    /// Reconciles the events in one transaction, retrying transient database failures
    /// until they pass or shutdown. The inner result is a permanent rejection.
    async fn reconcile_with_retry(
        &self,
        ready: &[(&Incoming, Normalized)],
        shutdown: &CancellationToken,
    ) -> Result<Result<Vec<Outcome>, DbError>, StepError> {
        let events: Vec<NewEvent<'_>> = ready
            .iter()
            .map(|(i, n)| NewEvent {
                envelope: i.envelope.as_ref().expect("normalized"),
                event_type: &n.event_type,
                events: &n.events,
            })
            .collect();
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times();
        let attempt = (|| async {
            let started = std::time::Instant::now();
            let result = self.db.reconcile(&events, &self.dunning).await;
            metrics::histogram!("subsync_reconcile_seconds").record(started.elapsed().as_secs_f64());
            result
        })
            .retry(backoff)
            .when(DbError::is_transient)
            .notify(|error, delay| {
                metrics::counter!("subsync_worker_errors_total", "kind" => "transient").increment(1);
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "transient database error; retrying");
            });
        let result = tokio::select! {
            result = attempt => result,
            _ = shutdown.cancelled() => return Err(StepError::Shutdown),
        };
        Ok(result.map(|outcomes| outcomes.into_iter().map(Outcome::Done).collect()))
    }
}

/// Why a delivery can never be processed: it is dead-lettered with this reason.
#[derive(Debug, thiserror::Error)]
enum Poison {
    #[error("{0}")]
    Envelope(String),
    #[error("source {0:?} is not configured")]
    UnknownSource(String),
    #[error(transparent)]
    Normalize(#[from] NormalizeError),
}

impl Poison {
    /// The dead-letter reason's label (`subsync_dead_lettered_total{reason}`).
    fn kind(&self) -> &'static str {
        match self {
            Poison::Envelope(_) => "envelope",
            Poison::UnknownSource(_) => "unknown_source",
            Poison::Normalize(_) => "normalize",
        }
    }
}

/// Dead-letters one event and records it in the dead-letter index (which `/metrics` reads
/// the oldest letter's age from). An index write that fails leaves the row to the indexer:
/// the letter itself is safely in the queue.
async fn dead_letter(
    sub: &Subscription,
    db: &Db,
    incoming: &Incoming,
    kind: &'static str,
    reason: &str,
) -> Result<(), QueueError> {
    let event_id = incoming
        .envelope
        .as_ref()
        .map(|e| e.event_id.as_str())
        .unwrap_or("");
    tracing::warn!(
        kind,
        reason,
        event_id,
        "dead-lettering an event that cannot be processed"
    );
    let letter = sub
        .dead_letter(incoming, &format!("{kind}: {reason}"))
        .await?;
    if let Err(error) = dead_letter_index::record(db, &letter).await {
        tracing::warn!(%error, id = letter.id, "could not index a dead letter; the indexer will");
    }
    metrics::counter!("subsync_worker_errors_total", "kind" => "poison").increment(1);
    metrics::counter!("subsync_dead_lettered_total", "reason" => kind).increment(1);
    Ok(())
}
