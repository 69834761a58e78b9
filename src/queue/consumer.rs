//! Consuming the work queue (with a prefetch window).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use bytes::Bytes;
use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Consumer,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    },
    types::FieldTable,
};

use super::dead_letters::{DeadLettered, letter_id};
use super::{Broker, QueueError, close_bounded, codec};
use crate::envelope::Envelope;

/// One event from the work queue: a single message, or one event of a batch message
/// (see `codec`). The envelope is decoded eagerly; a message that does not decode is the
/// worker's to dead-letter.
pub struct Incoming {
    tag: u64,
    /// The delivery's properties (shared by the events of a batch).
    props: Arc<BasicProperties>,
    /// The raw body (shared with the envelope, not copied).
    body: Bytes,
    /// One event of a batch message: set aside by republishing it on its own, and acked
    /// with its batch.
    part: bool,
    /// Acked or nacked on its own (dead-lettered or handed back), not by the window's ack.
    settled_alone: AtomicBool,
    pub envelope: Result<Envelope, codec::DecodeError>,
}

impl Incoming {
    /// The events of one delivery: one for a single message, every event of a batch.
    fn split(mut delivery: Delivery) -> Vec<Self> {
        let tag = delivery.delivery_tag;
        let body = Bytes::from(std::mem::take(&mut delivery.data));
        let props = Arc::new(delivery.properties);
        let single = |envelope| Self {
            tag,
            props: props.clone(),
            body: body.clone(),
            part: false,
            settled_alone: AtomicBool::new(false),
            envelope,
        };
        match codec::decode_batch(&props, &body) {
            None => vec![single(codec::decode(&props, body.clone()))],
            Some(Err(error)) => vec![single(Err(error))],
            Some(Ok(envelopes)) => envelopes
                .into_iter()
                .map(|envelope| Self {
                    tag,
                    props: props.clone(),
                    body: envelope.body.clone(),
                    part: true,
                    settled_alone: AtomicBool::new(false),
                    envelope: Ok(envelope),
                })
                .collect(),
        }
    }

    pub fn tag(&self) -> u64 {
        self.tag
    }

    /// Which delivery of this event this is (1 for the first): the quorum queue's
    /// `x-delivery-count` (earlier deliveries of this message) plus the deliveries it had
    /// inside a batch before it was handed back on its own.
    pub fn delivery_number(&self) -> u32 {
        let earlier = codec::header_int(&self.props, "x-delivery-count").unwrap_or(0)
            + codec::header_int(&self.props, codec::H_PRIOR_DELIVERIES).unwrap_or(0);
        u32::try_from(earlier).unwrap_or(0).saturating_add(1)
    }

    fn envelope_of_part(&self) -> &Envelope {
        self.envelope
            .as_ref()
            .expect("a batch part always has its envelope")
    }
}

/// A consumer on its own channel.
pub struct Subscription {
    broker: Broker,
    channel: Channel,
    consumer: Consumer,
    tag: String,
}

impl Broker {
    /// Starts consuming the work queue with at most `prefetch` unacked deliveries.
    pub async fn subscribe(&self, prefetch: u16, tag: &str) -> Result<Subscription, QueueError> {
        let channel = self.channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                self.inner.topology.work_queue.as_str().into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Subscription {
            broker: self.clone(),
            channel,
            consumer,
            tag: tag.to_owned(),
        })
    }
}

impl Subscription {
    /// The events of the next delivery; `None` once the consumer was cancelled and drained.
    pub async fn next(&mut self) -> Option<Result<Vec<Incoming>, QueueError>> {
        match self.consumer.next().await? {
            Ok(delivery) => Some(Ok(Incoming::split(delivery))),
            Err(error) => Some(Err(error.into())),
        }
    }

    /// Acks the deliveries of `window` with one `multiple` ack. Call once every event of
    /// the window is settled: committed, or set aside (dead-lettered or handed back).
    pub async fn ack_window(&self, window: &[Incoming]) -> Result<(), QueueError> {
        let last = window
            .iter()
            .filter(|i| !i.settled_alone.load(Ordering::Relaxed))
            .map(Incoming::tag)
            .max();
        if let Some(tag) = last {
            self.channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await?;
        }
        Ok(())
    }

    /// Moves one event to the dead-letter queue with `reason`: the copy is confirmed by the
    /// broker before the original is acked, so a crash in between only duplicates it. An
    /// event of a batch goes there on its own, and its batch is acked with the window.
    /// Returns what the dead-letter index records of it.
    pub async fn dead_letter(
        &self,
        incoming: &Incoming,
        reason: &str,
    ) -> Result<DeadLettered, QueueError> {
        let at = chrono::Utc::now();
        let record = DeadLettered {
            id: letter_id(&incoming.envelope, &incoming.body),
            source_id: match &incoming.envelope {
                Ok(e) => Some(e.source_id.clone()),
                Err(_) => codec::header_string(&incoming.props, codec::H_SOURCE),
            },
            event_id: incoming.envelope.as_ref().ok().map(|e| e.event_id.clone()),
            reason: Some(reason.to_owned()),
            at,
        };
        if incoming.part {
            let envelope = incoming.envelope_of_part();
            let props = codec::encode_part(envelope, 0);
            self.broker
                .publish_dead_letter(&props, &envelope.body, reason, at)
                .await?;
            return Ok(record);
        }
        self.broker
            .publish_dead_letter(&incoming.props, &incoming.body, reason, at)
            .await?;
        self.channel
            .basic_ack(incoming.tag, BasicAckOptions { multiple: false })
            .await?;
        incoming.settled_alone.store(true, Ordering::Relaxed);
        Ok(record)
    }

    /// Hands one event back to the queue for another delivery, counted against the
    /// delivery limit: a single message is nacked (the broker counts), an event of a batch
    /// is republished on its own with the deliveries it had so far.
    pub async fn requeue(&self, incoming: &Incoming) -> Result<(), QueueError> {
        if incoming.part {
            let envelope = incoming.envelope_of_part();
            let props = codec::encode_part(envelope, incoming.delivery_number());
            self.broker.publish_envelope(envelope, props).await?;
            return Ok(());
        }
        let options = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        self.channel.basic_nack(incoming.tag, options).await?;
        incoming.settled_alone.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Stops new deliveries; those already received can still be drained with `next`.
    pub async fn cancel(&self) {
        let _ = self
            .channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
            .await;
    }

    /// Closes the channel: anything unacked goes back to the queue. Called once the
    /// consumer was cancelled and drained, or after the channel or its connection failed:
    /// then no answer may ever come (see [`close_bounded`]), and the broker requeues what
    /// was unacked when the channel died anyway.
    pub async fn close(self) {
        close_bounded(self.channel.close(200, "consumer stopping".into())).await;
    }
}
