//! Dunning: what to do about failed payments. A failed attempt's decline bucket picks the
//! path; the policy decides when to retry; the scheduler calls the provider's API with a
//! deterministic idempotency key and records every decision and call.

pub mod decisions;
pub mod decline;
pub mod outcome;
pub mod policy;
pub mod schedule;
pub mod scheduler;
pub mod simulate;
pub mod status;
pub mod views;
