//! Rebilly pull sync end to end: a fake of `GET {base}/subscriptions` (the orders list,
//! under an organization path) that requires the `REB-APIKEY` header, sorts by `sort`,
//! filters by `filter=updatedTime:<since>..`, embeds the recent invoice only when asked
//! (`expand=recentInvoice`), slices by `limit`/`offset` and answers a bare JSON array with
//! `Pagination-Total/Offset/Limit` headers; a query outside the operation's parameters is
//! refused, and every page is checked against the operation's answer (Rebilly's OpenAPI
//! document, `tests/fixtures/rebilly/`). Webhooks (Basic auth) deliver part of the
//! orders and invoices; one sync heals the order statuses and recent-invoice attempts the
//! ledger missed, and an incremental second run changes nothing. A two-hour outage of
//! declined, retried, refunded payments and a cancellation is healed by one incremental
//! run to the ledger of a source that got every webhook.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use super::harness::{self, pairs, state};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use subsync::sync::{Disappeared, RunOptions};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers};

use crate::common::{TestApp, TestConfig, attempt_states, eventually, sync};
use crate::rebilly_definitions::{ORDERS, TRANSACTIONS, definitions};

const SOURCE: &str = "rebilly";
const API_KEY: &str = "sk_sandbox_rebilly_sync";
const ORGANIZATION: &str = "/organizations/org_sync";
/// Rebilly's maximum `limit`.
const MAX_LIMIT: usize = 1000;

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn time_of(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().expect("an RFC 3339 time"))
        .expect("an RFC 3339 time")
        .with_timezone(&Utc)
}

/// One list request as the fake saw it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    /// `orders` or `transactions`.
    listing: &'static str,
    offset: usize,
    limit: usize,
    filter: Option<String>,
}

/// Rebilly's orders collection: `sort` by a field (`-` = descending), `filter` on
/// `updatedTime` (`<from>..`, at or after), `_embedded` only with `expand=recentInvoice`,
/// `limit` (≤ 1000) / `offset`, and the position in `Pagination-*` headers.
/// The transactions collection (`GET {base}/transactions`) is served the same way, without
/// an expand.
#[derive(Clone, Default)]
struct FakeOrders {
    orders: Arc<Mutex<Vec<Value>>>,
    transactions: Arc<Mutex<Vec<Value>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeOrders {
    fn new(orders: Vec<Value>, transactions: Vec<Value>) -> Self {
        let fake = Self::default();
        *fake.orders.lock().unwrap() = orders;
        *fake.transactions.lock().unwrap() = transactions;
        fake
    }

    fn take_seen(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

fn problem(detail: String) -> ResponseTemplate {
    ResponseTemplate::new(400).set_body_json(json!({
        "type": "https://api-reference.rebilly.com/#section/Errors", "title": "Bad Request",
        "status": 400, "detail": detail,
    }))
}

impl Respond for FakeOrders {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let (listing, path) = match request.url.path().ends_with(TRANSACTIONS) {
            true => ("transactions", TRANSACTIONS),
            false => ("orders", ORDERS),
        };
        // What the operation's parameters refuse, Rebilly refuses.
        let pairs: Vec<(String, String)> = request.url.query_pairs().into_owned().collect();
        let pairs = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let problems = definitions().list_query_problems(path, pairs);
        if !problems.is_empty() {
            return problem(problems.join("; "));
        }
        let query = |name: &str| {
            request
                .url
                .query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        let Ok(limit) = query("limit").map_or(Ok(100), |l| l.parse::<usize>()) else {
            return problem("limit must be an integer".to_owned());
        };
        let Ok(offset) = query("offset").map_or(Ok(0), |o| o.parse::<usize>()) else {
            return problem("offset must be an integer".to_owned());
        };
        let limit = limit.min(MAX_LIMIT);
        let filter = query("filter");
        self.seen.lock().unwrap().push(Seen {
            listing,
            offset,
            limit,
            filter: filter.clone(),
        });
        let from = match filter.as_deref() {
            None => None,
            Some(f) => match f
                .strip_prefix("updatedTime:")
                .and_then(|rest| rest.strip_suffix(".."))
                .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
            {
                Some(at) => Some(at.with_timezone(&Utc)),
                None => return problem(format!("unsupported filter {f:?}")),
            },
        };
        let items = match listing {
            "orders" => &self.orders,
            _ => &self.transactions,
        };
        let mut orders: Vec<Value> = items
            .lock()
            .unwrap()
            .iter()
            .filter(|o| from.is_none_or(|from| time_of(&o["updatedTime"]) >= from))
            .cloned()
            .collect();
        if let Some(sort) = query("sort") {
            let (field, descending) = match sort.strip_prefix('-') {
                Some(field) => (field.to_owned(), true),
                None => (sort.clone(), false),
            };
            if field != "updatedTime" {
                return problem(format!("unsupported sort {sort:?}"));
            }
            orders.sort_by_key(|o| time_of(&o[field.as_str()]));
            if descending {
                orders.reverse();
            }
        }
        if query("expand").as_deref() != Some("recentInvoice") {
            for order in &mut orders {
                order.as_object_mut().unwrap().remove("_embedded");
            }
        }
        let total = orders.len();
        let page = Value::Array(orders.into_iter().skip(offset).take(limit).collect());
        let problems = definitions().list_page_problems(path, &page);
        assert!(
            problems.is_empty(),
            "not a page Rebilly answers: {problems:#?}"
        );
        ResponseTemplate::new(200)
            .insert_header("content-type", "application/json")
            .insert_header("pagination-total", total.to_string().as_str())
            .insert_header("pagination-offset", offset.to_string().as_str())
            .insert_header("pagination-limit", limit.to_string().as_str())
            .set_body_json(page)
    }
}

async fn rebilly_api(fake: FakeOrders) -> MockServer {
    let route = Mock::given(matchers::method("GET"))
        .and(matchers::path_regex(format!(
            "^{ORGANIZATION}/(subscriptions|transactions)$"
        )))
        .and(matchers::header("reb-apikey", API_KEY));
    harness::serve(route, fake).await
}

/// The `[[sources]]` keys of source `id` on the fake at `server`.
fn source(id: &str, server: &MockServer) -> String {
    format!(
        r#"id = "{id}"
provider = "rebilly"
basic_auth = {{ username = "rebilly", password = "s3cret-basic-pass" }}
api = {{ base_url = "{}{ORGANIZATION}", token = "{API_KEY}" }}"#,
        server.uri()
    )
}

async fn app_with(server: &MockServer) -> (TestConfig, TestApp) {
    harness::app_with(&source(SOURCE, server), 3600).await
}

/// A subscription order as Rebilly lists it, with its recent invoice embedded when given.
fn order(
    id: &str,
    status: &str,
    currency: &str,
    updated: DateTime<Utc>,
    invoice: Option<Value>,
) -> Value {
    let mut order = json!({
        "id": id, "orderType": "subscription-order", "billingStatus": "unpaid",
        "websiteId": "web_1", "customerId": "cus_1", "currency": currency, "status": status,
        "items": [{"plan": {"id": "plan_1"}, "quantity": 1}],
        "autopay": true, "renewalTime": "2026-12-21T10:00:00Z", "rebillNumber": 2,
        "lineItemSubtotal": {"currency": currency, "amount": 49.95},
        "createdTime": "2026-09-21T10:00:00Z", "updatedTime": rfc3339(updated),
        "recentInvoiceId": invoice.as_ref().map(|i| i["id"].clone()),
        "_links": [{"rel": "self", "href": format!("https://api.rebilly.com/subscriptions/{id}")}],
    });
    if let Some(invoice) = invoice {
        order["_embedded"] = json!({ "recentInvoice": invoice });
    }
    order
}

/// A paid renewal invoice (its transactions not embedded).
fn paid_invoice(id: &str, order: &str, currency: &str, amount: f64, paid: &str) -> Value {
    json!({
        "id": id, "type": "renewal", "subscriptionId": order, "customerId": "cus_1",
        "websiteId": "web_1", "currency": currency, "amount": amount, "amountDue": 0,
        "status": "paid",
        "paidTime": paid, "issuedTime": paid,
    })
}

/// A webhook body, checked against Rebilly's definitions.
fn checked(body: Value) -> Vec<u8> {
    let event_type = body["eventType"].as_str().unwrap();
    if let Err(errors) = definitions().check(event_type, &body) {
        panic!("{event_type}: {errors:?}");
    }
    serde_json::to_vec(&body).unwrap()
}

/// The order webhook Rebilly sends (`subscription-*`), the order without `_embedded`.
fn order_webhook(event_type: &str, order: &Value) -> Vec<u8> {
    let mut subscription = order.clone();
    subscription.as_object_mut().unwrap().remove("_embedded");
    checked(json!({
        "subscriptionId": order["id"], "eventType": event_type,
        "_embedded": { "subscription": subscription },
    }))
}

/// The `invoice-paid` webhook for a paid invoice.
fn invoice_paid_webhook(invoice: &Value) -> Vec<u8> {
    checked(json!({
        "invoiceId": invoice["id"], "eventType": "invoice-paid",
        "_embedded": { "invoice": invoice },
    }))
}

/// Six orders, listed newest update first (page size 2: three pages):
/// - `ord_6` one-time order and `ord_5` pending (not started): render nothing;
/// - `ord_4` active but past due (`billingStatus`), its renewal invoice declined (`txn_4`)
///   and a refund beside it: missed entirely;
/// - `ord_3` canceled with a paid invoice: the webhooks only told it was active;
/// - `ord_2` active with a paid invoice: both webhooks delivered;
/// - `ord_1` paused two days ago with a paid EUR invoice: the order webhook delivered, the
///   invoice missed (and outside the second run's look-back).
struct Dataset {
    orders: Vec<Value>,
    /// The transactions collection: `txn_4` again, and ord_2's older invoice `inv_0`
    /// (declined, then paid by a retry, then partly refunded): all missed by the webhooks,
    /// and outside the orders' recent invoices.
    transactions: Vec<Value>,
    /// The webhooks delivered before the sync (name, body).
    webhooks: Vec<(&'static str, Vec<u8>)>,
}

fn past_due(mut order: Value) -> Value {
    order["billingStatus"] = json!("past-due");
    order
}

fn dataset(now: DateTime<Utc>) -> Dataset {
    let minutes = |m: i64| now - chrono::Duration::minutes(m);
    let at = |m: i64| rfc3339(minutes(m));
    let mut one_time = order("ord_6", "completed", "USD", minutes(1), None);
    one_time["orderType"] = json!("one-time-order");
    // A one-time sale has no renewal (`OneTimeSale`).
    for field in ["autopay", "lineItemSubtotal", "rebillNumber", "renewalTime"] {
        one_time.as_object_mut().unwrap().remove(field);
    }
    let declined = json!({
        "id": "inv_4", "type": "renewal", "subscriptionId": "ord_4", "customerId": "cus_1",
        "websiteId": "web_1", "currency": "USD", "amount": 49.95, "amountDue": 49.95,
        "status": "past-due",
        "issuedTime": at(4),
        "transactions": [
            {"id": "txn_4", "type": "sale", "status": "completed", "result": "declined",
             "amount": 49.95, "currency": "USD", "customerId": "cus_1",
             "invoiceIds": ["inv_4"], "subscriptionIds": ["ord_4"], "processedTime": at(4),
             "gateway": {"response": {"code": "insufficient-funds",
                 "message": "Insufficient funds", "originalCode": "51"}}},
            {"id": "txn_4r", "type": "refund", "status": "completed", "result": "approved",
             "amount": 1.00, "currency": "USD", "invoiceIds": ["inv_4"]},
        ],
    });
    let inv_3 = paid_invoice("inv_3", "ord_3", "USD", 19.99, &at(5));
    let inv_2 = paid_invoice("inv_2", "ord_2", "USD", 49.95, &at(6));
    let two_days = now - chrono::Duration::days(2);
    let inv_1 = paid_invoice("inv_1", "ord_1", "EUR", 9.99, &rfc3339(two_days));
    let ord_3 = order("ord_3", "canceled", "USD", minutes(4), Some(inv_3));
    let ord_3_before = order(
        "ord_3",
        "active",
        "USD",
        now - chrono::Duration::days(1),
        None,
    );
    let ord_2 = order("ord_2", "active", "USD", minutes(5), Some(inv_2.clone()));
    let ord_1 = order("ord_1", "paused", "EUR", two_days, Some(inv_1));
    let webhooks = vec![
        (
            "ord_3 renewed",
            order_webhook("subscription-renewed", &ord_3_before),
        ),
        (
            "ord_2 renewed",
            order_webhook("subscription-renewed", &ord_2),
        ),
        ("inv_2 paid", invoice_paid_webhook(&inv_2)),
        ("ord_1 paused", order_webhook("subscription-paused", &ord_1)),
        // An order Rebilly no longer lists (deleted): a full run reports it gone.
        (
            "ord_9 renewed",
            order_webhook(
                "subscription-renewed",
                &order("ord_9", "active", "USD", two_days, None),
            ),
        ),
    ];
    let mut txn_4 = declined["transactions"][0].clone();
    txn_4["updatedTime"] = json!(at(4));
    let sale = |id: &str, result: &str, minutes_ago: i64| {
        json!({"id": id, "type": "sale", "status": "completed", "result": result,
            "amount": 49.95, "currency": "USD", "customerId": "cus_1",
            "invoiceIds": ["inv_0"], "subscriptionIds": ["ord_2"],
            "processedTime": at(minutes_ago), "updatedTime": at(minutes_ago)})
    };
    let refund = json!({"id": "txn_0r", "type": "refund", "status": "completed",
        "result": "approved", "amount": 10.00, "currency": "USD", "customerId": "cus_1",
        "parentTransactionId": "txn_0b", "invoiceIds": ["inv_0"], "subscriptionIds": ["ord_2"],
        "processedTime": at(7), "updatedTime": at(7)});
    let transactions = vec![
        sale("txn_0a", "declined", 9),
        txn_4,
        refund,
        sale("txn_0b", "approved", 8),
    ];
    // Listed in no particular order: the fake sorts as asked.
    let orders = vec![
        ord_1,
        past_due(order("ord_4", "active", "USD", minutes(3), Some(declined))),
        one_time,
        ord_3,
        order("ord_5", "pending", "USD", minutes(2), None),
        ord_2,
    ];
    Dataset {
        orders,
        transactions,
        webhooks,
    }
}

/// Each order's (status, provider status), `None` when the ledger does not know it.
async fn order_states(app: &TestApp) -> Vec<Option<(String, String)>> {
    let ids = ["ord_1", "ord_2", "ord_3", "ord_4", "ord_5", "ord_6"];
    harness::subscription_states(app, SOURCE, &ids).await
}

fn healed_attempts() -> Vec<(String, String)> {
    pairs(&[
        ("invoice-paid:inv_1", "succeeded"),
        ("invoice-paid:inv_2", "succeeded"),
        ("invoice-paid:inv_3", "succeeded"),
        ("txn_0a", "failed"),
        ("txn_0b", "succeeded"),
        ("txn_4", "failed"),
    ])
}

fn healed_orders() -> Vec<Option<(String, String)>> {
    vec![
        state("paused", "paused"),
        state("active", "active"),
        state("cancelled", "canceled"),
        state("past_due", "past-due"),
        None,
        None,
    ]
}

#[tokio::test]
async fn missed_order_statuses_and_invoice_attempts_are_healed_and_a_second_run_changes_nothing() {
    let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 0);
    let Dataset {
        orders,
        transactions,
        webhooks,
    } = dataset(now);
    let fake = FakeOrders::new(orders, transactions);
    let server = rebilly_api(fake.clone()).await;
    let (_config, app) = app_with(&server).await;

    for (name, body) in &webhooks {
        let status = app.post_signed(SOURCE, name, body).await.status();
        assert_eq!(status, 202, "{name}");
    }
    let delivered = vec![
        state("paused", "paused"),
        state("active", "active"),
        state("active", "active"),
        None,
        None,
        None,
    ];
    assert!(
        eventually(Duration::from_secs(15), || async {
            attempt_states(&app.db, SOURCE).await == pairs(&[("invoice-paid:inv_2", "succeeded")])
                && order_states(&app).await == delivered
        })
        .await,
        "webhooks reconciled: {:?} {:?}",
        attempt_states(&app.db, SOURCE).await,
        order_states(&app).await
    );
    assert_eq!(app.db.count_events(Some(SOURCE)).await.unwrap(), 5);

    let report = sync(&app, SOURCE, RunOptions::default()).await.unwrap();
    assert_eq!(
        (report.pages, report.records, report.malformed),
        (5, 12, 0),
        "ord_6/ord_5 render nothing; 8 records of the orders, 4 transactions"
    );
    // ord_2 and ord_1's order are known. txn_4 is read twice, under its invoice and in the
    // transactions: the second finds it changed only if the worker has not applied the
    // first yet (both converge on one attempt).
    assert!((8..=9).contains(&report.changed), "{report:?}");
    assert_eq!(report.since, None, "a first run reads everything");
    let gone = Disappeared {
        count: 1,
        subscription_ids: vec!["ord_9".to_owned()],
    };
    assert_eq!(
        report.disappeared,
        Some(gone),
        "live in the ledger, not listed"
    );
    let mut changed: Vec<&str> = report.changes.iter().map(|c| c.key.as_str()).collect();
    changed.sort();
    changed.dedup();
    assert_eq!(
        changed,
        [
            "invoice:inv_1",
            "invoice:inv_3",
            "order:ord_3",
            "order:ord_4",
            "transaction:txn_0a",
            "transaction:txn_0b",
            "transaction:txn_0r",
            "transaction:txn_4"
        ]
    );
    // The orders (three pages), then the transactions (two).
    let all = |filter: Option<String>| {
        let seen = |listing, offset| Seen {
            listing,
            offset,
            limit: 2,
            filter: filter.clone(),
        };
        let orders = [0, 2, 4].map(|offset| seen("orders", offset));
        let transactions = [0, 2].map(|offset| seen("transactions", offset));
        [&orders[..], &transactions[..]].concat()
    };
    assert_eq!(fake.take_seen(), all(None));

    assert!(
        eventually(Duration::from_secs(15), || async {
            attempt_states(&app.db, SOURCE).await == healed_attempts()
                && order_states(&app).await == healed_orders()
        })
        .await,
        "healed: {:?} {:?}",
        attempt_states(&app.db, SOURCE).await,
        order_states(&app).await
    );
    let ord_4 = app.db.subscription(SOURCE, "ord_4").await.unwrap().unwrap();
    let [txn_4] = ord_4.attempts.as_slice() else {
        panic!("{:?}", ord_4.attempts)
    };
    assert_eq!(
        (
            txn_4.cycle_id.as_deref(),
            txn_4.error_code.as_deref(),
            txn_4.amount_minor
        ),
        (Some("inv_4"), Some("insufficient-funds"), Some(4995))
    );
    let collected = |view: &subsync::ledger::SubscriptionView| view.balances["collected"].clone();
    // ord_2: its recent invoice, and its older inv_0 (paid by the retry) less its refund.
    for (id, currency, minor) in [
        ("ord_1", "EUR", 999),
        ("ord_2", "USD", 4995 + 4995 - 1000),
        ("ord_3", "USD", 1999),
    ] {
        let view = app.db.subscription(SOURCE, id).await.unwrap().unwrap();
        assert_eq!(
            collected(&view),
            [(currency.to_owned(), minor)].into(),
            "{id} collected once"
        );
    }
    assert!(!ord_4.balances.contains_key("collected"));
    assert!(app.db.verify_ledger().await.unwrap().is_empty());
    let archived = 5 + report.changed as i64;
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.db.count_events(Some(SOURCE)).await.unwrap() == archived
        })
        .await,
        "the five webhooks plus the healed records"
    );
    let watermark = report.watermark.expect("a complete run sets the watermark");

    // Incremental: updated since the watermark minus the hour of look-back, which leaves
    // out ord_1 (paused two days ago); everything else is read again and changes nothing.
    let again = sync(&app, SOURCE, RunOptions::default()).await.unwrap();
    let since = watermark - chrono::Duration::seconds(3600);
    assert_eq!(again.since, Some(since));
    assert_eq!(
        (again.pages, again.records, again.changed, again.malformed),
        (5, 10, 0, 0)
    );
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    assert_eq!(again.disappeared, None, "an incremental run cannot tell");
    assert!(again.watermark > Some(watermark));
    let filter = format!("updatedTime:{}..", rfc3339(since));
    assert_eq!(fake.take_seen(), all(Some(filter)));
    assert_eq!(app.queued().await, 0);
    assert_eq!(attempt_states(&app.db, SOURCE).await, healed_attempts());
    assert_eq!(order_states(&app).await, healed_orders());
    assert_eq!(app.db.count_events(Some(SOURCE)).await.unwrap(), archived);
    assert!(app.db.verify_ledger().await.unwrap().is_empty());
    app.stop().await;
}

/// A `transaction-processed` webhook for `transaction`.
fn transaction_webhook(transaction: &Value) -> Vec<u8> {
    checked(json!({
        "transactionId": transaction["id"], "eventType": "transaction-processed",
        "_embedded": { "transaction": transaction },
    }))
}

/// A two-hour webhook outage: an order's renewal is declined and Rebilly's own retry pays
/// it, part of that payment is refunded, and a second order is cancelled. One incremental
/// run (orders and transactions updated since the outage began) gives the same ledger as
/// a second source that got every webhook; the missed webhooks, delivered late, and a
/// second run change nothing.
#[tokio::test]
async fn a_two_hour_outage_is_healed_to_the_ledger_of_the_uninterrupted_stream() {
    const LIVE: &str = "rebilly_live";
    let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 0);
    let minutes = |m: i64| now - chrono::Duration::minutes(m);
    let at = |m: i64| rfc3339(minutes(m));
    let day = 24 * 60;
    let tx = |id: &str, kind: &str, result: &str, amount: f64, m: i64| {
        let mut tx = json!({"id": id, "type": kind, "status": "completed", "result": result,
            "amount": amount, "currency": "USD", "customerId": "cus_1",
            "invoiceIds": ["inv_a2"], "subscriptionIds": ["ord_a"],
            "processedTime": at(m), "updatedTime": at(m)});
        if result == "declined" {
            tx["gateway"] = json!({"response": {"code": "insufficient-funds",
                "message": "Insufficient funds", "originalCode": "51"}});
        }
        tx
    };
    let declined = tx("txn_a1", "sale", "declined", 49.95, 140);
    let approved = tx("txn_a2", "sale", "approved", 49.95, 100);
    let mut refund = tx("txn_a2r", "refund", "approved", 10.00, 90);
    refund["parentTransactionId"] = json!("txn_a2");
    let invoice = |status: &str, transactions: &[&Value], m: i64| {
        let mut invoice = paid_invoice("inv_a2", "ord_a", "USD", 49.95, &at(m));
        invoice["status"] = json!(status);
        invoice["transactions"] = json!(transactions);
        if status != "paid" {
            invoice["amountDue"] = json!(49.95);
            invoice.as_object_mut().unwrap().remove("paidTime");
        }
        invoice
    };
    let unpaid = invoice("past-due", &[&declined], 140);
    let paid = invoice("paid", &[&declined, &approved], 100);
    let ord_a = order("ord_a", "active", "USD", minutes(day), None);
    let ord_b = order("ord_b", "active", "USD", minutes(day), None);
    let ord_b_canceled = order("ord_b", "canceled", "USD", minutes(40), None);
    let before = [
        (
            "ord_a renewed",
            order_webhook("subscription-renewed", &ord_a),
        ),
        (
            "ord_b renewed",
            order_webhook("subscription-renewed", &ord_b),
        ),
    ];
    let mut unpaid_hook = unpaid.clone();
    unpaid_hook.as_object_mut().unwrap().remove("transactions");
    let during = [
        (
            "txn_a1 declined",
            checked(json!({
                "transactionId": "txn_a1", "invoiceId": "inv_a2",
                "eventType": "renewal-invoice-payment-declined",
                "_embedded": { "transaction": declined, "invoice": unpaid_hook },
            })),
        ),
        ("txn_a2 processed", transaction_webhook(&approved)),
        ("inv_a2 paid", invoice_paid_webhook(&paid)),
        ("txn_a2r processed", transaction_webhook(&refund)),
        (
            "ord_b canceled",
            order_webhook("subscription-canceled", &ord_b_canceled),
        ),
    ];

    // What Rebilly lists after the outage.
    let orders = vec![
        order("ord_a", "active", "USD", minutes(100), Some(paid.clone())),
        ord_b_canceled,
    ];
    let fake = FakeOrders::new(orders, vec![declined, approved, refund]);
    let server = rebilly_api(fake).await;
    let (_config, app) =
        harness::app_with_sources(&[&source(SOURCE, &server), &source(LIVE, &server)], 3600).await;
    for (source, events) in [
        (SOURCE, &before[..]),
        (LIVE, &before[..]),
        (LIVE, &during[..]),
    ] {
        for (name, body) in events {
            let status = app
                .post_signed(source, &format!("{source} {name}"), body)
                .await
                .status();
            assert_eq!(status, 202, "{name}");
        }
    }
    harness::archived(&app, SOURCE, 2).await;
    harness::archived(&app, LIVE, 7).await;

    let outage = harness::after_outage(minutes(150));
    let report = sync(&app, SOURCE, outage.clone()).await.unwrap();
    assert_eq!(report.malformed, 0, "{report:#?}");
    // Orders (ord_b; ord_a's order, its paid invoice and the invoice's two sales), then
    // the three transactions. The paid invoice is txn_a2's attempt, so the sale after it
    // changes nothing more; txn_a1 and txn_a2 are read again in the transactions, which
    // find them changed only if the worker has not applied the first reads yet (all
    // converge on one attempt each): 5 changed at least, 7 at most.
    assert_eq!((report.pages, report.records), (3, 8), "{report:#?}");
    assert!((5..=7).contains(&report.changed), "{report:#?}");
    assert_eq!(report.waited.as_ref().map(|w| w.timed_out), Some(false));

    let subs = ["ord_a".to_owned(), "ord_b".to_owned()];
    let live = crate::common::snapshot(&app.db, LIVE, &subs).await;
    let healed = crate::common::snapshot(&app.db, SOURCE, &subs).await;
    assert_eq!(healed, live, "the ledger of the uninterrupted stream");
    let attempts = pairs(&[("txn_a1", "failed"), ("txn_a2", "succeeded")]);
    assert_eq!(attempt_states(&app.db, SOURCE).await, attempts);
    assert_eq!(attempt_states(&app.db, LIVE).await, attempts);
    let ord_a = app.db.subscription(SOURCE, "ord_a").await.unwrap().unwrap();
    assert_eq!(
        ord_a.balances["collected"],
        [("USD".to_owned(), 4995 - 1000)].into()
    );
    assert_eq!(
        harness::subscription_states(&app, SOURCE, &["ord_a", "ord_b"]).await,
        [state("active", "active"), state("cancelled", "canceled")]
    );
    assert!(app.db.verify_ledger().await.unwrap().is_empty());

    // The missed webhooks, delivered late, find the ledger they would have made.
    let archived = app.db.count_events(Some(SOURCE)).await.unwrap();
    for (name, body) in &during {
        let status = app
            .post_signed(SOURCE, &format!("late {name}"), body)
            .await
            .status();
        assert_eq!(status, 202, "{name}");
    }
    harness::archived(&app, SOURCE, archived + 5).await;
    assert_eq!(crate::common::snapshot(&app.db, SOURCE, &subs).await, live);

    let again = sync(&app, SOURCE, outage).await.unwrap();
    assert_eq!(again.changed, 0, "{again:#?}");
    assert_eq!(app.queued().await, 0);
    assert!(app.db.verify_ledger().await.unwrap().is_empty());
    app.stop().await;
}

/// The `renewal-invoice-payment-declined` webhook of order `ord_a`'s renewal at `at`
/// (insufficient funds), checked against its definition.
fn declined_renewal(at: DateTime<Utc>) -> Vec<u8> {
    let at = rfc3339(at);
    let declined = json!({"id": "txn_a1", "type": "sale", "status": "completed", "result": "declined",
        "amount": 49.95, "currency": "USD", "customerId": "cus_1", "invoiceIds": ["inv_a2"],
        "subscriptionIds": ["ord_a"], "processedTime": at, "updatedTime": at,
        "gateway": {"response": {"code": "insufficient-funds", "message": "Insufficient funds",
            "originalCode": "51"}}});
    let mut unpaid = paid_invoice("inv_a2", "ord_a", "USD", 49.95, &at);
    unpaid["status"] = json!("past-due");
    unpaid["amountDue"] = json!(49.95);
    unpaid.as_object_mut().unwrap().remove("paidTime");
    checked(json!({
        "transactionId": "txn_a1", "invoiceId": "inv_a2",
        "eventType": "renewal-invoice-payment-declined",
        "_embedded": { "transaction": declined, "invoice": unpaid },
    }))
}

/// Rebilly dunns on its side: a declined renewal is only tracked. When Rebilly ends its
/// dunning by cancelling the order, the retry ends there with the cancellation recorded
/// as its final action, carried out by Rebilly; the same whichever webhook is reconciled
/// first.
#[tokio::test]
async fn a_cancellation_by_rebillys_own_dunning_ends_the_tracked_retry() {
    let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 0);
    let failed = declined_renewal(now - chrono::Duration::minutes(30));
    let canceled = order_webhook(
        "subscription-canceled",
        &order("ord_a", "canceled", "USD", now, None),
    );
    let server = rebilly_api(FakeOrders::new(Vec::new(), Vec::new())).await;
    let (_config, app) = harness::app_with_sources(
        &[
            &source("failed_first", &server),
            &source("canceled_first", &server),
        ],
        3600,
    )
    .await;
    for (source, events) in [
        (
            "failed_first",
            [("failed", &failed), ("canceled", &canceled)],
        ),
        (
            "canceled_first",
            [("canceled", &canceled), ("failed", &failed)],
        ),
    ] {
        // One at a time: each reconciled before the next is sent.
        for (n, (name, body)) in events.into_iter().enumerate() {
            harness::deliver(&app, source, &format!("{source} {name}"), body).await;
            harness::archived(&app, source, n as i64 + 1).await;
        }
        let query = subsync::dunning::views::RetriesQuery {
            source_id: Some(source.into()),
            ..Default::default()
        };
        let retries = subsync::dunning::views::list(&app.db, &query)
            .await
            .unwrap();
        let [retry] = retries.as_slice() else {
            panic!("{source}: one retry: {retries:#?}");
        };
        assert_eq!(
            (retry.status.as_str(), retry.final_action.as_deref()),
            ("exhausted", Some("cancel")),
            "{source}: {retry:#?}"
        );
        let action = subsync::dunning::views::final_action_of(&app.db, source, "ord_a")
            .await
            .unwrap()
            .expect("the final action");
        assert_eq!(action.outcome.as_deref(), Some("already_done"), "{source}");
        assert_eq!(
            action.answer.as_deref(),
            Some("the provider's own dunning left the subscription cancelled")
        );
    }
    app.stop().await;
}

/// Rebilly's order API for final actions: `GET /subscriptions/{id}` answers the order in
/// its current status, `POST /order-cancellations` cancels it; bodies checked against the
/// operations' schemas, answers generated from them.
#[derive(Clone, Default)]
struct FakeOrderApi {
    status: Arc<Mutex<String>>,
    /// `METHOD path` of every request.
    seen: Arc<Mutex<Vec<String>>>,
    problems: Arc<Mutex<Vec<String>>>,
}

impl Respond for FakeOrderApi {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let path = request
            .url
            .path()
            .trim_start_matches(ORGANIZATION)
            .to_owned();
        let method = request.method.as_str().to_ascii_lowercase();
        self.seen.lock().unwrap().push(format!("{method} {path}"));
        let mut status = self.status.lock().unwrap();
        let answer = match (method.as_str(), path.as_str()) {
            ("get", "/subscriptions/ord_a") => definitions().answer(
                "/subscriptions/{id}",
                "get",
                "200",
                &[("id", json!("ord_a")), ("status", json!(*status))],
            ),
            ("post", "/order-cancellations") => {
                let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
                let problems =
                    definitions().request_problems("/order-cancellations", "post", &body);
                if !problems.is_empty() || body["orderId"] != "ord_a" {
                    self.problems.lock().unwrap().extend(problems.clone());
                    return problem(format!("{body}: {problems:?}"));
                }
                *status = "canceled".into();
                let answer = definitions().answer(
                    "/order-cancellations",
                    "post",
                    "201",
                    &[("orderId", json!("ord_a")), ("status", json!("confirmed"))],
                );
                return ResponseTemplate::new(201).set_body_json(answer);
            }
            _ => return ResponseTemplate::new(404),
        };
        ResponseTemplate::new(200).set_body_json(answer)
    }
}

/// A declined renewal Rebilly never settles: at the provider-managed deadline the policy's
/// `cancel` is carried out through Rebilly's order cancellation, once.
#[tokio::test]
async fn an_unsettled_failure_is_cancelled_through_rebilly_at_its_deadline() {
    let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 0);
    let failed = declined_renewal(now);
    let fake = FakeOrderApi::default();
    *fake.status.lock().unwrap() = "active".into();
    let server = MockServer::start().await;
    Mock::given(matchers::header("reb-apikey", API_KEY))
        .respond_with(fake.clone())
        .mount(&server)
        .await;
    let config = format!(
        "{}\nretry = {{ provider_managed_secs = 86400, final_action = \"cancel\" }}",
        source(SOURCE, &server)
    );
    let (_config, app) = harness::app_with(&config, 3600).await;
    harness::deliver(&app, SOURCE, "failed", &failed).await;
    harness::archived(&app, SOURCE, 1).await;
    let retry = subsync::dunning::views::list(&app.db, &Default::default())
        .await
        .unwrap()
        .remove(0);
    assert_eq!(retry.status, "provider_managed");
    let deadline = retry.expires_at.expect("a deadline");

    let catalogue = crate::common::catalogue(&app.settings);
    let scheduler = subsync::dunning::scheduler::Scheduler::new(
        app.db.clone(),
        catalogue.dunning,
        subsync::dunning::scheduler::clients(&catalogue.sources),
        Duration::from_secs(300),
    );
    let pass = scheduler.run_once(deadline).await.unwrap();
    assert_eq!((pass.deadlines, pass.final_actions), (1, 1));
    assert_eq!(
        *fake.seen.lock().unwrap(),
        ["get /subscriptions/ord_a", "post /order-cancellations"]
    );
    assert!(fake.problems.lock().unwrap().is_empty());
    let detail = subsync::dunning::views::show(&app.db, SOURCE, &retry.cycle_key)
        .await
        .unwrap()
        .unwrap();
    let action = detail.final_action.unwrap();
    assert_eq!(
        (
            action.action.as_str(),
            action.outcome.as_deref(),
            action.answer.as_deref()
        ),
        ("cancel", Some("done"), Some("order cancellation confirmed"))
    );
    // Never twice; a re-send would find the order canceled.
    let later = scheduler
        .run_once(deadline + chrono::Duration::days(9))
        .await
        .unwrap();
    assert_eq!(later.final_actions, 0);
    assert_eq!(fake.seen.lock().unwrap().len(), 2);
    app.stop().await;
}
