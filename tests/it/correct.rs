//! Corrective replays (`subsync replay --correct`, `POST /admin/replay/correct`) against
//! the real broker and database. Polar's payloads are generated from, and checked
//! against, Polar's own definitions (`tests/fixtures/polar/`) and delivered signed
//! through the ingress and the worker. A mapping of the past is simulated through the
//! ledger's own seam: the archived event's raw body is what Polar sent, and the canonical
//! event reconciled for it is what the old mapping made of it (`Db::reconcile` with a
//! hand-made canonical event), exactly what the worker of that day would have written.

use std::{sync::OnceLock, time::Duration};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::Connection;
use subsync::{
    app::{Catalogue, Role},
    canonical::{AttemptStatus, CanonicalEvent},
    config::ProviderKind,
    envelope::Envelope,
    ledger::NewEvent,
    money::Money,
    ops::{Actor, Quiet, correct::correct_archived, replay::ReplayRequest},
};

use crate::common::{ADMIN_TOKEN, TestApp, TestConfig, catalogue, eventually, spawn_app};
use crate::schema;

const SECRET: &str = "whsec_ExampleExampleExampleExampleExampl0AbCdE";
const CUSTOMER: &str = "992fae2a-2a17-4b7a-8d9e-e287cf90131b";
/// The subscription whose renewal an old mapping booked as paid.
const SUB_WRONG: &str = "e5149aae-e521-42b9-b24c-abb8d71eea2e";
/// A subscription the old mapping got right.
const SUB_RIGHT: &str = "e5149aae-e521-42b9-b24c-abb8d71eea2f";
const WAIT: Duration = Duration::from_secs(20);

fn definitions() -> &'static schema::Spec {
    static SPEC: OnceLock<schema::Spec> = OnceLock::new();
    SPEC.get_or_init(|| {
        schema::Spec::parse(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/polar/polar-openapi-2026-10.subset.json"
        )))
    })
}

/// `value` generated from `schema`, `patch`ed, and checked valid under it.
fn generated(schema: &Value, patch: &[(&str, Value)]) -> Value {
    let spec = definitions();
    let mut value = spec.generate(schema);
    for (pointer, v) in patch {
        schema::set(&mut value, pointer, v.clone());
    }
    let errors = spec.validate(&value, schema);
    assert!(errors.is_empty(), "{errors:#?}");
    value
}

/// A renewal order of `sub`: paid, or pending with Polar's next automatic retry (a failed
/// payment in Polar's dunning).
fn order(id: &str, sub: &str, amount: i64, paid: bool, at: DateTime<Utc>) -> Value {
    let next = (!paid).then(|| (at + chrono::Duration::days(2)).to_rfc3339());
    generated(
        definitions().schema("Order"),
        &[
            ("/id", json!(id)),
            ("/status", json!(if paid { "paid" } else { "pending" })),
            ("/paid", json!(paid)),
            ("/billing_reason", json!("subscription_cycle")),
            ("/created_at", json!(at.to_rfc3339())),
            ("/modified_at", json!(at.to_rfc3339())),
            ("/total_amount", json!(amount)),
            ("/currency", json!("usd")),
            ("/customer_id", json!(CUSTOMER)),
            ("/customer/id", json!(CUSTOMER)),
            ("/subscription_id", json!(sub)),
            ("/subscription/id", json!(sub)),
            ("/next_payment_attempt_at", json!(next)),
        ],
    )
}

/// A one-time purchase: an order of no subscription, paid.
fn purchase(id: &str, amount: i64, at: DateTime<Utc>) -> Value {
    generated(
        definitions().schema("Order"),
        &[
            ("/id", json!(id)),
            ("/status", json!("paid")),
            ("/paid", json!(true)),
            ("/billing_reason", json!("purchase")),
            ("/created_at", json!(at.to_rfc3339())),
            ("/modified_at", json!(at.to_rfc3339())),
            ("/total_amount", json!(amount)),
            ("/currency", json!("usd")),
            ("/customer_id", json!(CUSTOMER)),
            ("/customer/id", json!(CUSTOMER)),
            ("/subscription_id", Value::Null),
            ("/subscription", Value::Null),
            ("/next_payment_attempt_at", Value::Null),
        ],
    )
}

fn subscription(sub: &str, status: &str, at: DateTime<Utc>) -> Value {
    generated(
        definitions().schema("Subscription"),
        &[
            ("/id", json!(sub)),
            ("/status", json!(status)),
            ("/customer_id", json!(CUSTOMER)),
            ("/currency", json!("usd")),
            ("/modified_at", json!(at.to_rfc3339())),
        ],
    )
}

/// A Polar webhook `{type, timestamp, data}` valid under the definitions.
fn webhook(event_type: &str, data: &Value, at: DateTime<Utc>) -> Vec<u8> {
    let body = json!({ "type": event_type, "timestamp": at.to_rfc3339(), "data": data });
    let spec = definitions();
    let errors = spec.validate(&body, spec.webhook_body(event_type));
    assert!(errors.is_empty(), "{event_type}: {errors:#?}");
    serde_json::to_vec(&body).unwrap()
}

async fn polar_app() -> (TestConfig, TestApp) {
    let mut config = TestConfig::new().await;
    config.extra = format!(
        r#"
[[sources]]
id = "polar"
provider = "polar"
secrets = ["{SECRET}"]
"#
    );
    let app = spawn_app(&config, Role::All).await;
    (config, app)
}

/// Posts signed webhooks through the ingress and waits until the worker archived them.
async fn deliver(app: &TestApp, events: &[(&str, Vec<u8>)]) {
    let before = app.db.count_events(Some("polar")).await.unwrap();
    for (id, body) in events {
        assert_eq!(
            app.post_signed("polar", id, body).await.status(),
            202,
            "{id}"
        );
    }
    let want = before + events.len() as i64;
    assert!(
        eventually(WAIT, || async {
            app.db.count_events(Some("polar")).await.unwrap() == want
        })
        .await,
        "the worker archived every event"
    );
}

/// What a mapping of the past did with `body`: archived it as event `event_id` and
/// reconciled `wrong(current normalization)` for it.
async fn delivered_by_an_old_mapping(
    app: &TestApp,
    event_id: &str,
    event_type: &str,
    body: Vec<u8>,
    wrong: impl Fn(&mut subsync::canonical::BillingAttempt),
) {
    let Catalogue { sources, dunning } = catalogue(&app.settings);
    let envelope = Envelope {
        source_id: "polar".into(),
        provider: ProviderKind::Polar,
        event_id: event_id.into(),
        received_at: Utc::now(),
        content_type: Some("application/json".into()),
        headers: Vec::new(),
        body: body.into(),
    };
    let mut events = sources
        .get("polar")
        .unwrap()
        .normalize(&envelope)
        .unwrap()
        .events;
    for canonical in &mut events {
        if let CanonicalEvent::BillingAttempt(a) = canonical {
            wrong(a);
        }
    }
    let new = NewEvent {
        envelope: &envelope,
        event_type,
        events: &events,
    };
    app.db.reconcile(&[new], &dunning).await.unwrap();
}

/// Every journal row, entries and postings, as text: what must never change.
async fn journal(config: &TestConfig) -> Vec<String> {
    let mut conn = sqlx::PgConnection::connect(&config.database_url)
        .await
        .unwrap();
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT 'entry ' || to_jsonb(e)::text FROM journal_entries e
         UNION ALL SELECT 'posting ' || to_jsonb(p)::text FROM postings p ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    rows.into_iter().map(|(r,)| r).collect()
}

/// The `correction` entries, each as its postings `account amount currency`, sorted.
async fn corrections(config: &TestConfig) -> Vec<Vec<String>> {
    let mut conn = sqlx::PgConnection::connect(&config.database_url)
        .await
        .unwrap();
    let rows: Vec<(i64, String, i64, String)> = sqlx::query_as(
        "SELECT e.id, p.account, p.amount_minor, p.currency
         FROM journal_entries e JOIN postings p ON p.entry_id = e.id
         WHERE e.kind = 'correction' ORDER BY e.id, p.account",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut entries: Vec<(i64, Vec<String>)> = Vec::new();
    for (id, account, amount, currency) in rows {
        let line = format!("{account} {amount} {currency}");
        match entries.last_mut() {
            Some((last, postings)) if *last == id => postings.push(line),
            _ => entries.push((id, vec![line])),
        }
    }
    entries.into_iter().map(|(_, p)| p).collect()
}

fn request(dry_run: bool) -> ReplayRequest {
    ReplayRequest {
        source_id: "polar".into(),
        since: Utc::now() - chrono::Duration::hours(1),
        until: None,
        dry_run,
    }
}

async fn admin_post(app: &TestApp, path: &str, body: Value) -> Value {
    let response = app
        .http
        .post(format!("{}{path}", app.admin))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

async fn attempt_status(app: &TestApp, sub: &str, attempt: &str) -> (String, Option<i64>) {
    let view = app.db.subscription("polar", sub).await.unwrap().unwrap();
    let a = view
        .attempts
        .iter()
        .find(|a| a.attempt_id == attempt)
        .unwrap();
    (a.status.clone(), a.amount_minor)
}

async fn balances(app: &TestApp, sub: &str) -> Vec<(String, i64)> {
    let view = app.db.subscription("polar", sub).await.unwrap().unwrap();
    view.balances
        .iter()
        .flat_map(|(account, by)| by.iter().map(move |(c, v)| (format!("{account} {c}"), *v)))
        .collect()
}

#[tokio::test]
async fn a_corrective_replay_turns_a_wrongly_succeeded_attempt_into_failed_with_a_balanced_compensating_entry()
 {
    let (config, app) = polar_app().await;
    let t0 = Utc::now() - chrono::Duration::minutes(30);
    let (first, renewal) = (
        "8a4c1f0e-0000-4000-8000-0000000000a1",
        "8a4c1f0e-0000-4000-8000-0000000000a2",
    );
    let right = "8a4c1f0e-0000-4000-8000-0000000000b1";
    deliver(
        &app,
        &[
            (
                "msg_active",
                webhook(
                    "subscription.active",
                    &subscription(SUB_WRONG, "active", t0),
                    t0,
                ),
            ),
            (
                "msg_first_paid",
                webhook("order.paid", &order(first, SUB_WRONG, 1999, true, t0), t0),
            ),
            (
                "msg_right_active",
                webhook(
                    "subscription.active",
                    &subscription(SUB_RIGHT, "active", t0),
                    t0,
                ),
            ),
            (
                "msg_right_paid",
                webhook("order.paid", &order(right, SUB_RIGHT, 1999, true, t0), t0),
            ),
        ],
    )
    .await;
    // The renewal failed (pending in Polar's dunning); a mapping of the past read a pending
    // order as paid and collected it.
    let t1 = t0 + chrono::Duration::minutes(1);
    delivered_by_an_old_mapping(
        &app,
        "msg_renewal_updated",
        "order.updated",
        webhook(
            "order.updated",
            &order(renewal, SUB_WRONG, 1999, false, t1),
            t1,
        ),
        |a| {
            a.status = AttemptStatus::Succeeded;
            a.next_attempt_at = None;
        },
    )
    .await;
    assert_eq!(
        attempt_status(&app, SUB_WRONG, renewal).await.0,
        "succeeded",
        "the wrong state, as the old mapping wrote it"
    );
    assert_eq!(
        balances(&app, SUB_WRONG).await,
        [
            ("collected USD".into(), 3998),
            ("receivable USD".into(), -3998)
        ]
    );
    let journal_before = journal(&config).await;
    let right_before = app.db.subscription("polar", SUB_RIGHT).await.unwrap();

    // A plain replay cannot lower it: reconciliation only moves forward.
    let plain = admin_post(
        &app,
        "/admin/replay",
        json!({"source_id": "polar", "since": request(false).since}),
    )
    .await;
    assert_eq!(plain["events"], 5);
    assert_eq!(
        attempt_status(&app, SUB_WRONG, renewal).await.0,
        "succeeded"
    );

    // The dry run shows the difference and changes nothing.
    let dry = admin_post(
        &app,
        "/admin/replay/correct",
        json!({"source_id": "polar", "since": request(true).since, "dry_run": true}),
    )
    .await;
    assert_eq!(dry["dry_run"], true);
    assert_eq!(
        (dry["examined"].as_u64(), dry["corrected"].as_u64()),
        (Some(2), Some(1))
    );
    let c = &dry["corrections"][0];
    assert_eq!(c["subscription_id"], SUB_WRONG);
    let changes = c["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{changes:#?}");
    assert_eq!(
        (
            &changes[0]["entity"],
            &changes[0]["id"],
            &changes[0]["before"]["status"],
            &changes[0]["after"]["status"]
        ),
        (
            &json!("billing_attempt"),
            &json!(renewal),
            &json!("succeeded"),
            &json!("failed")
        )
    );
    assert_eq!(
        c["balances"],
        json!([
            {"account": "collected", "currency": "USD", "before": 3998, "after": 1999},
            {"account": "receivable", "currency": "USD", "before": -3998, "after": -1999},
        ])
    );
    assert_eq!(c["appended"], 1);
    assert_eq!(
        attempt_status(&app, SUB_WRONG, renewal).await.0,
        "succeeded",
        "dry: unchanged"
    );
    assert_eq!(
        journal(&config).await,
        journal_before,
        "dry: the journal unchanged"
    );

    // The corrective replay (the CLI's code path).
    let Catalogue { sources, dunning } = catalogue(&app.settings);
    let actor = Actor("cli:test".into());
    let report = correct_archived(&app.db, &sources, &dunning, &request(false), &actor, &Quiet)
        .await
        .unwrap();
    assert_eq!(
        (report.examined, report.corrected, report.appended),
        (2, 1, 1)
    );
    assert_eq!(report.events, 5);
    let (status, amount) = attempt_status(&app, SUB_WRONG, renewal).await;
    assert_eq!(
        (status.as_str(), amount),
        ("failed", Some(1999)),
        "lowered to the truth"
    );
    let journal_after = journal(&config).await;
    assert!(
        journal_before.iter().all(|row| journal_after.contains(row)),
        "every earlier journal row is untouched"
    );
    assert_eq!(
        journal_after.len(),
        journal_before.len() + 3,
        "one entry, two postings"
    );
    assert_eq!(
        corrections(&config).await,
        [vec![
            "collected -1999 USD".to_owned(),
            "receivable 1999 USD".to_owned()
        ]],
        "one balanced correction reversing the wrong collection"
    );
    assert_eq!(app.db.verify_ledger().await.unwrap(), Vec::<String>::new());
    assert_eq!(
        balances(&app, SUB_WRONG).await,
        [
            ("collected USD".into(), 1999),
            ("receivable USD".into(), -1999)
        ],
        "the recomputed balances"
    );
    assert_eq!(
        app.db.subscription("polar", SUB_RIGHT).await.unwrap(),
        right_before,
        "a subscription without a difference is left alone"
    );

    // Audited like a replay.
    let audit = subsync::ops::audit::recent(&app.db, 10).await.unwrap();
    let row = audit.iter().find(|r| r.action == "replay.correct").unwrap();
    assert_eq!(
        (row.actor.as_str(), row.count, row.outcome.as_str()),
        ("cli:test", 1, "ok")
    );
    assert_eq!(row.filter["source_id"], "polar");
    assert!(row.finished_at.is_some());
    assert_eq!(
        audit
            .iter()
            .filter(|r| r.action == "replay.correct")
            .count(),
        1,
        "the dry run is not audited"
    );

    // Again: nothing differs, nothing is posted.
    let again = admin_post(
        &app,
        "/admin/replay/correct",
        json!({"source_id": "polar", "since": request(false).since}),
    )
    .await;
    assert_eq!(
        (again["corrected"].as_u64(), again["appended"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(journal(&config).await, journal_after);
    app.stop().await;
}

#[tokio::test]
async fn a_collection_posted_from_a_wrong_amount_gets_a_correction_of_the_difference() {
    let (config, app) = polar_app().await;
    let t0 = Utc::now() - chrono::Duration::minutes(30);
    let paid = "8a4c1f0e-0000-4000-8000-0000000000c1";
    deliver(
        &app,
        &[(
            "msg_active",
            webhook(
                "subscription.active",
                &subscription(SUB_WRONG, "active", t0),
                t0,
            ),
        )],
    )
    .await;
    // Polar charged 900; the old mapping read 1000.
    delivered_by_an_old_mapping(
        &app,
        "msg_paid",
        "order.paid",
        webhook("order.paid", &order(paid, SUB_WRONG, 900, true, t0), t0),
        |a| a.amount = Some(Money::from_minor(1000, "USD").unwrap()),
    )
    .await;
    assert_eq!(
        attempt_status(&app, SUB_WRONG, paid).await,
        ("succeeded".into(), Some(1000))
    );
    let journal_before = journal(&config).await;
    // The command line's dry run: the differences, nothing changed.
    let path = config.write();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_subsync"))
        .args([
            "replay",
            "--source",
            "polar",
            "--since",
            "1h",
            "--correct",
            "--dry-run",
        ])
        .env("SUBSYNC_CONFIG", &path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        format!("WOULD CORRECT subscription {SUB_WRONG}"),
        format!("billing_attempt {paid}: amount_minor 1000 -> 900"),
        "balance collected USD: 1000 -> 900".to_owned(),
        "balance receivable USD: -1000 -> -900".to_owned(),
        "1 journal entry would be appended".to_owned(),
        "dry run: 2 event(s) in the window".to_owned(),
    ] {
        assert!(stdout.contains(&line), "{line:?} in\n{stdout}");
    }
    assert_eq!(journal(&config).await, journal_before);

    let Catalogue { sources, dunning } = catalogue(&app.settings);
    let actor = Actor("cli:test".into());
    let report = correct_archived(&app.db, &sources, &dunning, &request(false), &actor, &Quiet)
        .await
        .unwrap();
    assert_eq!((report.corrected, report.appended), (1, 1));
    assert_eq!(
        attempt_status(&app, SUB_WRONG, paid).await,
        ("succeeded".into(), Some(900))
    );
    assert_eq!(
        corrections(&config).await,
        [vec![
            "collected -100 USD".to_owned(),
            "receivable 100 USD".to_owned()
        ]]
    );
    let journal_after = journal(&config).await;
    assert!(journal_before.iter().all(|row| journal_after.contains(row)));
    assert_eq!(
        balances(&app, SUB_WRONG).await,
        [
            ("collected USD".into(), 900),
            ("receivable USD".into(), -900)
        ]
    );
    assert_eq!(app.db.verify_ledger().await.unwrap(), Vec::<String>::new());
    let again = correct_archived(&app.db, &sources, &dunning, &request(false), &actor, &Quiet)
        .await
        .unwrap();
    assert_eq!((again.corrected, again.appended), (0, 0));
    assert_eq!(journal(&config).await, journal_after);
    app.stop().await;
}

#[tokio::test]
async fn a_payment_wrongly_mapped_as_failed_is_collected_by_the_entry_the_reconcile_posts() {
    let (config, app) = polar_app().await;
    let t0 = Utc::now() - chrono::Duration::minutes(30);
    let paid = "8a4c1f0e-0000-4000-8000-0000000000d1";
    // Polar was paid; the old mapping read it as a failure (nothing collected).
    delivered_by_an_old_mapping(
        &app,
        "msg_paid",
        "order.paid",
        webhook("order.paid", &order(paid, SUB_WRONG, 1999, true, t0), t0),
        |a| a.status = AttemptStatus::Failed,
    )
    .await;
    let dry = correct_archived(
        &app.db,
        &catalogue(&app.settings).sources,
        &catalogue(&app.settings).dunning,
        &request(true),
        &Actor("cli:test".into()),
        &Quiet,
    )
    .await
    .unwrap();
    assert_eq!((dry.corrected, dry.appended), (1, 1));
    assert!(journal(&config).await.is_empty(), "dry: nothing posted");

    let Catalogue { sources, dunning } = catalogue(&app.settings);
    let report = correct_archived(
        &app.db,
        &sources,
        &dunning,
        &request(false),
        &Actor("cli:test".into()),
        &Quiet,
    )
    .await
    .unwrap();
    assert_eq!(report.corrected, 1);
    assert_eq!(attempt_status(&app, SUB_WRONG, paid).await.0, "succeeded");
    // The collection the reconcile would have posted, as it would have: no correction
    // entry, and nothing left for a later event of this attempt to post again.
    assert!(corrections(&config).await.is_empty());
    assert_eq!(
        balances(&app, SUB_WRONG).await,
        [
            ("collected USD".into(), 1999),
            ("receivable USD".into(), -1999)
        ]
    );
    assert_eq!(app.db.verify_ledger().await.unwrap(), Vec::<String>::new());
    deliver(
        &app,
        &[(
            "msg_paid_again",
            webhook("order.paid", &order(paid, SUB_WRONG, 1999, true, t0), t0),
        )],
    )
    .await;
    assert!(
        eventually(WAIT, || async { app.queued().await == 0 }).await,
        "the worker took the redelivery"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        balances(&app, SUB_WRONG).await,
        [
            ("collected USD".into(), 1999),
            ("receivable USD".into(), -1999)
        ],
        "collected once"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_attempt_without_a_subscription_is_corrected_on_its_own() {
    let (config, app) = polar_app().await;
    let t0 = Utc::now() - chrono::Duration::minutes(30);
    let (wrong, right) = (
        "8a4c1f0e-0000-4000-8000-0000000000e1",
        "8a4c1f0e-0000-4000-8000-0000000000e2",
    );
    deliver(
        &app,
        &[(
            "msg_right",
            webhook("order.paid", &purchase(right, 500, t0), t0),
        )],
    )
    .await;
    delivered_by_an_old_mapping(
        &app,
        "msg_wrong",
        "order.paid",
        webhook("order.paid", &purchase(wrong, 900, t0), t0),
        |a| a.amount = Some(Money::from_minor(1000, "USD").unwrap()),
    )
    .await;
    let Catalogue { sources, dunning } = catalogue(&app.settings);
    let actor = Actor("cli:test".into());
    let report = correct_archived(&app.db, &sources, &dunning, &request(false), &actor, &Quiet)
        .await
        .unwrap();
    assert_eq!(
        (report.examined, report.corrected, report.appended),
        (2, 1, 1)
    );
    let c = &report.corrections[0];
    assert_eq!(
        (c.subscription_id.as_deref(), c.attempt_id.as_deref()),
        (None, Some(wrong))
    );
    assert_eq!(
        corrections(&config).await,
        [vec![
            "collected -100 USD".to_owned(),
            "receivable 100 USD".to_owned()
        ]]
    );
    let mut conn = sqlx::PgConnection::connect(&config.database_url)
        .await
        .unwrap();
    let (subscription, attempt): (String, Option<String>) = sqlx::query_as(
        "SELECT subscription_id, attempt_id FROM journal_entries WHERE kind = 'correction'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        (subscription.as_str(), attempt.as_deref()),
        ("", Some(wrong))
    );
    assert_eq!(app.db.verify_ledger().await.unwrap(), Vec::<String>::new());
    let again = correct_archived(&app.db, &sources, &dunning, &request(false), &actor, &Quiet)
        .await
        .unwrap();
    assert_eq!((again.corrected, again.appended), (0, 0));
    app.stop().await;
}
