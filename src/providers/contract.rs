//! What a provider can do, as the rest of subsync sees it:
//!
//! - a [`Connector`] verifies and normalizes its webhooks (every provider has one);
//! - a [`RetryClient`] asks the provider to charge a failed billing cycle again (the
//!   providers whose API takes retries);
//! - a [`FinalActionClient`] carries out the final action of a retry that ran out
//!   (marks the cycle unpaid, pauses or cancels the subscription);
//! - a [`ListClient`] pages through the provider's list API for pull sync (the providers
//!   with a list API);
//! - a [`MoneyClient`] reads the amount and currency of a billing attempt from the
//!   provider's API (the providers whose webhooks do not carry both: Shopify, Appstle);
//! - a [`PaymentClient`] finds the attempt a payment belongs to (the providers whose
//!   refunds name the payment, not the attempt: Stripe);
//! - its [`DunningMode`] says who retries a failed payment.
//!
//! `registry.rs` says which provider has which. The provider folders implement these
//! traits; `dunning` and `sync` use them and never see a provider's own types.
//!
//! Retry calls carry the deterministic idempotency key of their retry, so a crash between
//! the call and its commit never charges twice: the provider answers the repeat with the
//! first call's result. Exceptions: Appstle's API has no idempotency header (the scheduler
//! never sends a second retry while one is in flight), and Polar's guard is its 409
//! `PaymentAlreadyInProgress` (the header is sent but not documented as honoured).
//!
//! A list client renders every record as the webhook payload the provider would have sent
//! for it, so the provider's normalizer (the same code the webhooks go through) turns it
//! into canonical events. It is stateless between pages: where to continue is the opaque
//! `cursor` it returned, which the sync run stores after each page (resumable after a
//! crash).

use std::time::SystemTime;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::canonical::PaymentLink;
use crate::config::FinalAction;
use crate::envelope::Envelope;
use crate::money::Money;
use crate::providers::http::{Cap, ProviderApiError};
use crate::providers::support::json_body;
use crate::providers::{Accepted, NormalizeError, Normalized, Unverified, VerifyError};

/// One provider's webhook scheme and payloads. Keys are decoded once, when the source is
/// built.
pub trait Connector: Send + Sync {
    fn verify(&self, request: &Unverified<'_>, now: SystemTime) -> Result<Accepted, VerifyError>;

    fn normalize(&self, envelope: &Envelope) -> Result<Normalized, NormalizeError>;

    /// Headers that make `body` pass `verify`, signed with the source's first secret.
    /// Used by `subsync send-test`, the tests and the benchmarks.
    fn sign(&self, event_id: &str, body: &[u8], now: SystemTime) -> Vec<(String, String)>;

    /// A realistic payload of this provider naming `sample`'s ids, for `subsync send-test`
    /// and the benchmarks.
    fn sample_body(&self, sample: &Sample<'_>) -> Vec<u8>;

    /// Every request header `verify` or `normalize` reads, lowercase (the fuzz targets and
    /// the verifier tests feed these).
    fn header_names(&self) -> Vec<String>;
}

/// What a sample payload names: its event id, its time, and the numbers of the
/// subscription and the billing cycle it belongs to (each connector writes them in its
/// provider's id format). `send-test` uses subscription and cycle 0; the benchmarks spread
/// them so the ledger sees many subscriptions and one cycle per request.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    pub event_id: &'a str,
    pub now: SystemTime,
    pub subscription: u64,
    pub cycle: u64,
}

impl<'a> Sample<'a> {
    /// Subscription 0, cycle 0.
    pub fn new(event_id: &'a str, now: SystemTime) -> Self {
        Self {
            event_id,
            now,
            subscription: 0,
            cycle: 0,
        }
    }
}

/// Who retries a source's failed payments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DunningMode {
    /// subsync calls the provider's retry API (the source needs `[sources.api]`).
    CallsApi,
    /// The provider retries on its own schedule (PayNow, Rebilly): subsync tracks it.
    ProviderManaged,
    /// No dunning (the generic signature schemes, or a retry API without `[sources.api]`).
    None,
}

/// What to retry. Ids are the ledger's: `cycle_id` is the Stripe invoice, the Polar order;
/// `attempt_id` the Appstle billing attempt; `subscription_id` the Shopify contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryCall {
    pub attempt_id: String,
    pub cycle_id: Option<String>,
    pub subscription_id: Option<String>,
    /// Deterministic: derived from (source, cycle, retry number).
    pub idempotency_key: String,
    /// When this same retry was first sent, if this is a re-send (after a timeout, a 5xx
    /// or a crash): the provider may have acted on the earlier send. A client whose API
    /// has no idempotency key reads what happened since before sending again.
    pub previous_send_at: Option<DateTime<Utc>>,
}

/// What the provider said about the retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// Charged now (Stripe invoice paid, Polar `succeeded`).
    Charged,
    /// Accepted; the result arrives later by webhook or polling (Appstle, Shopify).
    Accepted,
    /// The customer must complete a challenge (3-D Secure).
    RequiresAction,
    /// Declined now, with the provider's code and message.
    Declined {
        code: Option<String>,
        message: Option<String>,
    },
    /// A payment for this cycle is already in progress (Polar 409, Stripe idempotency
    /// conflict): do not send another; the outcome arrives by webhook.
    InProgress,
    /// Nothing to retry: already paid, voided, or not eligible (Polar 422).
    NotEligible(String),
}

pub trait RetryClient: Send + Sync {
    fn retry<'a>(
        &'a self,
        call: &'a RetryCall,
    ) -> BoxFuture<'a, Result<CallOutcome, ProviderApiError>>;

    /// Whether a call that failed in transit may be sent again at once: true where the
    /// provider honours the idempotency key (a repeat is answered with the first result).
    /// A client that returns false is never re-sent within one pass; its next send is a
    /// later pass, with [`RetryCall::previous_send_at`] set.
    fn resends_safely(&self) -> bool {
        true
    }
}

/// Carries out the final action of an exhausted (or stopped) retry: marks the cycle
/// unpaid, pauses or cancels the subscription. A client reads the provider's state first
/// where that is one cheap call (a cycle paid meanwhile is [`FinalOutcome::Paid`], a state
/// already reached is [`FinalOutcome::AlreadyDone`]); an action the provider's API has no
/// call for is [`FinalOutcome::Unsupported`], without a request.
pub trait FinalActionClient: Send + Sync {
    fn final_action<'a>(
        &'a self,
        call: &'a FinalCall,
    ) -> BoxFuture<'a, Result<FinalOutcome, ProviderApiError>>;
}

/// One final action to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalCall {
    pub action: FinalAction,
    pub attempt_id: String,
    pub cycle_id: Option<String>,
    pub subscription_id: Option<String>,
    /// Deterministic: derived from (source, cycle, action); the same on every re-send.
    pub idempotency_key: String,
    /// A previous send may have reached the provider (a crash, a timeout, a 5xx): a
    /// client whose API has no idempotency key reads the state before sending again.
    pub resend: bool,
    /// `cancel` at the end of the current period instead of now (`retry.cancel_at_period_end`).
    pub at_period_end: bool,
}

/// What the provider said about a final action; each carries the provider's resulting
/// state (or why nothing was sent), as recorded on the retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinalOutcome {
    /// Carried out now.
    Done(String),
    /// The provider was already in that state (a re-send, or another actor).
    AlreadyDone(String),
    /// The provider says the cycle was paid meanwhile: nothing was changed.
    Paid(String),
    /// The provider's API has no such call: nothing was sent.
    Unsupported(String),
}

impl FinalOutcome {
    pub fn unsupported(action: FinalAction) -> Self {
        FinalOutcome::Unsupported(format!(
            "this provider's API has no call for {}",
            action.as_str()
        ))
    }
}

/// What to fetch next.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest<'a> {
    /// The `next` of the previous page; `None` for the first page of a run.
    pub cursor: Option<&'a str>,
    /// Only records created or updated at or after this time, where the API can filter
    /// (or sort by time and stop); `None` = everything.
    pub since: Option<DateTime<Utc>>,
    /// The subscription ids the ledger knows for this source, sorted: for APIs that list
    /// per contract (Appstle past orders).
    pub known_subscriptions: &'a [String],
    /// Records wanted per page; a client caps it at its API's documented maximum.
    pub page_size: u32,
    /// The most bytes of the page's answer read (`sync.max_page_bytes`).
    pub max_page_bytes: usize,
}

impl PageRequest<'_> {
    /// The cap on the page's answer.
    pub(crate) fn cap(&self) -> Cap {
        Cap::page(self.max_page_bytes)
    }
}

/// One page of records, and where to continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub records: Vec<Record>,
    /// The cursor of the next page, or `None` when this was the last one.
    pub next: Option<String>,
    /// Records the current listing still holds after this page, where the provider tells
    /// its total (for a progress estimate); `None` when it does not.
    pub remaining: Option<u64>,
}

impl Page {
    /// A page whose listing tells no total.
    pub const fn new(records: Vec<Record>, next: Option<String>) -> Self {
        Self {
            records,
            next,
            remaining: None,
        }
    }
}

/// One provider record, rendered as the webhook the provider would have sent for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record's id at the provider, with its kind where ids could collide
    /// (`invoice:in_123`, `contract:gid://...`). The sync event id is derived from it and
    /// from the rendered body, so an unchanged record is the same event on every run.
    pub key: String,
    /// The webhook body, in the exact shape the provider's normalizer reads.
    pub body: Vec<u8>,
    /// Headers the normalizer reads (e.g. Shopify's `x-shopify-topic`), lowercase names.
    pub headers: Vec<(String, String)>,
}

pub trait ListClient: Send + Sync {
    /// Fetches one page. 429 is `RateLimited` (with the provider's `Retry-After`), 5xx and
    /// transport failures `Transient`, anything else the API refuses `Rejected`; the caller
    /// decides about waiting and retrying.
    fn page<'a>(
        &'a self,
        request: PageRequest<'a>,
    ) -> BoxFuture<'a, Result<Page, ProviderApiError>>;

    /// The pause between two page requests that keeps within the provider's documented
    /// rate limit (used when the source's `min_interval_ms` is 0).
    fn default_min_interval(&self) -> std::time::Duration;

    /// The account's documented request limit (requests per second), the default of its
    /// shared budget (see `budget`); `None` where the provider publishes none, or limits by
    /// something else (Shopify's query cost).
    fn requests_per_second(&self) -> Option<f64> {
        None
    }

    /// Whether a full run (no `since`) renders every live subscription of the account, so
    /// one the ledger has live that the run did not see has disappeared from the provider.
    fn lists_every_subscription(&self) -> bool {
        false
    }
}

impl Record {
    /// A record whose body is `body` as JSON, without headers.
    pub(crate) fn json(key: String, body: &impl Serialize) -> Self {
        Self {
            key,
            body: json_body(body),
            headers: Vec::new(),
        }
    }
}

/// The attempt whose money is wanted, with the ids the ledger stored for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoneyQuery {
    /// The provider's attempt id (Shopify's attempt gid, Appstle's billing-attempt id).
    pub attempt_id: String,
    /// The contract, when known.
    pub subscription_id: Option<String>,
    /// The billing cycle, when known (Appstle's `{contract}@{billingDate}`).
    pub cycle_id: Option<String>,
}

/// The amount and currency of a billing attempt, read from the provider's API. A read:
/// asking twice is harmless. Errors as for [`ListClient::page`]: 429 (or a throttle)
/// `RateLimited`, 5xx and transport failures `Transient`, and a permanent answer (not
/// found, no order, an answer without a usable amount) `Rejected`.
pub trait MoneyClient: Send + Sync {
    fn money<'a>(&'a self, query: &'a MoneyQuery)
    -> BoxFuture<'a, Result<Money, ProviderApiError>>;
}

/// Which billing attempt a provider's payment belongs to, for the providers whose refunds
/// name the payment, not the attempt (Stripe). A read: asking twice is harmless. `None`:
/// the payment paid no subscription's cycle (a one-off charge). Errors as for
/// [`MoneyClient::money`].
pub trait PaymentClient: Send + Sync {
    fn attempt_of<'a>(
        &'a self,
        payment_ref: &'a str,
    ) -> BoxFuture<'a, Result<Option<PaymentLink>, ProviderApiError>>;
}
