//! Polar pull sync end to end: a fake of the organization's `GET /v1/orders/` (Bearer
//! organization token, `product_billing_type` filter, `sorting=-created_at`,
//! `created_after`, 1-based `page` and `limit`, `pagination.max_page`), answering orders
//! generated from Polar's `Order` schema, the real broker and the real database. Orders
//! whose webhooks were lost (a renewal, a refund, an order in dunning) are healed by one
//! run; a draft and a one-time order are not synced; incremental and full re-runs change
//! nothing.

use std::{
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use super::harness::{self, at};
use crate::common::{TestApp, attempt_states, eventually, snapshot, sync};
use serde_json::{Value, json};
use subsync::sync::RunOptions;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers};

use crate::schema;

const SOURCE: &str = "polar";
const TOKEN: &str = "polar_oat_sync_token";
const SECRET: &str = "whsec_ExampleExampleExampleExampleExampl0AbCdE";
const PATH: &str = "/v1/orders/";
const SUB: &str = "e5149aae-e521-42b9-b24c-abb8d71eea2e";
const CUSTOMER: &str = "992fae2a-2a17-4b7a-8d9e-e287cf90131b";

/// Polar's definitions (the copy in tests/fixtures).
fn definitions() -> &'static schema::Spec {
    static SPEC: OnceLock<schema::Spec> = OnceLock::new();
    SPEC.get_or_init(|| {
        schema::Spec::parse(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/polar/polar-openapi-2026-10.subset.json"
        )))
    })
}

/// The organization's order list: filtered by the product's billing type and
/// `created_after`, sorted by `sorting`, cut into `limit`-sized pages numbered from 1, with
/// `pagination.max_page = ceil(total_count / limit)` as Polar computes it.
#[derive(Clone)]
struct FakeOrders {
    orders: Arc<Vec<Value>>,
    /// The `page` parameter of each request, in order.
    pages: Arc<Mutex<Vec<String>>>,
}

impl FakeOrders {
    fn new(orders: Vec<Value>) -> Self {
        Self {
            orders: Arc::new(orders),
            pages: Arc::default(),
        }
    }

    fn pages(&self) -> Vec<String> {
        self.pages.lock().unwrap().clone()
    }
}

/// Polar's FastAPI validation error.
fn unprocessable(param: &str, msg: &str) -> ResponseTemplate {
    ResponseTemplate::new(422).set_body_json(json!({"detail": [
        {"loc": ["query", param], "msg": msg, "type": "value_error"}
    ]}))
}

impl Respond for FakeOrders {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let query = |name: &str| {
            request
                .url
                .query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        let page_param = query("page").unwrap_or_else(|| "1".to_owned());
        self.pages.lock().unwrap().push(page_param.clone());
        let Some(page) = page_param.parse::<usize>().ok().filter(|p| *p >= 1) else {
            return unprocessable("page", "Input should be greater than 0");
        };
        let limit = match query("limit").map(|l| l.parse::<usize>()) {
            None => 10,
            Some(Ok(limit)) if (1..=100).contains(&limit) => limit,
            Some(_) => return unprocessable("limit", "Input should be less than or equal to 100"),
        };
        let recurring = match query("product_billing_type").as_deref() {
            None => None,
            Some("recurring") => Some(true),
            Some("one_time") => Some(false),
            Some(_) => {
                return unprocessable(
                    "product_billing_type",
                    "Input should be 'one_time' or 'recurring'",
                );
            }
        };
        let created_after = match query("created_after") {
            None => None,
            Some(text) => match chrono::DateTime::parse_from_rfc3339(&text) {
                Ok(at) => Some(at),
                Err(_) => {
                    return unprocessable("created_after", "Input should be a valid datetime");
                }
            },
        };
        let mut orders: Vec<&Value> = self
            .orders
            .iter()
            .filter(|o| recurring.is_none_or(|r| o["product"]["is_recurring"] == r))
            .filter(|o| {
                created_after.is_none_or(|after| {
                    chrono::DateTime::parse_from_rfc3339(o["created_at"].as_str().unwrap()).unwrap()
                        > after
                })
            })
            .collect();
        match query("sorting").as_deref() {
            None | Some("-created_at") => {
                orders.sort_by(|a, b| b["created_at"].as_str().cmp(&a["created_at"].as_str()))
            }
            Some("created_at") => {
                orders.sort_by(|a, b| a["created_at"].as_str().cmp(&b["created_at"].as_str()))
            }
            Some(_) => return unprocessable("sorting", "Invalid sorting criterion"),
        }
        let total = orders.len();
        let items: Vec<&Value> = orders
            .into_iter()
            .skip((page - 1) * limit)
            .take(limit)
            .collect();
        let body = json!({
            "items": items,
            "pagination": { "total_count": total, "max_page": total.div_ceil(limit) },
        });
        let spec = definitions();
        let errors = spec.validate(&body, spec.response(PATH, "get", "200"));
        assert!(errors.is_empty(), "{errors:#?}");
        ResponseTemplate::new(200).set_body_json(body)
    }
}

fn id(n: u32) -> String {
    format!("8a4c1f0e-0000-4000-8000-{n:012}")
}

/// An `Order` as Polar lists it (generated from its schema, with the product and the
/// subscription it embeds), checked valid.
fn order(n: u32, status: &str, created: &str, modified: &str) -> Value {
    let spec = definitions();
    let schema = spec.schema("Order");
    let mut order = spec.generate(schema);
    for (pointer, value) in [
        ("/id", json!(id(n))),
        ("/created_at", json!(created)),
        ("/modified_at", json!(modified)),
        ("/status", json!(status)),
        ("/paid", json!(matches!(status, "paid" | "refunded"))),
        ("/subtotal_amount", json!(1999)),
        ("/discount_amount", json!(0)),
        ("/net_amount", json!(1999)),
        ("/tax_amount", json!(0)),
        ("/total_amount", json!(1999)),
        (
            "/refunded_amount",
            json!(if status == "refunded" { 1999 } else { 0 }),
        ),
        ("/currency", json!("usd")),
        ("/billing_reason", json!("subscription_cycle")),
        ("/customer_id", json!(CUSTOMER)),
        ("/customer/id", json!(CUSTOMER)),
        ("/subscription_id", json!(SUB)),
        ("/subscription/id", json!(SUB)),
        ("/next_payment_attempt_at", Value::Null),
        ("/product/is_recurring", json!(true)),
        ("/discount", Value::Null),
        ("/discount_id", Value::Null),
    ] {
        schema::set(&mut order, pointer, value);
    }
    let errors = spec.validate(&order, schema);
    assert!(errors.is_empty(), "{errors:#?}");
    order
}

/// Seven orders of one customer: a one-time purchase (not recurring: filtered out by the
/// API), a draft (no payment asked yet: not synced), a renewal in dunning, three paid
/// renewals and a refunded one. Six recurring orders: three pages of two.
fn orders() -> Vec<Value> {
    let mut one_time = order(7, "paid", "2024-06-20T08:00:00Z", "2024-06-20T08:00:04Z");
    one_time["product"]["is_recurring"] = json!(false);
    one_time["billing_reason"] = json!("purchase");
    one_time["subscription_id"] = Value::Null;
    one_time["subscription"] = Value::Null;
    let mut dunning = order(5, "pending", "2024-05-10T08:00:00Z", "2024-05-10T08:00:05Z");
    dunning["next_payment_attempt_at"] = json!("2024-05-12T08:00:05Z");
    vec![
        order(1, "paid", "2024-01-10T08:00:00Z", "2024-01-10T08:00:04Z"),
        order(2, "paid", "2024-02-10T08:00:00Z", "2024-02-10T08:00:04Z"),
        ord_3_refunded(),
        order(4, "paid", "2024-04-10T08:00:00Z", "2024-04-10T08:00:04Z"),
        dunning,
        order(6, "draft", "2024-06-10T08:00:00Z", "2024-06-10T08:00:00Z"),
        one_time,
    ]
}

/// ord_3 was paid, then refunded ten days later.
fn ord_3_paid() -> Value {
    order(3, "paid", "2024-03-10T08:00:00Z", "2024-03-10T08:00:04Z")
}

fn ord_3_refunded() -> Value {
    order(
        3,
        "refunded",
        "2024-03-10T08:00:00Z",
        "2024-03-20T12:00:00Z",
    )
}

/// Polar's webhook for `order`: `{"type", "timestamp", "data"}`, valid under its schema.
fn webhook(event_type: &str, data: &Value) -> Vec<u8> {
    let body = json!({ "type": event_type, "timestamp": data["modified_at"], "data": data });
    let spec = definitions();
    let errors = spec.validate(&body, spec.webhook_body(event_type));
    assert!(errors.is_empty(), "{errors:#?}");
    serde_json::to_vec(&body).unwrap()
}

async fn polar_api(fake: FakeOrders) -> MockServer {
    let route = Mock::given(matchers::method("GET"))
        .and(matchers::path(PATH))
        .and(matchers::header(
            "authorization",
            format!("Bearer {TOKEN}").as_str(),
        ))
        .and(matchers::query_param("product_billing_type", "recurring"))
        .and(matchers::query_param("sorting", "-created_at"));
    harness::serve(route, fake).await
}

async fn app_with(server: &MockServer) -> TestApp {
    let source = format!(
        r#"id = "{SOURCE}"
provider = "polar"
secrets = ["{SECRET}"]
api = {{ base_url = "{}", token = "{TOKEN}" }}"#,
        server.uri()
    );
    harness::app_with(&source, 60).await.1
}

async fn deliver(app: &TestApp, event_id: &str, body: &[u8]) {
    harness::deliver(app, SOURCE, event_id, body).await
}

/// Posts an event the normalizer ignores (archived, no ledger change) and waits until it
/// is archived: everything queued before it has been reconciled by then.
async fn barrier(app: &TestApp, event_id: &str) -> i64 {
    let ignored = serde_json::to_vec(&json!({
        "type": "checkout.created", "timestamp": "2024-06-20T08:00:00Z",
        "data": {"id": event_id, "status": "open"},
    }))
    .unwrap();
    harness::barrier(app, SOURCE, event_id, &ignored).await
}

fn expected_states() -> Vec<(String, String)> {
    [
        (1, "succeeded"),
        (2, "succeeded"),
        (3, "refunded"),
        (4, "succeeded"),
        // The renewal in dunning: pending with its next retry is a failed attempt.
        (5, "failed"),
    ]
    .map(|(n, s)| (id(n), s.to_owned()))
    .to_vec()
}

#[tokio::test]
async fn missed_orders_are_healed_over_max_page_pages_and_re_runs_change_nothing() {
    let fake = FakeOrders::new(orders());
    let server = polar_api(fake.clone()).await;
    let app = app_with(&server).await;

    // Delivered: ord_1 paid (as listed) and ord_3 paid (its refund webhook is lost).
    // Lost entirely: ord_2 and ord_4 paid, ord_5's failed renewal (pending in dunning).
    deliver(&app, "msg_ord_1_paid", &webhook("order.paid", &orders()[0])).await;
    deliver(
        &app,
        "msg_ord_3_paid",
        &webhook("order.paid", &ord_3_paid()),
    )
    .await;
    let delivered = [(1, "succeeded"), (3, "succeeded")]
        .map(|(n, s)| (id(n), s.to_owned()))
        .to_vec();
    assert!(
        eventually(Duration::from_secs(10), || async {
            attempt_states(&app.db, SOURCE).await == delivered
        })
        .await,
        "{:?}",
        attempt_states(&app.db, SOURCE).await
    );

    let report = sync(&app, SOURCE, RunOptions::default()).await.unwrap();
    assert_eq!(report.since, None, "a first run reads everything");
    // Three pages up to max_page 3; the draft ord_6 renders nothing, the one-time ord_7
    // is filtered out by the API.
    assert_eq!(
        (
            report.pages,
            report.records,
            report.changed,
            report.malformed
        ),
        (3, 5, 4, 0)
    );
    assert_eq!(fake.pages(), ["1", "2", "3"]);
    let mut changed: Vec<&str> = report.changes.iter().map(|c| c.key.as_str()).collect();
    changed.sort();
    let keys: Vec<String> = [2, 3, 4, 5].map(|n| format!("order:{}", id(n))).to_vec();
    assert_eq!(changed, keys);
    let watermark = report.watermark.expect("a complete run sets the watermark");

    assert!(
        eventually(Duration::from_secs(15), || async {
            attempt_states(&app.db, SOURCE).await == expected_states()
        })
        .await,
        "{:?}",
        attempt_states(&app.db, SOURCE).await
    );
    let view = app.db.subscription(SOURCE, SUB).await.unwrap().unwrap();
    let attempt = |n: u32| {
        view.attempts
            .iter()
            .find(|a| a.attempt_id == id(n))
            .unwrap()
    };
    assert_eq!(
        (
            attempt(5).status.as_str(),
            attempt(5).provider_status.as_str()
        ),
        ("failed", "pending")
    );
    assert_eq!(
        attempt(5).next_attempt_at,
        Some(at("2024-05-12T08:00:05Z")),
        "the renewal in dunning keeps its next try"
    );
    assert_eq!(attempt(3).provider_status, "refunded");
    assert_eq!(attempt(3).attempted_at, Some(at("2024-03-20T12:00:00Z")));
    assert_eq!(
        (attempt(2).amount_minor, attempt(2).currency.as_deref()),
        (Some(1999), Some("USD"))
    );
    assert_eq!(
        view.balances["collected"]["USD"],
        3 * 1999,
        "ord_1, ord_2, ord_4 collected; ord_3 collected and refunded"
    );
    assert_eq!(view.balances["refunded"]["USD"], 1999);
    assert!(app.db.verify_ledger().await.unwrap().is_empty());
    let archived = barrier(&app, "msg_barrier_1").await;
    assert_eq!(
        archived,
        2 + 4 + 1,
        "two webhooks, four healed, the barrier"
    );
    let ledger = snapshot(&app.db, SOURCE, &[SUB.to_owned()]).await;

    // Incremental: since the watermark minus the look-back; Polar is asked for the orders
    // created from 30 days before that (`created_after`): none of these.
    let again = sync(&app, SOURCE, RunOptions::default()).await.unwrap();
    assert_eq!(again.since, Some(watermark - chrono::Duration::seconds(60)));
    assert_eq!(
        (again.pages, again.records, again.changed, again.malformed),
        (1, 0, 0, 0)
    );
    assert!(again.watermark > Some(watermark));
    assert_eq!(fake.pages(), ["1", "2", "3", "1"]);

    // A full re-read (from before the oldest order) finds nothing to change either.
    let full = RunOptions {
        since: Some(at("2024-01-01T00:00:00Z")),
        dry_run: false,
        ..RunOptions::default()
    };
    let full = sync(&app, SOURCE, full).await.unwrap();
    assert_eq!(
        (full.pages, full.records, full.changed, full.malformed),
        (3, 5, 0, 0)
    );
    assert_eq!(fake.pages(), ["1", "2", "3", "1", "1", "2", "3"]);

    assert_eq!(
        barrier(&app, "msg_barrier_2").await,
        archived + 1,
        "nothing archived but the barrier"
    );
    assert_eq!(snapshot(&app.db, SOURCE, &[SUB.to_owned()]).await, ledger);
    assert_eq!(attempt_states(&app.db, SOURCE).await, expected_states());
    assert!(app.db.verify_ledger().await.unwrap().is_empty());
    app.stop().await;
}
