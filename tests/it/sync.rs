//! Pull sync end to end against a fake of Stripe's `GET /v1/invoices` (same path, Bearer
//! auth, `limit`/`starting_after`/`has_more` pagination, `created[gte]`, 429 with
//! `Retry-After`; a query outside Stripe's definitions answered 400 as Stripe does; invoices
//! of the current API version's `Invoice` type), the real broker and the real database: missed webhooks are healed, a
//! second run changes nothing, a crashed run resumes without duplicates, `--dry-run`
//! changes nothing, and webhook and sync converge in either order.

use crate::common;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{TestApp, TestConfig, attempt_states, eventually, spawn_app, sync};
use serde_json::{Value, json};
use subsync::{
    app::Role,
    sync::{Missed, RunOptions, SyncError, Waited},
};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers};

const TOKEN: &str = "sk_test_sync";

/// Stripe's invoice list: newest first, `created[gte]` on the creation time, `limit` per
/// page, `starting_after` an invoice id, `has_more` until the last page. Optionally slow or failing on one cursor. Beside it,
/// Stripe's Events API over `events` (see [`FakeInvoices::events_page`]).
#[derive(Clone, Default)]
struct FakeInvoices {
    invoices: Arc<Mutex<Vec<Value>>>,
    /// Every event of the account, in any order.
    events: Arc<Mutex<Vec<Value>>>,
    /// `starting_after` values requested, in order (`""` for the first page).
    requests: Arc<Mutex<Vec<String>>>,
    /// The page after this cursor answers this slowly (a run dies or holds its lock
    /// while waiting for it).
    slow_after: Arc<Mutex<Option<(String, Duration)>>>,
}

impl FakeInvoices {
    fn new(invoices: Vec<Value>) -> Self {
        let fake = Self::default();
        *fake.invoices.lock().unwrap() = invoices;
        fake
    }
    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// Stripe's SDK types (`tests/fixtures/stripe/`, as the unit tests read them).
pub(crate) fn stripe_types() -> &'static crate::digest::Digest {
    static TYPES: std::sync::OnceLock<crate::digest::Digest> = std::sync::OnceLock::new();
    TYPES.get_or_init(|| {
        crate::digest::Digest::parse(include_str!(
            "../fixtures/stripe/stripe-node-types.2026-07-29.dahlia.subset.json"
        ))
    })
}

/// Stripe's 400 for a list query outside `params` (a type of Stripe's SDK: the list's
/// parameters with its paging ones) or an `expand[]` naming no object of the `listed`
/// objects, else `None`.
pub(crate) fn refused(request: &Request, params: &str, listed: &str) -> Option<ResponseTemplate> {
    let types = stripe_types();
    let pairs: Vec<(String, String)> = request.url.query_pairs().into_owned().collect();
    let mut problems =
        types.validate_form(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())), params);
    for (key, value) in &pairs {
        let on_listed = value.strip_prefix("data.");
        if key.starts_with("expand[")
            && !on_listed.is_some_and(|p| types.names_an_object(listed, p))
        {
            problems.push(format!("This property cannot be expanded ({value})."));
        }
    }
    (!problems.is_empty()).then(|| {
        ResponseTemplate::new(400).set_body_json(json!({"error": {
            "type": "invalid_request_error", "message": problems.join("; "),
        }}))
    })
}

impl FakeInvoices {
    /// `GET /v1/events` as Stripe answers it: the events whose `type` is one of `types[]`
    /// (or `type`), created at or after `created[gte]`, newest first (ties by id),
    /// `starting_after` an event id, `limit` per page, `has_more`.
    fn events_page(&self, request: &Request) -> ResponseTemplate {
        if let Some(refusal) = refused(request, "EventListParams", "Event") {
            return refusal;
        }
        let pairs: Vec<(String, String)> = request.url.query_pairs().into_owned().collect();
        let all = |name: &str| -> Vec<&str> {
            (pairs.iter().filter(|(k, _)| k == name))
                .map(|(_, v)| v.as_str())
                .collect()
        };
        let (types, one_type) = (all("types[]"), all("type"));
        let types: Vec<&str> = types.into_iter().chain(one_type).collect();
        let gte: i64 = all("created[gte]")
            .first()
            .map_or(0, |t| t.parse().unwrap());
        let limit: usize = all("limit").first().map_or(10, |l| l.parse().unwrap());
        let mut events: Vec<Value> = (self.events.lock().unwrap().iter())
            .filter(|e| types.is_empty() || types.contains(&e["type"].as_str().unwrap()))
            .filter(|e| e["created"].as_i64().unwrap() >= gte)
            .cloned()
            .collect();
        events.sort_by_key(|e| {
            let id = e["id"].as_str().unwrap().to_owned();
            std::cmp::Reverse((e["created"].as_i64().unwrap(), id))
        });
        let start = match all("starting_after").first() {
            None => 0,
            Some(id) => match events.iter().position(|e| e["id"] == *id) {
                Some(p) => p + 1,
                None => {
                    return ResponseTemplate::new(400).set_body_json(json!({"error": {
                        "type": "invalid_request_error", "code": "resource_missing",
                        "param": "starting_after", "message": format!("No such event: '{id}'")
                    }}));
                }
            },
        };
        let page: Vec<Value> = events.iter().skip(start).take(limit).cloned().collect();
        let has_more = start + page.len() < events.len();
        ResponseTemplate::new(200).set_body_json(json!({
            "object": "list", "url": "/v1/events", "has_more": has_more, "data": page,
        }))
    }
}

impl Respond for FakeInvoices {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if request.url.path() == "/v1/events" {
            return self.events_page(request);
        }
        if let Some(refusal) = refused(request, "InvoiceListParams", "Invoice") {
            return refusal;
        }
        let query = |name: &str| {
            request
                .url
                .query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        let limit: usize = query("limit").and_then(|l| l.parse().ok()).unwrap_or(10);
        let after = query("starting_after").unwrap_or_default();
        self.requests.lock().unwrap().push(after.clone());
        // `created[gte]`: only invoices created since (Stripe's filter is on creation).
        let gte: i64 = query("created[gte]").map_or(0, |t| t.parse().unwrap());
        let invoices: Vec<Value> = (self.invoices.lock().unwrap().iter())
            .filter(|i| i["created"].as_i64().unwrap() >= gte)
            .cloned()
            .collect();
        let start = match after.as_str() {
            "" => 0,
            id => match invoices.iter().position(|i| i["id"] == id) {
                Some(p) => p + 1,
                None => {
                    return ResponseTemplate::new(400).set_body_json(json!({"error": {
                        "type": "invalid_request_error", "code": "resource_missing",
                        "param": "starting_after", "message": format!("No such invoice: '{id}'")
                    }}));
                }
            },
        };
        let page: Vec<Value> = invoices.iter().skip(start).take(limit).cloned().collect();
        let has_more = start + page.len() < invoices.len();
        let response = ResponseTemplate::new(200).set_body_json(json!({
            "object": "list", "url": "/v1/invoices", "has_more": has_more, "data": page,
        }));
        match &*self.slow_after.lock().unwrap() {
            Some((slow, delay)) if *slow == after => response.set_delay(*delay),
            _ => response,
        }
    }
}

/// An invoice of the current API version (`Invoice` of Stripe's SDK types, generated and
/// checked): its subscription `sub_1` under `parent`, no PaymentIntent (a listed invoice
/// names none, so it carries no decline code).
pub(crate) fn invoice(id: &str, status: &str, attempts: u32) -> Value {
    let types = stripe_types();
    let paid = status == "paid";
    let mut invoice = types.generate("Invoice");
    let mut parent = types.generate("Invoice.Parent");
    parent["type"] = json!("subscription_details");
    parent["subscription_details"] = types.generate("Invoice.Parent.SubscriptionDetails");
    parent["subscription_details"]["subscription"] = json!("sub_1");
    for (key, value) in [
        ("id", json!(id)),
        ("customer", json!("cus_1")),
        ("parent", parent),
        ("status", json!(status)),
        ("attempt_count", json!(attempts)),
        ("attempted", json!(attempts > 0)),
        ("amount_due", json!(2500)),
        ("amount_paid", json!(if paid { 2500 } else { 0 })),
        ("currency", json!("usd")),
        ("created", json!(1_763_700_000)),
        (
            "next_payment_attempt",
            if paid || attempts == 0 {
                Value::Null
            } else {
                json!(1_763_786_400)
            },
        ),
    ] {
        invoice[key] = value;
    }
    invoice["status_transitions"]["finalized_at"] = json!(1_763_700_060);
    invoice["status_transitions"]["paid_at"] = if paid {
        json!(1_763_700_120)
    } else {
        Value::Null
    };
    let errors = types.validate(&invoice, "Invoice");
    assert!(errors.is_empty(), "{id}: {errors:#?}");
    invoice
}

/// Five invoices, newest first: three paid or failed ones the webhooks missed, one the
/// webhook delivered, and a draft (no attempt).
fn invoices() -> Vec<Value> {
    vec![
        invoice("in_5", "draft", 0),
        invoice("in_4", "open", 2),
        invoice("in_3", "paid", 1),
        invoice("in_2", "open", 1),
        invoice("in_1", "paid", 1),
    ]
}

/// A Stripe event `id` of `event_type` (its SDK interface `interface`) created at
/// `created` carrying `object`, generated from the interface and checked against it.
pub(crate) fn event(
    id: &str,
    event_type: &str,
    interface: &str,
    created: i64,
    object: Value,
) -> Value {
    let types = stripe_types();
    let mut event = types.generate(interface);
    event["id"] = json!(id);
    event["type"] = json!(event_type);
    event["created"] = json!(created);
    event["api_version"] = json!("2026-07-29.dahlia");
    event["data"]["object"] = object;
    let errors = types.validate(&event, interface);
    assert!(errors.is_empty(), "{event_type}: {errors:#?}");
    event
}

/// A Stripe event for `invoice`, as the webhook would carry it.
fn webhook(event_id: &str, event_type: &str, invoice: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": event_id, "object": "event", "type": event_type, "created": 1_763_700_200,
        "data": { "object": invoice },
    }))
    .unwrap()
}

mod pagination;

async fn stripe_api(fake: FakeInvoices) -> MockServer {
    stripe_api_with(fake).await
}

/// A fake of Stripe's invoice and event lists at their real paths, behind the Bearer
/// token.
async fn stripe_api_with(fake: impl Respond + 'static) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(matchers::method("GET"))
        .and(matchers::path_regex("^/v1/(invoices|events)$"))
        .and(matchers::header(
            "authorization",
            format!("Bearer {TOKEN}").as_str(),
        ))
        .respond_with(fake)
        .mount(&server)
        .await;
    server
}

async fn app_with(server: &MockServer, sync_settings: &str) -> (TestConfig, TestApp) {
    let mut config = TestConfig::new().await;
    config.extra = format!(
        r#"
[[sources]]
id = "stripe"
provider = "stripe"
secrets = ["whsec_sync"]
api = {{ base_url = "{}", token = "{TOKEN}" }}
sync = {{ page_size = 2, min_interval_ms = 1, max_page_retries = 3, lookback_secs = 60, {sync_settings} }}
retry = {{ jitter = false }}
[[sources]]
id = "{LIVE}"
provider = "stripe"
secrets = ["whsec_sync"]
api = {{ base_url = "{}", token = "{TOKEN}" }}
[dunning]
interval_ms = 3600000
"#,
        server.uri(),
        server.uri()
    );
    let app = spawn_app(&config, Role::All).await;
    (config, app)
}

fn expected_states() -> Vec<(String, String)> {
    [
        ("in_1:1", "succeeded"),
        ("in_2:1", "failed"),
        ("in_3:1", "succeeded"),
        ("in_4:2", "failed"),
    ]
    .map(|(a, s)| (a.to_owned(), s.to_owned()))
    .to_vec()
}

async fn healed(app: &TestApp) -> bool {
    eventually(Duration::from_secs(15), || async {
        attempt_states(&app.db, "stripe").await == expected_states()
    })
    .await
}

async fn deliver_in_1(app: &TestApp) {
    let body = webhook("evt_1", "invoice.paid", &invoice("in_1", "paid", 1));
    assert_eq!(
        app.post_signed("stripe", "evt_1", &body).await.status(),
        202
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            attempt_states(&app.db, "stripe").await.len() == 1
        })
        .await
    );
}

#[tokio::test]
async fn missed_webhooks_are_healed_and_a_second_run_changes_nothing() {
    let fake = FakeInvoices::new(invoices());
    let server = stripe_api(fake.clone()).await;
    let (_config, app) = app_with(&server, "interval_secs = 0").await;
    deliver_in_1(&app).await;

    let report = sync(&app, "stripe", RunOptions::default()).await.unwrap();
    assert_eq!((report.pages, report.records, report.changed), (3, 4, 3));
    assert_eq!(report.since, None, "a first run reads everything");
    assert!(
        healed(&app).await,
        "{:?}",
        attempt_states(&app.db, "stripe").await
    );
    let failed = app
        .db
        .subscription("stripe", "sub_1")
        .await
        .unwrap()
        .unwrap();
    let in_4 = failed
        .attempts
        .iter()
        .find(|a| a.attempt_id == "in_4:2")
        .unwrap();
    // Listed, not delivered: the current Invoice names no PaymentIntent to read a decline
    // from (the webhook's `invoice.payment_failed` does not either).
    assert_eq!((&in_4.error_code, &in_4.error_message), (&None, &None));
    assert_eq!(
        failed.balances["collected"]["USD"], 5000,
        "in_1 and in_3 collected once"
    );
    assert!(app.db.verify_ledger().await.unwrap().is_empty());
    let watermark = report.watermark.expect("a complete run sets the watermark");

    // Incremental: the events since the watermark minus the look-back; none since.
    let again = sync(&app, "stripe", RunOptions::default()).await.unwrap();
    assert_eq!((again.records, again.changed), (0, 0));
    assert_eq!(again.since, Some(watermark - chrono::Duration::seconds(60)));
    assert!(again.watermark > Some(watermark));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.queued().await, 0);
    assert_eq!(attempt_states(&app.db, "stripe").await, expected_states());
    let synced = app.db.count_events(Some("stripe")).await.unwrap();
    assert_eq!(
        synced, 4,
        "the webhook plus the three healed records, each once"
    );
    app.stop().await;
}

/// Stripe retries an invoice for days: an invoice created three days before a webhook
/// outage, whose payment fails and then succeeds during it, is healed by one incremental
/// run (from the Events API: every attempt, not only the invoice's latest state), which
/// leaves the ledger the missed webhooks would have; a second run changes nothing.
#[tokio::test]
async fn an_invoice_created_before_the_window_is_healed_from_its_events() {
    let now = chrono::Utc::now().timestamp();
    let created = now - 3 * 86_400;
    let (mut tried, mut paid) = (invoice("in_9", "open", 1), invoice("in_9", "paid", 2));
    for invoice in [&mut tried, &mut paid] {
        invoice["created"] = json!(created);
        invoice["status_transitions"]["finalized_at"] = json!(created);
    }
    paid["status_transitions"]["paid_at"] = json!(now - 80 * 60);
    let mut finalized = tried.clone();
    finalized["attempt_count"] = json!(0);
    let mut refunded = crate::stripe_refunds::refund("re_9", "pi_9", 500, "succeeded");
    refunded["created"] = json!(now - 70 * 60);
    let active = subscription("sub_1", "active", created);
    let canceled = subscription("sub_1", "canceled", now - 60 * 60);
    let before = [
        // Of a type nothing books: not asked for.
        event(
            "evt_0",
            "invoice.finalized",
            "InvoiceFinalizedEvent",
            created,
            finalized,
        ),
        event(
            "evt_s",
            "customer.subscription.created",
            "CustomerSubscriptionCreatedEvent",
            created,
            active,
        ),
    ];
    // The outage: the invoice's first try fails and Stripe's own retry pays it, part of
    // it is refunded, and the subscription is cancelled.
    let missed = [
        event(
            "evt_f",
            "invoice.payment_failed",
            "InvoicePaymentFailedEvent",
            now - 100 * 60,
            tried,
        ),
        event(
            "evt_p",
            "invoice.paid",
            "InvoicePaidEvent",
            now - 80 * 60,
            paid.clone(),
        ),
        event(
            "evt_r",
            "refund.created",
            "RefundCreatedEvent",
            now - 70 * 60,
            refunded,
        ),
        event(
            "evt_d",
            "customer.subscription.deleted",
            "CustomerSubscriptionDeletedEvent",
            now - 60 * 60,
            canceled,
        ),
    ];
    let fake = FakeInvoices::new(vec![paid]);
    *fake.events.lock().unwrap() = [&before[..], &missed[..]].concat();
    let server = stripe_api(fake.clone()).await;
    let (_config, app) = app_with(&server, "interval_secs = 0").await;
    let post = |source: &'static str, events: Vec<Value>| {
        let app = &app;
        async move {
            for body in events {
                let id = body["id"].as_str().unwrap();
                let bytes = serde_json::to_vec(&body).unwrap();
                assert_eq!(app.post_signed(source, id, &bytes).await.status(), 202);
            }
        }
    };
    // The same account as a second source that got every webhook: the ledger to match.
    post("stripe", before.to_vec()).await;
    post(LIVE, before.to_vec()).await;
    post(LIVE, missed.to_vec()).await;
    let archived = |source: &'static str, n: i64| {
        let app = &app;
        async move {
            assert!(
                eventually(Duration::from_secs(10), || async {
                    app.db.count_events(Some(source)).await.unwrap() == n
                })
                .await,
                "{source}: {n} archived"
            );
        }
    };
    archived("stripe", 2).await;
    archived(LIVE, 6).await;

    // The run waits for the worker, so its report counts what the ledger took.
    let outage = RunOptions {
        since: chrono::DateTime::from_timestamp(now - 2 * 3600, 0),
        wait: Some(Duration::from_secs(20)),
        ..RunOptions::default()
    };
    let report = sync(&app, "stripe", outage.clone()).await.unwrap();
    assert_eq!((report.records, report.changed), (4, 4), "{report:?}");
    let waited = Waited {
        queued: 4,
        archived: 4,
        applied: 4,
        timed_out: false,
    };
    assert_eq!(report.waited, Some(waited));
    let by_kind = [
        ("billing_attempt:failed", 1),
        ("billing_attempt:succeeded", 1),
        // The refund, held until its payment is linked to its attempt.
        ("payment_link:pending", 1),
        ("subscription:cancelled", 1),
    ];
    assert_eq!(
        report.missed.by_kind,
        by_kind.map(|(k, n)| (k.to_owned(), n)).into()
    );
    assert_eq!(report.missed.by_age, [("1h_to_1d", 4)].into());
    let healed = [("in_9:1", "failed"), ("in_9:2", "succeeded")]
        .map(|(a, s)| (a.to_owned(), s.to_owned()))
        .to_vec();
    assert_eq!(attempt_states(&app.db, "stripe").await, healed);
    let subs = ["sub_1".to_owned()];
    let synced = crate::common::snapshot(&app.db, "stripe", &subs).await;
    assert_eq!(
        synced,
        crate::common::snapshot(&app.db, LIVE, &subs).await,
        "the ledger of the uninterrupted stream"
    );
    assert!(
        synced.contains("\"collected\": {\"USD\": 2500}"),
        "{synced}"
    );
    assert!(synced.contains("sub_1 Some(\"cancelled\")"), "{synced}");
    assert!(app.db.verify_ledger().await.unwrap().is_empty());

    // The missed webhooks, delivered late, find the ledger they would have made.
    post("stripe", missed.to_vec()).await;
    archived("stripe", 10).await;
    let after = crate::common::snapshot(&app.db, "stripe", &subs).await;
    assert_eq!(after, synced);

    let again = sync(&app, "stripe", outage).await.unwrap();
    assert_eq!((again.records, again.changed), (4, 0));
    assert_eq!(again.missed, Missed::default());
    app.stop().await;
}

/// The second source of the outage test: the same Stripe account, every webhook.
const LIVE: &str = "stripe_live";

/// A Subscription of the current API version (Stripe's SDK types, generated and checked):
/// `sub` of `cus_1` in USD, `status`, created at `created`.
fn subscription(sub: &str, status: &str, created: i64) -> Value {
    let types = stripe_types();
    let mut value = types.generate("Subscription");
    for (key, field) in [
        ("id", json!(sub)),
        ("customer", json!("cus_1")),
        ("status", json!(status)),
        ("currency", json!("usd")),
        ("created", json!(created)),
        ("start_date", json!(created)),
    ] {
        value[key] = field;
    }
    let errors = types.validate(&value, "Subscription");
    assert!(errors.is_empty(), "{errors:#?}");
    value
}

#[tokio::test]
async fn a_run_that_dies_mid_listing_resumes_where_it_stopped_without_duplicates() {
    let fake = FakeInvoices::new(invoices());
    *fake.slow_after.lock().unwrap() = Some(("in_4".to_owned(), Duration::from_secs(30)));
    let server = stripe_api(fake.clone()).await;
    let (_config, app) = app_with(&server, "interval_secs = 0").await;

    // The run dies (dropped, like a killed process) while waiting for page 2.
    let died = tokio::time::timeout(
        Duration::from_secs(3),
        sync(&app, "stripe", RunOptions::default()),
    )
    .await;
    assert!(died.is_err(), "the run was still waiting on page 2");
    assert!(
        eventually(Duration::from_secs(10), || async {
            attempt_states(&app.db, "stripe").await.len() == 1
        })
        .await,
        "page 1 (in_4) was queued before the crash"
    );

    *fake.slow_after.lock().unwrap() = None;
    let resumed = sync(&app, "stripe", RunOptions::default()).await.unwrap();
    assert!(resumed.resumed);
    assert_eq!(resumed.pages, 2, "pages 2 and 3 only");
    assert_eq!(fake.requests(), ["", "in_4", "in_4", "in_2"]);
    assert!(healed(&app).await);
    assert_eq!(app.db.count_events(Some("stripe")).await.unwrap(), 4);
    let view = app
        .db
        .subscription("stripe", "sub_1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.balances["collected"]["USD"], 5000);
    assert!(app.db.verify_ledger().await.unwrap().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_page_that_fails_for_good_stops_the_run_and_keeps_the_watermark() {
    let fake = FakeInvoices::new(invoices());
    let server = MockServer::start().await;
    Mock::given(matchers::method("GET"))
        .and(matchers::path("/v1/invoices"))
        .and(matchers::query_param("starting_after", "in_4"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": {
            "type": "invalid_request_error", "message": "Invalid starting_after"}})))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(matchers::method("GET"))
        .and(matchers::path("/v1/invoices"))
        .respond_with(fake.clone())
        .mount(&server)
        .await;
    let (_config, app) = app_with(&server, "interval_secs = 0").await;

    let error = sync(&app, "stripe", RunOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(&error, SyncError::Page { page: 2, .. }), "{error}");
    assert!(
        error.to_string().contains("Invalid starting_after"),
        "{error}"
    );
    let resumed = sync(&app, "stripe", RunOptions::default()).await.unwrap();
    assert!(resumed.resumed && resumed.watermark.is_some());
    assert!(healed(&app).await);
    app.stop().await;
}

#[tokio::test]
async fn a_429_is_waited_out_for_its_retry_after() {
    let fake = FakeInvoices::new(invoices());
    let server = MockServer::start().await;
    Mock::given(matchers::method("GET"))
        .and(matchers::path("/v1/invoices"))
        .and(matchers::query_param("starting_after", "in_4"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "1").set_body_json(
            json!({"error": {"type": "invalid_request_error", "code": "rate_limit", "message": "Too many requests"}}),
        ))
        .up_to_n_times(1)
        .expect(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(matchers::method("GET"))
        .and(matchers::path("/v1/invoices"))
        .respond_with(fake.clone())
        .mount(&server)
        .await;
    let (_config, app) = app_with(&server, "interval_secs = 0").await;

    let started = Instant::now();
    let report = sync(&app, "stripe", RunOptions::default()).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    assert_eq!((report.pages, report.records), (3, 4));
    assert!(healed(&app).await);
    app.stop().await;
}

#[tokio::test]
async fn dry_run_shows_the_drift_and_changes_nothing() {
    let fake = FakeInvoices::new(invoices());
    let server = stripe_api(fake).await;
    let (_config, app) = app_with(&server, "interval_secs = 0").await;
    deliver_in_1(&app).await;

    let dry = RunOptions {
        since: None,
        dry_run: true,
        ..RunOptions::default()
    };
    let report = sync(&app, "stripe", dry.clone()).await.unwrap();
    assert_eq!((report.records, report.changed), (4, 3));
    let mut would: Vec<_> = report
        .changes
        .iter()
        .flat_map(|c| {
            c.changes
                .iter()
                .map(|ch| (ch.id.clone(), ch.before.is_none()))
        })
        .collect();
    would.sort();
    let new_rows = [("in_2:1", true), ("in_3:1", true), ("in_4:2", true)]
        .map(|(id, new)| (id.to_owned(), new))
        .to_vec();
    assert_eq!(would, new_rows);
    assert_eq!(report.watermark, None);

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.queued().await, 0);
    assert_eq!(attempt_states(&app.db, "stripe").await.len(), 1);
    assert_eq!(app.db.count_events(Some("stripe")).await.unwrap(), 1);
    // Nothing stored either: the next real run is still a first run from the beginning.
    let real = sync(&app, "stripe", RunOptions::default()).await.unwrap();
    assert_eq!((real.since, real.resumed, real.changed), (None, false, 3));
    app.stop().await;
}

#[tokio::test]
async fn webhook_and_sync_of_the_same_attempts_converge_in_either_order() {
    let listed = vec![invoice("in_7", "paid", 2), invoice("in_6", "open", 1)];
    let webhooks = [
        ("evt_6", "invoice.payment_failed", listed[1].clone()),
        (
            "evt_7a",
            "invoice.payment_failed",
            invoice("in_7", "open", 1),
        ),
        ("evt_7", "invoice.paid", listed[0].clone()),
    ];
    let mut snapshots = Vec::new();
    for webhook_first in [true, false] {
        let server = stripe_api(FakeInvoices::new(listed.clone())).await;
        let (_config, app) = app_with(&server, "interval_secs = 0").await;
        let deliver = || async {
            for (id, kind, invoice) in &webhooks {
                let body = webhook(id, kind, invoice);
                assert_eq!(app.post_signed("stripe", id, &body).await.status(), 202);
            }
            assert!(
                eventually(Duration::from_secs(10), || async {
                    app.db.count_events(Some("stripe")).await.unwrap() >= 3
                })
                .await
            );
        };
        if webhook_first {
            deliver().await;
            let report = sync(&app, "stripe", RunOptions::default()).await.unwrap();
            assert_eq!(report.changed, 0, "nothing was missed");
        } else {
            let report = sync(&app, "stripe", RunOptions::default()).await.unwrap();
            assert_eq!(report.changed, 2);
            assert!(
                eventually(Duration::from_secs(10), || async {
                    attempt_states(&app.db, "stripe").await.len() == 2
                })
                .await
            );
            deliver().await;
        }
        let expected = [
            ("in_6:1", "failed"),
            ("in_7:1", "failed"),
            ("in_7:2", "succeeded"),
        ]
        .map(|(a, s)| (a.to_owned(), s.to_owned()))
        .to_vec();
        assert!(
            eventually(Duration::from_secs(10), || async {
                attempt_states(&app.db, "stripe").await == expected
            })
            .await
        );
        snapshots.push(common::snapshot(&app.db, "stripe", &["sub_1".to_owned()]).await);
        app.stop().await;
    }
    assert_eq!(snapshots[0], snapshots[1]);
}

#[tokio::test]
async fn one_instance_runs_a_source_at_a_time_and_serve_syncs_periodically() {
    let fake = FakeInvoices::new(invoices());
    *fake.slow_after.lock().unwrap() = Some(("in_4".to_owned(), Duration::from_secs(3)));
    let server = stripe_api(fake.clone()).await;
    // The service's own periodic sync starts at once and is held on page 2: page 1 is
    // applied (a run whose first publish found the broker not yet connected failed and
    // let the next tick resume) and page 2 asked for.
    let (_config, app) = app_with(&server, "interval_secs = 1").await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            fake.requests().contains(&"in_4".to_owned())
                && !attempt_states(&app.db, "stripe").await.is_empty()
        })
        .await
    );
    let busy = sync(&app, "stripe", RunOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(busy, SyncError::Busy(_)), "{busy}");

    // The periodic run gets its slow page and finishes the listing by itself.
    assert!(healed(&app).await);
    app.stop().await;
}
