//! Operator actions shared by the command line and the admin API: the dead-letter queue
//! (list, show, replay, purge), replays of archived events (plain and corrective) and resuming
//! parked retries.
//! Every replay, purge and resume is audited; every dry run goes through the ledger's
//! rolled-back preview.

pub mod audit;
pub mod correct;
pub mod dead_letter_index;
pub mod dlq;
pub mod replay;
pub mod retries;

use crate::db::DbError;
use crate::queue::{PublishError, QueueError};

pub use audit::Actor;

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("unknown source {0:?}")]
    UnknownSource(String),
    #[error("refusing to purge without confirmation (--yes, or \"confirm\": true)")]
    NotConfirmed,
    #[error("{0}")]
    Invalid(String),
    #[error("broker: {0}")]
    Queue(#[from] QueueError),
    #[error("database: {0}")]
    Db(#[from] DbError),
    /// A ledger invariant the operation found broken (a bug, never the caller's input).
    #[error("ledger: {0}")]
    Ledger(String),
}

impl From<PublishError> for OpsError {
    fn from(error: PublishError) -> Self {
        OpsError::Queue(QueueError::Publish(error))
    }
}

/// Told after each message or batch, for progress displays.
pub trait Progress: Send + Sync {
    fn step(&self, done: u64);
}

/// No progress display.
pub struct Quiet;

impl Progress for Quiet {
    fn step(&self, _: u64) {}
}
