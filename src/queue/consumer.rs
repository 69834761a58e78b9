//! Consuming the work queue (with a prefetch window).

use bytes::Bytes;
use futures_util::StreamExt;
use lapin::{
    Channel, Consumer,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    },
    types::FieldTable,
};

use super::{Broker, QueueError, close_bounded, codec};
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

    /// Which delivery of this message this is (1 for the first), from the quorum queue's
    /// `x-delivery-count` (the number of earlier deliveries).
    pub fn delivery_number(&self) -> u32 {
        let earlier = codec::header_int(&self.delivery.properties, "x-delivery-count");
        u32::try_from(earlier.unwrap_or(0))
            .unwrap_or(0)
            .saturating_add(1)
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

    /// Hands one delivery back to the queue for another delivery (the broker counts it
    /// against the delivery limit).
    pub async fn requeue(&self, incoming: &Incoming) -> Result<(), QueueError> {
        let options = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        self.channel
            .basic_nack(incoming.delivery.delivery_tag, options)
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

    /// Closes the channel: anything unacked goes back to the queue. Called once the
    /// consumer was cancelled and drained, or after the channel or its connection failed:
    /// then no answer may ever come (see [`close_bounded`]), and the broker requeues what
    /// was unacked when the channel died anyway.
    pub async fn close(self) {
        close_bounded(self.channel.close(200, "consumer stopping".into())).await;
    }
}
