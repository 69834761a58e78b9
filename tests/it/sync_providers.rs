//! Pull sync of each provider end to end: a fake of the provider's list API that
//! reproduces its real path, auth header and pagination (last page, empty page, totals,
//! cursor ends), the real broker and database. A ledger missing some attempts (their
//! webhooks lost) is healed by one run, and a second run changes nothing. The semantics
//! shared by all providers (resume after a crash, 429, dry run, both orders) are tested
//! once against Stripe in `sync.rs`; the scaffolding they share is `harness.rs`.

mod appstle;
mod harness;
mod paynow;
mod polar;
mod rebilly;
mod shopify;
