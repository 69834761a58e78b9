//! Decline buckets: which dunning path a failed attempt takes, from the provider's error or
//! decline code. Codes are compared case-insensitively with `-` and spaces read as `_`, so
//! Stripe's `insufficient_funds`, Shopify's `INSUFFICIENT_FUNDS` and a gateway's
//! `insufficient-funds` land in one place. An unknown code falls to `retry_soon` and is
//! counted, so new codes show up on a dashboard instead of being guessed at.

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
        | "payment_failed" => RetrySoon,
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
        | "incorrect_zip" => NeedsCustomerAction,
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
        | "transaction_not_allowed" => NeverRetry,
        "unexpected_error"
        | "payment_provider_is_not_enabled"
        | "shopify_exception"
        | "invalid_shipping_address"
        | "purchase_type_not_supported"
        | "api_error"
        | "gateway_error"
        | "timeout"
        | "conn_error"
        | "never_sent" => ProviderError,
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

    #[test]
    fn unknown_codes_fall_to_retry_soon() {
        assert_eq!(classify(Some("some_new_code"), "weird"), RetrySoon);
        assert_eq!(classify(Some(""), "weird"), RetrySoon);
    }
}
