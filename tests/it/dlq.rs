//! Dead-letter operations against the real broker and database. The poison is real: a
//! trigger makes Postgres refuse some attempts (as a constraint or a bug would), so those
//! events are handed back until the delivery limit and then dead-lettered with the
//! database's reason, while other traffic keeps flowing. Dropping the trigger is "the
//! cause fixed"; replays then reconcile them.

use crate::common;

use std::time::Duration;

use common::{ADMIN_TOKEN, TestApp, TestConfig, attempt_states, eventually, spawn_app};
use serde_json::{Value, json};
use sqlx::Connection;
use subsync::{
    app::Role,
    dunning::schedule::Dunning,
    ops::{Actor, OpsError, Quiet, dlq},
    providers::Sources,
};

const WAIT: Duration = Duration::from_secs(20);

fn invoice_event(id: &str, invoice: &str, kind: &str) -> Vec<u8> {
    let paid = kind == "invoice.paid";
    serde_json::to_vec(&json!({
        "id": id, "object": "event", "type": kind, "created": 1_763_700_000,
        "data": { "object": {
            "id": invoice, "object": "invoice", "subscription": "sub_1", "customer": "cus_1",
            "status": if paid { "paid" } else { "open" }, "attempt_count": 1,
            "amount_due": 1200, "amount_paid": if paid { 1200 } else { 0 }, "currency": "eur",
        }},
    }))
    .unwrap()
}

/// The app, with the database refusing every attempt whose invoice starts with `in_poison`.
async fn poisoned_app() -> (TestConfig, TestApp) {
    poisoned_app_as(Role::All).await
}

async fn poisoned_app_as(role: Role) -> (TestConfig, TestApp) {
    let mut config = TestConfig::new().await;
    config.extra = r#"
[[sources]]
id = "stripe"
provider = "stripe"
secrets = ["whsec_dlq"]
"#
    .to_owned();
    let app = spawn_app(&config, role).await;
    // The trigger needs the tables (an ingress-only app does not migrate).
    app.db.migrate().await.unwrap();
    let mut conn = sqlx::PgConnection::connect(&config.database_url)
        .await
        .unwrap();
    for sql in [
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.attempt_id LIKE 'in_poison%' THEN
                 RAISE EXCEPTION 'poison attempt %', NEW.attempt_id;
             END IF;
             RETURN NEW;
         END $$",
        "CREATE TRIGGER refuse_poison BEFORE INSERT OR UPDATE ON billing_attempts
         FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
    ] {
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
    (config, app)
}

async fn fix_the_cause(config: &TestConfig) {
    let mut conn = sqlx::PgConnection::connect(&config.database_url)
        .await
        .unwrap();
    sqlx::query("DROP TRIGGER refuse_poison ON billing_attempts")
        .execute(&mut conn)
        .await
        .unwrap();
}

/// Posts invoice `in_{name}`'s `kind` event `evt_{name}`, signed; the ingress takes it.
async fn post_invoice(app: &TestApp, name: &str, kind: &str) {
    let event_id = format!("evt_{name}");
    let body = invoice_event(&event_id, &format!("in_{name}"), kind);
    assert_eq!(
        app.post_signed("stripe", &event_id, &body).await.status(),
        202
    );
}

/// Posts `poison` poison events among `good` good ones and waits until the good ones are
/// reconciled and the poison ones dead-lettered.
async fn load(app: &TestApp, poison: usize, good: usize) {
    for i in 0..good.max(poison) {
        if i < poison {
            post_invoice(app, &format!("poison_{i}"), "invoice.payment_failed").await;
        }
        if i < good {
            post_invoice(app, &format!("good_{i}"), "invoice.paid").await;
        }
    }
    assert!(
        eventually(WAIT, || async {
            app.db.count_events(Some("stripe")).await.unwrap() == good as i64
                && app.broker.stats().await.unwrap().1.messages == poison as u32
        })
        .await,
        "good events reconciled, poison dead-lettered"
    );
}

async fn admin_post(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.http
        .post(format!("{}{path}", app.admin))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn context<'a>(app: &'a TestApp, sources: &'a Sources, dunning: &'a Dunning) -> dlq::Context<'a> {
    dlq::Context {
        broker: &app.broker,
        db: &app.db,
        sources,
        dunning,
    }
}

/// Webhooks posted concurrently travel as batch messages (group commit); the worker still
/// settles each event on its own: the good ones reconciled once, each poison one handed
/// back alone until the delivery limit and dead-lettered alone, as a single message.
#[tokio::test]
async fn events_of_a_batch_message_are_reconciled_and_dead_lettered_one_by_one() {
    use futures_util::StreamExt;
    let (config, ingress) = poisoned_app_as(Role::Ingress).await;
    let names: Vec<(String, &str)> = (0..200)
        .map(|i| match i % 20 {
            0 => (format!("poison_{i}"), "invoice.payment_failed"),
            _ => (format!("good_{i}"), "invoice.paid"),
        })
        .collect();
    futures_util::stream::iter(&names)
        .for_each_concurrent(64, |(name, kind)| post_invoice(&ingress, name, kind))
        .await;
    let messages = ingress.queued().await;
    assert!(
        messages < 200,
        "200 concurrent webhooks went out in fewer messages: {messages}"
    );
    let worker = spawn_app(&config, Role::Worker).await;
    assert!(
        eventually(WAIT, || async {
            worker.db.count_events(Some("stripe")).await.unwrap() == 190
                && worker.broker.stats().await.unwrap().1.messages == 10
        })
        .await,
        "190 good events reconciled, 10 poison ones dead-lettered"
    );
    let letters = dlq::list(&worker.broker, &dlq::DlqFilter::default())
        .await
        .unwrap();
    let mut ids: Vec<String> = letters.iter().map(|l| l.id.clone()).collect();
    ids.sort();
    let mut expected: Vec<String> = (0..200)
        .step_by(20)
        .map(|i| format!("stripe:evt_poison_{i}"))
        .collect();
    expected.sort();
    assert_eq!(ids, expected);
    for letter in &letters {
        let reason = letter.reason.as_deref().unwrap_or("");
        assert!(reason.contains("(delivery 3 of 3)"), "{reason}");
    }
    worker.stop().await;
    ingress.stop().await;
}

#[tokio::test]
async fn poison_is_dead_lettered_at_the_delivery_limit_and_replayed_once_fixed() {
    let (config, app) = poisoned_app().await;
    load(&app, 2, 20).await;
    assert_eq!(
        attempt_states(&app.db, "stripe").await.len(),
        20,
        "the other traffic flowed"
    );

    // List and show, through the admin API, with their reasons.
    let listed: Value = app
        .admin_get("/admin/dlq?reason=poison", Some(ADMIN_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    let letters = listed["dead_letters"].as_array().unwrap();
    let mut ids: Vec<&str> = letters.iter().map(|l| l["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["stripe:evt_poison_0", "stripe:evt_poison_1"]);
    for letter in letters {
        let reason = letter["reason"].as_str().unwrap();
        assert!(reason.contains("poison attempt in_poison_"), "{reason}");
        assert!(
            reason.contains("delivery 3 of 3"),
            "dead-lettered at the limit: {reason}"
        );
        assert_eq!(letter["deaths"], 1);
        assert!(letter["last_death_at"].is_string());
    }
    let shown: Value = app
        .admin_get("/admin/dlq/stripe:evt_poison_0", Some(ADMIN_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["body"]["id"], "evt_poison_0", "the payload, as JSON");
    assert!(shown["headers"]["x-subsync-dead-lettered-at-us"].is_string());
    assert!(
        shown["headers"]["x-subsync-reason"]
            .as_str()
            .unwrap()
            .starts_with("rejected:")
    );
    assert_eq!(
        app.admin_get("/admin/dlq/stripe:nope", Some(ADMIN_TOKEN))
            .await
            .status(),
        404
    );

    // A dry run before the fix: each would fail again; nothing moves.
    let dry: Value = admin_post(&app, "/admin/dlq/replay", json!({ "dry_run": true }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(dry["matched"], 2);
    for m in dry["messages"].as_array().unwrap() {
        assert!(
            m["error"].as_str().unwrap().contains("poison attempt"),
            "{m}"
        );
    }
    fix_the_cause(&config).await;
    // A dry run after the fix: each would add its attempt; still nothing moves or changes.
    let dry: Value = admin_post(
        &app,
        "/admin/dlq/replay",
        json!({ "dry_run": true, "source": "stripe" }),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        (dry["matched"].as_u64(), dry["replayed"].as_u64()),
        (Some(2), Some(2))
    );
    for m in dry["messages"].as_array().unwrap() {
        assert_eq!(m["action"], "would_apply", "{m}");
        assert_eq!(m["changes"][0]["entity"], "billing_attempt");
        assert!(m["changes"][0]["before"].is_null());
        assert_eq!(m["changes"][0]["after"]["status"], "failed");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.broker.stats().await.unwrap().1.messages,
        2,
        "dry run moved nothing"
    );
    assert_eq!(
        attempt_states(&app.db, "stripe").await.len(),
        20,
        "dry run changed nothing"
    );

    // Replay by id, then by filter.
    let one: Value = admin_post(
        &app,
        "/admin/dlq/replay",
        json!({ "ids": ["stripe:evt_poison_1"] }),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(one["replayed"], 1);
    assert!(
        eventually(WAIT, || async {
            attempt_states(&app.db, "stripe")
                .await
                .contains(&("in_poison_1:1".to_owned(), "failed".to_owned()))
        })
        .await
    );
    // The letter the replay held and released is counted again once the broker applied
    // the release (a quorum queue does that asynchronously).
    assert!(
        eventually(WAIT, || async {
            app.broker.stats().await.unwrap().1.messages == 1
        })
        .await,
        "the other letter stays dead-lettered"
    );
    let rest: Value = admin_post(&app, "/admin/dlq/replay", json!({ "reason": "POISON" }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rest["replayed"], 1);
    assert!(
        eventually(WAIT, || async {
            attempt_states(&app.db, "stripe").await.len() == 22
        })
        .await
    );
    assert_eq!(
        app.broker.stats().await.unwrap().1.messages,
        0,
        "the dead-letter queue is empty"
    );
    assert_eq!(app.db.count_events(Some("stripe")).await.unwrap(), 22);
    assert!(app.db.verify_ledger().await.unwrap().is_empty());

    // Both replays are audited under the token's name, with their filter and count.
    let audit: Value = app
        .admin_get("/admin/audit", Some(ADMIN_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "dry runs are not audited: {entries:?}");
    assert!(entries.iter().all(|e| e["actor"] == "admin"
        && e["action"] == "dlq.replay"
        && e["count"] == 1
        && e["outcome"] == "ok"));
    assert_eq!(entries[1]["filter"]["ids"], json!(["stripe:evt_poison_1"]));
    assert_eq!(entries[0]["filter"]["reason"], "POISON");
    app.stop().await;
}

#[tokio::test]
async fn an_interrupted_replay_loses_and_duplicates_nothing() {
    let (config, app) = poisoned_app().await;
    load(&app, 3, 3).await;
    fix_the_cause(&config).await;

    // Interrupted between a republish's confirm and its ack: the copy is in the work
    // queue, the original goes back to the dead-letter queue.
    let mut session = app.broker.dead_letter_session().await.unwrap();
    let first = session.next().await.unwrap().unwrap();
    session.republish(&first).await.unwrap();
    session.close().await;
    assert!(
        eventually(WAIT, || async {
            attempt_states(&app.db, "stripe").await.len() == 4
        })
        .await
    );
    assert!(
        eventually(WAIT, || async {
            app.broker.stats().await.unwrap().1.messages == 3
        })
        .await,
        "nothing lost from the dead-letter queue"
    );

    // Running the replay again finishes the job: the copy already reconciled is removed,
    // the others are replayed; each event is in the ledger once.
    let subsync::app::Catalogue { sources, dunning } = common::catalogue(&app.settings);
    let report = dlq::replay(
        &context(&app, &sources, &dunning),
        &Default::default(),
        false,
        &Actor::cli(),
        &Quiet,
    )
    .await
    .unwrap();
    assert_eq!(
        (report.matched, report.replayed, report.already_archived),
        (3, 2, 1)
    );
    assert!(
        eventually(WAIT, || async {
            attempt_states(&app.db, "stripe").await.len() == 6
        })
        .await
    );
    assert_eq!(app.broker.stats().await.unwrap().1.messages, 0);
    assert_eq!(
        app.db.count_events(Some("stripe")).await.unwrap(),
        6,
        "each event archived once"
    );
    for i in 0..3 {
        let id = format!("evt_poison_{i}");
        assert_eq!(
            app.db.archived_count("stripe", &id).await.unwrap(),
            1,
            "{id}"
        );
    }
    assert!(app.db.verify_ledger().await.unwrap().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn purge_refuses_without_confirmation_and_is_audited() {
    let (_config, app) = poisoned_app().await;
    load(&app, 2, 1).await;

    let refused = dlq::purge(
        &app.broker,
        &app.db,
        &Default::default(),
        false,
        &Actor::cli(),
    )
    .await;
    assert!(matches!(refused, Err(OpsError::NotConfirmed)));
    let response = admin_post(&app, "/admin/dlq/purge", json!({ "source": "stripe" })).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("confirm"),
        "{body}"
    );
    assert_eq!(
        app.broker.stats().await.unwrap().1.messages,
        2,
        "nothing purged"
    );

    let purged: Value = admin_post(
        &app,
        "/admin/dlq/purge",
        json!({ "ids": ["stripe:evt_poison_0"], "confirm": true }),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(purged["purged"], 1);
    // The letters the purge looked at but kept return to the queue when its channel
    // closes, which the broker does asynchronously: wait for the count to settle.
    assert!(
        eventually(WAIT, || async {
            app.broker.stats().await.unwrap().1.messages == 1
        })
        .await,
        "one letter left"
    );
    let audit: Value = app
        .admin_get("/admin/audit", Some(ADMIN_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    let entry = &audit["entries"][0];
    assert_eq!(
        (entry["action"].as_str(), entry["count"].as_i64()),
        (Some("dlq.purge"), Some(1))
    );
    assert_eq!(entry["actor"], "admin");
    let unauthenticated = app
        .http
        .post(format!("{}/admin/dlq/purge", app.admin))
        .json(&json!({ "confirm": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    assert_eq!(app.broker.stats().await.unwrap().1.messages, 1);
    app.stop().await;
}

#[tokio::test]
async fn archived_events_replay_through_reconciliation_and_a_dry_run_changes_nothing() {
    let (config, app) = poisoned_app().await;
    fix_the_cause(&config).await;
    load(&app, 0, 4).await;
    // A row lost behind the ledger's back (a bug, a bad manual fix): the archive has it.
    let mut conn = sqlx::PgConnection::connect(&config.database_url)
        .await
        .unwrap();
    sqlx::query("DELETE FROM billing_attempts WHERE attempt_id = 'in_good_2:1'")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(attempt_states(&app.db, "stripe").await.len(), 3);
    let since = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();

    let dry: Value = admin_post(
        &app,
        "/admin/replay",
        json!({ "source_id": "stripe", "since": since, "dry_run": true }),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        (dry["events"].as_u64(), dry["changed"].as_u64()),
        (Some(4), Some(1))
    );
    assert_eq!(dry["changes"][0]["event_id"], "evt_good_2");
    assert_eq!(
        attempt_states(&app.db, "stripe").await.len(),
        3,
        "the dry run changed nothing"
    );

    let real: Value = admin_post(
        &app,
        "/admin/replay",
        json!({ "source_id": "stripe", "since": since }),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(real["events"], 4);
    assert_eq!(
        attempt_states(&app.db, "stripe").await.len(),
        4,
        "healed from the archive"
    );
    let view = app
        .db
        .subscription("stripe", "sub_1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        view.balances["collected"]["EUR"],
        4 * 1200,
        "nothing posted twice"
    );
    assert!(app.db.verify_ledger().await.unwrap().is_empty());
    let again: Value = admin_post(
        &app,
        "/admin/replay",
        json!({ "source_id": "stripe", "since": since, "dry_run": true }),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(again["changed"], 0);
    assert_eq!(
        admin_post(
            &app,
            "/admin/replay",
            json!({ "source_id": "nope", "since": since })
        )
        .await
        .status(),
        404
    );
    app.stop().await;
}
