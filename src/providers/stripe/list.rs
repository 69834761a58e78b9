//! Stripe's list APIs (Bearer secret key), two ways:
//!
//! - **Incremental runs** whose `since` is within the Events API's history (30 days, less
//!   an hour of margin): `GET /v1/events` (`EventListParams`) with `types[]` = every event
//!   type the normalizer books (`webhook::booked_types`, at most 20), `created[gte]`,
//!   `limit` ≤ 100, `starting_after=<last event id>` while `has_more`. Each event is the
//!   webhook Stripe sent (its `data.object` as it was then, rendered in the API version of
//!   its creation), so every attempt of an invoice is seen, a refund, a subscription's
//!   every change, whenever the invoice was created: an invoice created days before an
//!   outage whose payment failed and then succeeded during it is healed.
//! - **Full runs**, and incremental ones from further back than the Events API keeps:
//!   `GET /v1/invoices` (`InvoiceListParams`), newest first, `limit` ≤ 100,
//!   `starting_after=<last id>` while `has_more`, with no `created` filter (an invoice
//!   created before the window may have been tried in it). Nothing is expanded: the
//!   current Invoice has no `payment_intent` to expand (Stripe answers 400 to an unknown
//!   expand), and its `payments` list, once included, still names its PaymentIntent by id
//!   only, so a listed invoice carries no decline code. Assumed from Stripe's
//!   documentation, where the definitions are silent: expansion stops at four levels, and
//!   `data.payments.data.payment.payment_intent` would be a fifth.
//!
//! The cursor is the last id of the page, so a resumed run stays in its mode (`evt_...`:
//! events; anything else: invoices).
//!
//! Each invoice that saw a payment attempt is rendered as the event Stripe sends for its
//! state: `invoice.paid` for a paid one, `invoice.payment_failed` for an open or
//! uncollectible one that was tried (the list cannot tell a payment waiting for the
//! customer's action from a declined one: only the webhook
//! `invoice.payment_action_required` does). Drafts, voided invoices and open ones never
//! attempted carry no billing attempt. An invoice shows only its latest attempt; the
//! earlier ones of the last 30 days come from the events.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use futures_util::future::BoxFuture;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::ApiSettings;
use crate::providers::contract::{ListClient, Page, PageRequest, Record};
use crate::providers::http::{Credential, Endpoint, ProviderApiError, read};
use crate::providers::support::{capped, unknown_provider_value};

use super::webhook::booked_types;

/// Stripe's maximum `limit`.
const MAX_LIMIT: u32 = 100;
/// How far back the Events API lists (30 days), less an hour of margin.
const EVENTS_KEPT: TimeDelta = TimeDelta::hours(30 * 24 - 1);

pub struct StripeList {
    api: Endpoint,
    /// A live-mode key (`sk_live_`, `rk_live_`), whose account allows more requests.
    live: bool,
}

impl StripeList {
    pub fn new(api: &ApiSettings, http: crate::providers::http::ProviderHttp) -> Self {
        let key = secrecy::ExposeSecret::expose_secret(&api.token);
        Self {
            api: Endpoint::new(api, http, Credential::Authorization("Bearer")),
            live: key.starts_with("sk_live_") || key.starts_with("rk_live_"),
        }
    }

    async fn fetch(&self, request: PageRequest<'_>) -> Result<Page, ProviderApiError> {
        let limit = capped(request.page_size, MAX_LIMIT).to_string();
        let events_since = match request.cursor {
            Some(cursor) if cursor.starts_with("evt_") => request.since,
            Some(_) => None,
            None => request
                .since
                .filter(|since| *since > Utc::now() - EVENTS_KEPT),
        };
        if let Some(since) = events_since {
            let events = self.api.request(Method::GET, &["v1", "events"])?;
            let mut query = vec![
                ("limit", limit),
                ("created[gte]", since.timestamp().to_string()),
            ];
            query.extend(booked_types().map(|t| ("types[]", t.to_owned())));
            query.extend(
                request
                    .cursor
                    .map(|after| ("starting_after", after.to_owned())),
            );
            let body = read(events.query(&query), "Stripe", request.cap())
                .await?
                .body;
            return parse(&body, "events", render_event);
        }
        let invoices = self.api.request(Method::GET, &["v1", "invoices"])?;
        let mut query = vec![("limit", limit)];
        query.extend(
            request
                .cursor
                .map(|after| ("starting_after", after.to_owned())),
        );
        let body = read(invoices.query(&query), "Stripe", request.cap())
            .await?
            .body;
        parse(&body, "invoices", render)
    }
}

impl ListClient for StripeList {
    fn page<'a>(
        &'a self,
        request: PageRequest<'a>,
    ) -> BoxFuture<'a, Result<Page, ProviderApiError>> {
        Box::pin(self.fetch(request))
    }

    /// Stripe allows 25 read requests per second in test mode (100 live).
    fn default_min_interval(&self) -> Duration {
        Duration::from_millis(40)
    }

    /// Stripe's basic limit: 100 requests per second in live mode, 25 in test mode (a key
    /// that is not a live one counts as test mode).
    fn requests_per_second(&self) -> Option<f64> {
        Some(if self.live { 100.0 } else { 25.0 })
    }
}

#[derive(Deserialize)]
struct List {
    data: Vec<Value>,
    has_more: bool,
}

/// A list page of `what`, each item rendered by `render`.
fn parse(
    body: &str,
    what: &str,
    render: fn(Value) -> Option<Record>,
) -> Result<Page, ProviderApiError> {
    let list: List = serde_json::from_str(body).map_err(|e| ProviderApiError::Rejected {
        status: 200,
        message: format!("not a Stripe list of {what}: {e}"),
    })?;
    let last_id = list
        .data
        .last()
        .and_then(|item| item.get("id")?.as_str().map(str::to_owned));
    let next = if list.has_more { last_id } else { None };
    if list.has_more && next.is_none() {
        return Err(ProviderApiError::Rejected {
            status: 200,
            message: format!("Stripe list of {what} has_more but its last item has no id"),
        });
    }
    let records = list.data.into_iter().filter_map(render).collect();
    Ok(Page::new(records, next))
}

/// An event as it was sent: the webhook body itself.
fn render_event(event: Value) -> Option<Record> {
    let id = event.get("id")?.as_str()?.to_owned();
    Some(Record::json(format!("event:{id}"), &event))
}

/// The event Stripe sends for an invoice in this state, or `None` when no payment was tried.
fn render(invoice: Value) -> Option<Record> {
    let id = invoice.get("id")?.as_str()?.to_owned();
    let count = invoice.get("attempt_count")?.as_u64()?;
    let status = invoice.get("status")?.as_str()?;
    let event_type = match status {
        "paid" => "invoice.paid",
        "open" | "uncollectible" if count > 0 => "invoice.payment_failed",
        "draft" | "open" | "uncollectible" | "void" => return None,
        // `Invoice.Status` is open: a new word is counted, never guessed at.
        word => {
            unknown_provider_value("stripe", "invoice.status", word);
            return None;
        }
    };
    let unix = |pointer: &str| invoice.pointer(pointer).and_then(Value::as_i64);
    let created = match event_type {
        "invoice.paid" => unix("/status_transitions/paid_at"),
        _ => None,
    }
    .or_else(|| unix("/status_transitions/finalized_at"))
    .or_else(|| unix("/created"))?;
    let body = json!({
        "id": format!("evt_sync_{id}_{count}"),
        "object": "event",
        "type": event_type,
        "created": created,
        "data": { "object": invoice },
    });
    Some(Record::json(format!("invoice:{id}:{count}"), &body))
}

#[cfg(test)]
mod tests;
