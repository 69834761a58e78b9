//! Exchanges and queues, declared idempotently on every (re)connect. Each argument is
//! written out with the reason it is there.

use lapin::{
    Channel, Connection, ExchangeKind,
    options::{
        ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use crate::config::AmqpSettings;

/// Names and limits of everything subsync declares on the broker.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Topic exchange the ingress publishes to (routing key `source.{source_id}`).
    pub exchange: String,
    /// Quorum work queue the workers consume.
    pub work_queue: String,
    /// Fanout exchange that dead letters go through (broker's and ours).
    pub dead_letter_exchange: String,
    /// Quorum queue holding dead letters until an operator replays or purges them.
    pub dead_letter_queue: String,
    pub delivery_limit: u32,
    pub max_length: Option<u64>,
}

impl Topology {
    pub fn new(settings: &AmqpSettings) -> Self {
        let p = &settings.prefix;
        Self {
            exchange: format!("{p}.events"),
            work_queue: format!("{p}.work"),
            dead_letter_exchange: format!("{p}.dlx"),
            dead_letter_queue: format!("{p}.dlq"),
            delivery_limit: settings.delivery_limit,
            max_length: settings.max_queue_length,
        }
    }

    pub fn routing_key(source_id: &str) -> String {
        format!("source.{source_id}")
    }

    fn work_queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        // Replicated, fsynced log: a confirmed message survives a broker crash.
        args.insert("x-queue-type".into(), long("quorum"));
        // 3.10 has no default: without it a poison message is redelivered forever.
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(self.delivery_limit.into()),
        );
        // Where messages go past the delivery limit.
        args.insert(
            "x-dead-letter-exchange".into(),
            long(&self.dead_letter_exchange),
        );
        // Dead-lettering with publisher-confirm semantics inside the broker: never dropped
        // between the two queues. Requires reject-publish overflow.
        args.insert("x-dead-letter-strategy".into(), long("at-least-once"));
        // When full, refuse new publishes (the ingress answers 503 and the provider
        // redelivers) instead of dropping the oldest payment event.
        args.insert("x-overflow".into(), long("reject-publish"));
        if let Some(max) = self.max_length {
            args.insert(
                "x-max-length".into(),
                AMQPValue::LongLongInt(max.min(i64::MAX as u64) as i64),
            );
        }
        args
    }

    fn dead_letter_queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        // Dead letters are payment events too: same durability as the work queue.
        args.insert("x-queue-type".into(), long("quorum"));
        // Operators browse dead letters by fetching and releasing them, which a quorum queue
        // counts as a delivery; RabbitMQ 4 defaults to a limit of 20 and would then drop
        // them (this queue has no dead-letter exchange). An explicit limit no browsing
        // reaches keeps them (-1, "unlimited" in RabbitMQ 4, drops at once on 3.10).
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DEAD_LETTER_DELIVERY_LIMIT),
        );
        args
    }

    pub(super) async fn declare(&self, connection: &Connection) -> lapin::Result<()> {
        let channel = &connection.create_channel().await?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                short(&self.exchange),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                short(&self.dead_letter_exchange),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        let durable_queue = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let declared = channel
            .queue_declare(
                short(&self.dead_letter_queue),
                durable_queue,
                self.dead_letter_queue_arguments(),
            )
            .await;
        // A dead-letter queue declared by an older subsync (without the limit) refuses the
        // new arguments; it is used as it is (the broker closed this channel), with advice.
        let channel = &match declared {
            Ok(_) => channel.clone(),
            Err(error) if is_precondition_failed(&error) => {
                tracing::warn!(
                    queue = %self.dead_letter_queue,
                    "the dead-letter queue exists without x-delivery-limit; on RabbitMQ 4 set one by policy \
                     (rabbitmqctl set_policy --apply-to queues subsync-dlq '<prefix>\\.dlq' '{{\"delivery-limit\":1000000000}}')"
                );
                connection.create_channel().await?
            }
            Err(error) => return Err(error),
        };
        channel
            .queue_bind(
                short(&self.dead_letter_queue),
                short(&self.dead_letter_exchange),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(
                short(&self.work_queue),
                durable_queue,
                self.work_queue_arguments(),
            )
            .await?;
        channel
            .queue_bind(
                short(&self.work_queue),
                short(&self.exchange),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        super::close_bounded(channel.close(200, "topology declared".into())).await;
        Ok(())
    }

    /// Removes everything declared (test isolation and teardown of a deployment).
    pub(super) async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        for queue in [&self.work_queue, &self.dead_letter_queue] {
            channel
                .queue_delete(short(queue), QueueDeleteOptions::default())
                .await?;
        }
        for exchange in [&self.exchange, &self.dead_letter_exchange] {
            channel
                .exchange_delete(short(exchange), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }
}

/// Deliveries of one dead letter before the broker would drop it: never reached by
/// browsing.
const DEAD_LETTER_DELIVERY_LIMIT: i64 = 1_000_000_000;

fn is_precondition_failed(error: &lapin::Error) -> bool {
    error.to_string().contains("PRECONDITION_FAILED")
}

pub(super) fn short(s: &str) -> ShortString {
    ShortString::from(s)
}

pub(super) fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}
