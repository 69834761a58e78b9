//! PayNow's payments, the second phase of a sync after the subscriptions: the Management
//! API's `GET {base_url}/v1/stores/{store_id}/payments` (`Payments_GetPayments`, a bare
//! JSON array of `PaymentDto`), newest first (`asc=false`), each page `after` the last id
//! of the previous one, `limit` ≤ 100; a page with fewer than `limit` items ends it. Cursor
//! `payments:` (the first page) or `payments:<id>`. The definitions say `after` "Returns
//! items after the specified ID. Used for forward pagination through results" (and
//! `before`, backward): read as after it in the listing's order, so newest first it
//! returns older ids. Were PayNow to compare ids instead, the page would hold newer ids,
//! which the check below refuses (`Rejected`, "does not advance"): the run stops with the
//! error, it never loops.
//!
//! A `PaymentDto`'s `id` is the payment id PayNow's own `ON_PAYMENT_*` webhooks carry as
//! `body.id` (our attempt id), so a listed payment heals exactly the attempt its webhook
//! would have made, never a second one. Each is rendered as the webhooks PayNow sent for
//! it, from the fields both definitions share:
//!
//! | `status` (`PaymentStatusDto`) | rendered |
//! |---|---|
//! | `failed` | `ON_PAYMENT_FAILED`; `failure_code` = `last_payment_error.decline_code` |
//! | `completed` | `ON_PAYMENT_COMPLETED` |
//! | `refunded`, `refund_processing`, `refund_failed`, `chargeback` | `ON_PAYMENT_COMPLETED` (status `completed`: it was sent when the payment completed) |
//! | `created`, `pending`, `canceled`, `unknown`, other | not rendered (PayNow sends no payment webhook for them) |
//!
//! and each of its `refunds` whose `status` is `completed` as `ON_REFUND` ("Triggered when
//! a refund is completed"): the refund's `id`, `status`, `store_refund_amount` and times,
//! with the payment's `order_id`, `gateway`, `currency` and, as the webhook defines them
//! ("The initial payment amount", "The initial ... fee amount"), the payment's `amount`
//! and fees. A refund not completed yet is not rendered (no webhook was sent for it).
//! Left out, read by no normalizer: the webhooks' `tax_inclusive`, `billing_country` and
//! `billing_email` (no field in the DTOs), and `customer` (the webhooks' `CustomerDTO` is
//! not the management API's `CustomerDto`). The envelope's `event_id` is the sync's own,
//! `sync:<id>:<16 hex of the body's SHA-256>`, not a PayNow flake id.
//! Keys: `payment:<id>`, `refund:<id>`.
//!
//! `since`: the listing has no time filter, and a payment changes after its creation only
//! when refunded or charged back. An incremental run renders the payments changed since
//! `since` (latest of the payment's and its refunds' times) and stops after the page whose
//! oldest payment was created [`LATE_WINDOW`] before `since`; a refund made later than
//! that after its payment is healed by a full run (`since = None`), which walks every page.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Map, Value, json};

use super::list::{flake_id, rejected};
use crate::providers::contract::{Page, Record};
use crate::providers::http::ProviderApiError;
use crate::providers::support::{json_body, sha256_hex, unknown_provider_value};

/// The cursor prefix of the payments phase.
pub(super) const CURSOR: &str = "payments:";

/// How long after its creation a payment is still looked at by an incremental run.
const LATE_WINDOW: TimeDelta = TimeDelta::days(30);

/// The payment fields both `PaymentDto` and the `ON_PAYMENT_*` bodies define.
const PAYMENT_FIELDS: &[&str] = &[
    "id",
    "store_id",
    "order_id",
    "gateway",
    "currency",
    "amount",
    "gateway_fee_amount",
    "tax_amount",
    "platform_fee_amount",
    "store_net_amount",
    "created_at",
    "pending_at",
];

/// The refund fields both `RefundDto` and the `ON_REFUND` body define as the refund's own.
const REFUND_FIELDS: &[&str] = &[
    "id",
    "store_id",
    "payment_id",
    "status",
    "store_refund_amount",
    "created_at",
    "approved_at",
    "pending_at",
    "completed_at",
];

/// The payment's fields the `ON_REFUND` body carries as "the initial payment" values.
const REFUND_PAYMENT_FIELDS: &[&str] = &[
    "order_id",
    "gateway",
    "currency",
    "amount",
    "gateway_fee_amount",
    "tax_amount",
    "platform_fee_amount",
    "store_net_amount",
];

/// The `after` id of a payments cursor (`None`: the first page), or `None` when `cursor`
/// is not one.
pub(super) fn after(cursor: &str) -> Option<Option<&str>> {
    let rest = cursor.strip_prefix(CURSOR)?;
    Some((!rest.is_empty()).then_some(rest))
}

/// One page of payments (`after`: the previous page's last id).
pub(super) fn parse(
    body: &str,
    limit: u32,
    after: Option<&str>,
    since: Option<DateTime<Utc>>,
) -> Result<Page, ProviderApiError> {
    let payments: Vec<Value> = serde_json::from_str(body)
        .map_err(|e| rejected(format!("not a PayNow list of payments: {e}")))?;
    let full = payments.len() >= limit as usize;
    let old_enough = since.and_then(|since| since.checked_sub_signed(LATE_WINDOW));
    let reached_old = match (old_enough, payments.last()) {
        (Some(old), Some(last)) => time(last, "created_at").is_some_and(|at| at < old),
        _ => false,
    };
    let next = match payments.last() {
        Some(last) if full && !reached_old => {
            let id = last
                .get("id")
                .and_then(flake_id)
                .ok_or_else(|| rejected("PayNow page is full but its last payment has no id"))?;
            if let Some(after) = after
                && !descends(after, &id)
            {
                return Err(rejected(format!(
                    "PayNow pagination does not advance (after {after}, newest first, last id {id})"
                )));
            }
            Some(format!("{CURSOR}{id}"))
        }
        _ => None,
    };
    let records = payments
        .iter()
        .filter(|p| changed_since(p, since))
        .flat_map(render)
        .collect();
    Ok(Page::new(records, next))
}

/// Whether `last` lies before `cursor` in descending flake-id order.
fn descends(cursor: &str, last: &str) -> bool {
    match (cursor.parse::<u64>(), last.parse::<u64>()) {
        (Ok(cursor), Ok(last)) => last < cursor,
        _ => cursor != last,
    }
}

fn time(value: &Value, field: &str) -> Option<DateTime<Utc>> {
    let text = value.get(field)?.as_str()?;
    Some(DateTime::parse_from_rfc3339(text).ok()?.with_timezone(&Utc))
}

/// Whether the payment or one of its refunds changed at or after `since` (or its times
/// are unreadable).
fn changed_since(payment: &Value, since: Option<DateTime<Utc>>) -> bool {
    let Some(since) = since else {
        return true;
    };
    let own = [
        "created_at",
        "pending_at",
        "completed_at",
        "failed_at",
        "canceled_at",
        "refunded_at",
        "chargeback_at",
    ]
    .map(|field| time(payment, field));
    let refunds = refunds(payment).flat_map(|r| {
        ["created_at", "completed_at", "canceled_at", "failed_at"].map(|field| time(r, field))
    });
    let latest = own.into_iter().chain(refunds).flatten().max();
    latest.is_none_or(|latest| latest >= since)
}

fn refunds(payment: &Value) -> impl Iterator<Item = &Value> {
    payment
        .get("refunds")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn pick(from: &Value, fields: &[&str], into: &mut Map<String, Value>) {
    for field in fields {
        if let Some(value) = from.get(*field) {
            into.insert((*field).to_owned(), value.clone());
        }
    }
}

/// The webhooks PayNow sent for this payment (see the module doc); none without an id.
fn render(payment: &Value) -> Vec<Record> {
    let Some(id) = payment.get("id").and_then(flake_id) else {
        return Vec::new();
    };
    let status = payment
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut body = Map::new();
    pick(payment, PAYMENT_FIELDS, &mut body);
    body.insert("id".to_owned(), json!(id));
    let event_type = match status {
        "failed" => {
            pick(payment, &["failed_at"], &mut body);
            let code = payment.pointer("/last_payment_error/decline_code");
            body.insert(
                "failure_code".to_owned(),
                code.cloned().unwrap_or(Value::Null),
            );
            body.insert("status".to_owned(), json!("failed"));
            "ON_PAYMENT_FAILED"
        }
        "completed" | "refunded" | "refund_processing" | "refund_failed" | "chargeback" => {
            pick(payment, &["completed_at"], &mut body);
            body.insert("status".to_owned(), json!("completed"));
            "ON_PAYMENT_COMPLETED"
        }
        "created" | "pending" | "canceled" | "unknown" => return Vec::new(),
        other => {
            unknown_provider_value("paynow", "payment.status", other);
            return Vec::new();
        }
    };
    let mut records = vec![record("payment", &id, event_type, Value::Object(body))];
    for refund in refunds(payment) {
        let Some(refund_id) = refund.get("id").and_then(flake_id) else {
            continue;
        };
        if refund.get("status").and_then(Value::as_str) != Some("completed") {
            continue;
        }
        let mut body = Map::new();
        pick(payment, REFUND_PAYMENT_FIELDS, &mut body);
        pick(refund, REFUND_FIELDS, &mut body);
        body.insert("id".to_owned(), json!(refund_id));
        body.insert("payment_id".to_owned(), json!(id));
        records.push(record(
            "refund",
            &refund_id,
            "ON_REFUND",
            Value::Object(body),
        ));
    }
    records
}

fn record(kind: &str, id: &str, event_type: &str, body: Value) -> Record {
    let state = sha256_hex(&[&json_body(&body)]);
    let webhook = json!({
        "event_type": event_type,
        "event_id": format!("sync:{id}:{}", &state[..16]),
        "body": body,
    });
    Record::json(format!("{kind}:{id}"), &webhook)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use wiremock::matchers::{header, method, path, query_param, query_param_is_missing};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::canonical::{AttemptStatus, CanonicalEvent, RefundStatus};
    use crate::config::{ApiSettings, ProviderKind};
    use crate::providers::contract::{ListClient, PageRequest};
    use crate::providers::paynow::{PayNowList, definitions};
    use crate::providers::testing::schema::set;
    use crate::providers::testing::{api_settings, normalize_with, request};

    const TOKEN: &str = "pnapi_v1_secret";
    const STORE: &str = "411486491630370000";
    const PAYMENTS: &str = "/v1/stores/411486491630370000/payments";

    /// A `PaymentDto` as the management API lists it, generated from its schema and
    /// checked valid; `refunds` are (id, status, store_refund_amount).
    pub(crate) fn payment(id: &str, status: &str, refunds: &[(&str, &str, i64)]) -> Value {
        let spec = &definitions().1;
        let mut payment = spec.generate(spec.schema("PaymentDto"));
        let failed = status == "failed";
        for (pointer, value) in [
            ("/id", json!(id)),
            ("/store_id", json!(STORE)),
            ("/order_id", json!("411486491630379999")),
            ("/customer_id", json!("411486491630370555")),
            ("/customer/id", json!("411486491630370555")),
            ("/customer/store_id", json!(STORE)),
            ("/status", json!(status)),
            ("/currency", json!("eur")),
            ("/amount", json!(999)),
            ("/created_at", json!("2024-11-12T10:30:00Z")),
            ("/pending_at", Value::Null),
            (
                "/completed_at",
                json!((!failed).then_some("2024-11-12T10:30:05Z")),
            ),
            (
                "/failed_at",
                json!(failed.then_some("2024-11-12T10:30:05Z")),
            ),
            ("/canceled_at", Value::Null),
            ("/refunded_at", Value::Null),
            ("/chargeback_at", Value::Null),
            (
                "/last_payment_error",
                json!({"decline_code": "insufficient_funds", "message": "Insufficient funds."}),
            ),
        ] {
            set(&mut payment, pointer, value);
        }
        if !failed {
            payment
                .as_object_mut()
                .unwrap()
                .remove("last_payment_error");
        }
        let refunds: Vec<Value> = refunds
            .iter()
            .map(|(refund_id, status, amount)| {
                let mut refund = spec.generate(spec.schema("RefundDto"));
                for (pointer, value) in [
                    ("/id", json!(refund_id)),
                    ("/store_id", json!(STORE)),
                    ("/payment_id", json!(id)),
                    ("/status", json!(status)),
                    ("/currency", json!("eur")),
                    ("/amount", json!(amount)),
                    ("/store_refund_amount", json!(amount)),
                    ("/created_at", json!("2024-11-20T08:00:00Z")),
                    ("/approved_at", json!("2024-11-20T08:00:01Z")),
                    ("/pending_at", json!("2024-11-20T08:00:02Z")),
                    ("/completed_at", json!("2024-11-20T08:00:09Z")),
                ] {
                    set(&mut refund, pointer, value);
                }
                refund
            })
            .collect();
        set(&mut payment, "/refunds", json!(refunds));
        let known = spec.schema("PaymentStatusDto")["enum"]
            .as_array()
            .unwrap()
            .contains(&json!(status));
        if known {
            let errors = spec.validate(&payment, spec.schema("PaymentDto"));
            assert!(errors.is_empty(), "{errors:#?}");
        }
        payment
    }

    fn client(server: &MockServer) -> PayNowList {
        let api = ApiSettings {
            store_id: Some(STORE.to_owned()),
            ..api_settings(format!("{}/", server.uri()), TOKEN)
        };
        PayNowList::new(&api, crate::providers::http::http_client().unwrap())
    }

    fn ok(items: Vec<Value>) -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json(Value::Array(items))
    }

    fn webhook(record: &Record) -> Value {
        serde_json::from_slice(&record.body).unwrap()
    }

    /// The rendered webhook checked against its definition: the only errors are the
    /// sync's own event id and the required fields the DTOs do not carry, `missing`.
    fn assert_defined(record: &Record, missing: &[&str]) {
        let spec = &definitions().0;
        let webhook = webhook(record);
        let name = webhook["event_type"].as_str().unwrap();
        let mut errors = spec.validate(&webhook, spec.webhook_body(name));
        errors.sort();
        let mut expected: Vec<String> = missing
            .iter()
            .map(|m| format!("/body: \"{m}\" is a required property"))
            .collect();
        let event_id = webhook["event_id"].as_str().unwrap();
        expected.push(format!("/event_id: \"{event_id}\" is not a \"flake-id\""));
        expected.sort();
        assert_eq!(errors, expected, "{name}");
    }

    #[test]
    fn the_listing_is_what_the_definitions_declare() {
        let spec = &definitions().1;
        let operation = spec.operation("/v1/stores/{storeId}/payments", "get");
        assert_eq!(operation["security"], json!([{"APIKey": []}]));
        let parameters = operation["parameters"].as_array().unwrap();
        let param = |name: &str| {
            &parameters
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("no parameter {name}"))["schema"]
        };
        assert_eq!(param("limit")["maximum"], 100);
        assert!(spec.validate(&json!(false), param("asc")).is_empty());
        assert!(
            spec.validate(&json!("411486491630370817"), param("after"))
                .is_empty()
        );
        let page = json!([
            payment(
                "411486491630370817",
                "refunded",
                &[("411486491630371000", "completed", 999)]
            ),
            payment("411486491630370816", "failed", &[]),
        ]);
        let errors = spec.validate(
            &page,
            spec.response("/v1/stores/{storeId}/payments", "get", "200"),
        );
        assert!(errors.is_empty(), "{errors:#?}");
    }

    #[test]
    fn payments_render_as_the_webhooks_paynow_sent() {
        let failed = render(&payment("411486491630370816", "failed", &[]));
        let [failed] = failed.as_slice() else {
            panic!("{failed:?}")
        };
        assert_eq!(failed.key, "payment:411486491630370816");
        assert_eq!(webhook(failed)["event_type"], "ON_PAYMENT_FAILED");
        assert_defined(failed, &["tax_inclusive"]);
        match normalize_with(ProviderKind::Paynow, failed).as_slice() {
            [CanonicalEvent::BillingAttempt(a)] => {
                assert_eq!(a.attempt_id, "411486491630370816");
                assert_eq!(a.status, AttemptStatus::Failed);
                assert_eq!(a.error_code.as_deref(), Some("insufficient_funds"));
                assert_eq!(a.amount.as_ref().map(|m| m.minor), Some(999));
                assert_eq!(
                    a.attempted_at,
                    Utc.with_ymd_and_hms(2024, 11, 12, 10, 30, 5).single()
                );
            }
            other => panic!("{other:?}"),
        }

        let refunds = [
            ("411486491630371000", "completed", 300),
            ("411486491630371001", "processing", 200),
            ("411486491630371002", "failed", 100),
        ];
        let records = render(&payment("411486491630370817", "refunded", &refunds));
        let keys: Vec<_> = records.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(
            keys,
            ["payment:411486491630370817", "refund:411486491630371000"],
            "only the completed refund was sent"
        );
        assert_eq!(webhook(&records[0])["event_type"], "ON_PAYMENT_COMPLETED");
        assert_eq!(webhook(&records[0])["body"]["status"], "completed");
        assert_defined(&records[0], &["tax_inclusive"]);
        assert_defined(&records[1], &["tax_inclusive", "billing_email"]);
        match normalize_with(ProviderKind::Paynow, &records[1]).as_slice() {
            [CanonicalEvent::Refund(r), CanonicalEvent::BillingAttempt(a)] => {
                assert_eq!(r.refund_id, "411486491630371000");
                assert_eq!(r.status, RefundStatus::Succeeded);
                assert_eq!(r.amount.minor, 300);
                assert_eq!(r.attempt_id.as_deref(), Some("411486491630370817"));
                assert_eq!(
                    (a.status, a.provider_status.as_str()),
                    (AttemptStatus::Succeeded, "partially_refunded"),
                    "300 of the payment's 999"
                );
            }
            other => panic!("{other:?}"),
        }

        for status in ["created", "pending", "canceled", "unknown", "zombie"] {
            assert!(render(&payment("1", status, &[])).is_empty(), "{status}");
        }
    }

    #[tokio::test]
    async fn walks_newest_first_with_after_and_stops_past_the_late_window() {
        let server = MockServer::start().await;
        let auth = format!("APIKey {TOKEN}");
        let mut old = payment("411486491630370700", "completed", &[]);
        old["created_at"] = json!("2024-09-01T00:00:00Z");
        old["completed_at"] = json!("2024-09-01T00:00:05Z");
        Mock::given(method("GET"))
            .and(path(PAYMENTS))
            .and(header("authorization", auth.as_str()))
            .and(query_param("limit", "2"))
            .and(query_param("asc", "false"))
            .and(query_param_is_missing("after"))
            .respond_with(ok(vec![
                payment("411486491630370817", "completed", &[]),
                payment("411486491630370816", "failed", &[]),
            ]))
            .expect(2)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(PAYMENTS))
            .and(query_param("asc", "false"))
            .and(query_param("after", "411486491630370816"))
            .respond_with(ok(vec![
                payment("411486491630370800", "completed", &[]),
                old,
            ]))
            .expect(2)
            .mount(&server)
            .await;
        let client = client(&server);
        let first = client.page(request(Some(CURSOR))).await.unwrap();
        assert_eq!(first.next.as_deref(), Some("payments:411486491630370816"));
        assert_eq!(first.records.len(), 2);
        let full = client
            .page(request(Some("payments:411486491630370816")))
            .await
            .unwrap();
        assert_eq!(
            full.next.as_deref(),
            Some("payments:411486491630370700"),
            "a full run walks on"
        );
        assert_eq!(full.records.len(), 2);

        let since = Utc.with_ymd_and_hms(2024, 11, 1, 0, 0, 0).single();
        let incremental = |cursor| PageRequest {
            since,
            ..request(Some(cursor))
        };
        let recent = client.page(incremental(CURSOR)).await.unwrap();
        assert_eq!(recent.records.len(), 2, "changed since `since`");
        let back = client
            .page(incremental("payments:411486491630370816"))
            .await
            .unwrap();
        assert_eq!(
            back.next, None,
            "its oldest payment is 30 days before `since`"
        );
        assert_eq!(back.records.len(), 1, "the old payment is unchanged since");
    }

    #[test]
    fn a_cursor_that_does_not_descend_is_rejected() {
        let page = serde_json::to_string(&json!([
            payment("411486491630370900", "completed", &[]),
            payment("411486491630370901", "completed", &[]),
        ]))
        .unwrap();
        let error = parse(&page, 2, Some("411486491630370800"), None).unwrap_err();
        assert!(error.to_string().contains("does not advance"), "{error}");
        let error = parse("{\"data\": []}", 2, None, None).unwrap_err();
        assert!(
            error.to_string().contains("not a PayNow list of payments"),
            "{error}"
        );
    }

    #[test]
    fn a_refund_after_since_renders_its_old_payment() {
        let since = Utc.with_ymd_and_hms(2024, 11, 15, 0, 0, 0).single();
        let refunded = payment(
            "411486491630370817",
            "refunded",
            &[("411486491630371000", "completed", 999)],
        );
        let untouched = payment("411486491630370816", "completed", &[]);
        let page = serde_json::to_string(&json!([refunded, untouched])).unwrap();
        let page = parse(&page, 3, None, since).unwrap();
        let keys: Vec<_> = page.records.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(
            keys,
            ["payment:411486491630370817", "refund:411486491630371000"]
        );
    }
}
