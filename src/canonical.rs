//! The canonical vocabulary every provider's payload is normalized into, whatever the
//! provider calls things. The provider's own word is always kept beside the canonical one.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::money::Money;

/// What one webhook (or one synced record) says happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CanonicalEvent {
    BillingAttempt(BillingAttempt),
    Subscription(SubscriptionChange),
    Refund(Refund),
}

/// Status of one try to charge for one billing cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptStatus {
    /// Queued, requesting, in progress.
    Pending,
    /// 3-D Secure or another challenge the customer must complete.
    RequiresAction,
    Succeeded,
    Failed,
    /// No charge was tried: contract paused/cancelled, dunning or inventory management,
    /// disabled auto-charge, stale date...
    Skipped,
    /// Given back in full. A partial refund leaves the attempt succeeded; its money is a
    /// [`Refund`].
    Refunded,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingAttempt {
    /// The provider's id of this try (distinct per retry, so each try has its own state).
    pub attempt_id: String,
    /// The subscription or contract it bills, where the payload names it.
    pub subscription_id: Option<String>,
    /// The billing cycle / invoice / order the attempt pays for: several attempts (retries)
    /// share one cycle, and a cycle is paid once one of them succeeded.
    pub cycle_id: Option<String>,
    pub status: AttemptStatus,
    /// The provider's own status word.
    pub provider_status: String,
    pub amount: Option<Money>,
    /// The provider's error or decline code and message, verbatim.
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub attempted_at: Option<DateTime<Utc>>,
    /// When the provider itself will try again (PayNow, Polar, Rebilly, Stripe).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The provider's count of tries for this cycle, where it gives one.
    pub attempt_count: Option<u32>,
    /// The key the attempt was created with, where the provider echoes it (Shopify's
    /// `idempotency_key`). Reconciliation links an attempt without a cycle id whose key is
    /// one of subsync's own retry calls to that retry's cycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// Money given back from one collected payment: a refund, a void of a settled sale, a
/// credit against it. Each has the provider's own id, so two partial refunds of one
/// payment are two refunds; the journal books each once, never more in total than the
/// payment collected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    /// The provider's id of this refund (or void, or credit).
    pub refund_id: String,
    /// The attempt (payment) it gives money back from, as that provider's attempts are
    /// named; `None` when the event names only the provider's own payment
    /// ([`Refund::payment_ref`]), until the ledger has linked that payment to its attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_id: Option<String>,
    /// The provider's id of the payment refunded, when the event does not name the attempt
    /// (Stripe's refunds name a PaymentIntent or a Charge, never the invoice). The ledger
    /// finds the attempt through the provider's API once (`payment_links`) and fills in
    /// `attempt_id`, `subscription_id` and `cycle_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_ref: Option<String>,
    pub subscription_id: Option<String>,
    pub cycle_id: Option<String>,
    pub status: RefundStatus,
    /// The provider's own word (its status, or its kind: `void`, `credit`).
    pub provider_status: String,
    /// This refund's amount (not a running total).
    pub amount: Money,
    pub refunded_at: Option<DateTime<Utc>>,
}

/// The billing attempt a provider's payment belongs to (see [`Refund::payment_ref`]), as
/// the provider's API answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentLink {
    pub attempt_id: String,
    pub subscription_id: Option<String>,
    pub cycle_id: Option<String>,
}

/// Where a refund is. Only a succeeded refund moves money in the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    Pending,
    /// Failed or cancelled: no money went back.
    Failed,
    Succeeded,
}

/// State of a subscription or contract after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    /// Created but not yet active (incomplete, trialing before first charge...).
    Pending,
    Active,
    Paused,
    /// A payment failed and the provider is dunning.
    PastDue,
    Cancelled,
    Expired,
    /// The contract failed for good (e.g. Shopify `failed`).
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionChange {
    pub subscription_id: String,
    pub status: SubscriptionStatus,
    /// The provider's own status word (or event name where the payload has no status).
    pub provider_status: String,
    pub currency: Option<String>,
    pub customer_id: Option<String>,
    pub current_period_end: Option<DateTime<Utc>>,
    /// The provider's update time, used to never regress on an older event.
    pub updated_at: Option<DateTime<Utc>>,
    /// The provider's revision or version number, where it has one (Shopify `revision_id`).
    pub version: Option<i64>,
}
