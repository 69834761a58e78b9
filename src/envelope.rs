//! The versioned message that travels from the ingress through RabbitMQ to the worker:
//! the raw body byte for byte, plus what we learned while verifying it. How it is laid out
//! in AMQP properties and headers is the queue module's business.

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::config::ProviderKind;

/// Bumped when the message layout changes incompatibly; the worker refuses versions it
/// does not know (they are dead-lettered with that reason, not guessed at).
pub const ENVELOPE_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub source_id: String,
    pub provider: ProviderKind,
    /// The provider's event id: together with `source_id`, the dedupe key.
    pub event_id: String,
    pub received_at: DateTime<Utc>,
    pub content_type: Option<String>,
    /// Non-secret provider headers kept for normalization and audit.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}
