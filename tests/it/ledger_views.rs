//! The ledger's views for people and tools: `GET /admin/subscriptions/...`,
//! `GET /admin/billing-attempts`, `subsync ledger subscription` and `subsync ledger verify`.

use crate::common;

use std::{process::Command, time::Duration};

use common::{ADMIN_TOKEN, TestConfig, eventually, spawn_app};
use subsync::app::Role;

const BIN: &str = env!("CARGO_BIN_EXE_subsync");

fn invoice_event(id: &str, kind: &str, attempt: u32) -> Vec<u8> {
    let paid = kind == "invoice.paid";
    serde_json::to_vec(&serde_json::json!({
        "id": id, "object": "event", "type": kind, "created": 1_700_000_000 + attempt,
        "data": { "object": {
            "id": "in_1", "object": "invoice", "customer": "cus_1", "subscription": "sub_1",
            "amount_due": 4995, "amount_paid": if paid { 4995 } else { 0 }, "currency": "usd",
            "attempt_count": attempt, "status": if paid { "paid" } else { "open" },
            "payment_intent": { "id": "pi_1", "last_payment_error": if paid { serde_json::Value::Null } else {
                serde_json::json!({ "code": "card_declined", "decline_code": "insufficient_funds" }) } },
        } }
    }))
    .unwrap()
}

#[tokio::test]
async fn subscription_and_attempt_views_over_http_and_cli() {
    let mut config = TestConfig::new().await;
    config.extra =
        "[[sources]]\nid = \"stripe\"\nprovider = \"stripe\"\nsecrets = [\"whsec_views\"]\n".into();
    let app = spawn_app(&config, Role::All).await;
    let source = crate::common::source(app.settings.source("stripe").unwrap()).unwrap();
    for (id, kind, attempt) in [
        ("evt_1", "invoice.payment_failed", 1),
        ("evt_2", "invoice.paid", 2),
    ] {
        let body = invoice_event(id, kind, attempt);
        let headers = source.sign(id, &body, std::time::SystemTime::now());
        assert_eq!(app.post("stripe", &headers, body).await.status(), 202);
    }
    assert!(
        eventually(Duration::from_secs(20), || async {
            app.db.count_events(Some("stripe")).await.unwrap() == 2
        })
        .await
    );

    let path = "/admin/subscriptions/stripe/sub_1";
    assert_eq!(app.admin_get(path, None).await.status(), 401);
    let view: serde_json::Value = app
        .admin_get(path, Some(ADMIN_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["source_id"], "stripe");
    assert_eq!(view["subscription_id"], "sub_1");
    assert_eq!(
        view["status"],
        serde_json::Value::Null,
        "no subscription event yet"
    );
    assert_eq!(view["retry"], serde_json::Value::Null);
    assert_eq!(view["balances"]["collected"]["USD"], 4995);
    let attempts = view["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    let failed = attempts
        .iter()
        .find(|a| a["attempt_id"] == "in_1:1")
        .unwrap();
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error_code"], "insufficient_funds");
    assert_eq!(failed["decline_bucket"], "retry_soon");
    assert_eq!(failed["amount_minor"], 4995);
    assert_eq!(failed["currency"], "USD");
    for key in ["provider_status", "attempted_at"] {
        assert!(failed.get(key).is_some(), "{key}");
    }
    assert_eq!(
        app.admin_get("/admin/subscriptions/stripe/nope", Some(ADMIN_TOKEN))
            .await
            .status(),
        404
    );

    let list: serde_json::Value = app
        .admin_get(
            "/admin/billing-attempts?source_id=stripe&status=succeeded",
            Some(ADMIN_TOKEN),
        )
        .await
        .json()
        .await
        .unwrap();
    let list = list["billing_attempts"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["attempt_id"], "in_1:2");

    // The same through the CLI, against the same database.
    let config_path = config.write();
    let cli = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("SUBSYNC_CONFIG", &config_path)
            .output()
            .unwrap()
    };
    let out = cli(&["ledger", "subscription", "stripe", "sub_1", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let from_cli: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        from_cli, view,
        "the CLI and the admin API show the same object"
    );
    let out = cli(&["ledger", "subscription", "stripe", "sub_1"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("insufficient_funds (retry_soon)"));
    let out = cli(&["ledger", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ledger sound"));
    let _ = std::fs::remove_file(config_path);
    app.stop().await;
}
