//! Appstle Subscriptions: Svix signatures (the verifier of `schemes/svix.rs`, delegated to), and
//! normalization of Appstle's `{"type": "...", "data": {...}}` envelope.
//!
//! Billing attempts (`subscription.billing-success|billing-failure|billing-skipped`,
//! `data` = Appstle's billing-attempt record):
//! - `attempt_id` = `id`, Appstle's attempt id (string or number; missing is an error). Not
//!   `billingAttemptId`, the Shopify GID: it exists only once Appstle sent the attempt to
//!   Shopify, so skipped or queued attempts have none, and the failure/skipped pair that
//!   Appstle fires for one attempt shares `id` anyway.
//! - `subscription_id` = `contractId`; `cycle_id` = `"{contractId}@{billingDate}"` (a billing
//!   date alone is not unique across contracts; no contract or no date → no cycle).
//! - `status` from `data.status`, never from the event name (a `billing-failure` may say
//!   `SKIPPED_DUNNING_MGMT`), via [`attempt_status`]; an unknown word is an error so that a
//!   new Appstle status is noticed in the dead-letter queue. `provider_status` = the word.
//! - `amount` = `orderAmountContractCurrency` when it is an object with its own amount and
//!   currency code, else `orderAmount` (major-unit decimal) in `currency`/`currencyCode`.
//!   With no currency at all the amount is left `None` rather than guessed (Appstle's
//!   `orderAmount` is in the shop's currency, which the record does not always name): a
//!   succeeded attempt without money is then looked up (`money.rs`: its past order and
//!   its contract's currency).
//! - `attempted_at` = `attemptTime`; `attempt_count` = `attemptCount`; `next_attempt_at` is
//!   not sent by Appstle.
//! - `error_code`/`error_message` from `billingAttemptResponseMessage`, a JSON string
//!   wrapping Shopify's billing-attempt body: its `error_code`/`error_message` when it parses
//!   as a JSON object, else the raw text as `error_message`.
//!
//! Contract changes (`subscription.created|updated|activated|paused|cancelled`, `data` =
//! the contract): `subscription_id` = `subscriptionContractId`, else `id` (a Shopify GID
//! `gid://shopify/SubscriptionContract/N` is reduced to `N`, so it matches `contractId`);
//! `status` from `status` (ACTIVE, PAUSED, CANCELLED/CANCELED, EXPIRED, FAILED, any case),
//! else implied by `activated|paused|cancelled` (`created|updated` without a status is an
//! error); `currency` = `currencyCode`/`currency`; `customer_id` = `customerId`;
//! `current_period_end` = `nextBillingDate`; `updated_at` = `updatedAt`/`lastModifiedDate`.
//!
//! Every other type (`subscription.next-order-date-changed`, `membership.*`...) is ignored.

mod list;
mod money;
mod retry;
mod webhook;

use std::time::SystemTime;

use secrecy::SecretString;

pub(super) use list::AppstleList;
pub(super) use money::AppstleMoney;
pub(super) use retry::AppstleClient;

use crate::envelope::Envelope;
use crate::providers::contract::{Connector, Sample};
use crate::providers::schemes::standard::StandardWebhooks;
use crate::providers::{Accepted, NormalizeError, Normalized, Unverified, VerifyError};

pub struct Appstle {
    svix: StandardWebhooks,
}

impl Appstle {
    pub fn new(secrets: &[SecretString], tolerance_secs: Option<u64>) -> Result<Self, String> {
        crate::providers::schemes::svix::new(secrets, tolerance_secs).map(|svix| Self { svix })
    }
}

impl Connector for Appstle {
    fn verify(&self, request: &Unverified<'_>, now: SystemTime) -> Result<Accepted, VerifyError> {
        self.svix.verify(request, now)
    }

    fn normalize(&self, envelope: &Envelope) -> Result<Normalized, NormalizeError> {
        webhook::normalize(&envelope.body)
    }

    fn sign(&self, event_id: &str, body: &[u8], now: SystemTime) -> Vec<(String, String)> {
        self.svix.sign(event_id, body, now)
    }

    fn header_names(&self) -> Vec<String> {
        self.svix.header_names()
    }

    fn sample_body(&self, sample: &Sample<'_>) -> Vec<u8> {
        let at = chrono::DateTime::<chrono::Utc>::from(sample.now)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let shopify_attempt = 987_654_321 + sample.cycle;
        let shopify = serde_json::json!({
            "id": shopify_attempt, "idempotency_key": sample.event_id, "ready": true,
            "error_code": "insufficient_funds",
            "error_message": "Your card has insufficient funds.",
        });
        serde_json::to_vec(&serde_json::json!({
            "type": "subscription.billing-failure",
            "data": {
                "id": 123_456 + sample.cycle,
                "billingAttemptId": format!("gid://shopify/SubscriptionBillingAttempt/{shopify_attempt}"),
                "contractId": 5_550_001 + sample.subscription, "shop": "demo.myshopify.com", "status": "FAILURE",
                "billingDate": at, "attemptTime": at, "attemptCount": 1,
                "orderAmount": 49.95, "currency": "USD", "retryingNeeded": true,
                "billingAttemptResponseMessage": shopify.to_string(),
            }
        }))
        .expect("static JSON")
    }
}
