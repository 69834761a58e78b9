//! Stripe: the billing attempt a refunded payment belongs to. A Refund names its
//! PaymentIntent (`pi_...`) or, for a charge made without one, only its Charge (`ch_...`);
//! on the current API version neither names an invoice. The invoice is found through its
//! payments:
//!
//! 1. a Charge only: `GET /v1/charges/{id}`, for its `payment_intent` (none: the charge
//!    paid no invoice);
//! 2. `GET /v1/invoice_payments?payment[type]=payment_intent&payment[payment_intent]={pi}
//!    &expand[]=data.invoice` (`InvoicePaymentListParams`; the invoice expanded so one
//!    call answers): the paid payment's invoice (else the list's first), whose
//!    `attempt_count` and `parent.subscription_details.subscription` give the attempt
//!    `{invoice}:{attempt_count}` as the invoice's webhooks name it (`webhook.rs`). A paid
//!    invoice is not tried again, so its count is the count of the try that paid it.
//!
//! An empty list, or a deleted invoice: the payment paid no subscription's invoice
//! (`None`: its refunds are not a subscription's). Errors as every read (`http::read`):
//! 429 `RateLimited`, 5xx and transport failures `Transient`, 401/403 an authentication
//! failure, any other answer, or one that is not the definitions' shape, `Rejected`.

use futures_util::future::BoxFuture;
use reqwest::Method;
use serde::Deserialize;

use crate::canonical::PaymentLink;
use crate::config::ApiSettings;
use crate::providers::contract::PaymentClient;
use crate::providers::http::{Credential, Endpoint, ProviderApiError, ProviderHttp, read};

pub struct StripePayments {
    api: Endpoint,
}

impl StripePayments {
    pub fn new(api: &ApiSettings, http: ProviderHttp) -> Self {
        Self {
            api: Endpoint::new(api, http, Credential::Authorization("Bearer")),
        }
    }

    async fn get<T: for<'de> Deserialize<'de>>(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<T, ProviderApiError> {
        let answer = read(request, "Stripe", self.api.answer_cap()).await?;
        serde_json::from_str(&answer.body).map_err(|e| ProviderApiError::Rejected {
            status: 200,
            message: format!("not a Stripe {what}: {e}"),
        })
    }

    async fn link(&self, payment_ref: &str) -> Result<Option<PaymentLink>, ProviderApiError> {
        let payment_intent = if payment_ref.starts_with("ch_") {
            let charge = self
                .api
                .request(Method::GET, &["v1", "charges", payment_ref])?;
            let charge: Charge = self.get(charge, "charge").await?;
            match charge.payment_intent {
                Some(pi) => pi,
                None => return Ok(None),
            }
        } else {
            payment_ref.to_owned()
        };
        let list = self.api.request(Method::GET, &["v1", "invoice_payments"])?;
        let query = [
            ("payment[type]", "payment_intent"),
            ("payment[payment_intent]", payment_intent.as_str()),
            ("expand[]", "data.invoice"),
        ];
        let list: List = self
            .get(list.query(&query), "list of invoice payments")
            .await?;
        let payment = (list.data.iter())
            .find(|p| p.status.as_deref() == Some("paid"))
            .or(list.data.first());
        let invoice = match payment.map(|p| &p.invoice) {
            None => return Ok(None),
            Some(Invoice::Expanded(invoice)) if invoice.deleted == Some(true) => return Ok(None),
            Some(Invoice::Expanded(invoice)) => invoice,
            Some(Invoice::Id(_)) => {
                return Err(ProviderApiError::Rejected {
                    status: 200,
                    message: "the invoice payment's invoice came back unexpanded".to_owned(),
                });
            }
        };
        let (Some(id), Some(count)) = (&invoice.id, invoice.attempt_count) else {
            return Err(ProviderApiError::Rejected {
                status: 200,
                message: "the payment's invoice has no id or attempt_count".to_owned(),
            });
        };
        let subscription = (invoice.parent.as_ref())
            .and_then(|p| p.subscription_details.as_ref())
            .and_then(|d| d.subscription.clone());
        Ok(Some(PaymentLink {
            attempt_id: format!("{id}:{count}"),
            subscription_id: subscription,
            cycle_id: Some(id.clone()),
        }))
    }
}

impl PaymentClient for StripePayments {
    fn attempt_of<'a>(
        &'a self,
        payment_ref: &'a str,
    ) -> BoxFuture<'a, Result<Option<PaymentLink>, ProviderApiError>> {
        Box::pin(self.link(payment_ref))
    }
}

#[derive(Deserialize)]
struct Charge {
    payment_intent: Option<String>,
}

#[derive(Deserialize)]
struct List {
    data: Vec<InvoicePayment>,
}

#[derive(Deserialize)]
struct InvoicePayment {
    status: Option<String>,
    invoice: Invoice,
}

/// `string | Invoice | DeletedInvoice`: expanded unless Stripe ignored the expand.
#[derive(Deserialize)]
#[serde(untagged)]
enum Invoice {
    Expanded(Box<InvoiceObject>),
    Id(#[allow(dead_code)] String),
}

#[derive(Deserialize)]
struct InvoiceObject {
    id: Option<String>,
    deleted: Option<bool>,
    attempt_count: Option<u64>,
    parent: Option<Parent>,
}

#[derive(Deserialize)]
struct Parent {
    subscription_details: Option<SubscriptionDetails>,
}

#[derive(Deserialize)]
struct SubscriptionDetails {
    subscription: Option<String>,
}

#[cfg(test)]
mod tests;
