//! No silent death, against the real broker: a worker consumer whose work queue is deleted
//! from under it (the broker up) fails, is restarted with backoff, is named by `/readyz`
//! while down, and consumes again once the queue is back.

use crate::common;

use std::time::Duration;

use common::{TestConfig, eventually, spawn_app};
use serde_json::Value;
use subsync::{app::Role, queue::Broker};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

async fn readyz(app: &common::TestApp) -> (u16, Value) {
    let response = app.admin_get("/readyz", None).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn restarts(metrics: &str, task: &str) -> u64 {
    let prefix = format!("subsync_task_restarts_total{{task=\"{task}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_consumer_losing_its_queue_is_named_by_readyz_until_it_recovers() {
    let config = TestConfig::new().await;
    let app = spawn_app(&config, Role::All).await;
    assert!(
        eventually(WAIT, || async { readyz(&app).await.0 == 200 }).await,
        "ready at start"
    );
    let before = app.admin_get("/metrics", None).await.text().await.unwrap();
    // The document describes the 503 body this test reads.
    let spec: Value = app
        .admin_get("/admin/openapi.json", None)
        .await
        .json()
        .await
        .unwrap();
    let not_ready = &spec["paths"]["/readyz"]["get"]["responses"]["503"];
    let schema = not_ready["content"]["application/json"]["schema"]["$ref"].as_str();
    assert_eq!(schema, Some("#/components/schemas/NotReady"), "{not_ready}");
    let down = &spec["components"]["schemas"]["NotReady"]["properties"]["down"];
    assert_eq!(down["type"], "array", "{down}");

    // The broker stays up; the queue the consumer reads from goes away.
    app.broker.delete_topology().await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let body = loop {
        let (status, body) = readyz(&app).await;
        let named = body["down"]
            .as_array()
            .is_some_and(|d| d.iter().any(|t| t == "worker-0"));
        if status == 503 && named {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readyz names the consumer while it is down; last: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body["error"], "service unavailable: tasks down");

    // Someone redeclares the topology (a second instance connecting does): it recovers.
    let stop = CancellationToken::new();
    let other = Broker::start(&app.settings.amqp, stop.clone());
    assert!(other.wait_connected(Duration::from_secs(20)).await);
    stop.cancel();
    assert!(
        eventually(WAIT, || async { readyz(&app).await.0 == 200 }).await,
        "ready again after the restart"
    );
    let after = app.admin_get("/metrics", None).await.text().await.unwrap();
    assert!(restarts(&after, "worker-0") > restarts(&before, "worker-0"));

    // The restarted consumer really consumes.
    let body = common::body("invoice.paid", 1);
    assert_eq!(
        app.post_signed("demo", "msg_after_restart", &body)
            .await
            .status(),
        202
    );
    let archived = eventually(WAIT, || async {
        app.db
            .archived_count("demo", "msg_after_restart")
            .await
            .unwrap()
            == 1
    })
    .await;
    assert!(archived, "the event posted after the recovery is archived");
    app.stop().await;
}
