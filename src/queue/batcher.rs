//! Group commit for publishes: envelopes that wait for the broker at the same time go out
//! together as one batch message (see `codec`), confirmed once, and every waiting caller
//! gets that one confirm. Under load this divides the broker's per-message cost (its
//! quorum log, confirms, deliveries, acks) by the batch size; a lone webhook still goes
//! out at once, alone, as a single message.
//!
//! A few batchers share one bounded queue of waiting publishes. Each takes the first one
//! it finds, everything else already waiting (up to the size limits), publishes, and waits
//! for the confirm; meanwhile the next batcher gathers what arrived in the meantime.

use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Broker, PublishError, codec};
use crate::envelope::Envelope;
use crate::supervise::{Restart, TaskHealth, supervise};

/// Body bytes gathered into one batch before it is closed (a larger webhook goes alone).
const MAX_BATCH_BYTES: usize = 512 * 1024;
/// Publishes that may wait for a batcher before callers wait to enqueue.
const QUEUE_CAPACITY: usize = 16 * 1024;

pub(super) struct Pending {
    envelope: Envelope,
    reply: oneshot::Sender<Result<(), PublishError>>,
}

/// The callers' side: hands an envelope to the batchers and waits for its confirm.
#[derive(Clone)]
pub(super) struct Batches {
    queue: mpsc::Sender<Pending>,
}

impl Batches {
    /// Starts `batchers` batchers publishing through `broker`, each batch at most
    /// `max_items` envelopes.
    pub(super) fn start(
        broker: &Broker,
        batchers: usize,
        max_items: usize,
        shutdown: &CancellationToken,
        health: &TaskHealth,
    ) -> Self {
        let (queue, waiting) = mpsc::channel(QUEUE_CAPACITY);
        let waiting = Arc::new(Mutex::new(waiting));
        for index in 0..batchers {
            let batcher = Batcher {
                broker: broker.clone(),
                waiting: waiting.clone(),
                max_items,
            };
            // A batcher that panics drops its batch's replies (those callers get 503) and
            // the lock on the waiting queue; its restart serves the rest.
            let shutdown_run = shutdown.clone();
            tokio::spawn(supervise(
                format!("publish-batcher-{index}"),
                shutdown.clone(),
                health.clone(),
                Restart::default(),
                move || batcher.clone().run(shutdown_run.clone()),
            ));
        }
        Self { queue }
    }

    pub(super) async fn publish(&self, envelope: &Envelope) -> Result<(), PublishError> {
        let (reply, confirmed) = oneshot::channel();
        let pending = Pending {
            envelope: envelope.clone(),
            reply,
        };
        if self.queue.send(pending).await.is_err() {
            return Err(PublishError::Unavailable);
        }
        // A batcher that stopped (shutdown) drops the reply: not queued.
        confirmed.await.unwrap_or(Err(PublishError::Unavailable))
    }
}

#[derive(Clone)]
struct Batcher {
    broker: Broker,
    waiting: Arc<Mutex<mpsc::Receiver<Pending>>>,
    max_items: usize,
}

impl Batcher {
    async fn run(self, shutdown: CancellationToken) {
        while let Some(batch) = self.gather(&shutdown).await {
            let result = self.publish(&batch).await;
            for pending in batch {
                let _ = pending.reply.send(result.clone());
            }
        }
    }

    /// The first waiting publish and whatever else is already waiting; `None` on shutdown.
    async fn gather(&self, shutdown: &CancellationToken) -> Option<Vec<Pending>> {
        let mut waiting = tokio::select! {
            waiting = self.waiting.lock() => waiting,
            _ = shutdown.cancelled() => return None,
        };
        let first = tokio::select! {
            first = waiting.recv() => first?,
            _ = shutdown.cancelled() => return None,
        };
        let mut bytes = first.envelope.body.len();
        let mut batch = vec![first];
        while batch.len() < self.max_items && bytes < MAX_BATCH_BYTES {
            let Ok(next) = waiting.try_recv() else { break };
            bytes += next.envelope.body.len();
            batch.push(next);
        }
        Some(batch)
    }

    async fn publish(&self, batch: &[Pending]) -> Result<(), PublishError> {
        let topology = self.broker.topology();
        if let [one] = batch {
            return self.broker.publish_single(&one.envelope).await;
        }
        let envelopes: Vec<&Envelope> = batch.iter().map(|p| &p.envelope).collect();
        let (props, body) = codec::encode_batch(&envelopes);
        metrics::histogram!("subsync_publish_batch_size").record(batch.len() as f64);
        self.broker
            .publish_raw(&topology.exchange, codec::BATCH_ROUTING_KEY, &body, props)
            .await
    }
}
