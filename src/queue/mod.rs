//! RabbitMQ: the only module that imports lapin. It owns the topology, a connection that
//! heals itself, the confirmed publisher the ingress uses and the consumer the worker uses.
//!
//! Its long-running tasks (the connection loop, the group-commit batchers) run under
//! `crate::supervise`: a panic in one is logged, counted and restarted, and shows in
//! `/readyz`.
//!
//! A publish counts only once the broker confirmed it (persistent message, quorum queue,
//! mandatory flag): a nack, a returned (unroutable) message, a timeout or a dead connection
//! are all errors, and the ingress turns them into 503 so the provider redelivers.

mod batcher;
mod codec;
mod consumer;
mod dead_letters;
mod topology;

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use chrono::Utc;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::FieldTable,
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;

pub use codec::DecodeError;
pub use consumer::{Incoming, Subscription};
pub use dead_letters::{DeadLetter, DeadLetterSession, DeadLetterSummary, DeadLettered};
pub use topology::Topology;

use crate::config::AmqpSettings;
use crate::envelope::Envelope;
use crate::supervise::{Restart, TaskHealth, supervise};

#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    #[error("broker unavailable")]
    Unavailable,
    #[error("broker did not confirm in time")]
    ConfirmTimeout,
    #[error("broker refused the message")]
    Nacked,
    #[error("broker returned the message: {0}")]
    Returned(String),
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("broker unavailable")]
    Unavailable,
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// How long a close on the recovery path may wait for the broker's answer. A close issued
/// just after the connection failed is never answered: lapin's IO loop has stopped and
/// rejected what was queued until then, but the connection (and channel) state still
/// reads "connected" until its internal task catches up, so the close frame is queued
/// behind a dead loop and its promise never resolves. Unbounded, that wait stalled the
/// reconnect for good (every webhook 503 until a restart).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Batchers (each with one batch awaiting its confirm) per publishing channel.
const BATCHERS_PER_CHANNEL: usize = 2;

/// Awaits a close on the recovery path (a connection lost or stopping, a consumer channel
/// done or failed, the topology channel of a new connection) for at most
/// [`CLOSE_TIMEOUT`]: the broker requeues whatever was unacked when a connection or
/// channel died, whether or not the close got through.
pub(crate) async fn close_bounded<T>(close: impl std::future::Future<Output = T>) {
    if tokio::time::timeout(CLOSE_TIMEOUT, close).await.is_err() {
        tracing::warn!("no answer to a close from the broker in time; dropping the handle");
    }
}

/// Counts of a queue, read with a passive declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    pub messages: u32,
    pub consumers: u32,
}

/// One live connection with its publishing channels (confirm mode).
struct Live {
    connection: Connection,
    publishers: Vec<Channel>,
    broken: CancellationToken,
}

impl Live {
    fn healthy(&self) -> bool {
        !self.broken.is_cancelled()
            && self.connection.status().connected()
            && self.publishers.iter().all(|c| c.status().connected())
    }
}

struct Inner {
    url: SecretString,
    topology: Topology,
    publish_channels: usize,
    confirm_timeout: Duration,
    reconnect_max_delay: Duration,
    live: watch::Sender<Option<Arc<Live>>>,
    next: AtomicUsize,
    /// The one channel `/metrics` scrapes read queue depths on (passive declares), kept
    /// open between scrapes; replaced when it or its connection is gone.
    stats_channel: Mutex<Option<Channel>>,
}

/// Handle to the broker; cheap to clone. A background task keeps one connection alive,
/// reconnecting with backoff and redeclaring the topology whenever it drops.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
    /// Group commit of [`Broker::publish`] (`None` in the batchers' own handle, and when
    /// `publish_batch_max` is 1).
    batches: Option<batcher::Batches>,
}

impl Broker {
    /// Starts the connection supervisor. Returns at once: until the first connection is up,
    /// publishes fail with [`PublishError::Unavailable`].
    pub fn start(settings: &AmqpSettings, shutdown: CancellationToken) -> Self {
        Self::start_supervised(settings, shutdown, &TaskHealth::default())
    }

    /// [`Broker::start`], reporting its tasks' restarts and downtime to `health`.
    pub fn start_supervised(
        settings: &AmqpSettings,
        shutdown: CancellationToken,
        health: &TaskHealth,
    ) -> Self {
        let (live, _) = watch::channel(None);
        let broker = Broker {
            inner: Arc::new(Inner {
                url: settings.url.clone(),
                topology: Topology::new(settings),
                publish_channels: settings.publish_channels,
                confirm_timeout: settings.confirm_timeout(),
                reconnect_max_delay: Duration::from_millis(settings.reconnect_max_delay_ms),
                live,
                next: AtomicUsize::new(0),
                stats_channel: Mutex::new(None),
            }),
            batches: None,
        };
        let connection = {
            let (broker, shutdown) = (broker.clone(), shutdown.clone());
            move || broker.clone().supervise(shutdown.clone())
        };
        tokio::spawn(supervise(
            "broker-connection".to_owned(),
            shutdown.clone(),
            health.clone(),
            Restart::default(),
            connection,
        ));
        if settings.publish_batch_max > 1 {
            let batches = batcher::Batches::start(
                &broker,
                settings.publish_channels * BATCHERS_PER_CHANNEL,
                settings.publish_batch_max,
                &shutdown,
                health,
            );
            Broker {
                batches: Some(batches),
                ..broker
            }
        } else {
            broker
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// True while a healthy connection is up.
    pub fn is_connected(&self) -> bool {
        self.current().is_some()
    }

    /// Waits until connected, or `timeout` passes.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.live.subscribe();
        tokio::time::timeout(
            timeout,
            rx.wait_for(|l| l.as_ref().is_some_and(|l| l.healthy())),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }

    fn current(&self) -> Option<Arc<Live>> {
        self.inner
            .live
            .borrow()
            .as_ref()
            .filter(|l| l.healthy())
            .cloned()
    }

    /// Keeps one connection up until shutdown (the body of the `broker-connection` task).
    async fn supervise(self, shutdown: CancellationToken) {
        // A run that panicked may have left its connection published: not ours any more.
        if let Some(stale) = self.inner.live.send_replace(None) {
            close_bounded(stale.connection.close(200, "subsync restarting".into())).await;
        }
        let mut backoff = self.backoff();
        loop {
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => break,
                attempt = self.connect() => attempt,
            };
            match attempt {
                Ok(live) => {
                    tracing::info!(exchange = %self.inner.topology.exchange, "broker connected, topology declared");
                    backoff = self.backoff();
                    let live = Arc::new(live);
                    self.inner.live.send_replace(Some(live.clone()));
                    let lost = self.watch_health(&live, &shutdown).await;
                    self.inner.live.send_replace(None);
                    close_bounded(
                        live.connection
                            .close(200, "subsync reconnecting or stopping".into()),
                    )
                    .await;
                    if !lost {
                        break;
                    }
                    tracing::warn!("broker connection lost; reconnecting");
                    metrics::counter!("subsync_broker_reconnects_total").increment(1);
                }
                Err(error) => {
                    let delay = backoff.next().unwrap_or(self.inner.reconnect_max_delay);
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "broker connection failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.inner.live.send_replace(None);
    }

    fn backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(self.inner.reconnect_max_delay)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// Returns true when the connection was lost, false on shutdown.
    async fn watch_health(&self, live: &Live, shutdown: &CancellationToken) -> bool {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = live.broken.cancelled() => return true,
                _ = tick.tick() => if !live.healthy() { return true },
            }
        }
    }

    async fn connect(&self) -> Result<Live, lapin::Error> {
        let props = ConnectionProperties::default().with_connection_name("subsync".into());
        let connection = Connection::connect(self.inner.url.expose_secret(), props).await?;
        self.inner.topology.declare(&connection).await?;
        let mut publishers = Vec::with_capacity(self.inner.publish_channels);
        for _ in 0..self.inner.publish_channels {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            publishers.push(channel);
        }
        Ok(Live {
            connection,
            publishers,
            broken: CancellationToken::new(),
        })
    }

    /// Publishes a verified webhook and waits for the broker's confirm: together with the
    /// other webhooks waiting at the same time, as one batch message (see `batcher`).
    pub async fn publish(&self, envelope: &Envelope) -> Result<(), PublishError> {
        let started = Instant::now();
        let result = match &self.batches {
            Some(batches) => batches.publish(envelope).await,
            None => self.publish_single(envelope).await,
        };
        metrics::histogram!("subsync_publish_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        result
    }

    /// Publishes one webhook as one message of its own and waits for the broker's confirm.
    pub async fn publish_single(&self, envelope: &Envelope) -> Result<(), PublishError> {
        self.publish_envelope(envelope, codec::encode(envelope))
            .await
    }

    /// Publishes `envelope` as a single message with `props`, confirmed.
    async fn publish_envelope(
        &self,
        envelope: &Envelope,
        props: BasicProperties,
    ) -> Result<(), PublishError> {
        let routing_key = Topology::routing_key(&envelope.source_id);
        self.publish_raw(
            &self.inner.topology.exchange,
            &routing_key,
            &envelope.body,
            props,
        )
        .await
    }

    pub(super) async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), PublishError> {
        let live = self.current().ok_or(PublishError::Unavailable)?;
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed) % live.publishers.len();
        let channel = &live.publishers[n];
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let confirm = async {
            channel
                .basic_publish(exchange.into(), routing_key.into(), options, body, props)
                .await?
                .await
        };
        match tokio::time::timeout(self.inner.confirm_timeout, confirm).await {
            Err(_) => Err(PublishError::ConfirmTimeout),
            Ok(Err(error)) => {
                tracing::warn!(%error, "publish failed; marking connection broken");
                live.broken.cancel();
                Err(PublishError::Unavailable)
            }
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(returned)))) => {
                Err(PublishError::Returned(returned.reply_text.to_string()))
            }
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
            Ok(Ok(Confirmation::NotRequested)) => {
                unreachable!("publish channels are in confirm mode")
            }
        }
    }

    /// Dead-letters a message with `reason`, confirmed, before the caller acks the original.
    pub(crate) async fn publish_dead_letter(
        &self,
        props: &BasicProperties,
        body: &[u8],
        reason: &str,
        at: chrono::DateTime<Utc>,
    ) -> Result<(), PublishError> {
        let props = codec::with_reason(props, reason, at);
        self.publish_raw(&self.inner.topology.dead_letter_exchange, "", body, props)
            .await
    }

    async fn channel(&self) -> Result<Channel, QueueError> {
        let live = self.current().ok_or(QueueError::Unavailable)?;
        Ok(live.connection.create_channel().await?)
    }

    /// Message and consumer counts of the work queue and the dead-letter queue, read with
    /// passive declares (which change nothing) on one channel kept for them.
    pub async fn stats(&self) -> Result<(QueueStats, QueueStats), QueueError> {
        let mut kept = self.inner.stats_channel.lock().await;
        let channel = match kept.as_ref().filter(|c| c.status().connected()) {
            Some(channel) => channel.clone(),
            None => {
                let channel = self.channel().await?;
                *kept = Some(channel.clone());
                channel
            }
        };
        let result = Self::read_stats(&self.inner.topology, &channel).await;
        if result.is_err() {
            // A failed declare (a queue deleted from under us) closes the channel.
            *kept = None;
        }
        result
    }

    async fn read_stats(
        topology: &Topology,
        channel: &Channel,
    ) -> Result<(QueueStats, QueueStats), QueueError> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let mut out = Vec::with_capacity(2);
        for name in [&topology.work_queue, &topology.dead_letter_queue] {
            let q = channel
                .queue_declare(name.as_str().into(), passive, FieldTable::default())
                .await?;
            out.push(QueueStats {
                messages: q.message_count(),
                consumers: q.consumer_count(),
            });
        }
        Ok((out[0], out[1]))
    }

    /// Deletes the queues and exchanges (test isolation, decommissioning).
    pub async fn delete_topology(&self) -> Result<(), QueueError> {
        let channel = self.channel().await?;
        self.inner.topology.delete(&channel).await?;
        let _ = channel.close(200, "topology deleted".into()).await;
        Ok(())
    }
}
