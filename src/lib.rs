//! subsync: a webhook-driven subscription-sync worker.
//!
//! ```text
//! provider --HTTP--> ingress --verify--> publish (confirm) --> RabbitMQ quorum queue
//!                                                                  |
//!              DLX / dead-letter queue <--(delivery limit)-- worker (consume, batch)
//!                                                                  |
//!                          normalize (provider adapter) --> ledger (one Postgres tx:
//!                          inbox dedupe + archive [+ attempt state, journal, retries])
//! ```
//!
//! Modules in flow order; each owns one concern. `ingress` never imports `worker`; only
//! `queue` imports lapin; only `ledger` touches the tables; `providers` know nothing of
//! the queue.

pub mod admin;
pub mod api;
pub mod app;
pub mod canonical;
pub mod cli;
pub mod config;
pub mod dunning;
pub mod envelope;
pub mod ingress;
pub mod ledger;
pub mod money;
pub mod ops;
pub mod providers;
pub mod queue;
pub mod supervise;
pub mod sync;
pub mod telemetry;
pub mod worker;
