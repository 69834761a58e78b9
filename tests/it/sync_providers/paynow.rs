//! PayNow pull sync end to end: a fake of the Management API's
//! `GET /v1/stores/{store_id}/subscriptions` that requires `Authorization: APIKey <key>`,
//! orders by flake id (`asc=true` oldest first), continues strictly `after` the given id
//! and answers at most `limit` items as a bare JSON array (fewer than `limit`, or none, on
//! the last page). Webhooks (`PayNow-Signature`) deliver part of the subscriptions; one
//! sync heals the statuses the ledger missed, and a second run changes nothing.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use super::harness::{self, state};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use subsync::sync::RunOptions;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers};

use crate::common::{TestApp, TestConfig, attempt_states, eventually, sync};

const SOURCE: &str = "paynow";
const API_KEY: &str = "pnapi_v1_sync_secret";
const STORE: &str = "411486491630370000";
/// PayNow's maximum `limit`.
const MAX_LIMIT: usize = 100;

/// PayNow's store subscriptions: flake-id order (`asc=true` ascending, else newest first),
/// items strictly after the `after` id in that order, at most `limit` of them.
#[derive(Clone, Default)]
struct FakeSubscriptions {
    subscriptions: Arc<Mutex<Vec<Value>>>,
    /// `after` of each request, in order (`None` for a first page).
    seen: Arc<Mutex<Vec<Option<String>>>>,
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
}

fn flake(value: &Value) -> u64 {
    value["id"].as_str().unwrap().parse().unwrap()
}

impl Respond for FakeSubscriptions {
    fn respond(&self, request: &Request) -> ResponseTemplate {
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
        let Ok(limit) = query("limit").map_or(Ok(25), |l| l.parse::<usize>()) else {
            return bad("limit must be an integer");
        };
        let after = query("after");
        let Ok(after_id) = after.as_deref().map(str::parse::<u64>).transpose() else {
            return bad("after must be a flake id");
        };
        let ascending = query("asc").as_deref() == Some("true");
        self.seen.lock().unwrap().push(after.clone());
        let mut all = self.subscriptions.lock().unwrap().clone();
        all.sort_by_key(flake);
        if !ascending {
            all.reverse();
        }
        let page: Vec<Value> = all
            .into_iter()
            .filter(|s| match after_id {
                None => true,
                Some(after) if ascending => flake(s) > after,
                Some(after) => flake(s) < after,
            })
            .take(limit.clamp(1, MAX_LIMIT))
            .collect();
        ResponseTemplate::new(200).set_body_json(Value::Array(page))
    }
}

async fn paynow_api(fake: FakeSubscriptions) -> MockServer {
    let route = Mock::given(matchers::method("GET"))
        .and(matchers::path(format!("/v1/stores/{STORE}/subscriptions")))
        .and(matchers::header(
            "authorization",
            format!("APIKey {API_KEY}").as_str(),
        ));
    harness::serve(route, fake).await
}

async fn app_with(server: &MockServer) -> (TestConfig, TestApp) {
    let source = format!(
        r#"id = "{SOURCE}"
provider = "paynow"
secrets = ["test_secret"]
api = {{ base_url = "{}", token = "{API_KEY}", store_id = "{STORE}" }}"#,
        server.uri()
    );
    harness::app_with(&source, 3600).await
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A store subscription DTO as the management API lists it; every own time of it at
/// `at` (so whether an incremental run renders it depends on `at`).
fn subscription(id: &str, status: &str, cycle: Option<u64>, at: DateTime<Utc>) -> Value {
    let at = rfc3339(at);
    json!({
        "id": id, "pretty_id": format!("SUB-{}", &id[id.len() - 4..]), "store_id": STORE,
        "customer": {"id": "411486491630370555", "store_id": STORE, "metadata": {},
            "created_at": "2024-01-01T00:00:00Z"},
        "status": status, "gift": false, "product_id": "411486491630370100",
        "product_version_id": "411486491630370101", "product_name": "VIP",
        "interval_value": 1, "interval_scale": "month", "currency": "eur",
        "tax_inclusive": true, "price": 999, "price_str": "9.99", "discount_amount": 0,
        "subtotal_amount": 999, "tax_amount": 0, "total_amount": 999, "total_amount_str": "9.99",
        "current_period_start": at, "current_period_end": "2027-01-01T00:00:00Z",
        "billing_cycle_sequence": cycle, "next_attempt_at": null, "attempt_count": 0,
        "created_at": at, "updated_at": at,
        "active_at": if status == "created" { Value::Null } else { json!(at) },
        "canceled_at": if status == "canceled" { json!(at) } else { Value::Null },
        "cancel_reason": if status == "canceled" { json!("customer_request") } else { Value::Null },
    })
}

/// The webhook PayNow sends for a subscription event.
fn webhook(event_type: &str, event_id: &str, subscription: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event_type": event_type, "event_id": event_id,
        "timestamp": subscription["updated_at"], "body": subscription,
    }))
    .unwrap()
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
    let now = Utc::now();
    let recent = now - chrono::Duration::minutes(10);
    let old = DateTime::parse_from_rfc3339("2024-11-12T10:30:00Z")
        .unwrap()
        .with_timezone(&Utc);
    // Five subscriptions, three pages of two: #1 active (webhook delivered), #2 created
    // (never activated: renders nothing), #3 canceled (the webhook only said renewed), #4
    // renewed and #5 canceled long ago (both missed). #1 and #3 changed in the last hour.
    let ids: Vec<String> = (1..=5).map(id).collect();
    let listed = vec![
        subscription(&ids[4], "canceled", Some(1), old),
        subscription(&ids[2], "canceled", Some(3), recent),
        subscription(&ids[0], "active", Some(1), recent),
        subscription(&ids[3], "active", Some(2), old),
        subscription(&ids[1], "created", None, recent),
    ];
    let fake = FakeSubscriptions::new(listed.clone());
    let server = paynow_api(fake.clone()).await;
    let (_config, app) = app_with(&server).await;

    let renewed_before = subscription(&ids[2], "active", Some(2), now - chrono::Duration::days(1));
    let webhooks = [
        ("evt_1", "ON_SUBSCRIPTION_ACTIVATED", &listed[2]),
        ("evt_3", "ON_SUBSCRIPTION_RENEWED", &renewed_before),
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

    let report = sync(&app, SOURCE, RunOptions::default()).await.unwrap();
    assert_eq!(
        (
            report.pages,
            report.records,
            report.changed,
            report.malformed
        ),
        (3, 4, 3, 0),
        "#2 renders nothing, #1 is known"
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
        (3, 2, 0, 0)
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
    assert_eq!((first.pages, first.records, first.changed), (3, 4, 4));
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
    assert_eq!((second.pages, second.records, second.changed), (3, 5, 1));
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
    assert_eq!((third.pages, third.records, third.changed), (3, 5, 0));
    assert_eq!(app.db.count_events(Some(SOURCE)).await.unwrap(), 5);
    assert!(app.db.verify_ledger().await.unwrap().is_empty());
    app.stop().await;
}
