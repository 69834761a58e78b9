//! One signed webhook per provider through the real ingress and queue into the archive,
//! and one unsigned request per provider refused with nothing queued.

use crate::common;

use std::time::{Duration, SystemTime};

use common::{TestConfig, eventually, spawn_app};
use subsync::{app::Role, config::ProviderKind};

/// A Stripe source, and one of every other provider (the config has `demo`, standard).
fn sources() -> String {
    format!(
        "[[sources]]\nid = \"stripe\"\nprovider = \"stripe\"\nsecrets = [\"whsec_test_secret\"]\n{}",
        common::PROVIDER_SOURCES
    )
}

#[tokio::test]
async fn every_provider_signed_sample_is_archived_and_unsigned_is_refused() {
    let mut config = TestConfig::new().await;
    config.extra = sources();
    let app = spawn_app(&config, Role::All).await;
    let now = SystemTime::now();
    let mut accepted = Vec::new();
    for kind in ProviderKind::ALL {
        let id = if kind == ProviderKind::Standard {
            "demo"
        } else {
            kind.as_str()
        };
        let source = crate::common::source(app.settings.source(id).unwrap()).unwrap();
        let event_id = format!("evt_{id}_1");
        let body = source.sample_body(&event_id, now);

        let unsigned = app.post(id, &[], body.clone()).await;
        assert_eq!(unsigned.status(), 401, "{id}: unsigned");

        let response = app
            .post(id, &source.sign(&event_id, &body, now), body)
            .await;
        assert_eq!(response.status(), 202, "{id}: signed sample");
        let json: serde_json::Value = response.json().await.unwrap();
        accepted.push((id, json["event_id"].as_str().unwrap().to_owned()));
    }
    for (source, event_id) in &accepted {
        let archived = eventually(Duration::from_secs(20), || async {
            app.db.archived_count(source, event_id).await.unwrap() == 1
        })
        .await;
        assert!(archived, "{source}/{event_id} archived");
    }
    let events = app.db.events(&Default::default()).await.unwrap();
    assert_eq!(
        events.len(),
        ProviderKind::ALL.len(),
        "one row per provider, nothing from the unsigned ones"
    );
    for event in &events {
        // Generic schemes carry no billing semantics; every provider sample does.
        let generic = ["demo", "svix", "hmac"].contains(&event.source_id.as_str());
        let canonical = event.normalized.as_array().unwrap();
        if generic {
            assert_eq!(event.outcome, "ignored", "{}", event.source_id);
            assert!(canonical.is_empty());
        } else {
            assert_eq!(event.outcome, "applied", "{}", event.source_id);
            assert!(
                !canonical.is_empty(),
                "{}: canonical events stored",
                event.source_id
            );
            let kind = canonical[0]["kind"].as_str().unwrap();
            assert!(
                kind == "billing_attempt" || kind == "subscription",
                "{}: {kind}",
                event.source_id
            );
        }
    }
    assert_eq!(
        app.broker.stats().await.unwrap().1.messages,
        0,
        "nothing dead-lettered"
    );
    app.stop().await;
}
