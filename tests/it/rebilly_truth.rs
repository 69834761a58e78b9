//! Rebilly's lifecycle through the real ingress, queue, worker and ledger, every body
//! generated from Rebilly's own definitions (`tests/fixtures/rebilly/`) and checked
//! against them: an order renewed twice, paused, resumed and paused again; a sale that is
//! pending, then approved, then refunded; partial refunds booked with their amounts and
//! never more than the sale; a refund that arrives before its sale.

use std::time::Duration;

use serde_json::{Value, json};
use subsync::app::Role;
use subsync::ledger::EventsQuery;

use crate::common::{TestApp, TestConfig, attempt_states, eventually, spawn_app};
use crate::rebilly_definitions::{Want, definitions};

const SOURCE: &str = "rebilly";

async fn app() -> (TestConfig, TestApp) {
    let mut config = TestConfig::new().await;
    config.extra = format!(
        "[[sources]]\nid = \"{SOURCE}\"\nprovider = \"rebilly\"\n\
         basic_auth = {{ username = \"rebilly\", password = \"s3cret-basic-pass\" }}\n"
    );
    let app = spawn_app(&config, Role::All).await;
    (config, app)
}

/// A body of `event_type` generated from the definitions with `fields` set, checked.
fn defined(event_type: &str, fields: &[(&str, Value)]) -> Vec<u8> {
    let wanted: Vec<Want<'_>> = fields.iter().map(|(p, v)| (*p, Some(v.clone()))).collect();
    let body = definitions().generate(event_type, &wanted);
    if let Err(errors) = definitions().check(event_type, &body) {
        panic!("{event_type}: {errors:?}");
    }
    serde_json::to_vec(&body).unwrap()
}

/// Posts `body` with the source's Basic credentials; the event id the ingress gave it.
async fn deliver(app: &TestApp, body: &[u8]) -> String {
    let response = app.post_signed(SOURCE, "unused", body).await;
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    answer["event_id"].as_str().unwrap().to_owned()
}

/// The archived events of the source, oldest first: (event type, outcome).
async fn archived(app: &TestApp) -> Vec<(String, String)> {
    let q = EventsQuery {
        source_id: Some(SOURCE.into()),
        ..Default::default()
    };
    let mut rows = app.db.events(&q).await.unwrap();
    rows.reverse();
    rows.into_iter()
        .map(|e| (e.event_type, e.outcome))
        .collect()
}

/// Journal entries of the source by kind: (collections, refunds).
async fn entries(config: &TestConfig) -> (i64, i64) {
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&config.database_url)
        .await
        .unwrap();
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE kind = 'collection'), count(*) FILTER (WHERE kind = 'refund')
         FROM journal_entries WHERE source_id = $1",
    )
    .bind(SOURCE)
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

/// An order webhook of `sub_1` as Rebilly renders it: a renewal brings a new
/// `rebillNumber` and period, every change a new `revision`.
fn renewal(rebill: u32, revision: u32) -> Vec<u8> {
    let month = |m: u32| format!("2025-{m:02}-01T00:00:00Z");
    defined(
        "subscription-renewed",
        &[
            ("/subscriptionId", json!("sub_1")),
            ("/_embedded/subscription/id", json!("sub_1")),
            (
                "/_embedded/subscription/orderType",
                json!("subscription-order"),
            ),
            ("/_embedded/subscription/status", json!("active")),
            ("/_embedded/subscription/billingStatus", json!("paid")),
            ("/_embedded/subscription/currency", json!("USD")),
            ("/_embedded/subscription/rebillNumber", json!(rebill)),
            (
                "/_embedded/subscription/currentPeriodStart",
                json!(month(rebill)),
            ),
            (
                "/_embedded/subscription/currentPeriodEnd",
                json!(month(rebill + 1)),
            ),
            (
                "/_embedded/subscription/renewalTime",
                json!(month(rebill + 1)),
            ),
            ("/_embedded/subscription/revision", json!(revision)),
            ("/_embedded/subscription/updatedTime", json!(month(rebill))),
        ],
    )
}

/// A pause webhook (`SubscriptionAndSubscriptionPause`): the pause and the order after it.
fn pause(event_type: &str, pause: &str, pause_status: &str, order: &str, revision: u32) -> Vec<u8> {
    let at = format!("2025-03-{:02}T00:00:00Z", revision);
    defined(
        event_type,
        &[
            ("/subscriptionId", json!("sub_1")),
            ("/subscriptionPauseId", json!(pause)),
            ("/_embedded/subscription/id", json!("sub_1")),
            (
                "/_embedded/subscription/orderType",
                json!("subscription-order"),
            ),
            ("/_embedded/subscription/status", json!(order)),
            ("/_embedded/subscription/revision", json!(revision)),
            ("/_embedded/subscription/updatedTime", json!(at)),
            ("/_embedded/pause/id", json!(pause)),
            ("/_embedded/pause/subscriptionId", json!("sub_1")),
            ("/_embedded/pause/status", json!(pause_status)),
            ("/_embedded/pause/updatedTime", json!(at)),
        ],
    )
}

#[tokio::test]
async fn renew_renew_pause_resume_pause_all_land() {
    let (_config, app) = app().await;
    let bodies = [
        renewal(2, 5),
        renewal(3, 6),
        pause("subscription-paused", "sub_pau_1", "ongoing", "paused", 7),
        pause("subscription-resumed", "sub_pau_1", "finished", "active", 8),
        pause("subscription-paused", "sub_pau_2", "ongoing", "paused", 9),
    ];
    let mut ids = Vec::new();
    for body in &bodies {
        ids.push(deliver(&app, body).await);
    }
    // Rebilly redelivers the first renewal: the same id, deduplicated.
    assert_eq!(deliver(&app, &bodies[0]).await, ids[0]);
    let paused = || async {
        let view = app.db.subscription(SOURCE, "sub_1").await.unwrap();
        app.queued().await == 0
            && app.db.count_events(Some(SOURCE)).await.unwrap() == 5
            && view.and_then(|v| v.status).as_deref() == Some("paused")
    };
    assert!(
        eventually(Duration::from_secs(20), paused).await,
        "five events, paused at the end: {:?} {:?}",
        archived(&app).await,
        app.db.subscription(SOURCE, "sub_1").await.unwrap()
    );
    let types: Vec<String> = archived(&app).await.into_iter().map(|(t, _)| t).collect();
    assert_eq!(
        types,
        [
            "subscription-renewed",
            "subscription-renewed",
            "subscription-paused",
            "subscription-resumed",
            "subscription-paused"
        ]
    );
    let view = app.db.subscription(SOURCE, "sub_1").await.unwrap().unwrap();
    assert_eq!(view.provider_status.as_deref(), Some("paused"));
    assert_eq!(view.currency.as_deref(), Some("USD"));
    assert!(app.db.verify_ledger().await.unwrap().is_empty());
    app.stop().await;
}

/// A `sale` of 49.95 USD for invoice `in_1` of `sub_1`, in `status` with `result`.
fn sale(
    event_type: &str,
    status: &str,
    result: &str,
    revision: u32,
    extra: &[(&str, Value)],
) -> Vec<u8> {
    let mut fields = vec![
        ("/transactionId", json!("txn_1")),
        ("/_embedded/transaction/id", json!("txn_1")),
        ("/_embedded/transaction/type", json!("sale")),
        ("/_embedded/transaction/status", json!(status)),
        ("/_embedded/transaction/result", json!(result)),
        ("/_embedded/transaction/amount", json!(49.95)),
        ("/_embedded/transaction/currency", json!("USD")),
        ("/_embedded/transaction/invoiceIds", json!(["in_1"])),
        ("/_embedded/transaction/subscriptionIds", json!(["sub_1"])),
        (
            "/_embedded/transaction/processedTime",
            json!("2025-03-01T00:00:01Z"),
        ),
        ("/_embedded/transaction/revision", json!(revision)),
    ];
    fields.extend_from_slice(extra);
    defined(event_type, &fields)
}

/// The refund of `txn_1`, as a transaction of its own.
fn refund_transaction() -> Value {
    json!({
        "id": "txn_r1", "type": "refund", "status": "completed", "result": "approved",
        "amount": 49.95, "currency": "USD", "parentTransactionId": "txn_1",
        "invoiceIds": ["in_1"], "subscriptionIds": ["sub_1"],
        "processedTime": "2025-03-05T00:00:00Z", "revision": 1,
    })
}

#[tokio::test]
async fn a_sale_pending_then_approved_then_refunded_lands_as_three_events() {
    let (config, app) = app().await;
    let bodies = [
        sale("transaction-processed", "pending", "unknown", 1, &[]),
        sale("transaction-processed", "completed", "approved", 2, &[]),
        sale(
            "transaction-refunded",
            "refunded",
            "approved",
            3,
            &[("/_embedded/childTransaction", refund_transaction())],
        ),
    ];
    for body in &bodies {
        deliver(&app, body).await;
    }
    let refunded = || async {
        app.queued().await == 0
            && app.db.count_events(Some(SOURCE)).await.unwrap() == 3
            && attempt_states(&app.db, SOURCE).await
                == [("txn_1".to_owned(), "refunded".to_owned())]
    };
    assert!(
        eventually(Duration::from_secs(20), refunded).await,
        "three events, refunded at the end: {:?} {:?}",
        archived(&app).await,
        attempt_states(&app.db, SOURCE).await
    );
    let types: Vec<String> = archived(&app).await.into_iter().map(|(t, _)| t).collect();
    assert_eq!(
        types,
        [
            "transaction-processed",
            "transaction-processed",
            "transaction-refunded"
        ]
    );
    assert_eq!(entries(&config).await, (1, 1), "one collection, one refund");
    let view = app.db.subscription(SOURCE, "sub_1").await.unwrap().unwrap();
    assert_eq!(view.balances["refunded"]["USD"], 4995);
    assert_eq!(view.balances["collected"]["USD"], 0);
    assert_eq!(view.balances["receivable"]["USD"], -4995);
    let [attempt] = view.attempts.as_slice() else {
        panic!("{:?}", view.attempts)
    };
    assert_eq!(
        (attempt.cycle_id.as_deref(), attempt.amount_minor),
        (Some("in_1"), Some(4995))
    );
    assert!(app.db.verify_ledger().await.unwrap().is_empty());
    app.stop().await;
}

/// A processed `refund` transaction of `txn_1`: its own id and amount.
fn processed_refund(id: &str, amount: Value, at: &str) -> Vec<u8> {
    let mut refund = refund_transaction();
    refund["id"] = json!(id);
    refund["amount"] = amount;
    refund["processedTime"] = json!(at);
    let fields: Vec<(String, Value)> = refund
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (format!("/_embedded/transaction/{k}"), v.clone()))
        .chain([("/transactionId".to_owned(), json!(id))])
        .collect();
    let fields: Vec<(&str, Value)> = fields
        .iter()
        .map(|(p, v)| (p.as_str(), v.clone()))
        .collect();
    defined("transaction-processed", &fields)
}

/// Delivers `bodies` in order and waits until all are reconciled.
async fn deliver_all(app: &TestApp, bodies: &[Vec<u8>]) {
    let before = app.db.count_events(Some(SOURCE)).await.unwrap();
    for body in bodies {
        deliver(app, body).await;
    }
    let n = before + bodies.len() as i64;
    let done = || async {
        app.queued().await == 0 && app.db.count_events(Some(SOURCE)).await.unwrap() == n
    };
    assert!(eventually(Duration::from_secs(20), done).await);
}

/// `(collected, refunded)` USD balances of `sub_1`.
async fn balances(app: &TestApp) -> (i64, i64) {
    let view = app.db.subscription(SOURCE, "sub_1").await.unwrap().unwrap();
    let usd = |account: &str| {
        view.balances
            .get(account)
            .and_then(|b| b.get("USD"))
            .copied()
            .unwrap_or(0)
    };
    (usd("collected"), usd("refunded"))
}

#[tokio::test]
async fn partial_refunds_book_their_amounts_and_never_more_than_the_sale() {
    let (config, app) = app().await;
    deliver_all(
        &app,
        &[sale(
            "transaction-processed",
            "completed",
            "approved",
            1,
            &[],
        )],
    )
    .await;
    assert_eq!(balances(&app).await, (4995, 0));

    // 20.00 back, reported on the sale with its child, then again on its own.
    let mut first = refund_transaction();
    first["id"] = json!("txn_r1");
    first["amount"] = json!(20);
    deliver_all(
        &app,
        &[
            sale(
                "transaction-partially-refunded",
                "partially-refunded",
                "approved",
                2,
                &[("/_embedded/childTransaction", first)],
            ),
            processed_refund("txn_r1", json!(20), "2025-03-05T00:00:00Z"),
        ],
    )
    .await;
    assert_eq!(balances(&app).await, (2995, 2000), "20.00 back, once");
    assert_eq!(
        attempt_states(&app.db, SOURCE).await,
        [("txn_1".to_owned(), "succeeded".to_owned())],
        "a partial refund leaves the sale collected"
    );

    // A second refund larger than what is left is capped at what is left; the full
    // refund that follows has nothing left to give back.
    let mut second = refund_transaction();
    second["id"] = json!("txn_r2");
    second["amount"] = json!(40);
    deliver_all(
        &app,
        &[
            processed_refund("txn_r2", json!(40), "2025-03-06T00:00:00Z"),
            sale(
                "transaction-refunded",
                "refunded",
                "approved",
                3,
                &[("/_embedded/childTransaction", second)],
            ),
        ],
    )
    .await;
    assert_eq!(
        balances(&app).await,
        (0, 4995),
        "everything back, never more"
    );
    assert_eq!(
        entries(&config).await,
        (1, 2),
        "one collection, two refunds"
    );
    assert_eq!(
        attempt_states(&app.db, SOURCE).await,
        [("txn_1".to_owned(), "refunded".to_owned())]
    );
    assert!(app.db.verify_ledger().await.unwrap().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_refund_before_its_sale_is_booked_when_the_sale_lands() {
    let (config, app) = app().await;
    deliver_all(
        &app,
        &[processed_refund(
            "txn_r1",
            json!(10),
            "2025-03-05T00:00:00Z",
        )],
    )
    .await;
    assert_eq!(
        archived(&app).await,
        [("transaction-processed".to_owned(), "applied".to_owned())],
        "the refund is kept"
    );
    assert_eq!(
        attempt_states(&app.db, SOURCE).await,
        [("txn_1".to_owned(), "pending".to_owned())],
        "its sale is known, not yet seen"
    );
    assert_eq!(entries(&config).await, (0, 0), "nothing to give back yet");
    assert!(app.db.verify_ledger().await.unwrap().is_empty());

    deliver_all(
        &app,
        &[sale(
            "transaction-processed",
            "completed",
            "approved",
            1,
            &[],
        )],
    )
    .await;
    assert_eq!(entries(&config).await, (1, 1));
    assert_eq!(balances(&app).await, (3995, 1000));
    assert!(app.db.verify_ledger().await.unwrap().is_empty());
    app.stop().await;
}
