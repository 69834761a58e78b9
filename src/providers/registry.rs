//! The one place a provider is registered: an exhaustive `match` from its kind to what it
//! can do. There is no wildcard arm, so a new [`ProviderKind`] does not compile until it
//! is written here; nothing else in subsync lists providers (`Source::new` reads this
//! table, dunning and sync ask each `Source`).

use crate::config::{ApiSettings, ProviderKind, SourceSettings};
use crate::providers::contract::{
    Connector, DunningMode, FinalActionClient, ListClient, MoneyClient, PaymentClient, RetryClient,
};
use crate::providers::http::ProviderHttp;
use crate::providers::schemes::{generic_hmac, standard, svix};
use crate::providers::{appstle, paynow, polar, rebilly, shopify, stripe};

/// What one configured source can do.
pub(super) struct Entry {
    pub connector: Box<dyn Connector>,
    pub dunning: DunningMode,
    /// Built only when the source configures `[sources.api]`.
    pub retry: Option<Box<dyn RetryClient>>,
    /// Final actions through the API; built only when the source configures `[sources.api]`.
    pub final_action: Option<Box<dyn FinalActionClient>>,
    /// Built only when the source configures `[sources.api]`.
    pub list: Option<Box<dyn ListClient>>,
    /// The providers whose webhooks do not carry an attempt's money; built only when the
    /// source configures `[sources.api]`.
    pub money: Option<Box<dyn MoneyClient>>,
    /// The providers whose refunds name a payment, not its attempt; built only when the
    /// source configures `[sources.api]`.
    pub payment: Option<Box<dyn PaymentClient>>,
}

/// The entry of `settings`' provider; `Err` names the setting the provider cannot use
/// (never a secret).
pub(super) fn entry(settings: &SourceSettings, http: &ProviderHttp) -> Result<Entry, String> {
    let (secrets, tolerance) = (&settings.secrets, settings.tolerance_secs);
    let api = Api {
        settings: settings.api.as_ref(),
        http,
    };
    Ok(match settings.provider {
        ProviderKind::Stripe => Entry {
            connector: Box::new(stripe::Stripe::new(secrets, tolerance)?),
            dunning: DunningMode::CallsApi,
            retry: api.retry(stripe::StripeClient::new),
            final_action: api.final_action(stripe::StripeClient::new),
            list: api.list(stripe::StripeList::new),
            money: None,
            payment: api.payment(stripe::StripePayments::new),
        },
        ProviderKind::Shopify => Entry {
            connector: Box::new(shopify::Shopify::new(secrets)?),
            dunning: DunningMode::CallsApi,
            retry: api.retry(shopify::ShopifyClient::new),
            final_action: api.final_action(shopify::ShopifyClient::new),
            list: api.list(shopify::ShopifyList::new),
            money: api.money(shopify::ShopifyMoney::new),
            payment: None,
        },
        ProviderKind::Appstle => Entry {
            connector: Box::new(appstle::Appstle::new(secrets, tolerance)?),
            dunning: DunningMode::CallsApi,
            retry: api.retry(appstle::AppstleClient::new),
            final_action: api.final_action(appstle::AppstleClient::new),
            list: api.list(appstle::AppstleList::new),
            money: api.money(appstle::AppstleMoney::new),
            payment: None,
        },
        ProviderKind::Polar => Entry {
            connector: Box::new(polar::new(secrets, tolerance)?),
            dunning: DunningMode::CallsApi,
            retry: api.retry(polar::PolarClient::new),
            final_action: api.final_action(polar::PolarClient::new),
            list: api.list(polar::PolarList::new),
            money: None,
            payment: None,
        },
        ProviderKind::Paynow => Entry {
            connector: Box::new(paynow::PayNow::new(secrets, tolerance)?),
            dunning: DunningMode::ProviderManaged,
            retry: None,
            // Its payments name no subscription: there is nothing to cancel or pause.
            final_action: None,
            list: api.list(paynow::PayNowList::new),
            money: None,
            payment: None,
        },
        ProviderKind::Rebilly => Entry {
            connector: Box::new(rebilly::Rebilly::new(
                settings.basic_auth.as_ref(),
                settings.allow_ips.as_deref(),
            )?),
            dunning: DunningMode::ProviderManaged,
            retry: None,
            final_action: api.final_action(rebilly::RebillyFinal::new),
            list: api.list(rebilly::RebillyList::new),
            money: None,
            payment: None,
        },
        ProviderKind::Standard => {
            webhooks_only(standard::StandardWebhooks::new(secrets, tolerance)?)
        }
        ProviderKind::Svix => webhooks_only(svix::new(secrets, tolerance)?),
        ProviderKind::Hmac => match &settings.hmac {
            Some(hmac) => webhooks_only(generic_hmac::GenericHmac::new(secrets, hmac, tolerance)?),
            None => return Err("the hmac provider needs an [hmac] table".to_owned()),
        },
    })
}

/// A signature scheme with no API: no dunning, no sync, no money lookups.
fn webhooks_only(connector: impl Connector + 'static) -> Entry {
    Entry {
        connector: Box::new(connector),
        dunning: DunningMode::None,
        retry: None,
        final_action: None,
        list: None,
        money: None,
        payment: None,
    }
}

/// A source's `[sources.api]`, when set, and the shared HTTP client.
struct Api<'a> {
    settings: Option<&'a ApiSettings>,
    http: &'a ProviderHttp,
}

impl Api<'_> {
    fn retry<C: RetryClient + 'static>(
        &self,
        new: fn(&ApiSettings, ProviderHttp) -> C,
    ) -> Option<Box<dyn RetryClient>> {
        let client = new(self.settings?, self.http.clone());
        Some(Box::new(client))
    }

    fn final_action<C: FinalActionClient + 'static>(
        &self,
        new: fn(&ApiSettings, ProviderHttp) -> C,
    ) -> Option<Box<dyn FinalActionClient>> {
        let client = new(self.settings?, self.http.clone());
        Some(Box::new(client))
    }

    fn money<C: MoneyClient + 'static>(
        &self,
        new: fn(&ApiSettings, ProviderHttp) -> C,
    ) -> Option<Box<dyn MoneyClient>> {
        let client = new(self.settings?, self.http.clone());
        Some(Box::new(client))
    }

    fn payment<C: PaymentClient + 'static>(
        &self,
        new: fn(&ApiSettings, ProviderHttp) -> C,
    ) -> Option<Box<dyn PaymentClient>> {
        let client = new(self.settings?, self.http.clone());
        Some(Box::new(client))
    }

    fn list<C: ListClient + 'static>(
        &self,
        new: fn(&ApiSettings, ProviderHttp) -> C,
    ) -> Option<Box<dyn ListClient>> {
        let client = new(self.settings?, self.http.clone());
        Some(Box::new(client))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::{api_settings, settings_for};

    /// Which kind has which: the API providers call retries and final actions, and list;
    /// PayNow and Rebilly retry on their side and list, Rebilly takes final actions; the generic schemes have neither. Without
    /// `[sources.api]` no client is built.
    #[test]
    fn every_kind_has_its_clients_and_dunning_mode() {
        let http = crate::providers::http::http_client().unwrap();
        for kind in ProviderKind::ALL {
            let mut settings = settings_for(kind);
            let bare = entry(&settings, &http).unwrap();
            assert!(
                bare.retry.is_none()
                    && bare.final_action.is_none()
                    && bare.list.is_none()
                    && bare.money.is_none()
                    && bare.payment.is_none(),
                "{kind:?}"
            );
            settings.api = Some(api_settings("http://127.0.0.1:9/", "tok"));
            let with_api = entry(&settings, &http).unwrap();
            let (calls, lists, mode) = match kind {
                ProviderKind::Stripe
                | ProviderKind::Shopify
                | ProviderKind::Appstle
                | ProviderKind::Polar => (true, true, DunningMode::CallsApi),
                ProviderKind::Paynow | ProviderKind::Rebilly => {
                    (false, true, DunningMode::ProviderManaged)
                }
                ProviderKind::Standard | ProviderKind::Svix | ProviderKind::Hmac => {
                    (false, false, DunningMode::None)
                }
            };
            assert_eq!(with_api.retry.is_some(), calls, "{kind:?}");
            assert_eq!(with_api.list.is_some(), lists, "{kind:?}");
            assert_eq!(with_api.dunning, mode, "{kind:?}");
            // Final actions: the providers that take retries, and Rebilly (its order
            // cancellations and pauses); PayNow's payments name no subscription to act on.
            let acts = calls || kind == ProviderKind::Rebilly;
            assert_eq!(with_api.final_action.is_some(), acts, "{kind:?}");
            // Only the webhooks without an attempt's money need it read from the API.
            let reads_money = match kind {
                ProviderKind::Shopify | ProviderKind::Appstle => true,
                ProviderKind::Stripe
                | ProviderKind::Polar
                | ProviderKind::Paynow
                | ProviderKind::Rebilly
                | ProviderKind::Standard
                | ProviderKind::Svix
                | ProviderKind::Hmac => false,
            };
            assert_eq!(with_api.money.is_some(), reads_money, "{kind:?}");
            // Only Stripe's refunds name a payment instead of its attempt.
            let links_payments = kind == ProviderKind::Stripe;
            assert_eq!(with_api.payment.is_some(), links_payments, "{kind:?}");
            assert_eq!(bare.dunning, mode, "{kind:?}");
        }
    }
}
