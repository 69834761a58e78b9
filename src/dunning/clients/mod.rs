//! Provider retry clients: one call that asks a provider to charge a failed billing cycle
//! again. Every call carries the deterministic idempotency key of its retry, so a crash
//! between the call and its commit never charges twice: the provider answers the repeat
//! with the first call's result. Exceptions: Appstle's API has no idempotency header (the
//! scheduler never sends a second retry while one is in flight), and Polar's guard is its
//! 409 `PaymentAlreadyInProgress` (the header is sent but not documented as honoured).
//!
//! PayNow and Rebilly retry on their side (subsync tracks their `next_attempt_at` and
//! count), and the generic schemes have no API: for them there is no client.

use futures_util::future::BoxFuture;

use crate::api::{
    Credential, Endpoint, ProviderHttp, auth_failed, exchange, missing, required, snippet,
};
use crate::config::{ApiSettings, ProviderKind};

mod appstle;
mod polar;
pub(crate) mod shopify;
mod stripe;

pub use appstle::AppstleClient;
pub use polar::PolarClient;
pub use shopify::ShopifyClient;
pub use stripe::StripeClient;

/// What to retry. Ids are the ledger's: `cycle_id` is the Stripe invoice, the Polar order;
/// `attempt_id` the Appstle billing attempt; `subscription_id` the Shopify contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryCall {
    pub attempt_id: String,
    pub cycle_id: Option<String>,
    pub subscription_id: Option<String>,
    /// Deterministic: derived from (source, cycle, retry number).
    pub idempotency_key: String,
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

/// Why a call did not get an answer about the payment.
pub use crate::api::ProviderApiError as CallError;

pub trait RetryClient: Send + Sync {
    fn retry<'a>(&'a self, call: &'a RetryCall) -> BoxFuture<'a, Result<CallOutcome, CallError>>;
}

/// The client of a provider that takes retries through its API, or `None`.
pub fn client_for(
    kind: ProviderKind,
    api: &ApiSettings,
    http: ProviderHttp,
) -> Option<Box<dyn RetryClient>> {
    match kind {
        ProviderKind::Stripe => Some(Box::new(StripeClient::new(api, http))),
        ProviderKind::Shopify => Some(Box::new(ShopifyClient::new(api, http))),
        ProviderKind::Appstle => Some(Box::new(AppstleClient::new(api, http))),
        ProviderKind::Polar => Some(Box::new(PolarClient::new(api, http))),
        ProviderKind::Paynow
        | ProviderKind::Rebilly
        | ProviderKind::Standard
        | ProviderKind::Svix
        | ProviderKind::Hmac => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tests::api_settings;

    fn api() -> ApiSettings {
        ApiSettings {
            payment_method_id: Some("pm".to_owned()),
            timeout_ms: 1_000,
            ..api_settings("http://127.0.0.1:9/", "tok")
        }
    }

    #[test]
    fn client_for_covers_the_api_providers_only() {
        let http = crate::api::http_client().unwrap();
        for kind in [
            ProviderKind::Stripe,
            ProviderKind::Shopify,
            ProviderKind::Appstle,
            ProviderKind::Polar,
        ] {
            assert!(client_for(kind, &api(), http.clone()).is_some(), "{kind:?}");
        }
        for kind in [
            ProviderKind::Paynow,
            ProviderKind::Rebilly,
            ProviderKind::Standard,
            ProviderKind::Svix,
            ProviderKind::Hmac,
        ] {
            assert!(client_for(kind, &api(), http.clone()).is_none(), "{kind:?}");
        }
    }
}
