//! The dead-letter queue as operators work on it. A [`DeadLetterSession`] fetches dead
//! letters unacked on a private channel; each one is then replayed (republished to the
//! work exchange, confirmed by the broker, and only then acked here: an interruption
//! loses nothing, at worst the event is queued twice and the inbox deduplicates it),
//! removed (acked), or left alone: closing the session hands every message not replayed or
//! removed back to the queue.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use lapin::{
    BasicProperties, Channel,
    options::{BasicAckOptions, BasicGetOptions},
    types::{AMQPValue, FieldArray, FieldTable},
};
use serde::Serialize;

use super::topology::Topology;
use super::{Broker, PublishError, QueueError, codec};
use crate::envelope::Envelope;

/// A message in the dead-letter queue, as an operator sees it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// `{source_id}:{event_id}` (what operators name it by), or, for a message that has no
    /// envelope, `sha256:{body hash}`.
    pub id: String,
    pub envelope: Result<Envelope, codec::DecodeError>,
    /// Our reason (worker dead-lettering), else the broker's (`delivery_limit`, ...).
    pub reason: Option<String>,
    /// How many times it was dead-lettered (the broker's `x-death` counts, plus ours).
    pub deaths: u32,
    pub first_death_at: Option<DateTime<Utc>>,
    pub last_death_at: Option<DateTime<Utc>>,
    /// Every AMQP header, as text, for `dlq show`.
    pub headers: BTreeMap<String, String>,
    pub body: Bytes,
    tag: u64,
    props: BasicProperties,
}

/// A message this process just dead-lettered, as the dead-letter index records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLettered {
    /// The id the message has in the dead-letter queue (see [`DeadLetter::id`]).
    pub id: String,
    pub source_id: Option<String>,
    pub event_id: Option<String>,
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

/// A dead letter's id: `{source_id}:{event_id}`, or `sha256:{body hash}` without envelope.
pub(super) fn letter_id(envelope: &Result<Envelope, codec::DecodeError>, body: &[u8]) -> String {
    match envelope {
        Ok(e) => format!("{}:{}", e.source_id, e.event_id),
        Err(_) => format!("sha256:{}", crate::providers::sha256_hex(&[body])),
    }
}

/// The part of a dead letter that is shown as a summary (lists, JSON).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeadLetterSummary {
    pub id: String,
    pub source_id: Option<String>,
    pub event_id: Option<String>,
    pub reason: Option<String>,
    pub deaths: u32,
    pub first_death_at: Option<DateTime<Utc>>,
    pub last_death_at: Option<DateTime<Utc>>,
}

impl DeadLetter {
    fn new(delivery: lapin::message::Delivery) -> Self {
        let props = delivery.properties;
        let body = Bytes::from(delivery.data);
        let envelope = codec::decode(&props, body.clone());
        let reason = codec::header_string(&props, codec::H_REASON)
            .or_else(|| codec::header_string(&props, "x-first-death-reason"));
        let (deaths, mut times) = x_deaths(&props);
        let ours = codec::header_int(&props, codec::H_DEAD_AT)
            .and_then(DateTime::<Utc>::from_timestamp_micros);
        let deaths = deaths + u32::from(ours.is_some());
        times.extend(ours);
        let id = letter_id(&envelope, &body);
        Self {
            id,
            envelope,
            reason,
            deaths,
            first_death_at: times.iter().min().copied(),
            last_death_at: times.iter().max().copied(),
            headers: headers_text(&props),
            body,
            tag: delivery.delivery_tag,
            props,
        }
    }

    pub fn source_id(&self) -> Option<String> {
        match &self.envelope {
            Ok(e) => Some(e.source_id.clone()),
            Err(_) => codec::header_string(&self.props, codec::H_SOURCE),
        }
    }

    pub fn summary(&self) -> DeadLetterSummary {
        DeadLetterSummary {
            id: self.id.clone(),
            source_id: self.source_id(),
            event_id: self.envelope.as_ref().ok().map(|e| e.event_id.clone()),
            reason: self.reason.clone(),
            deaths: self.deaths,
            first_death_at: self.first_death_at,
            last_death_at: self.last_death_at,
        }
    }
}

/// A private channel on the dead-letter queue; see the module documentation.
pub struct DeadLetterSession {
    broker: Broker,
    channel: Channel,
}

impl Broker {
    pub async fn dead_letter_session(&self) -> Result<DeadLetterSession, QueueError> {
        Ok(DeadLetterSession {
            broker: self.clone(),
            channel: self.channel().await?,
        })
    }
}

impl DeadLetterSession {
    /// The next dead letter, held unacked until replayed, removed, or the session closes;
    /// `None` when every message is held.
    pub async fn next(&mut self) -> Result<Option<DeadLetter>, QueueError> {
        let queue = self.broker.topology().dead_letter_queue.as_str().into();
        let message = self
            .channel
            .basic_get(queue, BasicGetOptions { no_ack: false })
            .await?;
        Ok(message.map(|m| DeadLetter::new(m.delivery)))
    }

    /// Republishes `letter` to the work exchange without its dead-letter headers (so the
    /// delivery limit counts afresh), waits for the broker's confirm, then removes it here.
    pub async fn replay(&self, letter: &DeadLetter) -> Result<(), QueueError> {
        self.republish(letter).await?;
        self.remove(letter).await
    }

    /// The first half of [`DeadLetterSession::replay`]: a confirmed copy in the work queue,
    /// the original still held here (released if the session ends now).
    pub async fn republish(&self, letter: &DeadLetter) -> Result<(), QueueError> {
        // A batch the broker dead-lettered whole (its delivery limit) goes back whole: the
        // worker splits it.
        let routing_key = match (letter.source_id(), &letter.envelope) {
            (Some(source), _) => Topology::routing_key(&source),
            (None, Err(codec::DecodeError::Batch(_))) => codec::BATCH_ROUTING_KEY.to_owned(),
            (None, _) => {
                return Err(QueueError::Publish(PublishError::Returned(
                    "the dead letter names no source to route it by".to_owned(),
                )));
            }
        };
        let props = for_replay(&letter.props, Utc::now());
        self.broker
            .publish_raw(
                &self.broker.topology().exchange,
                &routing_key,
                &letter.body,
                props,
            )
            .await?;
        Ok(())
    }

    /// Removes `letter` from the dead-letter queue for good.
    pub async fn remove(&self, letter: &DeadLetter) -> Result<(), QueueError> {
        self.channel
            .basic_ack(letter.tag, BasicAckOptions { multiple: false })
            .await?;
        Ok(())
    }

    /// Hands every held message back to the queue.
    pub async fn close(self) {
        let _ = self
            .channel
            .close(200, "dead letters released".into())
            .await;
    }
}

/// Headers of a replayed message: the original envelope, without the traces of its death
/// (ours and the broker's), plus when it was replayed and how often.
fn for_replay(props: &BasicProperties, at: DateTime<Utc>) -> BasicProperties {
    let mut headers = FieldTable::default();
    let mut replays = 0;
    if let Some(old) = props.headers() {
        for (name, value) in old.inner() {
            let name_str = name.as_str();
            if name_str == codec::H_REPLAYS {
                replays = match value {
                    AMQPValue::LongLongInt(n) => *n,
                    _ => 0,
                };
                continue;
            }
            if name_str == codec::H_REASON
                || name_str == codec::H_DEAD_AT
                || name_str.starts_with("x-death")
                || name_str.starts_with("x-first-death")
                || name_str.starts_with("x-last-death")
                || name_str == "x-delivery-count"
            {
                continue;
            }
            headers.insert(name.clone(), value.clone());
        }
    }
    headers.insert(codec::H_REPLAYS.into(), AMQPValue::LongLongInt(replays + 1));
    headers.insert(
        codec::H_REPLAYED_AT.into(),
        AMQPValue::LongLongInt(at.timestamp_micros()),
    );
    props.clone().with_headers(headers)
}

/// The broker's dead-letter history: total count, and the times of each entry.
fn x_deaths(props: &BasicProperties) -> (u32, Vec<DateTime<Utc>>) {
    let Some(AMQPValue::FieldArray(deaths)) = props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death").cloned())
    else {
        return (0, Vec::new());
    };
    let mut count = 0;
    let mut times = Vec::new();
    for death in field_tables(&deaths) {
        count += match death.inner().get("count") {
            Some(AMQPValue::LongLongInt(n)) => *n as u32,
            Some(AMQPValue::LongInt(n)) => *n as u32,
            _ => 1,
        };
        if let Some(AMQPValue::Timestamp(t)) = death.inner().get("time") {
            times.extend(DateTime::<Utc>::from_timestamp(*t as i64, 0));
        }
    }
    (count, times)
}

fn field_tables(array: &FieldArray) -> impl Iterator<Item = &FieldTable> {
    array.as_slice().iter().filter_map(|v| match v {
        AMQPValue::FieldTable(t) => Some(t),
        _ => None,
    })
}

/// Every header as text (nested tables and arrays as JSON-ish debug text).
fn headers_text(props: &BasicProperties) -> BTreeMap<String, String> {
    let Some(headers) = props.headers() else {
        return BTreeMap::new();
    };
    headers
        .inner()
        .iter()
        .map(|(k, v)| {
            let text = match v {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                AMQPValue::ShortString(s) => s.to_string(),
                AMQPValue::LongLongInt(n) => n.to_string(),
                AMQPValue::LongInt(n) => n.to_string(),
                AMQPValue::Timestamp(t) => t.to_string(),
                AMQPValue::Boolean(b) => b.to_string(),
                other => format!("{other:?}"),
            };
            (k.to_string(), text)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::topology::long;
    use super::*;

    #[test]
    fn a_replayed_message_loses_its_death_headers_and_counts_replays() {
        let mut headers = FieldTable::default();
        headers.insert(codec::H_SOURCE.into(), long("demo"));
        headers.insert(codec::H_REASON.into(), long("normalize: bad"));
        headers.insert(codec::H_DEAD_AT.into(), AMQPValue::LongLongInt(1));
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::default()),
        );
        headers.insert("x-first-death-reason".into(), long("delivery_limit"));
        let props = BasicProperties::default().with_headers(headers);
        let at = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        let once = for_replay(&props, at);
        let twice = for_replay(&once, at);
        let h = twice.headers().as_ref().unwrap().inner();
        assert!(h.contains_key(codec::H_SOURCE));
        for gone in [
            codec::H_REASON,
            codec::H_DEAD_AT,
            "x-death",
            "x-first-death-reason",
        ] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        assert_eq!(h.get(codec::H_REPLAYS), Some(&AMQPValue::LongLongInt(2)));
    }
}
