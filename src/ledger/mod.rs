//! The ledger: the only module that writes the ledger tables (events, attempts,
//! subscriptions, journal, refunds, money lookups, payment links), in the one transaction in which an event's
//! effects are written. The pool and migrations are [`crate::db`]'s.

mod archive;
mod correct;
mod lookups;
mod payments;
mod preview;
mod reconcile;
mod views;

pub use archive::{ArchivedEvent, EventRow, EventsQuery, NewEvent};
pub use correct::{
    BalanceChange, CorrectError, Correction, CorrectionOutcome, CorrectionScope, Normalizer,
    SHADOWED,
};
pub use lookups::{Applied, Closed, DueLookup, LookupView, Queue};
pub use payments::DueLink;
pub use preview::{Change, EventPreview};
pub use reconcile::{Reconciled, attempt_rank};
pub use views::{AttemptView, AttemptsQuery, SubscriptionView};
