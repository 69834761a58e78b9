//! Stripe event → canonical events: the decision table of every event type, the wire
//! types and the normalization. The mapping is documented in `stripe/mod.rs`.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::canonical::{
    AttemptStatus, BillingAttempt, CanonicalEvent, Refund, RefundStatus, SubscriptionChange,
};
use crate::money::{DecimalText, Money};
use crate::providers::support::{currency_code, malformed, stripe_subscription_status};
use crate::providers::support::{parse_payload, time_from_unix, unknown_provider_value};
use crate::providers::{NormalizeError, Normalized};

const PROVIDER: &str = "stripe";

/// What subsync does with a Stripe event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Handling {
    /// `data.object` is an `Invoice`: one billing attempt with this status.
    Attempt(AttemptStatus),
    /// `data.object` is a `Subscription`: one subscription change.
    Subscription,
    /// `data.object` is a `Refund`: one refund of the payment it names.
    Refund,
    /// Archived as `ignored`, for this reason.
    Ignored(&'static str),
}

use Handling::{Attempt, Ignored, Refund as RefundOf, Subscription as SubscriptionState};

/// Every event type of Stripe's definitions (`Event.Type` of the SDK's `Events.ts`, API
/// version 2026-07-29.dahlia), decided. A type not listed is ignored and counted.
pub(super) const EVENTS: &[(&str, Handling)] = &[
    ("account.application.authorized", Ignored(ACCOUNT)),
    ("account.application.deauthorized", Ignored(ACCOUNT)),
    ("account.external_account.created", Ignored(ACCOUNT)),
    ("account.external_account.deleted", Ignored(ACCOUNT)),
    ("account.external_account.updated", Ignored(ACCOUNT)),
    ("account.updated", Ignored(ACCOUNT)),
    ("application_fee.created", Ignored(FUNDS)),
    ("application_fee.refund.updated", Ignored(FUNDS)),
    ("application_fee.refunded", Ignored(FUNDS)),
    ("balance.available", Ignored(FUNDS)),
    ("balance_settings.updated", Ignored(ACCOUNT)),
    ("billing.alert.triggered", Ignored(USAGE_BILLING)),
    (
        "billing.credit_balance_transaction.created",
        Ignored(USAGE_BILLING),
    ),
    ("billing.credit_grant.created", Ignored(USAGE_BILLING)),
    ("billing.credit_grant.updated", Ignored(USAGE_BILLING)),
    ("billing.meter.created", Ignored(USAGE_BILLING)),
    ("billing.meter.deactivated", Ignored(USAGE_BILLING)),
    ("billing.meter.reactivated", Ignored(USAGE_BILLING)),
    ("billing.meter.updated", Ignored(USAGE_BILLING)),
    ("billing_portal.configuration.created", Ignored(PORTAL)),
    ("billing_portal.configuration.updated", Ignored(PORTAL)),
    ("billing_portal.session.created", Ignored(PORTAL)),
    ("capability.updated", Ignored(ACCOUNT)),
    ("cash_balance.funds_available", Ignored(CUSTOMER)),
    ("charge.captured", Ignored(CHARGE)),
    ("charge.dispute.closed", Ignored(DISPUTE)),
    ("charge.dispute.created", Ignored(DISPUTE)),
    ("charge.dispute.funds_reinstated", Ignored(DISPUTE)),
    ("charge.dispute.funds_withdrawn", Ignored(DISPUTE)),
    ("charge.dispute.updated", Ignored(DISPUTE)),
    ("charge.expired", Ignored(CHARGE)),
    ("charge.failed", Ignored(CHARGE)),
    ("charge.pending", Ignored(CHARGE)),
    ("charge.refund.updated", RefundOf),
    ("charge.refunded", Ignored(CHARGE_REFUNDED)),
    ("charge.succeeded", Ignored(CHARGE)),
    ("charge.updated", Ignored(CHARGE)),
    ("checkout.session.async_payment_failed", Ignored(CHECKOUT)),
    (
        "checkout.session.async_payment_succeeded",
        Ignored(CHECKOUT),
    ),
    ("checkout.session.completed", Ignored(CHECKOUT)),
    ("checkout.session.expired", Ignored(CHECKOUT)),
    ("climate.order.canceled", Ignored(OTHER_PRODUCT)),
    ("climate.order.created", Ignored(OTHER_PRODUCT)),
    ("climate.order.delayed", Ignored(OTHER_PRODUCT)),
    ("climate.order.delivered", Ignored(OTHER_PRODUCT)),
    ("climate.order.product_substituted", Ignored(OTHER_PRODUCT)),
    ("climate.product.created", Ignored(OTHER_PRODUCT)),
    ("climate.product.pricing_updated", Ignored(OTHER_PRODUCT)),
    ("coupon.created", Ignored(CATALOGUE)),
    ("coupon.deleted", Ignored(CATALOGUE)),
    ("coupon.updated", Ignored(CATALOGUE)),
    ("credit_note.created", Ignored(CREDIT_NOTE)),
    ("credit_note.updated", Ignored(CREDIT_NOTE)),
    ("credit_note.voided", Ignored(CREDIT_NOTE)),
    ("customer.created", Ignored(CUSTOMER)),
    ("customer.deleted", Ignored(CUSTOMER)),
    ("customer.discount.created", Ignored(CUSTOMER)),
    ("customer.discount.deleted", Ignored(CUSTOMER)),
    ("customer.discount.updated", Ignored(CUSTOMER)),
    ("customer.source.created", Ignored(PAYMENT_METHOD)),
    ("customer.source.deleted", Ignored(PAYMENT_METHOD)),
    ("customer.source.expiring", Ignored(PAYMENT_METHOD)),
    ("customer.source.updated", Ignored(PAYMENT_METHOD)),
    ("customer.subscription.created", SubscriptionState),
    ("customer.subscription.deleted", SubscriptionState),
    ("customer.subscription.paused", SubscriptionState),
    (
        "customer.subscription.pending_update_applied",
        SubscriptionState,
    ),
    (
        "customer.subscription.pending_update_expired",
        SubscriptionState,
    ),
    ("customer.subscription.resumed", SubscriptionState),
    (
        "customer.subscription.trial_will_end",
        Ignored(TRIAL_REMINDER),
    ),
    ("customer.subscription.updated", SubscriptionState),
    ("customer.tax_id.created", Ignored(CUSTOMER)),
    ("customer.tax_id.deleted", Ignored(CUSTOMER)),
    ("customer.tax_id.updated", Ignored(CUSTOMER)),
    ("customer.updated", Ignored(CUSTOMER)),
    (
        "customer_cash_balance_transaction.created",
        Ignored(CUSTOMER),
    ),
    (
        "entitlements.active_entitlement_summary.updated",
        Ignored(CATALOGUE),
    ),
    ("file.created", Ignored(OTHER_PRODUCT)),
    (
        "financial_connections.account.account_numbers_updated",
        Ignored(OTHER_PRODUCT),
    ),
    (
        "financial_connections.account.created",
        Ignored(OTHER_PRODUCT),
    ),
    (
        "financial_connections.account.deactivated",
        Ignored(OTHER_PRODUCT),
    ),
    (
        "financial_connections.account.disconnected",
        Ignored(OTHER_PRODUCT),
    ),
    (
        "financial_connections.account.expected_deactivation_date_updated",
        Ignored(OTHER_PRODUCT),
    ),
    (
        "financial_connections.account.reactivated",
        Ignored(OTHER_PRODUCT),
    ),
    (
        "financial_connections.account.refreshed_balance",
        Ignored(OTHER_PRODUCT),
    ),
    (
        "financial_connections.account.refreshed_ownership",
        Ignored(OTHER_PRODUCT),
    ),
    (
        "financial_connections.account.refreshed_transactions",
        Ignored(OTHER_PRODUCT),
    ),
    (
        "financial_connections.account.supported_payment_method_types_updated",
        Ignored(OTHER_PRODUCT),
    ),
    (
        "financial_connections.account.upcoming_account_number_expiry",
        Ignored(OTHER_PRODUCT),
    ),
    (
        "financial_connections.account.upcoming_deactivation",
        Ignored(OTHER_PRODUCT),
    ),
    (
        "financial_connections.authorization.expected_deactivation_date_updated",
        Ignored(OTHER_PRODUCT),
    ),
    (
        "financial_connections.authorization.upcoming_deactivation",
        Ignored(OTHER_PRODUCT),
    ),
    (
        "identity.verification_session.canceled",
        Ignored(OTHER_PRODUCT),
    ),
    (
        "identity.verification_session.created",
        Ignored(OTHER_PRODUCT),
    ),
    (
        "identity.verification_session.processing",
        Ignored(OTHER_PRODUCT),
    ),
    (
        "identity.verification_session.redacted",
        Ignored(OTHER_PRODUCT),
    ),
    (
        "identity.verification_session.requires_input",
        Ignored(OTHER_PRODUCT),
    ),
    (
        "identity.verification_session.verified",
        Ignored(OTHER_PRODUCT),
    ),
    ("invoice.created", Ignored(INVOICE_DRAFT)),
    ("invoice.deleted", Ignored(INVOICE_DRAFT)),
    ("invoice.finalization_failed", Ignored(INVOICE_NOT_CHARGED)),
    ("invoice.finalized", Ignored(INVOICE_NOT_CHARGED)),
    ("invoice.marked_uncollectible", Ignored(INVOICE_GIVEN_UP)),
    ("invoice.overdue", Ignored(INVOICE_REMINDER)),
    ("invoice.overpaid", Ignored(INVOICE_OVERPAID)),
    ("invoice.paid", Attempt(AttemptStatus::Succeeded)),
    (
        "invoice.payment_action_required",
        Attempt(AttemptStatus::RequiresAction),
    ),
    (
        "invoice.payment_attempt_required",
        Ignored(INVOICE_OFF_STRIPE),
    ),
    ("invoice.payment_failed", Attempt(AttemptStatus::Failed)),
    (
        "invoice.payment_succeeded",
        Attempt(AttemptStatus::Succeeded),
    ),
    ("invoice.sent", Ignored(INVOICE_NOT_CHARGED)),
    ("invoice.upcoming", Ignored(INVOICE_UPCOMING)),
    ("invoice.updated", Ignored(INVOICE_UPDATED)),
    ("invoice.voided", Ignored(INVOICE_GIVEN_UP)),
    ("invoice.will_be_due", Ignored(INVOICE_REMINDER)),
    ("invoice_payment.paid", Ignored(INVOICE_PAYMENT)),
    ("invoiceitem.created", Ignored(INVOICE_ITEM)),
    ("invoiceitem.deleted", Ignored(INVOICE_ITEM)),
    ("issuing_authorization.created", Ignored(OTHER_PRODUCT)),
    ("issuing_authorization.request", Ignored(OTHER_PRODUCT)),
    ("issuing_authorization.updated", Ignored(OTHER_PRODUCT)),
    ("issuing_card.created", Ignored(OTHER_PRODUCT)),
    ("issuing_card.updated", Ignored(OTHER_PRODUCT)),
    ("issuing_cardholder.created", Ignored(OTHER_PRODUCT)),
    ("issuing_cardholder.updated", Ignored(OTHER_PRODUCT)),
    ("issuing_dispute.closed", Ignored(OTHER_PRODUCT)),
    ("issuing_dispute.created", Ignored(OTHER_PRODUCT)),
    ("issuing_dispute.funds_reinstated", Ignored(OTHER_PRODUCT)),
    ("issuing_dispute.funds_rescinded", Ignored(OTHER_PRODUCT)),
    ("issuing_dispute.submitted", Ignored(OTHER_PRODUCT)),
    ("issuing_dispute.updated", Ignored(OTHER_PRODUCT)),
    (
        "issuing_personalization_design.activated",
        Ignored(OTHER_PRODUCT),
    ),
    (
        "issuing_personalization_design.deactivated",
        Ignored(OTHER_PRODUCT),
    ),
    (
        "issuing_personalization_design.rejected",
        Ignored(OTHER_PRODUCT),
    ),
    (
        "issuing_personalization_design.updated",
        Ignored(OTHER_PRODUCT),
    ),
    ("issuing_token.created", Ignored(OTHER_PRODUCT)),
    ("issuing_token.updated", Ignored(OTHER_PRODUCT)),
    ("issuing_transaction.created", Ignored(OTHER_PRODUCT)),
    (
        "issuing_transaction.purchase_details_receipt_updated",
        Ignored(OTHER_PRODUCT),
    ),
    ("issuing_transaction.updated", Ignored(OTHER_PRODUCT)),
    ("mandate.updated", Ignored(PAYMENT_METHOD)),
    (
        "payment_intent.amount_capturable_updated",
        Ignored(PAYMENT_INTENT),
    ),
    ("payment_intent.canceled", Ignored(PAYMENT_INTENT)),
    ("payment_intent.created", Ignored(PAYMENT_INTENT)),
    ("payment_intent.partially_funded", Ignored(PAYMENT_INTENT)),
    ("payment_intent.payment_failed", Ignored(PAYMENT_INTENT)),
    ("payment_intent.processing", Ignored(PAYMENT_INTENT)),
    ("payment_intent.requires_action", Ignored(PAYMENT_INTENT)),
    ("payment_intent.succeeded", Ignored(PAYMENT_INTENT)),
    ("payment_link.created", Ignored(CATALOGUE)),
    ("payment_link.updated", Ignored(CATALOGUE)),
    ("payment_method.attached", Ignored(PAYMENT_METHOD)),
    (
        "payment_method.automatically_updated",
        Ignored(PAYMENT_METHOD),
    ),
    ("payment_method.detached", Ignored(PAYMENT_METHOD)),
    ("payment_method.updated", Ignored(PAYMENT_METHOD)),
    ("payout.canceled", Ignored(FUNDS)),
    ("payout.created", Ignored(FUNDS)),
    ("payout.failed", Ignored(FUNDS)),
    ("payout.paid", Ignored(FUNDS)),
    ("payout.reconciliation_completed", Ignored(FUNDS)),
    ("payout.updated", Ignored(FUNDS)),
    ("person.created", Ignored(ACCOUNT)),
    ("person.deleted", Ignored(ACCOUNT)),
    ("person.updated", Ignored(ACCOUNT)),
    ("plan.created", Ignored(CATALOGUE)),
    ("plan.deleted", Ignored(CATALOGUE)),
    ("plan.updated", Ignored(CATALOGUE)),
    ("price.created", Ignored(CATALOGUE)),
    ("price.deleted", Ignored(CATALOGUE)),
    ("price.updated", Ignored(CATALOGUE)),
    ("product.created", Ignored(CATALOGUE)),
    ("product.deleted", Ignored(CATALOGUE)),
    ("product.updated", Ignored(CATALOGUE)),
    ("promotion_code.created", Ignored(CATALOGUE)),
    ("promotion_code.updated", Ignored(CATALOGUE)),
    ("quote.accepted", Ignored(QUOTE)),
    ("quote.canceled", Ignored(QUOTE)),
    ("quote.created", Ignored(QUOTE)),
    ("quote.finalized", Ignored(QUOTE)),
    ("radar.early_fraud_warning.created", Ignored(DISPUTE)),
    ("radar.early_fraud_warning.updated", Ignored(DISPUTE)),
    ("refund.created", RefundOf),
    ("refund.failed", RefundOf),
    ("refund.updated", RefundOf),
    ("reporting.report_run.failed", Ignored(OTHER_PRODUCT)),
    ("reporting.report_run.succeeded", Ignored(OTHER_PRODUCT)),
    ("reporting.report_type.updated", Ignored(OTHER_PRODUCT)),
    ("reserve.hold.created", Ignored(FUNDS)),
    ("reserve.hold.updated", Ignored(FUNDS)),
    ("reserve.plan.created", Ignored(FUNDS)),
    ("reserve.plan.disabled", Ignored(FUNDS)),
    ("reserve.plan.expired", Ignored(FUNDS)),
    ("reserve.plan.updated", Ignored(FUNDS)),
    ("reserve.release.created", Ignored(FUNDS)),
    ("review.closed", Ignored(DISPUTE)),
    ("review.opened", Ignored(DISPUTE)),
    ("setup_intent.canceled", Ignored(PAYMENT_METHOD)),
    ("setup_intent.created", Ignored(PAYMENT_METHOD)),
    ("setup_intent.requires_action", Ignored(PAYMENT_METHOD)),
    ("setup_intent.setup_failed", Ignored(PAYMENT_METHOD)),
    ("setup_intent.succeeded", Ignored(PAYMENT_METHOD)),
    ("sigma.scheduled_query_run.created", Ignored(OTHER_PRODUCT)),
    ("source.canceled", Ignored(PAYMENT_METHOD)),
    ("source.chargeable", Ignored(PAYMENT_METHOD)),
    ("source.failed", Ignored(PAYMENT_METHOD)),
    ("source.mandate_notification", Ignored(PAYMENT_METHOD)),
    ("source.refund_attributes_required", Ignored(PAYMENT_METHOD)),
    ("source.transaction.created", Ignored(PAYMENT_METHOD)),
    ("source.transaction.updated", Ignored(PAYMENT_METHOD)),
    ("subscription_schedule.aborted", Ignored(SCHEDULE)),
    ("subscription_schedule.canceled", Ignored(SCHEDULE)),
    ("subscription_schedule.completed", Ignored(SCHEDULE)),
    ("subscription_schedule.created", Ignored(SCHEDULE)),
    ("subscription_schedule.expiring", Ignored(SCHEDULE)),
    ("subscription_schedule.released", Ignored(SCHEDULE)),
    ("subscription_schedule.updated", Ignored(SCHEDULE)),
    ("tax.settings.updated", Ignored(ACCOUNT)),
    ("tax_rate.created", Ignored(CATALOGUE)),
    ("tax_rate.updated", Ignored(CATALOGUE)),
    ("terminal.reader.action_failed", Ignored(OTHER_PRODUCT)),
    ("terminal.reader.action_succeeded", Ignored(OTHER_PRODUCT)),
    ("terminal.reader.action_updated", Ignored(OTHER_PRODUCT)),
    ("test_helpers.test_clock.advancing", Ignored(TEST_CLOCK)),
    ("test_helpers.test_clock.created", Ignored(TEST_CLOCK)),
    ("test_helpers.test_clock.deleted", Ignored(TEST_CLOCK)),
    (
        "test_helpers.test_clock.internal_failure",
        Ignored(TEST_CLOCK),
    ),
    ("test_helpers.test_clock.ready", Ignored(TEST_CLOCK)),
    ("topup.canceled", Ignored(FUNDS)),
    ("topup.created", Ignored(FUNDS)),
    ("topup.failed", Ignored(FUNDS)),
    ("topup.reversed", Ignored(FUNDS)),
    ("topup.succeeded", Ignored(FUNDS)),
    ("transfer.created", Ignored(FUNDS)),
    ("transfer.reversed", Ignored(FUNDS)),
    ("transfer.updated", Ignored(FUNDS)),
    ("treasury.credit_reversal.created", Ignored(OTHER_PRODUCT)),
    ("treasury.credit_reversal.posted", Ignored(OTHER_PRODUCT)),
    ("treasury.debit_reversal.completed", Ignored(OTHER_PRODUCT)),
    ("treasury.debit_reversal.created", Ignored(OTHER_PRODUCT)),
    (
        "treasury.debit_reversal.initial_credit_granted",
        Ignored(OTHER_PRODUCT),
    ),
    ("treasury.financial_account.closed", Ignored(OTHER_PRODUCT)),
    ("treasury.financial_account.created", Ignored(OTHER_PRODUCT)),
    (
        "treasury.financial_account.features_status_updated",
        Ignored(OTHER_PRODUCT),
    ),
    ("treasury.inbound_transfer.canceled", Ignored(OTHER_PRODUCT)),
    ("treasury.inbound_transfer.created", Ignored(OTHER_PRODUCT)),
    ("treasury.inbound_transfer.failed", Ignored(OTHER_PRODUCT)),
    (
        "treasury.inbound_transfer.succeeded",
        Ignored(OTHER_PRODUCT),
    ),
    ("treasury.outbound_payment.canceled", Ignored(OTHER_PRODUCT)),
    ("treasury.outbound_payment.created", Ignored(OTHER_PRODUCT)),
    (
        "treasury.outbound_payment.expected_arrival_date_updated",
        Ignored(OTHER_PRODUCT),
    ),
    ("treasury.outbound_payment.failed", Ignored(OTHER_PRODUCT)),
    ("treasury.outbound_payment.posted", Ignored(OTHER_PRODUCT)),
    ("treasury.outbound_payment.returned", Ignored(OTHER_PRODUCT)),
    (
        "treasury.outbound_payment.tracking_details_updated",
        Ignored(OTHER_PRODUCT),
    ),
    (
        "treasury.outbound_transfer.canceled",
        Ignored(OTHER_PRODUCT),
    ),
    ("treasury.outbound_transfer.created", Ignored(OTHER_PRODUCT)),
    (
        "treasury.outbound_transfer.expected_arrival_date_updated",
        Ignored(OTHER_PRODUCT),
    ),
    ("treasury.outbound_transfer.failed", Ignored(OTHER_PRODUCT)),
    ("treasury.outbound_transfer.posted", Ignored(OTHER_PRODUCT)),
    (
        "treasury.outbound_transfer.returned",
        Ignored(OTHER_PRODUCT),
    ),
    (
        "treasury.outbound_transfer.tracking_details_updated",
        Ignored(OTHER_PRODUCT),
    ),
    ("treasury.received_credit.created", Ignored(OTHER_PRODUCT)),
    ("treasury.received_credit.failed", Ignored(OTHER_PRODUCT)),
    ("treasury.received_credit.succeeded", Ignored(OTHER_PRODUCT)),
    ("treasury.received_debit.created", Ignored(OTHER_PRODUCT)),
];

const INVOICE_DRAFT: &str = "a draft invoice created or deleted: no payment tried yet (its \
    attempts arrive as invoice.paid / invoice.payment_failed / invoice.payment_action_required)";
const INVOICE_NOT_CHARGED: &str = "the invoice finalized, sent, or not finalizable: no payment \
    tried by this event; its attempts arrive as their own invoice.* events";
const INVOICE_REMINDER: &str = "a reminder around the due date of an invoice: no payment tried";
const INVOICE_UPCOMING: &str = "a preview of an invoice not created yet (it has no id): nothing \
    to book";
const INVOICE_UPDATED: &str = "any change of an invoice (amounts, metadata, status); its \
    payment outcomes arrive as invoice.paid / invoice.payment_failed / \
    invoice.payment_action_required, which carry the attempt";
const INVOICE_OVERPAID: &str = "an invoice paid above its amount due (credited to the \
    customer's balance); the paying attempt arrives as invoice.paid";
const INVOICE_GIVEN_UP: &str = "Stripe stops collecting the invoice (voided, or uncollectible \
    once the retries are exhausted): no payment tried; its failed attempts stay as booked and \
    the subscription's state arrives as customer.subscription.updated";
const INVOICE_OFF_STRIPE: &str = "the invoice must be paid by a method Stripe cannot process: \
    no attempt by Stripe; a payment recorded later arrives as invoice.paid";
const INVOICE_PAYMENT: &str = "an InvoicePayment paid: the same payment arrives as \
    invoice.paid with the invoice's attempt_count; booking both would book it twice";
const INVOICE_ITEM: &str = "a line item waiting for the next invoice: no payment";
const TRIAL_REMINDER: &str = "a reminder that a trial ends soon: the subscription's state does \
    not change (customer.subscription.updated follows when it does)";
const CHARGE_REFUNDED: &str = "a Charge refunded: it carries the running total \
    (amount_refunded) only; each refund arrives as refund.created / refund.updated with its \
    own id, amount and status, which are booked";
const CREDIT_NOTE: &str = "a credit note (a type outside the definitions read): the money it \
    returns to the customer's card is a Refund, booked from refund.*; a credit to the \
    customer's balance moves no collected money";
const CHARGE: &str = "a Charge: on the current API version it names no invoice; the invoice's \
    own events (invoice.paid, invoice.payment_failed, invoice.payment_action_required) carry \
    the attempt";
const PAYMENT_INTENT: &str = "a PaymentIntent: on the current API version it names no \
    invoice; the invoice's own events carry the attempt";
const DISPUTE: &str = "a dispute, early fraud warning or review of a charge: not bookable in \
    the ledger, and the charge names no invoice on the current API version";
const PAYMENT_METHOD: &str = "a payment method, source, mandate or setup saved, updated or \
    removed: no payment of an invoice, no subscription state";
const CUSTOMER: &str = "the customer's profile, discounts, tax ids or cash balance: no \
    payment of an invoice, no subscription state";
const ACCOUNT: &str = "the merchant's own Stripe account (settings, capabilities, persons, \
    connected accounts): no customer payment";
const FUNDS: &str = "the merchant's own funds (balance, fees, payouts, top-ups, transfers, \
    reserves): no customer payment";
const USAGE_BILLING: &str = "usage-based billing tooling (alerts, credit grants, meters): no \
    payment of an invoice, no subscription state";
const PORTAL: &str = "the customer portal's configuration or sessions: what the customer \
    changes there arrives as customer.subscription.* and invoice.* events";
const CHECKOUT: &str = "a Checkout session: the subscription and invoices it creates arrive \
    as customer.subscription.* and invoice.* events";
const CATALOGUE: &str = "the catalogue (products, prices, plans, coupons, promotion codes, tax \
    rates, payment links, entitlements): no payment";
const QUOTE: &str = "a quote: once accepted, its subscription and invoices arrive as their own \
    events";
const SCHEDULE: &str = "a subscription schedule's phases: the changes it makes arrive as \
    customer.subscription.* events";
const TEST_CLOCK: &str = "a test clock's progress (test mode): the invoices and subscription \
    changes it causes arrive as their own events";
const OTHER_PRODUCT: &str = "another Stripe product (Climate, Financial Connections, Identity, \
    Issuing, Terminal, Treasury, Sigma, reports, files): unrelated to subscriptions";

/// The handling of `event_type`, `None` for a type not in [`EVENTS`].
/// The event types whose events are booked (not ignored), in the table's order.
pub(super) fn booked_types() -> impl Iterator<Item = &'static str> {
    EVENTS
        .iter()
        .filter(|(_, handling)| !matches!(handling, Ignored(_)))
        .map(|(name, _)| *name)
}

pub(super) fn handling(event_type: &str) -> Option<Handling> {
    EVENTS
        .iter()
        .find(|(name, _)| *name == event_type)
        .map(|(_, handling)| *handling)
}

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    event_type: String,
    created: Option<i64>,
    data: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct Data<T> {
    object: T,
}

/// A Stripe reference: an id, or the expanded object.
#[derive(Deserialize)]
#[serde(untagged)]
enum Expandable<T> {
    Id(String),
    Object(T),
}

#[derive(Deserialize)]
struct Object {
    id: String,
}

impl Expandable<Object> {
    fn into_id(self) -> String {
        match self {
            Expandable::Id(id) => id,
            Expandable::Object(o) => o.id,
        }
    }
}

/// A `Refund` (outside the SDK digest; its fields as Stripe's OpenAPI `refund` schema and
/// example object give them).
#[derive(Deserialize)]
struct StripeRefund {
    id: Option<String>,
    amount: Option<DecimalText>,
    currency: Option<String>,
    charge: Option<Expandable<Object>>,
    payment_intent: Option<Expandable<Object>>,
    status: Option<String>,
    created: Option<i64>,
}

#[derive(Deserialize)]
struct PaymentIntent {
    last_payment_error: Option<PaymentError>,
}

#[derive(Deserialize)]
struct PaymentError {
    code: Option<String>,
    decline_code: Option<String>,
    message: Option<String>,
}

/// The fields of Stripe's `Invoice` the normalization reads. The current API version names
/// its subscription in `parent.subscription_details` and its payments in `payments` (an
/// includable list of `InvoicePayment`); versions before 2025-03 had the top-level
/// `subscription` and `payment_intent`, still read when present.
#[derive(Deserialize)]
struct Invoice {
    id: Option<String>,
    subscription: Option<Expandable<Object>>,
    parent: Option<InvoiceParent>,
    amount_due: Option<DecimalText>,
    amount_paid: Option<DecimalText>,
    currency: Option<String>,
    attempt_count: Option<u32>,
    next_payment_attempt: Option<i64>,
    payment_intent: Option<Expandable<PaymentIntent>>,
    payments: Option<List<InvoicePayment>>,
}

#[derive(Deserialize)]
struct List<T> {
    data: Vec<T>,
}

/// An `InvoicePayment`: which payment paid (or tried to pay) the invoice.
#[derive(Deserialize)]
struct InvoicePayment {
    #[serde(default)]
    is_default: bool,
    payment: Option<Payment>,
}

#[derive(Deserialize)]
struct Payment {
    payment_intent: Option<Expandable<PaymentIntent>>,
}

#[derive(Deserialize)]
struct InvoiceParent {
    subscription_details: Option<SubscriptionDetails>,
}

#[derive(Deserialize)]
struct SubscriptionDetails {
    subscription: Option<Expandable<Object>>,
}

impl Invoice {
    /// The subscription: `parent.subscription_details.subscription`, else (older API
    /// versions) the top-level `subscription`.
    fn subscription_id(&mut self) -> Option<String> {
        let parent = self
            .parent
            .take()
            .and_then(|p| p.subscription_details)
            .and_then(|d| d.subscription);
        id_of(parent).or_else(|| id_of(self.subscription.take()))
    }

    /// The expanded PaymentIntent of the invoice's payment, when the answer carries one:
    /// the default `InvoicePayment`'s (else the first), or the older top-level one.
    fn take_payment_intent(&mut self) -> Option<PaymentIntent> {
        let payments = self.payments.take().map(|l| l.data).unwrap_or_default();
        let chosen = match payments.iter().position(|p| p.is_default) {
            Some(i) => payments.into_iter().nth(i),
            None => payments.into_iter().next(),
        };
        let intent = chosen
            .and_then(|p| p.payment?.payment_intent)
            .or(self.payment_intent.take());
        match intent {
            Some(Expandable::Object(intent)) => Some(intent),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct Subscription {
    id: Option<String>,
    status: Option<String>,
    customer: Option<Expandable<Object>>,
    currency: Option<String>,
    current_period_end: Option<i64>,
    /// API versions from 2025-03 move `current_period_end` to the items.
    items: Option<Items>,
}

#[derive(Deserialize)]
struct Items {
    data: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    current_period_end: Option<i64>,
}

fn id_of(reference: Option<Expandable<Object>>) -> Option<String> {
    match reference? {
        Expandable::Id(id) => Some(id),
        Expandable::Object(object) => Some(object.id),
    }
}

/// An integer amount in minor units (Stripe never sends decimals).
pub(super) fn minor_units(text: &DecimalText, field: &str) -> Result<i64, NormalizeError> {
    text.0.parse().map_err(|_| {
        malformed(format!(
            "{field}: {:?} is not an integer of minor units",
            text.0
        ))
    })
}

pub(super) fn normalize(body: &[u8]) -> Result<Normalized, NormalizeError> {
    let event: Event = parse_payload(body, "Stripe event")?;
    let handling = match handling(&event.event_type) {
        Some(Ignored(_)) => return Ok(Normalized::ignored(event.event_type)),
        None => {
            unknown_provider_value(PROVIDER, "type", &event.event_type);
            return Ok(Normalized::ignored(event.event_type));
        }
        Some(handling) => handling,
    };
    let created = event
        .created
        .ok_or_else(|| malformed(format!("{}: no created time", event.event_type)))?;
    let created = time_from_unix(created, "created")?;
    let data = event
        .data
        .ok_or_else(|| malformed(format!("{}: no data.object", event.event_type)))?;
    let canonical = match handling {
        Attempt(status) => {
            let data: Data<Invoice> = parse_payload(data.get().as_bytes(), "Stripe invoice")?;
            Some(CanonicalEvent::BillingAttempt(invoice_attempt(
                data.object,
                status,
                &event.event_type,
                created,
            )?))
        }
        RefundOf => {
            let data: Data<StripeRefund> = parse_payload(data.get().as_bytes(), "Stripe refund")?;
            refund(data.object, &event.event_type)?.map(CanonicalEvent::Refund)
        }
        _ => {
            let data: Data<Subscription> =
                parse_payload(data.get().as_bytes(), "Stripe subscription")?;
            subscription_change(data.object, created)?.map(CanonicalEvent::Subscription)
        }
    };
    Ok(Normalized {
        event_type: event.event_type,
        events: canonical.into_iter().collect(),
    })
}

fn invoice_attempt(
    mut invoice: Invoice,
    status: AttemptStatus,
    event_type: &str,
    created: DateTime<Utc>,
) -> Result<BillingAttempt, NormalizeError> {
    let invoice_id = invoice
        .id
        .take()
        .filter(|id| !id.is_empty())
        .ok_or_else(|| malformed(format!("{event_type}: invoice has no id")))?;
    let attempt_count = invoice
        .attempt_count
        .ok_or_else(|| malformed(format!("{event_type}: invoice has no attempt_count")))?;
    let currency = invoice
        .currency
        .take()
        .ok_or_else(|| malformed(format!("{event_type}: invoice has no currency")))?;
    let (amount, field) = match (status, &invoice.amount_paid, &invoice.amount_due) {
        (AttemptStatus::Succeeded, Some(paid), _) => (Some(paid), "amount_paid"),
        (_, _, Some(due)) => (Some(due), "amount_due"),
        _ => (None, "amount_due"),
    };
    let amount = match amount {
        Some(text) => Some(Money::from_minor(minor_units(text, field)?, &currency)?),
        None => {
            currency_code(&currency, "currency")?;
            None
        }
    };
    let subscription_id = invoice.subscription_id();
    let error = match invoice.take_payment_intent() {
        Some(PaymentIntent {
            last_payment_error: Some(e),
            ..
        }) if status == AttemptStatus::Failed => Some(e),
        _ => None,
    };
    let next_attempt_at = invoice
        .next_payment_attempt
        .map(|t| time_from_unix(t, "next_payment_attempt"))
        .transpose()?;
    Ok(BillingAttempt {
        attempt_id: format!("{invoice_id}:{attempt_count}"),
        subscription_id,
        cycle_id: Some(invoice_id),
        status,
        provider_status: event_type.to_owned(),
        amount,
        error_code: error
            .as_ref()
            .and_then(|e| e.decline_code.clone().or(e.code.clone())),
        error_message: error.and_then(|e| e.message),
        attempted_at: Some(created),
        next_attempt_at,
        attempt_count: Some(attempt_count),
        idempotency_key: None,
    })
}

/// A `Refund`: its own id and amount, of the payment it names (its PaymentIntent, else its
/// Charge), linked to the invoice's attempt by the ledger (`payment_links`). `status`:
/// `succeeded`; `pending`, `requires_action`; `failed`, `canceled`. Another word (or
/// none) is counted and changes nothing.
fn refund(r: StripeRefund, event_type: &str) -> Result<Option<Refund>, NormalizeError> {
    let id = (r.id)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| malformed(format!("{event_type}: refund has no id")))?;
    let payment = (r.payment_intent.map(Expandable::into_id))
        .or(r.charge.map(Expandable::into_id))
        .filter(|p| !p.is_empty())
        .ok_or_else(|| malformed(format!("{event_type}: refund names no payment")))?;
    let word = r.status.unwrap_or_default();
    let status = match word.as_str() {
        "succeeded" => RefundStatus::Succeeded,
        "pending" | "requires_action" => RefundStatus::Pending,
        "failed" | "canceled" => RefundStatus::Failed,
        other => {
            unknown_provider_value(PROVIDER, "refund.status", other);
            return Ok(None);
        }
    };
    let amount = r
        .amount
        .ok_or_else(|| malformed(format!("{event_type}: refund has no amount")))?;
    let currency = r
        .currency
        .ok_or_else(|| malformed(format!("{event_type}: refund has no currency")))?;
    let refunded_at = r
        .created
        .map(|t| time_from_unix(t, "created"))
        .transpose()?;
    Ok(Some(Refund {
        refund_id: id,
        attempt_id: None,
        payment_ref: Some(payment),
        subscription_id: None,
        cycle_id: None,
        status,
        provider_status: word,
        amount: Money::from_minor(minor_units(&amount, "amount")?, &currency)?,
        refunded_at,
    }))
}

fn subscription_change(
    subscription: Subscription,
    created: DateTime<Utc>,
) -> Result<Option<SubscriptionChange>, NormalizeError> {
    let id = subscription
        .id
        .filter(|id| !id.is_empty())
        .ok_or_else(|| malformed("subscription has no id"))?;
    let provider_status = subscription
        .status
        .ok_or_else(|| malformed(format!("subscription {id} has no status")))?;
    // `Subscription.Status` is open (the SDK adds `OtherString`): a new word is tolerated
    // and counted, never guessed at.
    let Some(status) = stripe_subscription_status(&provider_status) else {
        unknown_provider_value(PROVIDER, "subscription.status", &provider_status);
        return Ok(None);
    };
    let currency = subscription
        .currency
        .map(|c| currency_code(&c, "currency"))
        .transpose()?;
    let period_end = subscription.current_period_end.or_else(|| {
        subscription
            .items?
            .data
            .iter()
            .filter_map(|item| item.current_period_end)
            .max()
    });
    Ok(Some(SubscriptionChange {
        subscription_id: id,
        status,
        provider_status,
        currency,
        customer_id: id_of(subscription.customer),
        current_period_end: period_end
            .map(|t| time_from_unix(t, "current_period_end"))
            .transpose()?,
        updated_at: Some(created),
        version: None,
    }))
}

#[cfg(test)]
mod tests;
