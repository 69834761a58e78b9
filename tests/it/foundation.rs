//! The foundation path against the real broker and database: a signed webhook travels
//! ingress → RabbitMQ → worker → Postgres; bad input is refused and queues nothing.

use crate::common;

use std::time::Duration;

use common::{ADMIN_TOKEN, TestConfig, body, eventually, spawn_app};
use subsync::app::Role;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn valid_webhook_is_accepted_and_archived_exactly_once() {
    let app = spawn_app(&TestConfig::new().await, Role::All).await;
    let response = app
        .post_signed("demo", "msg_valid_1", &body("invoice.paid", 1))
        .await;
    assert_eq!(response.status(), 202);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["event_id"], "msg_valid_1");

    assert!(
        eventually(WAIT, || async {
            app.db.archived_count("demo", "msg_valid_1").await.unwrap() == 1
        })
        .await
    );
    let events = app.db.events(&Default::default()).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, "invoice.paid");
    assert_eq!(
        events[0].outcome, "ignored",
        "a generic Standard Webhooks payload is archived, not acted on"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_same_webhook_delivered_three_times_is_archived_once() {
    let app = spawn_app(&TestConfig::new().await, Role::All).await;
    let payload = body("invoice.paid", 7);
    for _ in 0..3 {
        assert_eq!(
            app.post_signed("demo", "msg_dup", &payload).await.status(),
            202
        );
    }
    // A later, different event proves the worker got past all three copies.
    assert_eq!(
        app.post_signed("demo", "msg_after", &payload)
            .await
            .status(),
        202
    );
    assert!(
        eventually(WAIT, || async {
            app.db.archived_count("demo", "msg_after").await.unwrap() == 1
        })
        .await
    );
    assert!(eventually(WAIT, || async { app.queued().await == 0 }).await);
    assert_eq!(app.db.archived_count("demo", "msg_dup").await.unwrap(), 1);
    assert_eq!(app.db.events(&Default::default()).await.unwrap().len(), 2);
    app.stop().await;
}

/// SW-1 and SW-2 (the Standard Webhooks libraries' own sign tests) through the real ingress. Their
/// timestamps are from 2021-22, so this source allows a window that reaches back to them.
#[tokio::test]
async fn published_standard_webhooks_vectors_pass_and_near_misses_fail() {
    let mut config = TestConfig::new().await;
    config.extra = r#"
[[sources]]
id = "sw1"
provider = "standard"
secrets = ["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"]
tolerance_secs = 2000000000
[[sources]]
id = "sw2"
provider = "standard"
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
tolerance_secs = 2000000000
"#
    .into();
    let app = spawn_app(&config, Role::Ingress).await;
    let vectors = [
        (
            "sw1",
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            "1649367553",
            r#"{"email":"test@example.com","username":"test_user"}"#,
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
            "v1,R3PTzyfHASBKHH98a7yexTwaJ4yNIcGhFQc1yuN+BPU=",
        ),
        (
            "sw2",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            r#"{"test": 2432232314}"#,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=",
        ),
    ];
    for (source, id, ts, payload, good, near) in vectors {
        let headers = |sig: &str| {
            vec![
                ("webhook-id".to_owned(), id.to_owned()),
                ("webhook-timestamp".to_owned(), ts.to_owned()),
                ("webhook-signature".to_owned(), sig.to_owned()),
            ]
        };
        assert_eq!(
            app.post(source, &headers(near), payload.into())
                .await
                .status(),
            401,
            "{source} near miss"
        );
        assert_eq!(
            app.post(source, &headers(good), payload.into())
                .await
                .status(),
            202,
            "{source} vector"
        );
    }
    assert!(
        eventually(WAIT, || async { app.queued().await == 2 }).await,
        "exactly the two vectors were queued"
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_signatures_missing_headers_and_stale_or_future_timestamps_are_401_and_queue_nothing() {
    let app = spawn_app(&TestConfig::new().await, Role::Ingress).await;
    let payload = body("invoice.paid", 1);
    let now = std::time::SystemTime::now();
    let demo = crate::common::source(app.settings.source("demo").unwrap()).unwrap();
    let wrong = crate::common::source(&subsync::config::SourceSettings {
        secrets: vec![
            "whsec_d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA=="
                .to_owned()
                .into(),
        ],
        ..app.settings.source("demo").unwrap().clone()
    })
    .unwrap();

    let mut cases: Vec<(&str, Vec<(String, String)>)> =
        vec![("wrong secret", wrong.sign("m1", &payload, now))];
    for missing in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        let headers = demo
            .sign("m2", &payload, now)
            .into_iter()
            .filter(|(n, _)| n != missing)
            .collect();
        cases.push(("missing header", headers));
    }
    for skew in [-301i64, 301] {
        let at = if skew < 0 {
            now - Duration::from_secs(301)
        } else {
            now + Duration::from_secs(301)
        };
        cases.push(("timestamp out of window", demo.sign("m3", &payload, at)));
    }
    for (what, headers) in cases {
        let response = app.post("demo", &headers, payload.clone()).await;
        assert_eq!(response.status(), 401, "{what}");
        let json: serde_json::Value = response.json().await.unwrap();
        assert!(
            json["error"].as_str().unwrap().starts_with("unauthorized"),
            "{what}: {json}"
        );
        assert!(
            !json.to_string().contains("whsec_"),
            "no secret in the error body"
        );
    }
    assert_eq!(app.queued().await, 0, "nothing was published");

    // The same check sees a message once a valid one is sent.
    assert_eq!(
        app.post("demo", &demo.sign("m4", &payload, now), payload.clone())
            .await
            .status(),
        202
    );
    assert!(eventually(WAIT, || async { app.queued().await == 1 }).await);
    app.stop().await;
}

#[tokio::test]
async fn oversized_body_is_413_and_unknown_source_is_404() {
    let mut config = TestConfig::new().await;
    config.body_limit = 1024;
    let app = spawn_app(&config, Role::Ingress).await;
    let big = vec![b'x'; 2048];
    let response = app.post_signed("demo", "msg_big", &big).await;
    assert_eq!(response.status(), 413);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"], "payload too large");

    let response = app.post_signed("demo", "msg_small", &body("x", 1)).await;
    assert_eq!(response.status(), 202, "a body under the limit passes");

    let response = app.post("nope", &[], body("x", 1)).await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["error"],
        "unknown source"
    );
    app.stop().await;
}

#[tokio::test]
async fn correctly_signed_but_unparseable_payload_is_dead_lettered_with_its_reason() {
    let app = spawn_app(&TestConfig::new().await, Role::All).await;
    assert_eq!(
        app.post_signed("demo", "msg_poison", b"this is not json")
            .await
            .status(),
        202
    );
    assert_eq!(
        app.post_signed("demo", "msg_fine", &body("invoice.paid", 2))
            .await
            .status(),
        202
    );

    assert!(
        eventually(WAIT, || async {
            app.broker.stats().await.unwrap().1.messages > 0
        })
        .await
    );
    let mut session = app.broker.dead_letter_session().await.unwrap();
    let mut dead = Vec::new();
    while let Some(letter) = session.next().await.unwrap() {
        dead.push(letter);
    }
    session.close().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, "demo:msg_poison");
    let envelope = dead[0].envelope.as_ref().unwrap();
    assert_eq!(envelope.event_id, "msg_poison");
    assert_eq!(
        &envelope.body[..],
        b"this is not json",
        "raw body kept byte for byte"
    );
    let reason = dead[0].reason.as_deref().unwrap();
    assert!(
        reason.starts_with("normalize: malformed payload"),
        "{reason}"
    );

    assert!(
        eventually(WAIT, || async {
            app.db.archived_count("demo", "msg_fine").await.unwrap() == 1
        })
        .await
    );
    assert_eq!(
        app.db.archived_count("demo", "msg_poison").await.unwrap(),
        0
    );
    // Peeking does not consume: the dead letter is still there (given back to the queue
    // when the session closed; the broker's count follows shortly).
    assert!(
        eventually(WAIT, || async {
            app.broker.stats().await.unwrap().1.messages == 1
        })
        .await
    );
    app.stop().await;
}

#[tokio::test]
async fn admin_requires_the_bearer_token_and_health_endpoints_answer() {
    let app = spawn_app(&TestConfig::new().await, Role::All).await;
    assert_eq!(app.admin_get("/admin/events", None).await.status(), 401);
    assert_eq!(
        app.admin_get("/admin/events", Some("not-the-token-at-all"))
            .await
            .status(),
        401
    );
    let ok = app.admin_get("/admin/events", Some(ADMIN_TOKEN)).await;
    assert_eq!(ok.status(), 200);
    assert!(ok.json::<serde_json::Value>().await.unwrap()["events"].is_array());

    assert_eq!(app.admin_get("/healthz", None).await.status(), 200);
    assert_eq!(app.admin_get("/readyz", None).await.status(), 200);
    app.post_signed("demo", "msg_metrics", &body("invoice.paid", 1))
        .await;
    let metrics = app.admin_get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains("subsync_ingress_requests_total{source=\"demo\",outcome=\"queued\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("subsync_publish_duration_seconds_bucket"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_body_that_never_finishes_gets_503_at_the_deadline_and_queues_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = TestConfig::new().await;
    config.request_timeout_ms = 500;
    let app = spawn_app(&config, Role::Ingress).await;
    let addr = app.ingress.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // Promise 100 bytes, send 10, then stall.
    let head = format!(
        "POST /webhooks/demo HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 100\r\n\r\n0123456789"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut response = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    assert!(
        read.is_ok(),
        "the server answered and closed instead of waiting forever"
    );
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("request timed out"), "{text}");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "not before the deadline"
    );
    assert_eq!(app.queued().await, 0);
    app.stop().await;
}
