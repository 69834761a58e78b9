//! Decline buckets: which dunning path a failed attempt takes, from the provider's error or
//! decline code. Codes are compared case-insensitively with `-` and spaces read as `_`, so
//! Stripe's `insufficient_funds`, Shopify's `INSUFFICIENT_FUNDS` and a gateway's
//! `insufficient-funds` land in one place. An unknown code falls to `retry_soon` and is
//! counted, so new codes show up on a dashboard instead of being guessed at.
//!
//! Shopify: every value of `SubscriptionBillingAttemptErrorCode` up to API 2026-04 (54, the
//! 2026-04 split payment/general/inventory enums use the same names) has a bucket, from
//! its description in the schema. Where the description leaves the right path open, the
//! choice made: `retry_declined` ("The payment retry was declined") and
//! `transaction_limit_exceeded` are soft (`retry_soon`, the policy's limit still holds);
//! `amount_too_large` ("exceeds the limit for this payment method"), `cancelled_payment`
//! ("The payment was cancelled") and `call_issuer` wait for the customer;
//! `merchant_rule` (a merchant-defined rule declined it) is never retried, like a blocklist;
//! `invoice_already_paid` is a provider error, not a stop: a stop would apply the final
//! action to a cycle that is paid, while the next retry first re-checks the ledger (and
//! completes without a call once the payment is recorded); the merchant's configuration
//! (`test_mode`, `amount_too_small`, `free_gift_card_not_allowed`, `merchant_account_error`,
//! `non_test_order_limit_reached`, gateway incompatibility) is a provider error too.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeclineBucket {
    /// Soft declines and processing errors: retry on the backoff.
    RetrySoon,
    /// Expired card, authentication required: wait for a new payment method.
    NeedsCustomerAction,
    /// Stolen or lost card, fraud, closed account: never retry.
    NeverRetry,
    /// The provider's or our configuration's fault: retry on a short backoff.
    ProviderError,
    /// Out of stock: the inventory policy decides.
    Inventory,
}

impl DeclineBucket {
    pub fn as_str(self) -> &'static str {
        match self {
            DeclineBucket::RetrySoon => "retry_soon",
            DeclineBucket::NeedsCustomerAction => "needs_customer_action",
            DeclineBucket::NeverRetry => "never_retry",
            DeclineBucket::ProviderError => "provider_error",
            DeclineBucket::Inventory => "inventory",
        }
    }
}

/// A bucket from its stored name.
pub fn bucket_from_str(name: &str) -> Option<DeclineBucket> {
    use DeclineBucket::*;
    [
        RetrySoon,
        NeedsCustomerAction,
        NeverRetry,
        ProviderError,
        Inventory,
    ]
    .into_iter()
    .find(|b| b.as_str() == name)
}

/// The bucket of a failed attempt, from its error code and, where the provider has no code,
/// its own status word (Appstle `SHOPIFY_EXCEPTION`).
pub fn classify(error_code: Option<&str>, provider_status: &str) -> DeclineBucket {
    let code = error_code.map(normalize).filter(|c| !c.is_empty());
    if let Some(bucket) = code.as_deref().and_then(known) {
        return bucket;
    }
    if let Some(bucket) = known(&normalize(provider_status)) {
        return bucket;
    }
    metrics::counter!("subsync_unknown_decline_codes_total").increment(1);
    DeclineBucket::RetrySoon
}

fn normalize(code: &str) -> String {
    code.trim().to_ascii_lowercase().replace(['-', ' '], "_")
}

fn known(code: &str) -> Option<DeclineBucket> {
    use DeclineBucket::*;
    Some(match code {
        // Stripe decline codes, Shopify billing-attempt error codes, gateway words.
        "insufficient_funds"
        | "do_not_honor"
        | "generic_decline"
        | "try_again_later"
        | "processing_error"
        | "card_velocity_exceeded"
        | "withdrawal_count_limit_exceeded"
        | "issuer_not_available"
        | "reenter_transaction"
        | "payment_method_declined"
        | "card_declined"
        | "declined"
        | "failed"
        | "failure"
        | "payment_failed"
        | "transient_error"
        | "generic_error"
        | "retry_declined"
        | "transaction_limit_exceeded"
        | "paypal_error_general" => RetrySoon,
        "expired_card"
        | "authentication_required"
        | "authentication_error"
        | "expired_payment_method"
        | "incorrect_cvc"
        | "invalid_cvc"
        | "incorrect_number"
        | "invalid_number"
        | "invalid_expiry_month"
        | "invalid_expiry_year"
        | "card_not_supported"
        | "currency_not_supported"
        | "payment_method_not_found"
        | "invalid_payment_method"
        | "customer_not_found"
        | "requires_action"
        | "approve_with_id"
        | "incorrect_zip"
        | "authentication_failed"
        | "off_session_rejected"
        | "expired_buyer_action"
        | "confirmation_rejected"
        | "call_issuer"
        | "invalid_expiry_date"
        | "card_number_incorrect"
        | "incorrect_address"
        | "invalid_billing_address"
        | "payment_method_not_specified"
        | "payment_method_unsupported"
        | "invalid_currency"
        | "customer_invalid"
        | "invalid_customer_billing_agreement"
        | "buyer_canceled_payment_method"
        | "cancelled_payment"
        | "amount_too_large" => NeedsCustomerAction,
        "stolen_card"
        | "lost_card"
        | "fraudulent"
        | "pickup_card"
        | "restricted_card"
        | "merchant_blacklist"
        | "security_violation"
        | "revocation_of_authorization"
        | "revocation_of_all_authorizations"
        | "stop_payment_order"
        | "account_closed"
        | "closed_account"
        | "invalid_account"
        | "transaction_not_allowed"
        | "fraud_suspected"
        | "merchant_rule" => NeverRetry,
        "unexpected_error"
        | "payment_provider_is_not_enabled"
        | "shopify_exception"
        | "invalid_shipping_address"
        | "purchase_type_not_supported"
        | "api_error"
        | "gateway_error"
        | "timeout"
        | "conn_error"
        | "never_sent"
        | "test_mode"
        | "payment_method_incompatible_with_gateway_config"
        | "merchant_account_error"
        | "non_test_order_limit_reached"
        | "free_gift_card_not_allowed"
        | "amount_too_small"
        | "invalid_purchase_type"
        | "payment_provider_error"
        | "invoice_already_paid" => ProviderError,
        "insufficient_inventory"
        | "inventory_allocations_not_found"
        | "out_of_stock"
        | "skipped_inventory_mgmt" => Inventory,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeclineBucket::*;

    #[test]
    fn known_codes_of_every_provider_land_in_their_bucket() {
        let table = [
            (Some("insufficient_funds"), "failed", RetrySoon),
            (Some("do_not_honor"), "failed", RetrySoon),
            (Some("generic_decline"), "failed", RetrySoon),
            (Some("expired_card"), "failed", NeedsCustomerAction),
            (
                Some("authentication_required"),
                "failed",
                NeedsCustomerAction,
            ),
            (Some("stolen_card"), "failed", NeverRetry),
            (Some("lost_card"), "failed", NeverRetry),
            (Some("fraudulent"), "failed", NeverRetry),
            (Some("payment_method_declined"), "failure", RetrySoon),
            (
                Some("expired_payment_method"),
                "failure",
                NeedsCustomerAction,
            ),
            (Some("authentication_error"), "failure", NeedsCustomerAction),
            (Some("insufficient_inventory"), "failure", Inventory),
            (Some("unexpected_error"), "failure", ProviderError),
            (Some("INSUFFICIENT-FUNDS"), "declined", RetrySoon),
            (None, "SHOPIFY_EXCEPTION", ProviderError),
            (None, "FAILURE", RetrySoon),
        ];
        for (code, status, bucket) in table {
            assert_eq!(classify(code, status), bucket, "{code:?} / {status}");
        }
    }

    /// The values of an enum of the copied Shopify schema (`tests/fixtures/shopify/`).
    fn shopify_enum(schema: &str, name: &str) -> Vec<String> {
        let start = schema
            .find(&format!("enum {name} {{"))
            .unwrap_or_else(|| panic!("enum {name}"));
        let body = &schema[start..];
        let body = &body[body.find('{').unwrap() + 1..body.find("\n}").unwrap()];
        // Values are the lines outside the `"""` descriptions.
        let mut in_description = false;
        let mut values = Vec::new();
        for line in body.lines().map(str::trim) {
            let quotes = line.matches("\"\"\"").count();
            if quotes == 0 && !in_description && !line.is_empty() {
                values.push(line.to_owned());
            }
            if quotes == 1 {
                in_description = !in_description;
            }
        }
        values
    }

    /// Every error code of Shopify's schema, 2025-01 and 2026-04 (the flat enum and the
    /// three split enums), has a bucket: none falls to the unknown default.
    #[test]
    fn every_shopify_error_code_has_a_bucket() {
        let old = include_str!(
            "../../tests/fixtures/shopify/admin-2025-01.subscription-billing.subset.graphql"
        );
        let new = include_str!(
            "../../tests/fixtures/shopify/admin-2026-04.subscription-billing.subset.graphql"
        );
        let mut codes = shopify_enum(old, "SubscriptionBillingAttemptErrorCode");
        assert_eq!(codes.len(), 24);
        let flat = shopify_enum(new, "SubscriptionBillingAttemptErrorCode");
        assert_eq!(flat.len(), 54);
        codes.extend(flat);
        for split in ["Payment", "General", "Inventory"] {
            let split = shopify_enum(new, &format!("SubscriptionBillingAttempt{split}ErrorCode"));
            assert!(!split.is_empty());
            codes.extend(split);
        }
        for code in &codes {
            assert!(
                code.bytes().all(|b| b == b'_' || b.is_ascii_uppercase()),
                "{code}"
            );
            assert!(known(&normalize(code)).is_some(), "{code} has no bucket");
        }
    }

    /// Webhooks write Shopify's codes in lower case, the API in upper case: one bucket.
    #[test]
    fn lower_and_upper_case_codes_classify_the_same() {
        let table = [
            ("insufficient_funds", RetrySoon),
            ("expired_payment_method", NeedsCustomerAction),
            ("off_session_rejected", NeedsCustomerAction),
            ("fraud_suspected", NeverRetry),
            ("unexpected_error", ProviderError),
            ("invoice_already_paid", ProviderError),
            ("insufficient_inventory", Inventory),
        ];
        for (code, bucket) in table {
            let upper = code.to_ascii_uppercase();
            assert_eq!(classify(Some(code), "failure"), bucket, "{code}");
            assert_eq!(classify(Some(&upper), "failure"), bucket, "{upper}");
        }
    }

    #[test]
    fn unknown_codes_fall_to_retry_soon() {
        assert_eq!(classify(Some("some_new_code"), "weird"), RetrySoon);
        assert_eq!(classify(Some(""), "weird"), RetrySoon);
    }
}
