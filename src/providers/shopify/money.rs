//! Shopify: an attempt's money, read from its order. The billing-attempt webhooks carry
//! no amount, so the lookup asks Admin GraphQL for the attempt
//! (`subscriptionBillingAttempt(id:)`, `QueryRoot` in both copied schemas) and reads its
//! order's `totalPriceSet.presentmentMoney { amount currencyCode }` (`MoneyBag`,
//! `MoneyV2`: a `Decimal` string and a `CurrencyCode`), converted exactly to minor units.
//!
//! Presentment money, not shop money: it is what the customer was charged, in the currency
//! of the contract (the contract's `currency_code`, which the subscription carries), so a
//! subscription's collections stay in one currency; `shopMoney` is the same total converted
//! to the shop's currency.
//!
//! The order is found in the configured version's shape (see `attempt.rs`): `order` on the
//! attempt before 2026-04, `state { ... on SubscriptionBillingAttemptSuccessState { order
//! } }` from 2026-04 on.
//!
//! The token needs `read_orders` (without `read_all_orders` Shopify shows only the last
//! 60 days of orders: an older attempt's order comes back null or as an access error,
//! and the lookup is parked with that answer).
//!
//! Answers: 5xx and transport failures `Transient`, 429 and `THROTTLED` `RateLimited`
//! (with `Retry-After` or the query-cost wait), 401/403 an authentication failure; a
//! `null` attempt (unknown id), an attempt that did not succeed, a deleted order or an
//! amount that does not convert are `Rejected` (permanent: the lookup is parked). An
//! attempt still processing (`ready: false`, `PendingState`) is `Transient`: its order
//! comes later.

use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::json;

use super::admin::{AdminApi, GraphQlErrors};
use super::attempt::Shape;
use crate::config::ApiSettings;
use crate::money::Money;
use crate::providers::contract::{MoneyClient, MoneyQuery};
use crate::providers::http::{ProviderApiError, ProviderHttp, read, snippet};

/// The order's total as the customer was charged.
const ORDER: &str = "order { id totalPriceSet { presentmentMoney { amount currencyCode } } }";

/// The query of the attempt's order total, in `shape`.
fn query(shape: Shape) -> String {
    let outcome = match shape {
        Shape::Flat => format!("ready {ORDER}"),
        Shape::State => format!(
            "state {{ __typename ... on SubscriptionBillingAttemptSuccessState {{ {ORDER} }} }}"
        ),
    };
    format!(
        "query subscriptionBillingAttemptMoney($id: ID!) {{ \
subscriptionBillingAttempt(id: $id) {{ id {outcome} }} }}"
    )
}

/// Reads a Shopify billing attempt's order total.
pub struct ShopifyMoney {
    admin: AdminApi,
}

impl ShopifyMoney {
    pub fn new(api: &ApiSettings, http: ProviderHttp) -> Self {
        Self {
            admin: AdminApi::new(api, http),
        }
    }

    async fn fetch(&self, query_of: &MoneyQuery) -> Result<Money, ProviderApiError> {
        let id = attempt_gid(&query_of.attempt_id);
        let body = json!({
            "query": query(self.admin.shape()),
            "variables": { "id": id },
        });
        let answer = read(
            self.admin.graphql(&body)?,
            "Shopify",
            self.admin.answer_cap(),
        )
        .await?;
        let wait = crate::providers::http::retry_after(&answer.headers);
        let response: Response = serde_json::from_str(&answer.body)
            .map_err(|e| rejected(format!("not a GraphQL answer: {e}")))?;
        if let Some(error) = response.errors.error(200, wait) {
            return Err(error);
        }
        let attempt = (response.data)
            .and_then(|d| d.subscription_billing_attempt)
            .ok_or_else(|| ProviderApiError::Rejected {
                status: 404,
                message: format!("no billing attempt {}", snippet(&id)),
            })?;
        attempt.money()
    }
}

impl MoneyClient for ShopifyMoney {
    fn money<'a>(
        &'a self,
        query: &'a MoneyQuery,
    ) -> BoxFuture<'a, Result<Money, ProviderApiError>> {
        Box::pin(self.fetch(query))
    }
}

/// The attempt's GraphQL id: a bare number gets the `SubscriptionBillingAttempt` prefix.
fn attempt_gid(id: &str) -> String {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) {
        format!("gid://shopify/SubscriptionBillingAttempt/{id}")
    } else {
        id.to_owned()
    }
}

fn rejected(message: String) -> ProviderApiError {
    ProviderApiError::Rejected {
        status: 200,
        message: snippet(&message),
    }
}

#[derive(Deserialize)]
struct Response {
    data: Option<Data>,
    #[serde(flatten)]
    errors: GraphQlErrors,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    subscription_billing_attempt: Option<Attempt>,
}

/// The attempt in either shape.
#[derive(Deserialize)]
struct Attempt {
    ready: Option<bool>,
    order: Option<Order>,
    state: Option<State>,
}

#[derive(Deserialize)]
struct State {
    #[serde(rename = "__typename")]
    typename: String,
    order: Option<Order>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Order {
    id: String,
    total_price_set: Option<MoneyBag>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MoneyBag {
    presentment_money: Option<MoneyV2>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MoneyV2 {
    amount: crate::money::DecimalText,
    currency_code: String,
}

impl Attempt {
    fn money(self) -> Result<Money, ProviderApiError> {
        let (processing, order) = match self.state {
            Some(state) => match state.typename.as_str() {
                "SubscriptionBillingAttemptSuccessState" => (false, state.order),
                "SubscriptionBillingAttemptPendingState" => (true, None),
                other => return Err(rejected(format!("the attempt did not succeed ({other})"))),
            },
            None => (self.ready == Some(false), self.order),
        };
        if processing {
            return Err(ProviderApiError::Transient(
                "the attempt is still processing".to_owned(),
            ));
        }
        let order = order.ok_or_else(|| rejected("the attempt has no order".to_owned()))?;
        let money = (order.total_price_set)
            .and_then(|set| set.presentment_money)
            .ok_or_else(|| rejected(format!("order {} has no total", snippet(&order.id))))?;
        money
            .amount
            .to_money(&money.currency_code)
            .map_err(|e| rejected(format!("order {}: {e}", snippet(&order.id))))
    }
}

#[cfg(test)]
mod tests;
