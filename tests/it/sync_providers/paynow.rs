//! PayNow pull sync end to end: a fake of the Management API's
//! `GET /v1/stores/{store_id}/subscriptions` that requires `Authorization: APIKey <key>`,
//! orders by flake id (`asc=true` oldest first), continues strictly `after` the given id
//! and answers at most `limit` items as a bare JSON array (fewer than `limit`, or none, on
//! the last page). Webhooks (`PayNow-Signature`) deliver part of the subscriptions; one
//! sync heals the statuses the ledger missed (a past-due flag included), and a second run
//! changes nothing. The same fake lists the store's payments (`GET .../payments`, newest
//! first), for a two-hour outage of failed, retried, refunded payments and a cancellation,
//! compared with a source that got every webhook. Every query parameter is checked against
//! the operation's, every page against its 200 schema. Subscriptions and payments are
//! generated from PayNow's `SubscriptionDto` and `PaymentDto` schemas and webhooks from its
//! webhook definitions, each checked valid.

use std::{
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use super::harness::{self, state};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use subsync::sync::RunOptions;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers};

use crate::common::{TestApp, TestConfig, attempt_states, eventually, sync};

use crate::schema;

/// PayNow's definitions (the copies in tests/fixtures): webhooks, management API.
fn definitions() -> &'static (schema::Spec, schema::Spec) {
    static SPECS: OnceLock<(schema::Spec, schema::Spec)> = OnceLock::new();
    SPECS.get_or_init(|| {
        (
            schema::Spec::parse(include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/paynow/webhook-definitions.json"
            ))),
            schema::Spec::parse(include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/paynow/management-api.subset.json"
            ))),
        )
    })
}

const SOURCE: &str = "paynow";
const API_KEY: &str = "pnapi_v1_sync_secret";
const STORE: &str = "411486491630370000";
/// PayNow's maximum `limit`.
const MAX_LIMIT: usize = 100;

/// PayNow's store listings, subscriptions and payments alike: flake-id order (`asc=true`
/// ascending, else newest first), items after the `after` id in that order, at most
/// `limit` of them, as a bare JSON array.
#[derive(Clone, Default)]
struct FakeSubscriptions {
    subscriptions: Arc<Mutex<Vec<Value>>>,
    payments: Arc<Mutex<Vec<Value>>>,
    /// `after` of each subscriptions request, in order (`None` for a first page).
    seen: Arc<Mutex<Vec<Option<String>>>>,
    /// `after` of each payments request, in order.
    seen_payments: Arc<Mutex<Vec<Option<String>>>>,
}

impl FakeSubscriptions {
    fn new(subscriptions: Vec<Value>) -> Self {
        let fake = Self::default();
        *fake.subscriptions.lock().unwrap() = subscriptions;
        fake
    }

    fn take_seen(&self) -> Vec<Option<String>> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    fn take_seen_payments(&self) -> Vec<Option<String>> {
        std::mem::take(&mut *self.seen_payments.lock().unwrap())
    }
}

fn flake(value: &Value) -> u64 {
    value["id"].as_str().unwrap().parse().unwrap()
}

impl Respond for FakeSubscriptions {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let payments = request.url.path().ends_with("/payments");
        let (operation, items, seen) = if payments {
            (
                "/v1/stores/{storeId}/payments",
                &self.payments,
                &self.seen_payments,
            )
        } else {
            (
                "/v1/stores/{storeId}/subscriptions",
                &self.subscriptions,
                &self.seen,
            )
        };
        let query = |name: &str| {
            request
                .url
                .query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        let bad = |message: &str| {
            ResponseTemplate::new(400)
                .set_body_json(json!({"status": 400, "code": "bad_request", "message": message}))
        };
        let spec = &definitions().1;
        let parameters = spec.operation(operation, "get")["parameters"]
            .as_array()
            .unwrap();
        for (name, value) in request.url.query_pairs() {
            let Some(declared) = parameters.iter().find(|p| p["name"] == *name) else {
                return bad(&format!("unknown parameter {name}"));
            };
            let value = match value.parse::<i64>() {
                Ok(n) if declared["schema"]["type"] == "integer" => json!(n),
                _ if declared["schema"]["type"] == "boolean" => json!(value == "true"),
                _ => json!(value),
            };
            if !spec.validate(&value, &declared["schema"]).is_empty() {
                return bad(&format!("invalid {name}"));
            }
        }
        let limit = query("limit").map_or(25, |l| l.parse::<usize>().unwrap());
        let after = query("after");
        let after_id = after.as_deref().map(|a| a.parse::<u64>().unwrap());
        let ascending = query("asc").as_deref() == Some("true");
        seen.lock().unwrap().push(after.clone());
        let mut all = items.lock().unwrap().clone();
        all.sort_by_key(flake);
        if !ascending {
            all.reverse();
        }
        let page = Value::Array(
            all.into_iter()
                .filter(|s| match after_id {
                    None => true,
                    Some(after) if ascending => flake(s) > after,
                    Some(after) => flake(s) < after,
                })
                .take(limit.clamp(1, MAX_LIMIT))
                .collect(),
        );
        let errors = spec.validate(&page, spec.response(operation, "get", "200"));
        assert!(errors.is_empty(), "the fake's own page: {errors:#?}");
        ResponseTemplate::new(200).set_body_json(page)
    }
}

async fn paynow_api(fake: FakeSubscriptions) -> MockServer {
    let route = Mock::given(matchers::method("GET"))
        .and(matchers::path_regex(format!(
            "^/v1/stores/{STORE}/(subscriptions|payments)$"
        )))
        .and(matchers::header(
            "authorization",
            format!("APIKey {API_KEY}").as_str(),
        ));
    harness::serve(route, fake).await
}

/// The `[[sources]]` keys of source `id` on the fake at `server`.
fn source(id: &str, server: &MockServer) -> String {
    format!(
        r#"id = "{id}"
provider = "paynow"
secrets = ["test_secret"]
api = {{ base_url = "{}", token = "{API_KEY}", store_id = "{STORE}" }}"#,
        server.uri()
    )
}

async fn app_with(server: &MockServer) -> (TestConfig, TestApp) {
    harness::app_with(&source(SOURCE, server), 3600).await
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A store `SubscriptionDto` as the management API lists it (generated from its schema,
/// checked valid); every own time of it at `at` (so whether an incremental run renders it
/// depends on `at`).
fn subscription(id: &str, status: &str, cycle: Option<u64>, at: DateTime<Utc>) -> Value {
    let at = rfc3339(at);
    let spec = &definitions().1;
    let schema = spec.schema("SubscriptionDto");
    let mut sub = spec.generate(schema);
    let canceled = status == "canceled";
    for (pointer, value) in [
        ("/id", json!(id)),
        ("/pretty_id", json!(format!("SUB-{}", &id[id.len() - 4..]))),
        ("/store_id", json!(STORE)),
        ("/customer/id", json!("411486491630370555")),
        ("/customer/store_id", json!(STORE)),
        ("/status", json!(status)),
        ("/past_due", json!(false)),
        ("/currency", json!("eur")),
        ("/total_amount", json!(999)),
        ("/current_period_start", json!(at)),
        ("/current_period_end", json!("2027-01-01T00:00:00Z")),
        ("/billing_cycle_sequence", json!(cycle)),
        ("/next_attempt_at", Value::Null),
        ("/attempt_count", json!(0)),
        ("/created_at", json!(at)),
        ("/updated_at", json!(at)),
        (
            "/active_at",
            if status == "created" {
                Value::Null
            } else {
                json!(at)
            },
        ),
        (
            "/canceled_at",
            if canceled { json!(at) } else { Value::Null },
        ),
        (
            "/cancel_reason",
            if canceled {
                json!("customer_request")
            } else {
                Value::Null
            },
        ),
    ] {
        schema::set(&mut sub, pointer, value);
    }
    let errors = spec.validate(&sub, schema);
    assert!(errors.is_empty(), "{errors:#?}");
    sub
}

/// The webhook PayNow sends for a subscription event (generated from its definition, the
/// subscription's fields copied from `sub`, checked valid). It has no time of its own.
fn webhook(event_type: &str, event_id: &str, sub: &Value) -> Vec<u8> {
    let spec = &definitions().0;
    let schema = spec.webhook_body(event_type);
    let mut body = spec.generate(schema);
    schema::set(&mut body, "/event_type", json!(event_type));
    schema::set(&mut body, "/event_id", json!(event_id));
    schema::set(
        &mut body,
        "/body/customer_id",
        sub["customer"]["id"].clone(),
    );
    let declared = &spec.resolve(schema)["properties"]["body"]["properties"];
    for field in [
        "id",
        "store_id",
        "status",
        "currency",
        "total_amount",
        "billing_cycle_sequence",
        "current_period_start",
        "current_period_end",
        "created_at",
        "active_at",
        "canceled_at",
        "cancel_reason",
    ] {
        if !sub[field].is_null() && declared.get(field).is_some() {
            schema::set(&mut body, &format!("/body/{field}"), sub[field].clone());
        }
    }
    let errors = spec.validate(&body, schema);
    assert!(errors.is_empty(), "{errors:#?}");
    serde_json::to_vec(&body).unwrap()
}

fn id(n: u64) -> String {
    (411_486_491_630_370_800 + n).to_string()
}

/// Each subscription's (status, provider status), `None` when the ledger does not know it.
async fn states(app: &TestApp, ids: &[String]) -> Vec<Option<(String, String)>> {
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    harness::subscription_states(app, SOURCE, &ids).await
}

#[tokio::test]
async fn missed_subscription_statuses_are_healed_and_a_second_run_changes_nothing() {
    let before = Utc::now() - chrono::Duration::minutes(10);
    let old = DateTime::parse_from_rfc3339("2024-11-12T10:30:00Z")
        .unwrap()
        .with_timezone(&Utc);
    // Five subscriptions, three pages of two: #1 active (webhook delivered), #2 created
    // (never activated: renders nothing), #3 canceled (the webhook only said renewed), #4
    // renewed and #5 canceled long ago (both missed). #1 and #3 changed in the last hour.
    let ids: Vec<String> = (1..=5).map(id).collect();
    let fake = FakeSubscriptions::new(Vec::new());
    let server = paynow_api(fake.clone()).await;
    let (_config, app) = app_with(&server).await;

    let activated = subscription(&ids[0], "active", Some(1), before);
    let renewed = subscription(
        &ids[2],
        "active",
        Some(2),
        before - chrono::Duration::days(1),
    );
    let webhooks = [
        (
            "411486491630370901",
            "ON_SUBSCRIPTION_ACTIVATED",
            &activated,
        ),
        ("411486491630370903", "ON_SUBSCRIPTION_RENEWED", &renewed),
    ];
    for (event_id, event_type, sub) in webhooks {
        let body = webhook(event_type, event_id, sub);
        assert_eq!(app.post_signed(SOURCE, event_id, &body).await.status(), 202);
    }
    let delivered = vec![
        state("active", "active"),
        None,
        state("active", "active"),
        None,
        None,
    ];
    assert!(
        eventually(Duration::from_secs(15), || async {
            states(&app, &ids).await == delivered
        })
        .await,
        "webhooks reconciled: {:?}",
        states(&app, &ids).await
    );
    assert_eq!(app.db.count_events(Some(SOURCE)).await.unwrap(), 2);
    // PayNow's webhooks carry no time of their own, so the ledger orders them by their
    // receipt: #3 was canceled after its renewal webhook came in.
    let canceled = Utc::now() + chrono::Duration::seconds(1);
    *fake.subscriptions.lock().unwrap() = vec![
        subscription(&ids[4], "canceled", Some(1), old),
        subscription(&ids[2], "canceled", Some(3), canceled),
        activated.clone(),
        subscription(&ids[3], "active", Some(2), old),
        subscription(&ids[1], "created", None, before),
    ];

    let report = sync(&app, SOURCE, RunOptions::default()).await.unwrap();
    assert_eq!(
        (
            report.pages,
            report.records,
            report.changed,
            report.malformed
        ),
        (4, 4, 3, 0),
        "three pages of subscriptions and an empty one of payments; #2 renders nothing, #1 is known"
    );
    assert_eq!(report.since, None, "a first run reads everything");
    let mut changed: Vec<String> = report.changes.iter().map(|c| c.key.clone()).collect();
    changed.sort();
    let keys: Vec<String> = [2, 3, 4]
        .map(|i| format!("subscription:{}", ids[i]))
        .to_vec();
    assert_eq!(changed, keys);
    let walk = vec![None, Some(ids[1].clone()), Some(ids[3].clone())];
    assert_eq!(
        fake.take_seen(),
        walk,
        "after the last id of each full page, up to the short one"
    );

    let healed = vec![
        state("active", "active"),
        None,
        state("cancelled", "canceled"),
        state("active", "active"),
        state("cancelled", "canceled"),
    ];
    assert!(
        eventually(Duration::from_secs(15), || async {
            states(&app, &ids).await == healed
        })
        .await,
        "healed: {:?}",
        states(&app, &ids).await
    );
    let cancelled = app.db.subscription(SOURCE, &ids[2]).await.unwrap().unwrap();
    assert_eq!(cancelled.currency.as_deref(), Some("EUR"));
    assert!(
        attempt_states(&app.db, SOURCE).await.is_empty(),
        "subscriptions carry no attempt to invent"
    );
    assert!(app.db.verify_ledger().await.unwrap().is_empty());
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.db.count_events(Some(SOURCE)).await.unwrap() == 5
        })
        .await,
        "the two webhooks plus the three healed subscriptions"
    );
    let watermark = report.watermark.expect("a complete run sets the watermark");

    // No updated-since filter: the whole list is walked again, and only #1 and #3 (changed
    // within the look-back) are rendered; neither changes anything.
    let again = sync(&app, SOURCE, RunOptions::default()).await.unwrap();
    assert_eq!(
        again.since,
        Some(watermark - chrono::Duration::seconds(3600))
    );
    assert_eq!(
        (again.pages, again.records, again.changed, again.malformed),
        (4, 2, 0, 0)
    );
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    assert!(again.watermark > Some(watermark));
    assert_eq!(fake.take_seen(), walk);
    assert_eq!(app.queued().await, 0);
    assert_eq!(states(&app, &ids).await, healed);
    assert_eq!(app.db.count_events(Some(SOURCE)).await.unwrap(), 5);
    assert!(app.db.verify_ledger().await.unwrap().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_full_last_page_ends_on_an_empty_one_and_a_new_subscription_is_picked_up() {
    let now = Utc::now() - chrono::Duration::minutes(5);
    let ids: Vec<String> = (11..=15).map(id).collect();
    let fake = FakeSubscriptions::new(
        ids[..4]
            .iter()
            .map(|id| subscription(id, "active", Some(1), now))
            .collect(),
    );
    let server = paynow_api(fake.clone()).await;
    let (_config, app) = app_with(&server).await;

    // Nothing delivered: all four are missed; two full pages, then an empty one.
    let first = sync(&app, SOURCE, RunOptions::default()).await.unwrap();
    assert_eq!((first.pages, first.records, first.changed), (4, 4, 4));
    assert_eq!(
        fake.take_seen(),
        [None, Some(ids[1].clone()), Some(ids[3].clone())]
    );
    let active = |n: usize| {
        let mut expected = vec![state("active", "active"); n];
        expected.resize(5, None);
        expected
    };
    assert!(
        eventually(Duration::from_secs(15), || async {
            states(&app, &ids).await == active(4)
        })
        .await,
        "{:?}",
        states(&app, &ids).await
    );

    // A fifth subscription starts: the next run's last page is short and heals only it.
    fake.subscriptions
        .lock()
        .unwrap()
        .push(subscription(&ids[4], "active", Some(1), now));
    let second = sync(&app, SOURCE, RunOptions::default()).await.unwrap();
    assert_eq!((second.pages, second.records, second.changed), (4, 5, 1));
    assert_eq!(second.changes[0].key, format!("subscription:{}", ids[4]));
    assert_eq!(
        fake.take_seen(),
        [None, Some(ids[1].clone()), Some(ids[3].clone())]
    );
    assert!(
        eventually(Duration::from_secs(15), || async {
            states(&app, &ids).await == active(5)
        })
        .await,
        "{:?}",
        states(&app, &ids).await
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.db.count_events(Some(SOURCE)).await.unwrap() == 5
        })
        .await
    );

    let third = sync(&app, SOURCE, RunOptions::default()).await.unwrap();
    assert_eq!((third.pages, third.records, third.changed), (4, 5, 0));
    assert_eq!(app.db.count_events(Some(SOURCE)).await.unwrap(), 5);
    assert!(app.db.verify_ledger().await.unwrap().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn an_active_subscription_past_due_ends_past_due_and_recovers() {
    let id = id(21);
    let fake = FakeSubscriptions::new(Vec::new());
    let server = paynow_api(fake.clone()).await;
    let (_config, app) = app_with(&server).await;
    let start = Utc::now() - chrono::Duration::minutes(10);
    let renewed = subscription(&id, "active", Some(2), start);
    let body = webhook("ON_SUBSCRIPTION_RENEWED", "411486491630370921", &renewed);
    assert_eq!(
        app.post_signed(SOURCE, "411486491630370921", &body)
            .await
            .status(),
        202
    );
    assert!(
        eventually(Duration::from_secs(15), || async {
            states(&app, std::slice::from_ref(&id)).await == [state("active", "active")]
        })
        .await
    );

    // The next renewal fails: PayNow keeps the subscription `active` and flags it past due
    // while it retries (no webhook says so).
    let mut past_due = subscription(
        &id,
        "active",
        Some(3),
        Utc::now() + chrono::Duration::seconds(1),
    );
    past_due["past_due"] = json!(true);
    past_due["attempt_count"] = json!(1);
    past_due["next_attempt_at"] = json!(rfc3339(Utc::now() + chrono::Duration::days(2)));
    let errors = definitions()
        .1
        .validate(&past_due, definitions().1.schema("SubscriptionDto"));
    assert!(errors.is_empty(), "{errors:#?}");
    *fake.subscriptions.lock().unwrap() = vec![past_due];
    let report = sync(&app, SOURCE, RunOptions::default()).await.unwrap();
    assert_eq!(
        (report.records, report.changed, report.malformed),
        (1, 1, 0)
    );
    assert!(
        eventually(Duration::from_secs(15), || async {
            states(&app, std::slice::from_ref(&id)).await == [state("past_due", "active")]
        })
        .await,
        "{:?}",
        states(&app, std::slice::from_ref(&id)).await
    );

    // A retry succeeds: the flag is cleared.
    let recovered = subscription(
        &id,
        "active",
        Some(3),
        Utc::now() + chrono::Duration::seconds(2),
    );
    *fake.subscriptions.lock().unwrap() = vec![recovered];
    let report = sync(&app, SOURCE, RunOptions::default()).await.unwrap();
    assert_eq!((report.records, report.changed), (1, 1));
    assert!(
        eventually(Duration::from_secs(15), || async {
            states(&app, std::slice::from_ref(&id)).await == [state("active", "active")]
        })
        .await,
        "{:?}",
        states(&app, std::slice::from_ref(&id)).await
    );
    assert!(app.db.verify_ledger().await.unwrap().is_empty());
    app.stop().await;
}

/// A store `PaymentDto` as the management API lists it (generated from its schema,
/// checked valid): `status` at `at`, of order `order`, with its `refunds` (id, store refund
/// amount, time), each completed.
fn payment(
    id: &str,
    order: &str,
    status: &str,
    at: DateTime<Utc>,
    refunds: &[(&str, i64, DateTime<Utc>)],
) -> Value {
    let spec = &definitions().1;
    let schema = spec.schema("PaymentDto");
    let mut payment = spec.generate(schema);
    let failed = status == "failed";
    let when = |yes: bool| if yes { json!(rfc3339(at)) } else { Value::Null };
    for (pointer, value) in [
        ("/id", json!(id)),
        ("/store_id", json!(STORE)),
        ("/order_id", json!(order)),
        ("/customer_id", json!("411486491630370555")),
        ("/customer/id", json!("411486491630370555")),
        ("/customer/store_id", json!(STORE)),
        ("/gateway", json!("stripe")),
        ("/status", json!(status)),
        ("/currency", json!("eur")),
        ("/amount", json!(999)),
        ("/created_at", json!(rfc3339(at))),
        ("/pending_at", Value::Null),
        ("/completed_at", when(!failed)),
        ("/failed_at", when(failed)),
        ("/canceled_at", Value::Null),
        (
            "/refunded_at",
            refunds.last().map_or(Value::Null, |r| json!(rfc3339(r.2))),
        ),
        ("/chargeback_at", Value::Null),
        (
            "/last_payment_error",
            json!({"decline_code": "insufficient_funds", "message": "Insufficient funds."}),
        ),
    ] {
        schema::set(&mut payment, pointer, value);
    }
    if !failed {
        payment
            .as_object_mut()
            .unwrap()
            .remove("last_payment_error");
    }
    let refunds: Vec<Value> = refunds
        .iter()
        .map(|(refund_id, amount, at)| {
            let mut refund = spec.generate(spec.schema("RefundDto"));
            for (pointer, value) in [
                ("/id", json!(refund_id)),
                ("/store_id", json!(STORE)),
                ("/payment_id", json!(id)),
                ("/status", json!("completed")),
                ("/currency", json!("eur")),
                ("/amount", json!(amount)),
                ("/store_refund_amount", json!(amount)),
                ("/created_at", json!(rfc3339(*at))),
                ("/approved_at", json!(rfc3339(*at))),
                ("/pending_at", json!(rfc3339(*at))),
                ("/completed_at", json!(rfc3339(*at))),
            ] {
                schema::set(&mut refund, pointer, value);
            }
            refund
        })
        .collect();
    schema::set(&mut payment, "/refunds", json!(refunds));
    let errors = spec.validate(&payment, schema);
    assert!(errors.is_empty(), "{errors:#?}");
    payment
}

/// The webhook PayNow sends for a payment (`ON_PAYMENT_COMPLETED|FAILED`) or for its
/// refund `refund` (`ON_REFUND`): generated from its definition, the values copied from the
/// listed `payment`, checked valid.
fn payment_webhook(
    event_type: &str,
    event_id: &str,
    payment: &Value,
    refund: Option<&Value>,
) -> Vec<u8> {
    let spec = &definitions().0;
    let schema = spec.webhook_body(event_type);
    let mut body = spec.generate(schema);
    schema::set(&mut body, "/event_type", json!(event_type));
    schema::set(&mut body, "/event_id", json!(event_id));
    schema::set(&mut body, "/body/customer", Value::Null);
    for field in [
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
        "completed_at",
        "failed_at",
    ] {
        if !payment[field].is_null() {
            schema::set(&mut body, &format!("/body/{field}"), payment[field].clone());
        }
    }
    match (event_type, refund) {
        ("ON_PAYMENT_FAILED", _) => {
            schema::set(&mut body, "/body/status", json!("failed"));
            let code = payment["last_payment_error"]["decline_code"].clone();
            schema::set(&mut body, "/body/failure_code", code);
        }
        ("ON_REFUND", Some(refund)) => {
            for field in [
                "id",
                "payment_id",
                "status",
                "store_refund_amount",
                "created_at",
                "approved_at",
                "pending_at",
                "completed_at",
            ] {
                schema::set(&mut body, &format!("/body/{field}"), refund[field].clone());
            }
        }
        _ => schema::set(&mut body, "/body/status", json!("completed")),
    }
    let errors = spec.validate(&body, schema);
    assert!(errors.is_empty(), "{errors:#?}");
    serde_json::to_vec(&body).unwrap()
}

/// A two-hour webhook outage over a store's history: a renewal fails and PayNow's own
/// retry recovers it, another renewal fails for good, an earlier payment is partly
/// refunded and a subscription is cancelled. One sync run after the outage gives the same
/// ledger as a second source that got every webhook; the missed webhooks, delivered late,
/// and a second run change nothing.
#[tokio::test]
async fn a_two_hour_outage_is_healed_to_the_ledger_of_the_uninterrupted_stream() {
    const LIVE: &str = "paynow_live";
    let fake = FakeSubscriptions::new(Vec::new());
    let server = paynow_api(fake.clone()).await;
    let (_config, app) =
        harness::app_with_sources(&[&source(SOURCE, &server), &source(LIVE, &server)], 3600).await;
    // PayNow's webhooks carry no time of their own (the ledger orders a subscription's
    // webhooks by receipt), so the outage starts now and its records are stamped after
    // the webhooks delivered before it.
    let t0 = Utc::now();
    let minutes = |m: i64| t0 + chrono::Duration::minutes(m);
    let (a, b) = (id(31), id(32));
    let pay = |n: u64| id(40 + n);
    let order = |n: u64| id(60 + n);

    let a_active = subscription(&a, "active", Some(1), minutes(-24 * 60));
    let b_active = subscription(&b, "active", Some(1), minutes(-24 * 60));
    let p1 = payment(&pay(1), &order(1), "completed", minutes(-24 * 60), &[]);
    let p5 = payment(&pay(5), &order(3), "completed", minutes(-24 * 60), &[]);
    let before = [
        webhook("ON_SUBSCRIPTION_ACTIVATED", &id(101), &a_active),
        webhook("ON_SUBSCRIPTION_ACTIVATED", &id(102), &b_active),
        payment_webhook("ON_PAYMENT_COMPLETED", &id(103), &p1, None),
        payment_webhook("ON_PAYMENT_COMPLETED", &id(104), &p5, None),
    ];

    // The outage: A's renewal (order 2) fails and PayNow's retry pays it; B's renewal
    // (order 4) fails for good and B is cancelled; 300 of A's first payment is refunded.
    let a_renewed = subscription(&a, "active", Some(2), minutes(40));
    let b_canceled = subscription(&b, "canceled", Some(1), minutes(90));
    let p2 = payment(&pay(2), &order(2), "failed", minutes(10), &[]);
    let p3 = payment(&pay(3), &order(2), "completed", minutes(40), &[]);
    let p4 = payment(&pay(4), &order(4), "failed", minutes(80), &[]);
    let refund = (id(120).leak() as &str, 300, minutes(60));
    let p1_refunded = payment(&pay(1), &order(1), "refunded", minutes(-24 * 60), &[refund]);
    let during = [
        payment_webhook("ON_PAYMENT_FAILED", &id(105), &p2, None),
        payment_webhook("ON_PAYMENT_COMPLETED", &id(106), &p3, None),
        webhook("ON_SUBSCRIPTION_RENEWED", &id(107), &a_renewed),
        payment_webhook(
            "ON_REFUND",
            &id(108),
            &p1_refunded,
            Some(&p1_refunded["refunds"][0]),
        ),
        payment_webhook("ON_PAYMENT_FAILED", &id(109), &p4, None),
        webhook("ON_SUBSCRIPTION_CANCELED", &id(110), &b_canceled),
    ];
    let deliver = |source: &'static str, bodies: Vec<Vec<u8>>| {
        let app = &app;
        async move {
            for body in bodies {
                let event: Value = serde_json::from_slice(&body).unwrap();
                let event_id = event["event_id"].as_str().unwrap();
                harness::deliver(app, source, event_id, &body).await;
            }
        }
    };
    deliver(SOURCE, before.to_vec()).await;
    deliver(LIVE, before.to_vec()).await;
    harness::archived(&app, SOURCE, 4).await;
    harness::archived(&app, LIVE, 4).await;
    deliver(LIVE, during.to_vec()).await;
    harness::archived(&app, LIVE, 10).await;

    // After the outage the store lists what happened.
    *fake.subscriptions.lock().unwrap() = vec![a_renewed, b_canceled];
    *fake.payments.lock().unwrap() = vec![p1_refunded, p2, p3, p4, p5];
    let outage = harness::after_outage(t0);
    let report = sync(&app, SOURCE, outage.clone()).await.unwrap();
    assert_eq!(
        (report.records, report.changed, report.malformed),
        (7, 6, 0),
        "2 subscriptions, 4 payments changed since t0 (p5 is not) and the refund; p1's own \
         record is known: {report:#?}"
    );
    assert_eq!(
        report
            .waited
            .as_ref()
            .map(|w| (w.queued, w.applied, w.timed_out)),
        Some((6, 6, false))
    );
    assert_eq!(
        fake.take_seen_payments(),
        [None, Some(pay(4)), Some(pay(2))],
        "newest first, after the last id of each full page"
    );
    let by_kind: std::collections::BTreeMap<String, u64> = [
        ("billing_attempt:failed", 2),
        ("billing_attempt:succeeded", 2),
        ("refund:succeeded", 1),
        ("subscription:active", 1),
        ("subscription:cancelled", 1),
    ]
    .map(|(k, n)| (k.to_owned(), n))
    .into();
    assert_eq!(report.missed.by_kind, by_kind);

    let subs = [a.clone(), b.clone()];
    let live = crate::common::snapshot(&app.db, LIVE, &subs).await;
    let healed = crate::common::snapshot(&app.db, SOURCE, &subs).await;
    assert_eq!(healed, live, "the ledger of the uninterrupted stream");
    assert!(live.contains("partially_refunded"), "{live}");
    let attempts = [
        (pay(1), "succeeded"),
        (pay(2), "failed"),
        (pay(3), "succeeded"),
        (pay(4), "failed"),
        (pay(5), "succeeded"),
    ]
    .map(|(id, status)| (id, status.to_owned()))
    .to_vec();
    assert_eq!(attempt_states(&app.db, SOURCE).await, attempts);
    assert_eq!(attempt_states(&app.db, LIVE).await, attempts);
    assert_eq!(
        states(&app, &subs).await,
        [state("active", "active"), state("cancelled", "canceled")]
    );
    assert!(app.db.verify_ledger().await.unwrap().is_empty());

    // The missed webhooks, delivered late, find the ledger they would have made.
    deliver(SOURCE, during.to_vec()).await;
    harness::archived(&app, SOURCE, 4 + 6 + 6).await;
    assert_eq!(crate::common::snapshot(&app.db, SOURCE, &subs).await, live);

    let again = sync(&app, SOURCE, outage).await.unwrap();
    assert_eq!((again.records, again.changed), (7, 0));
    assert_eq!(app.queued().await, 0);
    assert!(app.db.verify_ledger().await.unwrap().is_empty());
    app.stop().await;
}
