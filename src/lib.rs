//! subsync: a webhook-driven subscription-sync worker.
//!
//! ```text
//! provider --HTTP--> ingress --verify--> publish (confirm) --> RabbitMQ quorum queue
//!                                                                  |
//!              DLX / dead-letter queue <--(delivery limit)-- worker (consume, batch)
//!                                                                  |
//!                          normalize (provider adapter) --> ledger (one Postgres tx:
//!                          inbox dedupe + archive [+ attempt state, journal, retries])
//!
//! lookups: attempts stored without money --provider API--> ledger (money + journal, one tx)
//! ```
//!
//! Modules (listed alphabetically); each owns one concern. `ingress` never imports
//! `worker`; only `queue` imports lapin; `providers` (one folder per provider behind
//! `providers::contract`, registered in `providers/registry.rs`) know nothing of the
//! queue, the database, the ledger, dunning or sync, which reach a provider only through
//! a `providers::Source`. `app::Catalogue` builds every source once per process. `db`
//! holds the pool and migrations; each table has one owning module that writes it:
//!
//! | tables | owner |
//! |---|---|
//! | `events`, `billing_attempts`, `subscriptions`, `journal_entries`, `postings` | `ledger` |
//! | `money_lookups` | `ledger` (rows written by reconciliation for every succeeded attempt without money; the `lookups` role asks the providers and settles them through the ledger) |
//! | `payment_links` | `ledger` (rows written by reconciliation for every refund that names only its payment; the `lookups` role asks the provider which attempt it paid, and the ledger books the refunds held for it) |
//! | `retries`, `retry_calls` | `dunning` (written inside the ledger's transaction for the failures it reconciles) |
//! | `final_actions`, `retry_decisions`, `retry_events` | `dunning` (final actions carried out; the policy's decisions with their inputs; every change of a retry, by trigger) |
//! | `sync_state` | `sync` |
//! | `audit_log`, `dead_letters` | `ops` |

pub mod admin;
pub mod app;
pub mod budget;
pub mod canonical;
pub mod cli;
pub mod config;
pub mod db;
pub mod dunning;
pub mod envelope;
pub mod http_error;
pub mod ingress;
pub mod ledger;
pub mod lookups;
pub mod money;
pub mod ops;
pub mod providers;
pub mod queue;
pub mod supervise;
pub mod sync;
pub mod telemetry;
pub mod worker;
