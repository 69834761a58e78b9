//! The Rebilly event id (described in the header of `mod.rs`): one typed pass over the
//! body that keeps the event type, the top-level resource ids and the per-occurrence
//! fields, and skips everything else.

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::providers::support::{body_hash_id, sha256_hex};

/// A JSON scalar as JSON text (a string quoted and escaped the one way serde_json writes
/// it); `None` for `null`, an object or an array.
struct Scalar(Option<String>);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;

        impl<'de> Visitor<'de> for ScalarVisitor {
            type Value = Scalar;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }

            fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(serde_json::to_string(v).ok()))
            }

            fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(Some(v.to_string())))
            }

            fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(Some(v.to_string())))
            }

            fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(Some(v.to_string())))
            }

            fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(
                    serde_json::Number::from_f64(v).map(|n| n.to_string()),
                ))
            }

            fn visit_unit<E>(self) -> Result<Scalar, E> {
                Ok(Scalar(None))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar(None))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar(None))
            }
        }

        deserializer.deserialize_any(ScalarVisitor)
    }
}

type Field = Option<Scalar>;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    event_type: Field,
    transaction_id: Field,
    invoice_id: Field,
    subscription_id: Field,
    subscription_pause_id: Field,
    #[serde(rename = "_embedded")]
    embedded: Option<Embedded>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Embedded {
    transaction: Option<Resource>,
    child_transaction: Option<Resource>,
    invoice: Option<Resource>,
    subscription: Option<Resource>,
    pause: Option<Resource>,
}

/// The per-occurrence fields any embedded resource may have; which are used depends on
/// the resource.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Resource {
    id: Field,
    revision: Field,
    status: Field,
    result: Field,
    updated_time: Field,
    due_reminder_number: Field,
    rebill_number: Field,
    current_period_start: Field,
    renewal_reminder_number: Field,
}

fn value(field: &Field) -> Option<&str> {
    field.as_ref()?.0.as_deref()
}

/// The event id of a Rebilly webhook body.
pub(super) fn of(body: &[u8]) -> String {
    let Ok(parsed) = serde_json::from_slice::<Body>(body) else {
        return body_hash_id(body);
    };
    let Some(event_type) = value(&parsed.event_type) else {
        return body_hash_id(body);
    };
    let mut material = format!("eventType={event_type}");
    let ids = [
        ("transactionId", &parsed.transaction_id),
        ("invoiceId", &parsed.invoice_id),
        ("subscriptionId", &parsed.subscription_id),
        ("subscriptionPauseId", &parsed.subscription_pause_id),
    ];
    for (name, field) in ids {
        if let Some(v) = value(field) {
            material.push_str(&format!("\n/{name}={v}"));
        }
    }
    let e = parsed.embedded.unwrap_or_default();
    let none = Resource::default();
    let (tx, child, invoice, subscription, pause) = (
        e.transaction.as_ref().unwrap_or(&none),
        e.child_transaction.as_ref().unwrap_or(&none),
        e.invoice.as_ref().unwrap_or(&none),
        e.subscription.as_ref().unwrap_or(&none),
        e.pause.as_ref().unwrap_or(&none),
    );
    let occurrence = [
        ("/_embedded/childTransaction/id", &child.id),
        ("/_embedded/transaction/revision", &tx.revision),
        ("/_embedded/transaction/status", &tx.status),
        ("/_embedded/transaction/result", &tx.result),
        ("/_embedded/transaction/updatedTime", &tx.updated_time),
        ("/_embedded/invoice/revision", &invoice.revision),
        ("/_embedded/invoice/status", &invoice.status),
        ("/_embedded/invoice/updatedTime", &invoice.updated_time),
        (
            "/_embedded/invoice/dueReminderNumber",
            &invoice.due_reminder_number,
        ),
        ("/_embedded/subscription/revision", &subscription.revision),
        ("/_embedded/subscription/status", &subscription.status),
        (
            "/_embedded/subscription/updatedTime",
            &subscription.updated_time,
        ),
        (
            "/_embedded/subscription/rebillNumber",
            &subscription.rebill_number,
        ),
        (
            "/_embedded/subscription/currentPeriodStart",
            &subscription.current_period_start,
        ),
        (
            "/_embedded/subscription/renewalReminderNumber",
            &subscription.renewal_reminder_number,
        ),
        ("/_embedded/pause/status", &pause.status),
        ("/_embedded/pause/updatedTime", &pause.updated_time),
    ];
    let mut per_occurrence = false;
    for (pointer, field) in occurrence {
        if let Some(v) = value(field) {
            material.push_str(&format!("\n{pointer}={v}"));
            per_occurrence = true;
        }
    }
    if per_occurrence {
        sha256_hex(&[material.as_bytes()])
    } else {
        sha256_hex(&[material.as_bytes(), b"\nbody=", body])
    }
}
