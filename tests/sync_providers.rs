//! Pull sync of each provider end to end: a fake of the provider's list API that
//! reproduces its real path, auth header and pagination (last page, empty page, totals,
//! cursor ends), the real broker and database. A ledger missing some attempts (their
//! webhooks lost) is healed by one run, and a second run changes nothing. The semantics
//! shared by all providers (resume after a crash, 429, dry run, both orders) are tested
//! once against Stripe in `tests/sync.rs`.

mod common;

#[path = "sync_providers/appstle.rs"]
mod appstle;
#[path = "sync_providers/paynow.rs"]
mod paynow;
#[path = "sync_providers/polar.rs"]
mod polar;
#[path = "sync_providers/rebilly.rs"]
mod rebilly;
#[path = "sync_providers/shopify.rs"]
mod shopify;
