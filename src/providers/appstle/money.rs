//! Appstle: an attempt's money. Appstle's billing-attempt records carry `orderAmount` (a
//! major-unit decimal) but usually no currency, so the webhook's amount cannot be stored
//! (`webhook.rs` leaves it `None` rather than guess). The lookup reads both from Appstle's
//! External API (`X-API-Key`, as the retry and list clients):
//!
//! 1. The attempt's record among its contract's past orders (`getPastOrdersV2`, the
//!    route `list.rs` reads, newest billing date first): found by `id`, reading at most
//!    [`MAX_PAGES`] pages of [`PAGE_SIZE`] and stopping at the first page billed entirely
//!    before the attempt's billing date (the `@date` of its cycle id). Its amount is
//!    `orderAmountContractCurrency` when present (an object naming its own currency is
//!    taken whole; a bare number is in the contract's currency), else `orderAmount`; its
//!    currency the record's `currency`/`currencyCode` when it names one.
//! 2. Otherwise the currency is the contract's: `GET /api/external/v2/contract-raw-response
//!    ?contractId=` answers the raw Shopify `subscriptionContract`, whose `currencyCode` is
//!    the currency the contract bills in (read at the top level, or under
//!    `subscriptionContract` or `data.subscriptionContract`, whichever the answer has).
//!
//! Facts (Appstle's External API documentation, the Redocly render of its OpenAPI
//! document at developers.subscription.appstle.com/external-api-swagger, server
//! `https://subscription-admin.appstle.com`): the `X-API-Key` header; the BillingAttempt
//! fields `id` (int64), `contractId`, `billingDate`, `orderAmount`; `contract-raw-response`
//! returning the raw Shopify GraphQL `subscriptionContract` (with `__typename`). The
//! past-orders route is the one `list.rs` reads (its path is not in the captured pages).
//! Assumed where the documents are silent: `orderAmount` without a named currency is in
//! the contract's currency (the shop's currency, for the contracts of a single-currency
//! shop; a contract in another currency gets `orderAmountContractCurrency`, which wins).
//!
//! Answers: 5xx and transport failures `Transient`, 429 `RateLimited` (with
//! `Retry-After`), 401/403 an authentication failure; an attempt not among the past orders
//! read, an attempt without an amount, a contract without a currency, an amount that does
//! not convert: `Rejected` (permanent: the lookup is parked with the reason).

use futures_util::future::BoxFuture;
use reqwest::Method;
use reqwest::header::HeaderName;
use serde::Deserialize;
use serde_json::Value;

use super::list::{Attempt, contract_number, field, past_orders};
use crate::config::ApiSettings;
use crate::money::{DecimalText, Money};
use crate::providers::contract::{MoneyClient, MoneyQuery};
use crate::providers::http::{Credential, Endpoint, ProviderApiError, ProviderHttp, missing, read};

/// Past-order pages read to find the attempt, and their size.
const MAX_PAGES: u32 = 4;
const PAGE_SIZE: u32 = 50;

/// Reads an Appstle billing attempt's amount and currency.
pub struct AppstleMoney {
    api: Endpoint,
}

impl AppstleMoney {
    pub fn new(api: &ApiSettings, http: ProviderHttp) -> Self {
        let key = Credential::Header(HeaderName::from_static("x-api-key"));
        Self {
            api: Endpoint::new(api, http, key),
        }
    }

    async fn fetch(&self, query: &MoneyQuery) -> Result<Money, ProviderApiError> {
        let contract = [query.subscription_id.as_deref(), query.cycle_id.as_deref()]
            .into_iter()
            .flatten()
            .find_map(|id| contract_number(id.split('@').next().unwrap_or(id)))
            .ok_or_else(|| missing("the attempt's contract id (Appstle contractId)"))?;
        let billed = (query.cycle_id.as_deref())
            .and_then(|cycle| cycle.split_once('@'))
            .and_then(|(_, date)| chrono::DateTime::parse_from_rfc3339(date).ok());
        let record = self
            .find(contract, &query.attempt_id, billed)
            .await?
            .ok_or_else(|| ProviderApiError::Rejected {
                status: 404,
                message: format!(
                    "attempt {} is not among the past orders of contract {contract}",
                    crate::providers::http::snippet(&query.attempt_id)
                ),
            })?;
        let (amount, currency) = amount_of(&record)?;
        let currency = match currency {
            Some(currency) => currency,
            None => self.contract_currency(contract).await?,
        };
        amount
            .to_money(&currency)
            .map_err(|e| rejected(e.to_string()))
    }

    /// The attempt's record among the contract's past orders (newest billing date first).
    async fn find(
        &self,
        contract: &str,
        attempt_id: &str,
        billed: Option<chrono::DateTime<chrono::FixedOffset>>,
    ) -> Result<Option<Attempt>, ProviderApiError> {
        for page in 0..MAX_PAGES {
            let (attempts, _) =
                past_orders(&self.api, contract, page, PAGE_SIZE, self.api.answer_cap()).await?;
            let listed = attempts.len();
            let mut older = listed > 0;
            for attempt in attempts {
                if field(&attempt, "id").as_deref() == Some(attempt_id) {
                    return Ok(Some(attempt));
                }
                let date = field(&attempt, "billingDate")
                    .and_then(|d| chrono::DateTime::parse_from_rfc3339(&d).ok());
                older &= matches!((date, billed), (Some(d), Some(b)) if d < b);
            }
            if listed < PAGE_SIZE as usize || older {
                break;
            }
        }
        Ok(None)
    }

    /// The currency the contract bills in (`contract-raw-response`).
    async fn contract_currency(&self, contract: &str) -> Result<String, ProviderApiError> {
        let route = ["api", "external", "v2", "contract-raw-response"];
        let request = self.api.request(Method::GET, &route)?;
        let request = request.query(&[("contractId", contract)]);
        let answer = read(request, "Appstle", self.api.answer_cap()).await?;
        let contract_json: Value = serde_json::from_str(&answer.body)
            .map_err(|e| rejected(format!("not an Appstle contract: {e}")))?;
        [
            &contract_json,
            &contract_json["subscriptionContract"],
            &contract_json["data"]["subscriptionContract"],
        ]
        .into_iter()
        .find_map(|c| c.get("currencyCode")?.as_str().map(str::to_owned))
        .ok_or_else(|| rejected(format!("contract {contract} names no currencyCode")))
    }
}

impl MoneyClient for AppstleMoney {
    fn money<'a>(
        &'a self,
        query: &'a MoneyQuery,
    ) -> BoxFuture<'a, Result<Money, ProviderApiError>> {
        Box::pin(self.fetch(query))
    }
}

fn rejected(message: String) -> ProviderApiError {
    ProviderApiError::Rejected {
        status: 200,
        message: crate::providers::http::snippet(&message),
    }
}

/// `orderAmountContractCurrency` as an object naming its currency.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContractAmount {
    amount: Option<DecimalText>,
    currency_code: Option<String>,
    currency: Option<String>,
}

/// The record's amount, and its currency when the record names one.
fn amount_of(record: &Attempt) -> Result<(DecimalText, Option<String>), ProviderApiError> {
    let raw = |name: &str| {
        record
            .get(name)
            .map(|v| v.get().trim())
            .filter(|v| *v != "null")
    };
    let decimal = |text: &str| -> Result<DecimalText, ProviderApiError> {
        serde_json::from_str(text).map_err(|e| rejected(format!("unreadable amount: {e}")))
    };
    let named = field(record, "currency").or_else(|| field(record, "currencyCode"));
    if let Some(text) = raw("orderAmountContractCurrency") {
        if text.starts_with('{') {
            let object: ContractAmount = serde_json::from_str(text)
                .map_err(|e| rejected(format!("unreadable orderAmountContractCurrency: {e}")))?;
            if let Some(amount) = object.amount {
                return Ok((amount, object.currency_code.or(object.currency)));
            }
        } else {
            // A bare amount in the contract's currency.
            return Ok((decimal(text)?, None));
        }
    }
    match raw("orderAmount") {
        Some(text) => Ok((decimal(text)?, named)),
        None => Err(rejected("the attempt has no orderAmount".to_owned())),
    }
}

#[cfg(test)]
mod tests;
