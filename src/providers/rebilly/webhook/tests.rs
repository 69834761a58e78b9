//! Unit tests of `rebilly_normalize.rs`.

use chrono::{TimeZone, Utc};
use serde_json::{Value, json};

use super::*;

fn run(value: Value) -> Result<Normalized, NormalizeError> {
    normalize(&serde_json::to_vec(&value).unwrap())
}

fn run_text(text: &str) -> Result<Normalized, NormalizeError> {
    normalize(text.as_bytes())
}

fn one_attempt(n: &Normalized) -> BillingAttempt {
    match n.events.as_slice() {
        [CanonicalEvent::BillingAttempt(a)] => a.clone(),
        other => panic!("expected one attempt: {other:?}"),
    }
}

/// An `InvoiceAndTransaction` webhook (Rebilly api-definitions), as raw JSON text so the
/// decimal `49.95` reaches the parser as written.
fn invoice_and_transaction(event: &str, result: &str, amount: &str, currency: &str) -> String {
    format!(
        r#"{{"transactionId":"txn_2","invoiceId":"inv_1","eventType":"{event}",
        "_embedded":{{
          "transaction":{{"id":"txn_2","type":"sale","status":"completed","result":"{result}",
            "amount":{amount},"currency":"{currency}","invoiceIds":["inv_1"],
            "subscriptionIds":["sub_1"],"processedTime":"2019-08-24T14:15:22Z",
            "createdTime":"2019-08-24T14:15:00Z","declineCode":"insufficient-funds",
            "gatewayResponse":{{"code":"51","message":"Insufficient funds"}}}},
          "invoice":{{"id":"inv_1","subscriptionId":"sub_1","currency":"{currency}",
            "amount":{amount},"status":"unpaid","paidTime":null}}}},
        "_links":[]}}"#
    )
}

#[test]
fn attempt_events_map_status_ids_amount_and_times() {
    use AttemptStatus::*;
    let at = Some(Utc.with_ymd_and_hms(2019, 8, 24, 14, 15, 22).unwrap());
    let table = [
        ("transaction-processed", "approved", Succeeded),
        ("transaction-processed", "declined", Failed),
        ("transaction-processed", "abandoned", Failed),
        ("transaction-processed", "canceled", Failed),
        ("transaction-processed", "unknown", Pending),
        ("transaction-declined", "declined", Failed),
        ("renewal-invoice-payment-declined", "declined", Failed),
        ("invoice-paid", "approved", Succeeded),
    ];
    for (event, result, expected) in table {
        let n = run_text(&invoice_and_transaction(event, result, "49.95", "USD")).unwrap();
        assert_eq!(n.event_type, event);
        let a = one_attempt(&n);
        assert_eq!(
            (a.status, a.provider_status.as_str()),
            (expected, result),
            "{event}"
        );
        assert_eq!(a.attempt_id, "txn_2");
        assert_eq!(a.cycle_id.as_deref(), Some("inv_1"));
        assert_eq!(a.subscription_id.as_deref(), Some("sub_1"));
        assert_eq!(
            a.amount,
            Some(Money {
                minor: 4995,
                currency: "USD".into()
            }),
            "49.95 USD"
        );
        assert_eq!(a.attempted_at, at);
        assert_eq!((a.next_attempt_at, a.attempt_count), (None, None));
        if expected == Failed {
            assert_eq!(a.error_code.as_deref(), Some("insufficient-funds"));
            assert_eq!(a.error_message.as_deref(), Some("Insufficient funds"));
        } else {
            assert_eq!((a.error_code, a.error_message), (None, None));
        }
    }
    let jpy = one_attempt(
        &run_text(&invoice_and_transaction(
            "invoice-paid",
            "approved",
            "1500",
            "JPY",
        ))
        .unwrap(),
    );
    assert_eq!(
        jpy.amount,
        Some(Money {
            minor: 1500,
            currency: "JPY".into()
        })
    );
    let kwd = invoice_and_transaction("transaction-processed", "approved", "\"12.345\"", "KWD");
    let kwd = one_attempt(&run_text(&kwd).unwrap());
    assert_eq!(
        kwd.amount,
        Some(Money {
            minor: 12345,
            currency: "KWD".into()
        })
    );
}

#[test]
fn transaction_status_without_result_and_refunds() {
    use AttemptStatus::*;
    let tx = |fields: Value| {
        let mut tx = json!({"id": "txn_9", "amount": "10.00", "currency": "EUR"});
        tx.as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        json!({"eventType": "transaction-processed", "transactionId": "txn_9",
            "_embedded": {"transaction": tx}})
    };
    for (status, expected) in [
        ("completed", Succeeded),
        ("pending", Pending),
        ("waiting-gateway", Pending),
        ("offsite", Pending),
        ("conn-error", Failed),
        ("timeout", Failed),
        ("voided", Failed),
    ] {
        let a = one_attempt(&run(tx(json!({"status": status}))).unwrap());
        assert_eq!((a.status, a.provider_status.as_str()), (expected, status));
    }
    let refunded =
        one_attempt(&run(tx(json!({"status": "refunded", "result": "approved"}))).unwrap());
    assert_eq!(refunded.status, Refunded);
    // Only the transaction object: ids come from it.
    let a = one_attempt(
        &run(tx(json!({"result": "declined", "invoiceIds": ["inv_7"],
        "message": "Card declined"})))
        .unwrap(),
    );
    assert_eq!(
        (a.cycle_id.as_deref(), a.error_message.as_deref()),
        (Some("inv_7"), Some("Card declined"))
    );
    assert_eq!(
        a.amount,
        Some(Money {
            minor: 1000,
            currency: "EUR".into()
        })
    );
}

#[test]
fn invoice_paid_without_transaction_uses_the_invoice() {
    let n = run_text(
        r#"{"eventType":"invoice-paid","invoiceId":"inv_5","_embedded":{"invoice":
        {"id":"inv_5","subscriptionId":"sub_5","currency":"USD","amount":49.95,
         "paidTime":"2024-01-02T03:04:05Z"}}}"#,
    )
    .unwrap();
    let a = one_attempt(&n);
    assert_eq!(a.attempt_id, "invoice-paid:inv_5");
    assert_eq!(
        (a.status, a.provider_status.as_str()),
        (AttemptStatus::Succeeded, "invoice-paid")
    );
    assert_eq!(a.subscription_id.as_deref(), Some("sub_5"));
    assert_eq!(
        a.amount,
        Some(Money {
            minor: 4995,
            currency: "USD".into()
        })
    );
    assert_eq!(
        a.attempted_at,
        Some(Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap())
    );
}

#[test]
fn subscription_events_map_status_from_object_or_event() {
    use SubscriptionStatus::*;
    let with = |event: &str, status: &str| {
        json!({"eventType": event, "subscriptionId": "sub_1", "_embedded": {"subscription": {
            "id": "sub_1", "status": status, "currency": "USD", "customerId": "cus_1",
            "renewalTime": "2019-09-24T14:15:22Z", "updatedTime": "2019-08-24T14:15:22Z"}}})
    };
    let table = [
        ("subscription-renewed", "active", Active),
        ("subscription-canceled", "canceled", Cancelled),
        ("subscription-paused", "paused", Paused),
        ("subscription-resumed", "active", Active),
        ("subscription-canceled", "churned", Cancelled),
        ("subscription-renewed", "suspended", PastDue),
        ("subscription-renewed", "completed", Expired),
        ("subscription-renewed", "pending", Pending),
    ];
    for (event, status, expected) in table {
        let n = run(with(event, status)).unwrap();
        let [CanonicalEvent::Subscription(c)] = n.events.as_slice() else {
            panic!("{n:?}")
        };
        assert_eq!(
            (c.status, c.provider_status.as_str()),
            (expected, status),
            "{event}"
        );
        assert_eq!(
            (c.subscription_id.as_str(), c.customer_id.as_deref()),
            ("sub_1", Some("cus_1"))
        );
        assert_eq!(c.currency.as_deref(), Some("USD"));
        assert_eq!(
            c.current_period_end,
            Some(Utc.with_ymd_and_hms(2019, 9, 24, 14, 15, 22).unwrap())
        );
        assert_eq!(
            c.updated_at,
            Some(Utc.with_ymd_and_hms(2019, 8, 24, 14, 15, 22).unwrap())
        );
    }
    for (event, expected) in [
        ("subscription-renewed", Active),
        ("subscription-canceled", Cancelled),
        ("subscription-paused", Paused),
        ("subscription-resumed", Active),
    ] {
        let n = run(json!({"eventType": event, "subscriptionId": "sub_2"})).unwrap();
        let [CanonicalEvent::Subscription(c)] = n.events.as_slice() else {
            panic!("{n:?}")
        };
        assert_eq!(
            (
                c.status,
                c.provider_status.as_str(),
                c.subscription_id.as_str()
            ),
            (expected, event, "sub_2")
        );
    }
}

#[test]
fn other_types_are_ignored() {
    for t in [
        "transaction-refunded",
        "invoice-issued",
        "subscription-created",
        "order-completed",
    ] {
        let n = run(json!({"eventType": t, "transactionId": "txn_1", "_embedded": {}})).unwrap();
        assert!(n.is_ignored(), "{t}");
        assert_eq!(n.event_type, t);
    }
}

#[test]
fn malformed_payloads_are_errors() {
    assert!(run_text("not json").is_err());
    assert!(run(json!({"transactionId": "t"})).is_err(), "no eventType");
    let precise = invoice_and_transaction("transaction-declined", "declined", "49.955", "USD");
    assert!(
        run_text(&precise)
            .unwrap_err()
            .to_string()
            .contains("more decimals")
    );
    let jpy = invoice_and_transaction("invoice-paid", "approved", "1500.5", "JPY");
    assert!(run_text(&jpy).is_err());
    let currency = invoice_and_transaction("invoice-paid", "approved", "49.95", "ZZZ");
    assert!(
        run_text(&currency)
            .unwrap_err()
            .to_string()
            .contains("unknown currency")
    );
    let exponent = invoice_and_transaction("invoice-paid", "approved", "4.995e1", "USD");
    assert!(run_text(&exponent).is_err(), "exponent notation is refused");
    let no_id = json!({"eventType": "renewal-invoice-payment-declined", "invoiceId": "inv_1",
        "_embedded": {"transaction": {"result": "declined"}}});
    assert!(
        run(no_id)
            .unwrap_err()
            .to_string()
            .contains("transactionId")
    );
    assert!(run(json!({"eventType": "transaction-processed", "transactionId": "t"})).is_err());
    let word = json!({"eventType": "transaction-processed", "_embedded": {"transaction":
        {"id": "t", "result": "maybe"}}});
    assert!(run(word).is_err());
    let no_currency = json!({"eventType": "transaction-declined", "_embedded": {"transaction":
        {"id": "t", "amount": 5}}});
    assert!(run(no_currency).is_err());
    assert!(run(json!({"eventType": "invoice-paid"})).is_err());
    assert!(run(json!({"eventType": "subscription-canceled"})).is_err());
    let status = json!({"eventType": "subscription-paused", "_embedded": {"subscription":
        {"id": "s", "status": "frozen"}}});
    assert!(run(status).is_err());
}

proptest::proptest! {
    #[test]
    fn arbitrary_bodies_never_panic(
        body in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
        event in proptest::sample::select(vec!["transaction-processed", "transaction-declined",
            "renewal-invoice-payment-declined", "invoice-paid", "subscription-renewed", "x"]),
        result in "[a-z-]{0,12}", amount in "[0-9.e-]{1,10}", currency in "[A-Za-z]{0,4}",
    ) {
        let _ = normalize(&body);
        let _ = run_text(&invoice_and_transaction(event, &result, &amount, &currency));
    }
}
