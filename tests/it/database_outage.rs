//! The database goes away while webhooks keep arriving: nothing is dead-lettered, the
//! worker holds and retries, and the backlog drains once the database is back.

use crate::common;

use std::time::Duration;

use common::{TestConfig, body, eventually, proxy::Proxy, spawn_app};
use subsync::app::Role;

#[tokio::test]
async fn database_outage_is_waited_out_without_dead_lettering() {
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let mut config = TestConfig::new().await;
    let real_url = config.database_url.clone();
    config.database_url = real_url.replace("127.0.0.1:5432", &proxy.addr.to_string());
    config.delivery_limit = 2;
    let app = spawn_app(&config, Role::All).await;
    assert_eq!(
        app.post_signed("demo", "before", &body("invoice.paid", 0))
            .await
            .status(),
        202
    );
    assert!(
        eventually(Duration::from_secs(20), || async {
            app.db.archived_count("demo", "before").await.unwrap() == 1
        })
        .await
    );

    proxy.cut();
    for n in 0..50 {
        let status = app
            .post_signed("demo", &format!("during-{n}"), &body("invoice.paid", n))
            .await
            .status();
        assert_eq!(status, 202, "the ingress does not need the database");
    }
    // Long enough for many retries, several pool timeouts and more than the delivery limit
    // if the worker were nacking.
    tokio::time::sleep(Duration::from_secs(4)).await;
    // The worker holds its deliveries unacked while retrying (a passive declare counts only
    // ready messages, so the held ones are proven by the drain below).
    let dead = app.broker.stats().await.unwrap().1;
    assert_eq!(dead.messages, 0, "nothing dead-lettered during the outage");

    proxy.restore();
    let drained = eventually(Duration::from_secs(30), || async {
        app.db
            .events(&Default::default())
            .await
            .map(|e| e.len() == 51)
            .unwrap_or(false)
    })
    .await;
    assert!(drained, "the backlog drained after the outage");
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.queued().await == 0
        })
        .await
    );
    assert_eq!(app.broker.stats().await.unwrap().1.messages, 0);
    app.stop().await;
}
