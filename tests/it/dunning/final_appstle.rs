//! Appstle dunning to its end: failure webhook → the retry sent (`attempt-billing`,
//! accepted) → no outcome within the accepted timeout, the cycle out of tries → the
//! contract cancelled through Appstle's `DELETE subscription-contracts/{id}`, once. The
//! fake follows Appstle's fact sheet (the only definition Appstle publishes is prose: see
//! `src/providers/appstle/retry.rs`) and keeps the contract's state.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use chrono::Utc;
use subsync::{
    app::Role, config::FinalAction, dunning::scheduler::final_action_key, dunning::views,
};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers};

use super::{APPSTLE_PAST_ORDERS, APPSTLE_RETRY, appstle_attempt, first_retry, scheduler};
use crate::common::{TestConfig, spawn_app};

const CONTRACT_PATH: &str = "/api/external/v2/subscription-contracts/5550001";

#[derive(Clone, Default)]
struct FakeAppstle {
    /// `METHOD path?query` of every request.
    seen: Arc<Mutex<Vec<String>>>,
    cancelled: Arc<Mutex<bool>>,
    /// Delay of the first cancellation's answer, to die in the middle of the call.
    slow_first_delete: Option<Duration>,
}

const CONTRACT_READ: &str = "/api/external/v2/contract-raw-response";

impl Respond for FakeAppstle {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let key = request
            .headers
            .get("x-api-key")
            .map(|v| v.to_str().unwrap());
        assert_eq!(key, Some("apst_dunning_key"), "Appstle's API key header");
        let query = request.url.query().unwrap_or_default();
        let line = format!("{} {}?{query}", request.method, request.url.path());
        self.seen.lock().unwrap().push(line);
        match (request.method.as_str(), request.url.path()) {
            ("GET", APPSTLE_PAST_ORDERS) => {
                ResponseTemplate::new(200).set_body_json(serde_json::json!([appstle_attempt(
                    "FAILURE",
                    Utc::now() - chrono::Duration::days(1)
                )]))
            }
            ("PUT", APPSTLE_RETRY) => ResponseTemplate::new(200),
            // The raw Shopify `subscriptionContract`, as the fact sheet says.
            ("GET", CONTRACT_READ) => {
                let contract = request.url.query_pairs().find(|(k, _)| k == "contractId");
                assert_eq!(
                    contract.map(|(_, v)| v.into_owned()).as_deref(),
                    Some("5550001")
                );
                let status = if *self.cancelled.lock().unwrap() {
                    "CANCELLED"
                } else {
                    "ACTIVE"
                };
                ResponseTemplate::new(200).set_body_json(serde_json::json!({
                    "__typename": "SubscriptionContract",
                    "id": "gid://shopify/SubscriptionContract/5550001", "status": status }))
            }
            ("DELETE", CONTRACT_PATH) => {
                let mut cancelled = self.cancelled.lock().unwrap();
                if *cancelled {
                    return ResponseTemplate::new(400).set_body_json(
                        serde_json::json!({"title": "Contract is already cancelled"}),
                    );
                }
                *cancelled = true;
                match self.slow_first_delete {
                    Some(delay) => ResponseTemplate::new(204).set_delay(delay),
                    None => ResponseTemplate::new(204),
                }
            }
            (method, path) => panic!("unexpected {method} {path}"),
        }
    }
}

/// The fake Appstle and a service pointed at it, with `retry` as the source's policy; the
/// sample failure delivered.
async fn appstle_app(fake: &FakeAppstle, retry: &str) -> (MockServer, crate::common::TestApp) {
    let server = MockServer::start().await;
    Mock::given(matchers::any())
        .respond_with(fake.clone())
        .mount(&server)
        .await;
    let mut config = TestConfig::new().await;
    config.extra = format!(
        "[[sources]]\nid = \"appstle\"\nprovider = \"appstle\"\n\
         secrets = [\"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"]\n\
         api = {{ base_url = \"{}\", token = \"apst_dunning_key\" }}\nretry = {retry}\n\
         [dunning]\ninterval_ms = 3600000\n",
        server.uri()
    );
    let app = spawn_app(&config, Role::All).await;
    send(&app, "msg_fail", |body| body).await;
    (server, app)
}

/// Posts Appstle's sample failure (as `edit` changes it) and waits until it is reconciled.
async fn send(app: &crate::common::TestApp, id: &str, edit: impl FnOnce(String) -> String) {
    let source = crate::common::source(app.settings.source("appstle").unwrap()).unwrap();
    let now = SystemTime::now();
    let sample = String::from_utf8(source.sample_body("msg_fail", now)).unwrap();
    let body = edit(sample).into_bytes();
    let headers = source.sign(id, &body, now);
    assert_eq!(app.post("appstle", &headers, body).await.status(), 202);
    let archived = crate::common::eventually(Duration::from_secs(20), || async {
        app.db.archived_count("appstle", id).await.unwrap() == 1
    })
    .await;
    assert!(archived, "{id} reconciled");
}

fn deletes(fake: &FakeAppstle) -> usize {
    let seen = fake.seen.lock().unwrap();
    seen.iter().filter(|s| s.starts_with("DELETE")).count()
}

#[tokio::test]
async fn an_unanswered_last_retry_cancels_the_contract_once() {
    let fake = FakeAppstle::default();
    let policy = r#"{ jitter = false, max_attempts = 1, final_action = "cancel" }"#;
    let (_server, app) = appstle_app(&fake, policy).await;
    let retry = first_retry(&app).await;
    let due = retry.due_at.unwrap();

    let scheduler = scheduler(&app, Duration::from_secs(300));
    let pass = scheduler.run_once(due).await.unwrap();
    assert_eq!(
        (pass.called, pass.final_actions),
        (1, 0),
        "the retry is accepted"
    );
    // No outcome within a day: the try counts as failed, the cycle is out of tries, and the
    // contract is cancelled in the same pass.
    let pass = scheduler
        .run_once(due + chrono::Duration::days(2))
        .await
        .unwrap();
    assert_eq!((pass.expired, pass.final_actions), (1, 1));
    let deletes: Vec<String> = fake
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.starts_with("DELETE"))
        .cloned()
        .collect();
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert!(
        deletes[0].starts_with(&format!("DELETE {CONTRACT_PATH}?cancellationNote=")),
        "{deletes:?}"
    );
    assert!(*fake.cancelled.lock().unwrap());

    let detail = views::show(&app.db, "appstle", &retry.cycle_key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(detail.retry.status, "exhausted");
    let action = detail.final_action.unwrap();
    assert_eq!(
        (
            action.action.as_str(),
            action.outcome.as_deref(),
            action.answer.as_deref()
        ),
        ("cancel", Some("done"), Some("contract CANCELLED"))
    );
    assert_eq!(
        action.idempotency_key,
        final_action_key("appstle", &retry.cycle_key, FinalAction::Cancel)
    );
    let reasons: Vec<String> = detail
        .timeline
        .iter()
        .filter_map(|e| e.reason.clone())
        .collect();
    assert!(
        reasons.iter().any(|r| r
            .starts_with("no outcome reported for the accepted retry within 1day")
            && r.ends_with("stop (max_attempts), then cancel")),
        "{reasons:#?}"
    );

    // Never twice.
    let later = scheduler
        .run_once(due + chrono::Duration::days(30))
        .await
        .unwrap();
    assert_eq!((later.called, later.final_actions), (0, 0));
    let sent = fake
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.starts_with("DELETE"))
        .count();
    assert_eq!(sent, 1);
    app.stop().await;
}

/// No retry at all: the failure exhausts its cycle, the cancellation due next pass.
const CANCEL_AT_ONCE: &str = r#"{ jitter = false, max_attempts = 0, final_action = "cancel" }"#;

#[tokio::test]
async fn a_crash_between_the_cancellation_and_its_commit_cancels_once() {
    let fake = FakeAppstle {
        slow_first_delete: Some(Duration::from_secs(3)),
        ..FakeAppstle::default()
    };
    let (_server, app) = appstle_app(&fake, CANCEL_AT_ONCE).await;
    let retry = first_retry(&app).await;
    assert_eq!(retry.status, "exhausted");
    let scheduler = scheduler(&app, Duration::from_secs(1));

    // The process dies while Appstle has cancelled the contract and not answered yet.
    let now = Utc::now();
    let died = tokio::time::timeout(Duration::from_millis(1500), scheduler.run_once(now)).await;
    assert!(died.is_err(), "the pass was cut off during the call");
    assert_eq!(deletes(&fake), 1);

    // Appstle takes no idempotency key: the re-send reads the contract first, finds it
    // cancelled, and sends nothing.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(scheduler.run_once(now).await.unwrap().final_actions, 1);
    assert_eq!(deletes(&fake), 1, "cancelled once");
    let detail = views::show(&app.db, "appstle", &retry.cycle_key)
        .await
        .unwrap()
        .unwrap();
    let action = detail.final_action.unwrap();
    assert_eq!(
        (
            action.sends,
            action.outcome.as_deref(),
            action.answer.as_deref()
        ),
        (2, Some("already_done"), Some("contract CANCELLED"))
    );
    assert_eq!(
        action.idempotency_key,
        final_action_key("appstle", &retry.cycle_key, FinalAction::Cancel)
    );
    app.stop().await;
}

#[tokio::test]
async fn a_payment_before_the_cancellation_cancels_it() {
    let fake = FakeAppstle::default();
    let (_server, app) = appstle_app(&fake, CANCEL_AT_ONCE).await;
    let retry = first_retry(&app).await;
    assert_eq!(retry.status, "exhausted");
    // Appstle reports the same attempt succeeded (its own retry paid it).
    send(&app, "msg_ok", |body| {
        body.replace(
            "subscription.billing-failure",
            "subscription.billing-success",
        )
        .replace("\"FAILURE\"", "\"SUCCESS\"")
    })
    .await;
    let pass = scheduler(&app, Duration::from_secs(300))
        .run_once(Utc::now())
        .await
        .unwrap();
    assert_eq!(pass.final_actions, 0);
    assert_eq!(deletes(&fake), 0, "nothing cancelled");
    let detail = views::show(&app.db, "appstle", &retry.cycle_key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(detail.retry.status, "recovered");
    assert_eq!(
        detail.final_action.unwrap().outcome.as_deref(),
        Some("skipped")
    );
    app.stop().await;
}
