//! `/metrics` is read-only for the dead-letter queue: the oldest dead letter's age comes
//! from the dead-letter index in Postgres (written by the worker when it dead-letters,
//! updated by replays and purges, rebuilt by the indexer), never from fetching the queue.

use crate::common;

use std::time::Duration;

use chrono::Utc;
use common::{ADMIN_TOKEN, TestApp, TestConfig, eventually, spawn_app};
use serde_json::json;
use sqlx::Connection;
use subsync::{app::Role, ops::dead_letter_index};

const WAIT: Duration = Duration::from_secs(20);

async fn poison(app: &TestApp, event_id: &str) {
    let response = app.post_signed("demo", event_id, b"this is not json").await;
    assert_eq!(response.status(), 202);
}

async fn dead_letters(app: &TestApp) -> u32 {
    app.broker.stats().await.unwrap().1.messages
}

async fn wait_dead_letters(app: &TestApp, n: u32) {
    assert!(
        eventually(WAIT, || async { dead_letters(app).await == n }).await,
        "{n} dead letters"
    );
}

/// Every letter in the queue, head first: id and the broker's delivery count.
async fn browse(app: &TestApp) -> Vec<(String, u64)> {
    let mut session = app.broker.dead_letter_session().await.unwrap();
    let mut letters = Vec::new();
    while let Some(letter) = session.next().await.unwrap() {
        let deliveries = letter
            .headers
            .get("x-delivery-count")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        letters.push((letter.id.clone(), deliveries));
    }
    session.close().await;
    letters
}

async fn scrape(app: &TestApp) -> String {
    let response = app.admin_get("/metrics", None).await;
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

fn gauge(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in the scrape"))
}

async fn oldest_age(app: &TestApp) -> f64 {
    gauge(&scrape(app).await, "subsync_dead_letter_oldest_age_seconds")
}

async fn admin_post(app: &TestApp, path: &str, body: serde_json::Value) {
    let response = app
        .http
        .post(format!("{}{path}", app.admin))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
}

#[tokio::test]
async fn a_scrape_neither_moves_nor_redelivers_dead_letters() {
    let config = TestConfig::new().await;
    let app = spawn_app(&config, Role::All).await;
    for id in ["msg_poison_1", "msg_poison_2", "msg_poison_3"] {
        poison(&app, id).await;
    }
    wait_dead_letters(&app, 3).await;
    let before = browse(&app).await;
    assert_eq!(before.len(), 3);
    wait_dead_letters(&app, 3).await;

    for _ in 0..5 {
        let metrics = scrape(&app).await;
        let depth = r#"subsync_queue_messages{queue="dead_letter"}"#;
        assert_eq!(gauge(&metrics, depth), 3.0);
        assert_eq!(gauge(&metrics, "subsync_dead_letters_indexed"), 3.0);
    }

    wait_dead_letters(&app, 3).await;
    let after = browse(&app).await;
    let ids = |letters: &[(String, u64)]| letters.iter().map(|l| l.0.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&after), ids(&before), "same letters, same order");
    for ((id, was), (_, now)) in before.iter().zip(&after) {
        // Our own second browse is the only delivery in between: no scrape fetched any.
        assert_eq!(*now, was + 1, "{id}: deliveries {was} -> {now}");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_oldest_age_follows_dead_letters_replays_and_purges() {
    let config = TestConfig::new().await;
    let app = spawn_app(&config, Role::All).await;
    assert_eq!(oldest_age(&app).await, 0.0, "no dead letter yet");

    let first_posted = Utc::now();
    poison(&app, "msg_old").await;
    wait_dead_letters(&app, 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second_posted = Utc::now();
    poison(&app, "msg_new").await;
    wait_dead_letters(&app, 2).await;

    let age = oldest_age(&app).await;
    let since_first = (Utc::now() - first_posted).as_seconds_f64();
    assert!(
        age >= 2.0 && age <= since_first,
        "age {age}, posted {since_first}s ago"
    );

    // Purging the oldest leaves the younger one's age.
    admin_post(
        &app,
        "/admin/dlq/purge",
        json!({"ids": ["demo:msg_old"], "confirm": true}),
    )
    .await;
    wait_dead_letters(&app, 1).await;
    let age = oldest_age(&app).await;
    let since_second = (Utc::now() - second_posted).as_seconds_f64();
    assert!(age <= since_second, "age {age}, posted {since_second}s ago");

    // A replay takes it out; the worker dead-letters it again (still unparseable): younger.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let replayed_at = Utc::now();
    admin_post(&app, "/admin/dlq/replay", json!({"ids": ["demo:msg_new"]})).await;
    let again = eventually(WAIT, || async {
        let stats = dead_letter_index::stats(&app.db).await.unwrap();
        stats.letters == 1 && stats.oldest.is_some_and(|t| t >= replayed_at)
    })
    .await;
    assert!(
        again,
        "dead-lettered again after the replay, with the new time"
    );
    let age = oldest_age(&app).await;
    assert!(age <= (Utc::now() - replayed_at).as_seconds_f64());

    admin_post(&app, "/admin/dlq/purge", json!({"confirm": true})).await;
    let metrics = scrape(&app).await;
    assert_eq!(
        gauge(&metrics, "subsync_dead_letter_oldest_age_seconds"),
        0.0
    );
    assert_eq!(gauge(&metrics, "subsync_dead_letters_indexed"), 0.0);
    app.stop().await;
}

#[tokio::test]
async fn the_indexer_records_letters_it_was_not_told_about() {
    let config = TestConfig::new().await;
    let app = spawn_app(&config, Role::All).await;
    poison(&app, "msg_unseen").await;
    wait_dead_letters(&app, 1).await;
    assert!(
        eventually(WAIT, || async {
            dead_letter_index::stats(&app.db).await.unwrap().letters == 1
        })
        .await
    );
    let recorded = dead_letter_index::stats(&app.db).await.unwrap();
    // Depth and rows agree: the queue is not read.
    assert_eq!(
        dead_letter_index::reindex(&app.broker, &app.db)
            .await
            .unwrap(),
        None
    );

    // As if the broker had dead-lettered it on its own (delivery limit), unseen by us.
    let mut conn = sqlx::PgConnection::connect(&config.database_url)
        .await
        .unwrap();
    sqlx::query("DELETE FROM dead_letters")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(dead_letter_index::stats(&app.db).await.unwrap().letters, 0);
    assert_eq!(
        dead_letter_index::reindex(&app.broker, &app.db)
            .await
            .unwrap(),
        Some(1)
    );
    let rebuilt = dead_letter_index::stats(&app.db).await.unwrap();
    assert_eq!(rebuilt, recorded, "same letter, same dead-letter time");
    let (id, by): (String, String) = sqlx::query_as("SELECT id, recorded_by FROM dead_letters")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!((id.as_str(), by.as_str()), ("demo:msg_unseen", "indexer"));
    wait_dead_letters(&app, 1).await;
    app.stop().await;
}
