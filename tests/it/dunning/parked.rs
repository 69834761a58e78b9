//! The scheduler never panics and never loops on a broken retry: a provider's absurd
//! `Retry-After` (or Shopify throttle) is clamped, a retry whose calls keep failing is
//! parked with its error while the other sources' retries go on, and an operator resumes
//! it from the command line or the admin API.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use subsync::dunning::views::{self, RetriesQuery};
use wiremock::{Mock, MockServer, ResponseTemplate, matchers};

use super::common::ADMIN_TOKEN;
use super::support::{
    app_with, insert_retry, listed, metrics, resume_over_http, stripe_source, subsync,
};
use super::{FakeStripe, fake_stripe, invoice_event, retry, scheduler, send, t0};

/// Shopify's GraphQL answer when the bucket cannot hold the cost for 10^15 seconds.
fn shopify_throttled() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
        "extensions": {"cost": {"requestedQueryCost": 1e15, "actualQueryCost": null,
            "throttleStatus": {"maximumAvailable": 2000.0, "currentlyAvailable": 0, "restoreRate": 1.0}}}
    }))
}

#[tokio::test]
async fn a_huge_retry_after_or_throttle_is_clamped_instead_of_panicking_the_scheduler() {
    let stripe = MockServer::start().await;
    Mock::given(matchers::method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "10000000000000"))
        .mount(&stripe)
        .await;
    let shopify = MockServer::start().await;
    Mock::given(matchers::method("POST"))
        .respond_with(shopify_throttled())
        .mount(&shopify)
        .await;
    let shop = format!(
        "[[sources]]\nid = \"shop\"\nprovider = \"shopify\"\nsecrets = [\"shpss\"]\n\
         api = {{ base_url = \"{}\", token = \"shpat_x\" }}\n",
        shopify.uri()
    );
    let (config, app) = app_with(&[stripe_source("stripe", &stripe.uri()), shop]).await;
    let t0 = t0();
    send(
        &app,
        "evt_big",
        invoice_event(
            "evt_big",
            "invoice.payment_failed",
            "in_big",
            1,
            Some("insufficient_funds"),
            t0,
        ),
    )
    .await;
    let shop_cycle = "gid://shopify/SubscriptionBillingAttempt/1";
    insert_retry(&config, "shop", shop_cycle, t0 + chrono::Duration::hours(1)).await;

    let now = t0 + chrono::Duration::hours(7);
    let pass = scheduler(&app, Duration::from_secs(300))
        .run_once(now)
        .await;
    let pass = pass.expect("the pass completes");
    assert_eq!((pass.called, pass.parked), (2, 0));
    for (source, cycle) in [("stripe", "in_big"), ("shop", shop_cycle)] {
        let row = listed(&app, source, cycle).await;
        assert_eq!(row["status"], "scheduled", "{row}");
        assert_eq!(row["retries_done"], 0, "the same call again later: {row}");
        assert_eq!(row["consecutive_failures"], 1, "{row}");
        let error = row["last_error"].as_str().unwrap();
        assert!(error.starts_with("rate limited"), "{error}");
        let due: DateTime<Utc> = serde_json::from_value(row["due_at"].clone()).unwrap();
        assert!(
            now < due && due <= now + chrono::Duration::days(1),
            "clamped: {due}"
        );
    }
    // An id whose cycle key holds `/` reaches its row through the admin API (percent-encoded).
    let (status, body) = resume_over_http(&app, &format!("shop:{shop_cycle}")).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("is scheduled, not parked"),
        "{body}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_retry_that_keeps_failing_is_parked_with_its_error_while_other_sources_complete() {
    let fake = FakeStripe::default();
    let healthy = fake_stripe(fake.clone()).await;
    let down = MockServer::start().await;
    Mock::given(matchers::method("POST"))
        .respond_with(ResponseTemplate::new(503).set_body_string("upstream unavailable"))
        .mount(&down)
        .await;
    let sources = [
        stripe_source("stripe", &healthy.uri()),
        stripe_source("down", &down.uri()),
        stripe_source("refused", "http://127.0.0.1:1"),
    ];
    let (config, app) = app_with(&sources).await;
    let t0 = t0();
    send(
        &app,
        "evt_ok",
        invoice_event(
            "evt_ok",
            "invoice.payment_failed",
            "in_ok",
            1,
            Some("insufficient_funds"),
            t0,
        ),
    )
    .await;
    let due = t0 + chrono::Duration::hours(1);
    insert_retry(&config, "down", "in_down", due).await;
    insert_retry(&config, "refused", "in_refused", due).await;

    let scheduler = scheduler(&app, Duration::from_secs(300)).with_park_after_failures(3);
    let mut parked = 0;
    for i in 0..3 {
        let now = t0 + chrono::Duration::hours(7) + chrono::Duration::minutes(10 * i);
        let pass = scheduler.run_once(now).await.unwrap();
        parked += pass.parked;
        if i == 0 {
            assert_eq!(pass.called, 3, "every source's retry is called: {pass:?}");
            assert_eq!(retry(&app, "in_ok").await.status, "recovered");
        }
    }
    assert_eq!(parked, 2);
    assert_eq!(fake.charges(), 1, "the healthy source was charged once");
    for (source, cycle, text) in [
        ("down", "in_down", "503"),
        ("refused", "in_refused", "transient"),
    ] {
        let row = listed(&app, source, cycle).await;
        assert_eq!(
            (row["status"].as_str(), row["consecutive_failures"].as_i64()),
            (Some("parked"), Some(3)),
            "{row}"
        );
        assert_eq!(row["due_at"], Value::Null);
        assert_eq!(row["retries_done"], 0, "resuming re-sends the same key");
        assert!(row["last_error"].as_str().unwrap().contains(text), "{row}");
        assert!(
            row["last_outcome"]
                .as_str()
                .unwrap()
                .starts_with("parked after 3 consecutive failures")
        );
    }
    let pass = scheduler
        .run_once(t0 + chrono::Duration::days(3))
        .await
        .unwrap();
    assert_eq!(pass.called, 0, "parked retries are not picked");

    // Visible in `retries list` (the CLI's query), the admin API and the metrics.
    assert!(subsync(&config, &["retries", "list", "--status", "parked"]).await);
    let query = RetriesQuery {
        status: Some("parked".into()),
        ..Default::default()
    };
    let rows = views::list(&app.db, &query).await.unwrap();
    let mut ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["down:in_down", "refused:in_refused"]);
    let body: Value = app
        .admin_get("/admin/retries?status=parked", Some(ADMIN_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["retries"].as_array().unwrap().len(), 2, "{body}");
    let text = metrics(&app).await;
    assert!(
        text.contains("subsync_retries{status=\"parked\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("subsync_retries_parked_total{source=\"down\"} 1"),
        "{text}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_parked_retry_is_resumed_from_the_command_line_or_the_admin_api_and_audited() {
    let down = MockServer::start().await;
    Mock::given(matchers::method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&down)
        .await;
    let sources = [
        stripe_source("down", &down.uri()),
        stripe_source("refused", "http://127.0.0.1:1"),
    ];
    let (config, app) = app_with(&sources).await;
    let due = t0() + chrono::Duration::hours(1);
    insert_retry(&config, "down", "in_down", due).await;
    insert_retry(&config, "refused", "in_refused", due).await;
    let scheduler = scheduler(&app, Duration::from_secs(300)).with_park_after_failures(1);
    assert_eq!(scheduler.run_once(due).await.unwrap().parked, 2);

    // Resumed by the command line and by the admin API: due now, count reset, audited.
    assert!(subsync(&config, &["retries", "resume", "down:in_down"]).await);
    let (status, body) = resume_over_http(&app, "refused:in_refused").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["status"].as_str(),
            body["consecutive_failures"].as_i64()
        ),
        (Some("scheduled"), Some(0))
    );
    assert_eq!(
        resume_over_http(&app, "refused:in_refused").await.0,
        400,
        "not parked any more"
    );
    assert_eq!(resume_over_http(&app, "refused:in_nothing").await.0, 404);
    assert_eq!(resume_over_http(&app, "no-colon").await.0, 400);
    let spec: Value = app
        .admin_get("/admin/openapi.json", Some(ADMIN_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    let resume = &spec["paths"]["/admin/retries/{id}/resume"]["post"];
    assert_eq!(resume["tags"][0], "dunning", "documented: {resume}");
    assert!(!subsync(&config, &["retries", "resume", "down:in_nothing"]).await);
    assert!(!subsync(&config, &["retries", "resume", "refused:in_refused"]).await);
    let audit: Value = app
        .admin_get("/admin/audit", Some(ADMIN_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    let resumes: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "retries.resume" && e["outcome"] == "ok")
        .collect();
    assert_eq!(resumes.len(), 2, "{audit}");
    assert!(
        resumes
            .iter()
            .any(|e| e["actor"] == "admin" && e["filter"]["id"] == "refused:in_refused")
    );
    let text = metrics(&app).await;
    assert!(
        text.contains("subsync_retries{status=\"parked\"} 0"),
        "{text}"
    );

    // Both are called again with the same retry number (and key); still failing, and
    // parked after one failure here, they park again at once.
    let pass = scheduler
        .run_once(Utc::now() + chrono::Duration::minutes(1))
        .await
        .unwrap();
    assert_eq!((pass.called, pass.parked), (2, 2));
    let row = listed(&app, "down", "in_down").await;
    let seen = (row["status"].as_str(), row["consecutive_failures"].as_i64());
    assert_eq!(seen, (Some("parked"), Some(1)), "{row}");
    assert_eq!(row["retries_done"], 0, "{row}");
    app.stop().await;
}
