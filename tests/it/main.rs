//! The integration tests, in one binary (one link instead of one per file), each module
//! against the real RabbitMQ and PostgreSQL. The fault suite is its own binary
//! (`tests/faults.rs`, run by `scripts/faults.sh`).

#[path = "../common/mod.rs"]
mod common;
/// Values checked against, and generated from, a types digest (Stripe's SDK types).
#[path = "../../src/providers/testing/digest.rs"]
mod digest;
/// Rebilly's webhook definitions as a test tool, the one the unit tests use.
#[path = "../../src/providers/rebilly/webhook/definitions.rs"]
mod rebilly_definitions;
/// Payloads generated from, and checked against, a provider's own definitions (the file
/// the unit tests use, see `tests/fixtures/README.md`).
#[path = "../../src/providers/testing/schema.rs"]
mod schema;
/// Shopify's copied Admin GraphQL schemas and their query checker, the ones the unit tests
/// use.
#[path = "../../src/providers/shopify/schema.rs"]
mod shopify_schema;

mod binary;
mod broker_outage;
mod budget;
mod correct;
mod database_outage;
mod dead_letter_index;
mod dlq;
mod dunning;
mod foundation;
mod ingress_limits;
mod ledger;
mod ledger_concurrency;
mod ledger_order;
mod ledger_views;
mod money;
mod providers;
mod rebilly_truth;
mod stripe_refunds;
mod supervision;
mod sync;
mod sync_providers;
