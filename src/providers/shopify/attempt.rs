//! A billing attempt's outcome as the Admin GraphQL API reports it, read the same way by the
//! retry client (the mutation's answer) and the list client (listed attempts). The two
//! shapes and their mapping are in the module docs of `mod.rs` ("Admin GraphQL").

use serde::Deserialize;

/// Which fields tell an attempt's outcome in the configured API version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// Before 2026-04: `ready`, `order`, `nextActionUrl`, `processingError { code message }`
    /// (`errorCode`/`errorMessage` are deprecated since 2025-01 and not read).
    Flat,
    /// 2026-04 and later: the `state` union (the flat fields are deprecated there).
    State,
}

/// The first version whose attempts have `state`.
const STATE_SINCE: (u32, u32) = (2026, 4);

impl Shape {
    /// The shape of `api_version`: `YYYY-MM` before 2026-04 is [`Shape::Flat`]; 2026-04 and
    /// later, and any version that is not a date (`unstable`), are [`Shape::State`].
    pub(super) fn of_version(api_version: &str) -> Shape {
        let dated = api_version.split_once('-').and_then(|(year, month)| {
            Some((year.parse::<u32>().ok()?, month.parse::<u32>().ok()?))
        });
        match dated {
            Some(version) if version < STATE_SINCE => Shape::Flat,
            _ => Shape::State,
        }
    }

    /// The selection of an attempt's outcome, inside `SubscriptionBillingAttempt { … }`.
    /// The error codes of the 2026-04 error members are aliased: they are three different
    /// enums, and one selection set cannot hold one field name with two enum types.
    pub(super) fn selection(self) -> &'static str {
        match self {
            Shape::Flat => "ready nextActionUrl order { id } processingError { code message }",
            Shape::State => {
                "state { __typename \
... on SubscriptionBillingAttemptActionRequiredState { action { __typename } } \
... on SubscriptionBillingAttemptFailedState { error { __typename \
... on SubscriptionBillingAttemptGeneralError { generalCode: code } \
... on SubscriptionBillingAttemptInventoryError { inventoryCode: code } \
... on SubscriptionBillingAttemptPaymentError { paymentCode: code } \
... on SubscriptionBillingAttemptUnexpectedError { message } } } \
... on SubscriptionBillingAttemptSuccessState { order { id } } }"
            }
        }
    }
}

/// The outcome fields of an attempt, in either shape (whichever the answer carries).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct AttemptState {
    ready: Option<bool>,
    next_action_url: Option<String>,
    order: Option<Id>,
    processing_error: Option<ProcessingError>,
    state: Option<State>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Id {
    pub(super) id: String,
}

#[derive(Debug, Deserialize)]
struct ProcessingError {
    code: Option<String>,
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
struct State {
    #[serde(rename = "__typename")]
    typename: String,
    order: Option<Id>,
    error: Option<StateError>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StateError {
    #[serde(rename = "__typename")]
    typename: String,
    general_code: Option<String>,
    inventory_code: Option<String>,
    payment_code: Option<String>,
    message: Option<String>,
}

/// What an attempt's fields say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome<'a> {
    /// Still processing (`ready: false`, `PendingState`).
    Processing,
    /// Paid; the order, unless it was deleted (`SuccessState { order: null }`).
    Succeeded { order: Option<&'a str> },
    /// The customer must complete a challenge (`nextActionUrl`, `ActionRequiredState`).
    Challenged,
    /// Failed, with its code in Shopify's enum spelling (upper case) and its message.
    Failed {
        code: Option<String>,
        message: Option<String>,
    },
    /// Nothing tells how it ended: `ready` with neither order, challenge nor error, no
    /// outcome field at all, or a `state` member this code does not know (counted).
    Unknown,
}

/// The code for `UnexpectedError`, which has a message and no code: the flat enum's value
/// of the same meaning ("There was an unexpected error during the billing attempt").
const UNEXPECTED_ERROR: &str = "UNEXPECTED_ERROR";

/// An error code in the GraphQL enum's spelling: the webhooks write the same values in
/// lower case (`insufficient_funds`), the API in upper case (`INSUFFICIENT_FUNDS`).
pub(super) fn enum_case(code: &str) -> String {
    code.trim().to_ascii_uppercase()
}

impl AttemptState {
    /// The attempt's outcome: `state` when the answer has it (2026-04 and later), else the
    /// flat fields: not `ready` → processing; an `order` → succeeded (the field is "the
    /// result of this billing attempt if completed successfully"); a non-empty
    /// `nextActionUrl` → challenged; a `processingError` → failed.
    pub(super) fn outcome(&self) -> Outcome<'_> {
        if let Some(state) = &self.state {
            return state.outcome();
        }
        match self.ready {
            None => Outcome::Unknown,
            Some(false) => Outcome::Processing,
            Some(true) => {
                if let Some(order) = &self.order {
                    Outcome::Succeeded {
                        order: Some(&order.id),
                    }
                } else if self
                    .next_action_url
                    .as_deref()
                    .is_some_and(|u| !u.is_empty())
                {
                    Outcome::Challenged
                } else if let Some(error) = &self.processing_error {
                    Outcome::Failed {
                        code: error.code.as_deref().map(enum_case),
                        message: error.message.clone(),
                    }
                } else {
                    Outcome::Unknown
                }
            }
        }
    }
}

impl State {
    fn outcome(&self) -> Outcome<'_> {
        match self.typename.as_str() {
            "SubscriptionBillingAttemptPendingState" => Outcome::Processing,
            "SubscriptionBillingAttemptActionRequiredState" => Outcome::Challenged,
            "SubscriptionBillingAttemptSuccessState" => Outcome::Succeeded {
                order: self.order.as_ref().map(|o| o.id.as_str()),
            },
            "SubscriptionBillingAttemptFailedState" => match &self.error {
                Some(error) => error.outcome(),
                None => unknown("FailedState without its error"),
            },
            other => unknown(other),
        }
    }
}

impl StateError {
    fn outcome(&self) -> Outcome<'_> {
        let code = match self.typename.as_str() {
            "SubscriptionBillingAttemptGeneralError" => self.general_code.as_deref(),
            "SubscriptionBillingAttemptInventoryError" => self.inventory_code.as_deref(),
            "SubscriptionBillingAttemptPaymentError" => self.payment_code.as_deref(),
            "SubscriptionBillingAttemptUnexpectedError" => Some(UNEXPECTED_ERROR),
            other => {
                // A new error member: still a failure (counted), with its type name as the
                // message; its code, if it has one, is not selected.
                count_unknown(other);
                return Outcome::Failed {
                    code: None,
                    message: Some(other.to_owned()),
                };
            }
        };
        Outcome::Failed {
            code: code.map(enum_case),
            message: self.message.clone(),
        }
    }
}

fn unknown(typename: &str) -> Outcome<'static> {
    count_unknown(typename);
    Outcome::Unknown
}

fn count_unknown(typename: &str) {
    metrics::counter!("subsync_shopify_unknown_attempt_states_total").increment(1);
    tracing::warn!(
        typename = %crate::providers::http::snippet(typename),
        "a Shopify billing attempt state this version of subsync does not know"
    );
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn state(value: serde_json::Value) -> AttemptState {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn versions_before_2026_04_have_the_flat_shape() {
        for v in ["2024-10", "2025-01", "2025-07", "2026-01"] {
            assert_eq!(Shape::of_version(v), Shape::Flat, "{v}");
        }
        for v in ["2026-04", "2026-07", "2027-01", "unstable", "2026-4x"] {
            assert_eq!(Shape::of_version(v), Shape::State, "{v}");
        }
    }

    /// The 2026-04 `state` members (`SubscriptionBillingAttemptState`, each error member
    /// of `SubscriptionBillingAttemptError` with its aliased code) map to their outcomes.
    #[test]
    fn state_union_members_map_to_their_outcomes() {
        let failed = |error: serde_json::Value| json!({ "state": { "__typename": "SubscriptionBillingAttemptFailedState", "error": error } });
        let cases = [
            (
                json!({ "state": { "__typename": "SubscriptionBillingAttemptPendingState" } }),
                Outcome::Processing,
            ),
            (
                json!({ "state": { "__typename": "SubscriptionBillingAttemptActionRequiredState",
                    "action": { "__typename": "SubscriptionBillingAttemptPaymentChallenge" } } }),
                Outcome::Challenged,
            ),
            (
                json!({ "state": { "__typename": "SubscriptionBillingAttemptSuccessState",
                    "order": { "id": "gid://shopify/Order/9" } } }),
                Outcome::Succeeded {
                    order: Some("gid://shopify/Order/9"),
                },
            ),
            (
                json!({ "state": { "__typename": "SubscriptionBillingAttemptSuccessState", "order": null } }),
                Outcome::Succeeded { order: None },
            ),
            (
                failed(
                    json!({ "__typename": "SubscriptionBillingAttemptPaymentError", "paymentCode": "INSUFFICIENT_FUNDS" }),
                ),
                Outcome::Failed {
                    code: Some("INSUFFICIENT_FUNDS".into()),
                    message: None,
                },
            ),
            (
                failed(
                    json!({ "__typename": "SubscriptionBillingAttemptGeneralError", "generalCode": "PAYMENT_METHOD_NOT_FOUND" }),
                ),
                Outcome::Failed {
                    code: Some("PAYMENT_METHOD_NOT_FOUND".into()),
                    message: None,
                },
            ),
            (
                failed(
                    json!({ "__typename": "SubscriptionBillingAttemptInventoryError", "inventoryCode": "INSUFFICIENT_INVENTORY" }),
                ),
                Outcome::Failed {
                    code: Some("INSUFFICIENT_INVENTORY".into()),
                    message: None,
                },
            ),
            (
                failed(
                    json!({ "__typename": "SubscriptionBillingAttemptUnexpectedError", "message": "Gateway timeout" }),
                ),
                Outcome::Failed {
                    code: Some("UNEXPECTED_ERROR".into()),
                    message: Some("Gateway timeout".into()),
                },
            ),
            // Members this code does not know: tolerated (and counted), never a wrong state.
            (
                failed(json!({ "__typename": "SubscriptionBillingAttemptFutureError" })),
                Outcome::Failed {
                    code: None,
                    message: Some("SubscriptionBillingAttemptFutureError".into()),
                },
            ),
            (
                json!({ "state": { "__typename": "SubscriptionBillingAttemptFutureState" } }),
                Outcome::Unknown,
            ),
            (
                json!({ "state": { "__typename": "SubscriptionBillingAttemptFailedState" } }),
                Outcome::Unknown,
            ),
        ];
        for (value, outcome) in cases {
            assert_eq!(state(value.clone()).outcome(), outcome, "{value}");
        }
    }

    #[test]
    fn flat_fields_map_to_their_outcomes() {
        let cases = [
            (json!({ "ready": false }), Outcome::Processing),
            (
                json!({ "ready": true, "order": { "id": "gid://shopify/Order/1" } }),
                Outcome::Succeeded {
                    order: Some("gid://shopify/Order/1"),
                },
            ),
            (
                json!({ "ready": true, "nextActionUrl": "https://shop.example/3ds" }),
                Outcome::Challenged,
            ),
            (
                json!({ "ready": true, "processingError": { "code": "insufficient_funds", "message": "Insufficient funds" } }),
                Outcome::Failed {
                    code: Some("INSUFFICIENT_FUNDS".into()),
                    message: Some("Insufficient funds".into()),
                },
            ),
            (
                json!({ "ready": true, "nextActionUrl": "" }),
                Outcome::Unknown,
            ),
            (json!({}), Outcome::Unknown),
        ];
        for (value, outcome) in cases {
            assert_eq!(state(value.clone()).outcome(), outcome, "{value}");
        }
    }
}
