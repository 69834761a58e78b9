//! Two worker instances consume the same queue at once, over a few thousand signed Stripe
//! webhooks delivered shuffled and duplicated: the ledger ends equal to a serial,
//! in-order reconciliation of the same webhooks, and no entry is posted twice.

use crate::common;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::{TestConfig, eventually, snapshot, spawn_app};
use futures_util::StreamExt;
use subsync::{app::Role, config::DatabaseSettings, db::Db, envelope::Envelope, ledger::NewEvent};

const SUBSCRIPTIONS: usize = 80;
const STRIPE: &str = r#"
[[sources]]
id = "stripe"
provider = "stripe"
secrets = ["whsec_concurrency_test_secret"]
"#;

/// The webhooks of a realistic month: per subscription a few invoices, each failing a few
/// times before it is paid (or not), plus subscription updates; (event id, body).
fn history() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for s in 0..SUBSCRIPTIONS {
        let sub = format!("sub_{s}");
        for i in 0..4 {
            let invoice = format!("in_{s}_{i}");
            let failures = (s + i) % 4;
            let paid = (s * 7 + i) % 5 != 0;
            for attempt in 1..=failures + usize::from(paid) {
                let kind = if attempt <= failures {
                    "invoice.payment_failed"
                } else {
                    "invoice.paid"
                };
                let id = format!("evt_{}", out.len());
                let body = serde_json::json!({
                    "id": id, "object": "event", "type": kind, "created": 1_700_000_000 + out.len(),
                    "data": { "object": {
                        "id": invoice, "object": "invoice", "customer": format!("cus_{s}"),
                        "subscription": sub, "amount_due": 1000 + s * 10 + i, "amount_paid": if kind == "invoice.paid" { 1000 + s * 10 + i } else { 0 },
                        "currency": if s % 3 == 0 { "jpy" } else { "usd" }, "attempt_count": attempt,
                        "status": if kind == "invoice.paid" { "paid" } else { "open" },
                    } }
                });
                out.push((id, serde_json::to_vec(&body).unwrap()));
            }
            let status = ["active", "past_due", "active", "canceled"][(s + i) % 4];
            let id = format!("evt_{}", out.len());
            let body = serde_json::json!({
                "id": id, "object": "event", "type": "customer.subscription.updated",
                "created": 1_700_000_000 + out.len(),
                "data": { "object": {
                    "id": sub, "object": "subscription", "status": status, "customer": format!("cus_{s}"),
                    "currency": if s % 3 == 0 { "jpy" } else { "usd" }, "current_period_end": 1_702_000_000,
                } }
            });
            out.push((id, serde_json::to_vec(&body).unwrap()));
        }
    }
    out
}

#[tokio::test]
async fn two_workers_on_one_queue_equal_the_serial_reference() {
    let mut config = TestConfig::new().await;
    config.extra = STRIPE.into();
    let ingress = spawn_app(&config, Role::Ingress).await;
    let workers = [
        spawn_app(&config, Role::Worker).await,
        spawn_app(&config, Role::Worker).await,
    ];
    let two_consumers = eventually(Duration::from_secs(10), || async {
        ingress.broker.stats().await.unwrap().0.consumers == 2
    })
    .await;
    assert!(
        two_consumers,
        "both worker instances consume the work queue"
    );
    let source = crate::common::source(ingress.settings.source("stripe").unwrap()).unwrap();
    let webhooks = history();
    assert!(webhooks.len() > 1000, "{}", webhooks.len());

    // Deliver each webhook one to three times, shuffled (deterministically).
    let mut deliveries: Vec<(u64, usize)> = Vec::new();
    for i in 0..webhooks.len() {
        for copy in 0..1 + (i * 31 % 3) {
            deliveries.push((
                (i as u64 * 2_654_435_761 + copy as u64 * 40_503) % 1_000_003,
                i,
            ));
        }
    }
    deliveries.sort();
    assert!(
        deliveries.len() > 2000,
        "a few thousand deliveries: {}",
        deliveries.len()
    );
    let now = SystemTime::now();
    let statuses: Vec<u16> = futures_util::stream::iter(deliveries.iter().map(|(_, i)| {
        let (id, body) = &webhooks[*i];
        let headers = source.sign(id, body, now);
        let ingress = &ingress;
        async move { ingress.post("stripe", &headers, body.clone()).await }
    }))
    .buffer_unordered(32)
    .map(|response| response.status().as_u16())
    .collect()
    .await;
    assert!(statuses.iter().all(|s| *s == 202), "every delivery queued");

    let db = &workers[0].db;
    let all_reconciled = eventually(Duration::from_secs(60), || async {
        db.count_events(Some("stripe")).await.unwrap() == webhooks.len() as i64
    })
    .await;
    assert!(all_reconciled, "the backlog drained");
    for id in webhooks.iter().map(|(id, _)| id) {
        assert_eq!(
            db.archived_count("stripe", id).await.unwrap(),
            1,
            "{id} archived exactly once"
        );
    }

    // The serial reference: the same webhooks, in order, once each, one per transaction.
    let reference = Db::connect_lazy(&DatabaseSettings {
        url: common::fresh_database().await.into(),
        max_connections: 2,
        acquire_timeout_ms: 5000,
    })
    .unwrap();
    reference.migrate().await.unwrap();
    for (id, body) in &webhooks {
        let envelope = Envelope {
            source_id: "stripe".into(),
            provider: source.kind(),
            event_id: id.clone(),
            received_at: chrono::Utc::now(),
            content_type: None,
            headers: vec![],
            body: Bytes::from(body.clone()),
        };
        let normalized = source.normalize(&envelope).unwrap();
        let event = NewEvent {
            envelope: &envelope,
            event_type: &normalized.event_type,
            events: &normalized.events,
        };
        reference
            .reconcile(&[event], &Default::default())
            .await
            .unwrap();
    }
    let subs: Vec<String> = (0..SUBSCRIPTIONS).map(|s| format!("sub_{s}")).collect();
    let expected = snapshot(&reference, "stripe", &subs).await;
    assert!(
        expected.contains("succeeded")
            && expected.contains("failed")
            && expected.contains("collected")
    );
    assert_eq!(snapshot(db, "stripe", &subs).await, expected);
    assert!(
        db.verify_ledger().await.unwrap().is_empty(),
        "no entry posted twice or unbalanced"
    );

    for app in workers {
        app.stop().await;
    }
    ingress.stop().await;
}
