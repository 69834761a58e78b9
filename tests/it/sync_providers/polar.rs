//! Polar pull sync end to end: a fake of the organization's `GET /v1/orders/` (Bearer
//! organization token, `product_billing_type` filter, `sorting=-created_at`,
//! `created_after`, 1-based `page` and `limit`, `pagination.max_page`), answering orders
//! generated from Polar's `Order` schema, the real broker and the real database. Orders
//! whose webhooks were lost (a renewal, a refund, an order in dunning) are healed by one
//! run; a draft and a one-time order are not synced; incremental and full re-runs change
//! nothing. A fake of `GET /v1/subscriptions/` beside it (every query parameter checked
//! against the operation's) serves the subscriptions for a two-hour outage compared with
//! a source that got every webhook.

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
    polar_api_with(fake, FakeSubscriptions::default()).await
}

/// Polar's two listings on one server: the orders, and the subscriptions.
async fn polar_api_with(orders: FakeOrders, subscriptions: FakeSubscriptions) -> MockServer {
    let bearer = format!("Bearer {TOKEN}");
    let route = Mock::given(matchers::method("GET"))
        .and(matchers::path(PATH))
        .and(matchers::header("authorization", bearer.as_str()))
        .and(matchers::query_param("product_billing_type", "recurring"))
        .and(matchers::query_param("sorting", "-created_at"));
    let server = harness::serve(route, orders).await;
    Mock::given(matchers::method("GET"))
        .and(matchers::path(SUBSCRIPTIONS_PATH))
        .and(matchers::header("authorization", bearer.as_str()))
        .respond_with(subscriptions)
        .mount(&server)
        .await;
    server
}

const SUBSCRIPTIONS_PATH: &str = "/v1/subscriptions/";

/// The organization's subscriptions (`GET /v1/subscriptions/`): every query parameter
/// checked against the operation's declared ones (a 422 otherwise), sorted by `sorting`
/// (`started_at`, `-started_at`; Polar's default newest first), `limit`-sized pages from
/// 1 with `pagination.max_page`, each page checked against the 200 schema.
#[derive(Clone, Default)]
struct FakeSubscriptions {
    subscriptions: Arc<Vec<Value>>,
}

impl Respond for FakeSubscriptions {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let spec = definitions();
        let parameters = spec.operation(SUBSCRIPTIONS_PATH, "get")["parameters"]
            .as_array()
            .unwrap();
        for (name, value) in request.url.query_pairs() {
            let Some(declared) = parameters.iter().find(|p| p["name"] == *name) else {
                return unprocessable(&name, "Extra inputs are not permitted");
            };
            let candidates = [
                value.parse::<i64>().map_or(Value::Null, |n| json!(n)),
                json!(value),
                json!([value]),
            ];
            if !candidates
                .iter()
                .any(|c| spec.validate(c, &declared["schema"]).is_empty())
            {
                return unprocessable(&name, "Input is not valid");
            }
        }
        let query = |name: &str| {
            request
                .url
                .query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        let page = query("page").map_or(1, |p| p.parse::<usize>().unwrap());
        let limit = query("limit").map_or(10, |l| l.parse::<usize>().unwrap());
        if limit > 100 {
            return unprocessable("limit", "Input should be less than or equal to 100");
        }
        let mut subscriptions: Vec<&Value> = self.subscriptions.iter().collect();
        subscriptions.sort_by(|a, b| a["started_at"].as_str().cmp(&b["started_at"].as_str()));
        match query("sorting").as_deref() {
            Some("started_at") => {}
            None | Some("-started_at") => subscriptions.reverse(),
            Some(_) => return unprocessable("sorting", "Not sorted as this fake can"),
        }
        let total = subscriptions.len();
        let items: Vec<&Value> = subscriptions
            .into_iter()
            .skip((page - 1) * limit)
            .take(limit)
            .collect();
        let body = json!({
            "items": items,
            "pagination": { "total_count": total, "max_page": total.div_ceil(limit) },
        });
        let errors = spec.validate(&body, spec.response(SUBSCRIPTIONS_PATH, "get", "200"));
        assert!(errors.is_empty(), "{errors:#?}");
        ResponseTemplate::new(200).set_body_json(body)
    }
}

/// The `[[sources]]` keys of source `id` on the fake at `server`.
fn source(id: &str, server: &MockServer) -> String {
    format!(
        r#"id = "{id}"
provider = "polar"
secrets = ["{SECRET}"]
api = {{ base_url = "{}", token = "{TOKEN}" }}"#,
        server.uri()
    )
}

async fn app_with(server: &MockServer) -> TestApp {
    harness::app_with(&source(SOURCE, server), 60).await.1
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
    // Three pages up to max_page 3 and the (empty) subscriptions; the draft ord_6 renders
    // nothing, the one-time ord_7 is filtered out by the API.
    assert_eq!(
        (
            report.pages,
            report.records,
            report.changed,
            report.malformed
        ),
        (4, 5, 4, 0)
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
        (2, 0, 0, 0)
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
        (4, 5, 0, 0)
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

/// A `Subscription` as Polar lists it and sends it in its webhooks (generated from its
/// schema, checked valid): `status` as of `modified`.
fn subscription(sub: &str, status: &str, started: &str, modified: &str) -> Value {
    let spec = definitions();
    let schema = spec.schema("Subscription");
    let mut value = spec.generate(schema);
    let canceled = status == "canceled";
    for (pointer, field) in [
        ("/id", json!(sub)),
        ("/status", json!(status)),
        ("/amount", json!(1999)),
        ("/currency", json!("usd")),
        ("/customer_id", json!(CUSTOMER)),
        ("/customer/id", json!(CUSTOMER)),
        ("/created_at", json!(started)),
        ("/started_at", json!(started)),
        ("/modified_at", json!(modified)),
        ("/current_period_end", json!("2030-01-01T00:00:00Z")),
        ("/canceled_at", json!(canceled.then_some(modified))),
        ("/ended_at", json!(canceled.then_some(modified))),
        (
            "/past_due_at",
            json!((status == "past_due").then_some(modified)),
        ),
    ] {
        schema::set(&mut value, pointer, field);
    }
    let errors = spec.validate(&value, schema);
    assert!(errors.is_empty(), "{errors:#?}");
    value
}

/// An order of subscription `sub` (see [`order`]).
fn order_of(n: u32, sub: &str, status: &str, created: &str, modified: &str) -> Value {
    let mut order = order(n, status, created, modified);
    order["subscription_id"] = json!(sub);
    order["subscription"]["id"] = json!(sub);
    order
}

/// A two-hour webhook outage over an organization's history: a renewal fails and Polar's
/// own retry pays it, an earlier order is refunded, another renewal fails and its
/// subscription goes past due and is then cancelled. One incremental run after the outage
/// gives the same ledger as a second source that got every webhook; the missed webhooks,
/// delivered late, and a second run change nothing.
#[tokio::test]
async fn a_two_hour_outage_is_healed_to_the_ledger_of_the_uninterrupted_stream() {
    const LIVE: &str = "polar_live";
    let now = chrono::Utc::now();
    let ago = |minutes: i64| {
        (now - chrono::Duration::minutes(minutes))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let (s1, s2) = (id(101), id(102));
    let day = 24 * 60;

    // Before the outage: s1 and s2 active, their first orders paid, and ord_10 (s1's
    // previous renewal) paid.
    let s1_active = subscription(&s1, "active", &ago(20 * day), &ago(20 * day));
    let s2_active = subscription(&s2, "active", &ago(15 * day), &ago(15 * day));
    let a1 = order_of(11, &s1, "paid", &ago(20 * day), &ago(20 * day));
    let a0 = order_of(10, &s1, "paid", &ago(10 * day), &ago(10 * day));
    let b1 = order_of(21, &s2, "paid", &ago(15 * day), &ago(15 * day));
    let before = [
        ("subscription.active", s1_active),
        ("subscription.active", s2_active),
        ("order.paid", a1.clone()),
        ("order.paid", a0.clone()),
        ("order.paid", b1.clone()),
    ];

    // The outage, from 150 to 30 minutes ago.
    let mut a2_failed = order_of(12, &s1, "pending", &ago(140), &ago(140));
    a2_failed["paid"] = json!(false);
    a2_failed["next_payment_attempt_at"] = json!(ago(140 - 2 * day));
    let a2_paid = order_of(12, &s1, "paid", &ago(140), &ago(100));
    let s1_past_due = subscription(&s1, "past_due", &ago(20 * day), &ago(140));
    let s1_recovered = subscription(&s1, "active", &ago(20 * day), &ago(100));
    let a0_refunded = order_of(10, &s1, "refunded", &ago(10 * day), &ago(90));
    let mut b2_failed = order_of(22, &s2, "pending", &ago(80), &ago(80));
    b2_failed["paid"] = json!(false);
    b2_failed["next_payment_attempt_at"] = json!(ago(80 - 2 * day));
    let s2_past_due = subscription(&s2, "past_due", &ago(15 * day), &ago(80));
    let s2_canceled = subscription(&s2, "canceled", &ago(15 * day), &ago(40));
    let during = [
        ("order.updated", a2_failed),
        ("subscription.past_due", s1_past_due),
        ("order.paid", a2_paid.clone()),
        ("subscription.active", s1_recovered.clone()),
        ("order.refunded", a0_refunded.clone()),
        ("order.updated", b2_failed.clone()),
        ("subscription.past_due", s2_past_due),
        ("subscription.canceled", s2_canceled.clone()),
    ];

    // What Polar lists after the outage.
    let orders = FakeOrders::new(vec![a1, a0_refunded, a2_paid, b1, b2_failed]);
    let subscriptions = FakeSubscriptions {
        subscriptions: Arc::new(vec![s1_recovered, s2_canceled]),
    };
    let server = polar_api_with(orders, subscriptions).await;
    let (_config, app) =
        harness::app_with_sources(&[&source(SOURCE, &server), &source(LIVE, &server)], 60).await;
    let deliver = |source: &'static str, events: Vec<(&'static str, Value)>, tag: &'static str| {
        let app = &app;
        async move {
            for (i, (event_type, data)) in events.iter().enumerate() {
                let event_id = format!("msg_{tag}_{i}");
                harness::deliver(app, source, &event_id, &webhook(event_type, data)).await;
            }
        }
    };
    deliver(SOURCE, before.to_vec(), "before").await;
    deliver(LIVE, before.to_vec(), "before").await;
    deliver(LIVE, during.to_vec(), "during").await;
    harness::archived(&app, SOURCE, 5).await;
    harness::archived(&app, LIVE, 13).await;

    let outage = harness::after_outage(now - chrono::Duration::minutes(150));
    let report = sync(&app, SOURCE, outage.clone()).await.unwrap();
    assert_eq!(
        (
            report.pages,
            report.records,
            report.changed,
            report.malformed
        ),
        (4, 7, 5, 0),
        "3 pages of orders (the five created from 30 days before the outage) and 1 of \
         subscriptions; a1 and b1 are known: {report:#?}"
    );
    assert_eq!(
        report
            .waited
            .as_ref()
            .map(|w| (w.queued, w.applied, w.timed_out)),
        Some((5, 5, false))
    );
    let by_kind: std::collections::BTreeMap<String, u64> = [
        ("billing_attempt:failed", 1),
        ("billing_attempt:refunded", 1),
        ("billing_attempt:succeeded", 1),
        ("subscription:active", 1),
        ("subscription:cancelled", 1),
    ]
    .map(|(k, n)| (k.to_owned(), n))
    .into();
    assert_eq!(report.missed.by_kind, by_kind);

    let subs = [s1.clone(), s2.clone()];
    let live = snapshot(&app.db, LIVE, &subs).await;
    assert_eq!(
        snapshot(&app.db, SOURCE, &subs).await,
        live,
        "the ledger of the uninterrupted stream"
    );
    let attempts = [
        (10, "refunded"),
        (11, "succeeded"),
        (12, "succeeded"),
        (21, "succeeded"),
        (22, "failed"),
    ]
    .map(|(n, s)| (id(n), s.to_owned()))
    .to_vec();
    assert_eq!(attempt_states(&app.db, SOURCE).await, attempts);
    assert_eq!(attempt_states(&app.db, LIVE).await, attempts);
    assert_eq!(
        harness::subscription_states(&app, SOURCE, &[&s1, &s2]).await,
        [
            harness::state("active", "active"),
            harness::state("cancelled", "canceled")
        ]
    );
    assert!(app.db.verify_ledger().await.unwrap().is_empty());

    // The missed webhooks, delivered late, find the ledger they would have made.
    deliver(SOURCE, during.to_vec(), "late").await;
    harness::archived(&app, SOURCE, 5 + 5 + 8).await;
    assert_eq!(snapshot(&app.db, SOURCE, &subs).await, live);

    let again = sync(&app, SOURCE, outage).await.unwrap();
    assert_eq!((again.records, again.changed), (7, 0));
    assert_eq!(app.queued().await, 0);
    assert!(app.db.verify_ledger().await.unwrap().is_empty());
    app.stop().await;
}
