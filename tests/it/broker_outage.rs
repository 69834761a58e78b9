//! The broker goes away: the ingress answers 503 (never a 2xx without a confirm) and
//! recovers by itself when the broker is back.

use crate::common;

use std::time::Duration;

use common::{TestConfig, body, eventually, proxy::Proxy, spawn_app};
use subsync::app::Role;

#[tokio::test]
async fn broker_unreachable_gives_503_and_the_service_recovers_by_itself() {
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let mut config = TestConfig::new().await;
    config.amqp_url = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    let app = spawn_app(&config, Role::All).await;
    assert_eq!(
        app.post_signed("demo", "before", &body("invoice.paid", 0))
            .await
            .status(),
        202
    );

    proxy.cut();
    let mut statuses = Vec::new();
    for n in 0..20 {
        statuses.push(
            app.post_signed("demo", &format!("during-{n}"), &body("invoice.paid", n))
                .await
                .status(),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        statuses.iter().all(|s| *s == 503 || *s == 202),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().skip(5).all(|s| *s == 503),
        "once the link is known down, only 503: {statuses:?}"
    );
    assert_eq!(app.admin_get("/readyz", None).await.status(), 503);

    proxy.restore();
    let mut n = 0;
    assert!(
        eventually(Duration::from_secs(30), || {
            n += 1;
            let id = format!("after-{n}");
            let app = &app;
            async move {
                app.post_signed("demo", &id, &body("invoice.paid", 1))
                    .await
                    .status()
                    == 202
            }
        })
        .await,
        "ingress recovered without a restart"
    );
    let accepted: Vec<String> = std::iter::once("before".to_owned())
        .chain(
            statuses
                .iter()
                .enumerate()
                .filter(|(_, s)| **s == 202)
                .map(|(i, _)| format!("during-{i}")),
        )
        .chain(std::iter::once(format!("after-{n}")))
        .collect();
    // Every 2xx is in the archive: nothing acknowledged was lost.
    for id in &accepted {
        let archived = eventually(Duration::from_secs(30), || async {
            app.db.archived_count("demo", id).await.unwrap() == 1
        })
        .await;
        assert!(archived, "{id} got a 2xx and must be archived");
    }
    assert_eq!(app.admin_get("/readyz", None).await.status(), 200);
    app.stop().await;
}
