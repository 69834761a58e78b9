//! Consuming the work queue (with a prefetch window) and reading the dead-letter queue.

use bytes::Bytes;
use futures_util::StreamExt;
use lapin::{
    Channel, Consumer,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions,
    },
    types::FieldTable,
};

use super::{Broker, QueueError, codec};
use crate::envelope::Envelope;

/// One delivery from the work queue. The envelope is decoded eagerly; a message that does
/// not decode is the worker's to dead-letter.
pub struct Incoming {
    delivery: Delivery,
    /// The raw body, moved out of the delivery (shared with the envelope, not copied).
    body: Bytes,
    pub envelope: Result<Envelope, codec::DecodeError>,
}

impl Incoming {
    fn new(mut delivery: Delivery) -> Self {
        let body = Bytes::from(std::mem::take(&mut delivery.data));
        let envelope = codec::decode(&delivery.properties, body.clone());
        Self {
            delivery,
            body,
            envelope,
        }
    }

    pub fn tag(&self) -> u64 {
        self.delivery.delivery_tag
    }

    pub fn redelivered(&self) -> bool {
        self.delivery.redelivered
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

    /// Reads up to `limit` dead letters without removing them: they are fetched unacked on a
    /// private channel, and closing it hands every one back to the queue.
    pub async fn peek_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let channel = self.channel().await?;
        let mut out = Vec::new();
        while out.len() < limit {
            let queue = self.inner.topology.dead_letter_queue.as_str().into();
            let Some(message) = channel
                .basic_get(queue, BasicGetOptions { no_ack: false })
                .await?
            else {
                break;
            };
            out.push(DeadLetter::new(&message.delivery));
        }
        let _ = channel.close(200, "dead letters read".into()).await;
        Ok(out)
    }
}

impl Subscription {
    /// The next delivery; `None` once the consumer was cancelled and drained.
    pub async fn next(&mut self) -> Option<Result<Incoming, QueueError>> {
        match self.consumer.next().await? {
            Ok(delivery) => Some(Ok(Incoming::new(delivery))),
            Err(error) => Some(Err(error.into())),
        }
    }

    /// Acks every delivery up to and including `tag` (call only after their effects committed).
    pub async fn ack_through(&self, tag: u64) -> Result<(), QueueError> {
        self.channel
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await?;
        Ok(())
    }

    /// Moves one delivery to the dead-letter queue with `reason`: the copy is confirmed by the
    /// broker before the original is acked, so a crash in between only duplicates it.
    pub async fn dead_letter(&self, incoming: &Incoming, reason: &str) -> Result<(), QueueError> {
        let d = &incoming.delivery;
        self.broker
            .publish_dead_letter(&d.properties, &incoming.body, reason)
            .await?;
        self.channel
            .basic_ack(d.delivery_tag, BasicAckOptions { multiple: false })
            .await?;
        Ok(())
    }

    /// Stops new deliveries; those already received can still be drained with `next`.
    pub async fn cancel(&self) {
        let _ = self
            .channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
            .await;
    }

    /// Closes the channel: anything unacked goes back to the queue.
    pub async fn close(self) {
        let _ = self.channel.close(200, "consumer stopping".into()).await;
    }
}

/// A message in the dead-letter queue, as an operator sees it.
#[derive(Debug)]
pub struct DeadLetter {
    pub envelope: Result<Envelope, codec::DecodeError>,
    /// Our reason (worker dead-lettering) or the broker's (`delivery_limit`, ...).
    pub reason: Option<String>,
}

impl DeadLetter {
    fn new(delivery: &Delivery) -> Self {
        let props = &delivery.properties;
        let reason = codec::header_string(props, codec::H_REASON)
            .or_else(|| codec::header_string(props, "x-first-death-reason"));
        Self {
            envelope: codec::decode(props, Bytes::from(delivery.data.clone())),
            reason,
        }
    }
}
