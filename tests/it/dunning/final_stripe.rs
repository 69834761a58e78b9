//! Stripe dunning to its end: failure webhook → retries on the schedule → declined until
//! exhausted → the final action through Stripe's API, against a fake Stripe that keeps
//! invoices and subscriptions and answers as the SDK's definitions say (every request's
//! parameters checked against its `*Params` type, every answer generated from and
//! validated against `Invoice` / `Subscription` / `StripeRawError`). Like Stripe, it
//! replays the first answer to a repeated `Idempotency-Key` on a POST, and ignores the
//! key on `DELETE`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::TimeDelta;
use serde_json::{Value, json};
use subsync::dunning::scheduler::final_action_key;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers};

use subsync::app::Role;

use super::{send, t0};
use crate::common::{ADMIN_TOKEN, TestApp, TestConfig, spawn_app};

#[derive(Default)]
struct State {
    invoices: HashMap<String, String>,
    /// id → (status, cancel_at_period_end, pause behavior)
    subscriptions: HashMap<String, (String, bool, Option<String>)>,
    /// POST answers by idempotency key, replayed for a repeated key.
    replies: HashMap<String, (u16, Value)>,
    /// `METHOD path` of every request, in order.
    requests: Vec<String>,
    /// State changes the fake made (a replayed key changes nothing).
    changes: Vec<String>,
}

#[derive(Clone, Default)]
struct FakeStripe {
    state: Arc<Mutex<State>>,
    /// Delay of the first answer on this path, to die in the middle of a call.
    slow_first: Option<(&'static str, Duration)>,
}

impl FakeStripe {
    fn with(invoice: &str, subscription: &str) -> Self {
        let fake = Self::default();
        {
            let mut state = fake.state.lock().unwrap();
            state.invoices.insert(invoice.into(), "open".into());
            state
                .subscriptions
                .insert(subscription.into(), ("past_due".into(), false, None));
        }
        fake
    }
    fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }
    fn changes(&self) -> Vec<String> {
        self.state.lock().unwrap().changes.clone()
    }
    fn count(&self, prefix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.starts_with(prefix))
            .count()
    }
}

fn invoice(id: &str, status: &str) -> Value {
    let types = crate::sync::stripe_types();
    let mut body = types.generate("Invoice");
    body["id"] = json!(id);
    body["status"] = json!(status);
    body["currency"] = json!("usd");
    let errors = types.validate(&body, "Invoice");
    assert!(errors.is_empty(), "{errors:#?}");
    body
}

fn subscription(id: &str, (status, at_end, pause): &(String, bool, Option<String>)) -> Value {
    let types = crate::sync::stripe_types();
    let mut body = types.generate("Subscription");
    body["id"] = json!(id);
    body["status"] = json!(status);
    body["cancel_at_period_end"] = json!(at_end);
    body["pause_collection"] = match pause {
        Some(behavior) => json!({ "behavior": behavior, "resumes_at": null }),
        None => Value::Null,
    };
    let errors = types.validate(&body, "Subscription");
    assert!(errors.is_empty(), "{errors:#?}");
    body
}

fn error(status: u16, kind: &str, code: Option<&str>, decline: Option<&str>) -> (u16, Value) {
    let body = json!({ "type": kind, "code": code, "decline_code": decline,
                       "message": format!("{kind} ({})", code.unwrap_or("-")) });
    let errors = crate::sync::stripe_types().validate(&body, "StripeRawError");
    assert!(errors.is_empty(), "{errors:#?}");
    (status, json!({ "error": body }))
}

impl FakeStripe {
    fn answer(&self, request: &Request) -> (u16, Value) {
        let method = request.method.as_str().to_owned();
        let path = request.url.path().to_owned();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let form = std::str::from_utf8(&request.body).unwrap_or("\u{fffd}");
        let pairs: Vec<(String, String)> =
            reqwest::Url::parse(&format!("http://form.test/?{form}"))
                .unwrap()
                .query_pairs()
                .into_owned()
                .collect();
        let params = match (method.as_str(), parts.as_slice()) {
            ("POST", ["v1", "invoices", _, "pay"]) => "InvoicePayParams",
            ("POST", ["v1", "invoices", _, "mark_uncollectible"]) => {
                "InvoiceMarkUncollectibleParams"
            }
            ("GET", ["v1", "invoices", _]) => "InvoiceRetrieveParams",
            ("GET", ["v1", "subscriptions", _]) => "SubscriptionRetrieveParams",
            ("POST", ["v1", "subscriptions", _]) => "SubscriptionUpdateParams",
            ("DELETE", ["v1", "subscriptions", _]) => "SubscriptionCancelParams",
            _ => return error(404, "invalid_request_error", Some("resource_missing"), None),
        };
        let problems = crate::sync::stripe_types()
            .validate_form(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())), params);
        if !problems.is_empty() {
            return error(
                400,
                "invalid_request_error",
                Some("parameter_unknown"),
                None,
            );
        }
        let key = request
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut state = self.state.lock().unwrap();
        state.requests.push(format!("{method} {path}"));
        if method == "POST"
            && let Some(reply) = key.as_ref().and_then(|k| state.replies.get(k))
        {
            return reply.clone();
        }
        let id = parts[2].to_owned();
        let reply = match (method.as_str(), parts.as_slice()) {
            // Every retry is declined: the card has no funds.
            (_, [.., "pay"]) => error(
                402,
                "card_error",
                Some("card_declined"),
                Some("insufficient_funds"),
            ),
            (_, [.., "mark_uncollectible"]) => match state.invoices.get(&id).cloned() {
                Some(status) if status == "open" => {
                    state.invoices.insert(id.clone(), "uncollectible".into());
                    state.changes.push(format!("invoice {id} uncollectible"));
                    (200, invoice(&id, "uncollectible"))
                }
                Some(_) => error(400, "invalid_request_error", Some("invoice_not_open"), None),
                None => error(404, "invalid_request_error", Some("resource_missing"), None),
            },
            ("GET", ["v1", "invoices", _]) => match state.invoices.get(&id) {
                Some(status) => (200, invoice(&id, status)),
                None => error(404, "invalid_request_error", Some("resource_missing"), None),
            },
            (_, ["v1", "subscriptions", _]) => {
                let Some(mut sub) = state.subscriptions.get(&id).cloned() else {
                    return error(404, "invalid_request_error", Some("resource_missing"), None);
                };
                match method.as_str() {
                    "DELETE" if sub.0 == "canceled" => {
                        // Assumed: Stripe refuses to cancel a canceled subscription.
                        return error(400, "invalid_request_error", None, None);
                    }
                    "DELETE" => {
                        sub.0 = "canceled".into();
                        state.changes.push(format!("subscription {id} canceled"));
                    }
                    "POST" => {
                        for (k, v) in &pairs {
                            match k.as_str() {
                                "pause_collection[behavior]" => sub.2 = Some(v.clone()),
                                "cancel_at_period_end" => sub.1 = v == "true",
                                _ => {}
                            }
                            state.changes.push(format!("subscription {id} {k}={v}"));
                        }
                    }
                    _ => {}
                }
                state.subscriptions.insert(id.clone(), sub.clone());
                (200, subscription(&id, &sub))
            }
            _ => unreachable!("routed above"),
        };
        if method == "POST"
            && let Some(key) = key
        {
            state.replies.insert(key, reply.clone());
        }
        reply
    }
}

impl Respond for FakeStripe {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let first = {
            let state = self.state.lock().unwrap();
            !state
                .requests
                .iter()
                .any(|r| r.ends_with(request.url.path()))
        };
        let (status, body) = self.answer(request);
        let response = ResponseTemplate::new(status).set_body_json(body);
        match self.slow_first {
            Some((suffix, delay)) if first && request.url.path().ends_with(suffix) => {
                response.set_delay(delay)
            }
            _ => response,
        }
    }
}

/// The fake Stripe and a service pointed at it, with `retry` as the source's policy.
async fn stripe_app(fake: &FakeStripe, retry: &str) -> (MockServer, TestConfig, TestApp) {
    let server = MockServer::start().await;
    Mock::given(matchers::header("authorization", "Bearer sk_test_dunning"))
        .respond_with(fake.clone())
        .mount(&server)
        .await;
    let mut config = TestConfig::new().await;
    config.extra = format!(
        "[[sources]]\nid = \"stripe\"\nprovider = \"stripe\"\nsecrets = [\"whsec_dunning\"]\n\
         api = {{ base_url = \"{}\", token = \"sk_test_dunning\" }}\nretry = {retry}\n\
         [dunning]\ninterval_ms = 3600000\n",
        server.uri()
    );
    let app = spawn_app(&config, Role::All).await;
    (server, config, app)
}

async fn detail(app: &TestApp, cycle: &str) -> Value {
    let path = format!("/admin/retries/stripe:{cycle}");
    let response = app.admin_get(&path, Some(ADMIN_TOKEN)).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn failed(id: &str, decline: &str, at: chrono::DateTime<chrono::Utc>) -> Vec<u8> {
    super::invoice_event(id, "invoice.payment_failed", "in_1", 1, Some(decline), at)
}

#[tokio::test]
async fn retries_run_out_and_the_subscription_is_cancelled_once() {
    let fake = FakeStripe::with("in_1", "sub_1");
    let policy = r#"{ jitter = false, max_attempts = 2, final_action = "cancel" }"#;
    let (_server, config, app) = stripe_app(&fake, policy).await;
    let t0 = t0();
    send(&app, "evt_f1", failed("evt_f1", "insufficient_funds", t0)).await;
    let scheduler = super::scheduler(&app, Duration::from_secs(300));

    // Retry 1 at +6 h and retry 2 at +12 h after it are declined: out of tries.
    let pass = scheduler.run_once(t0 + TimeDelta::hours(6)).await.unwrap();
    assert_eq!((pass.called, pass.final_actions), (1, 0));
    let pass = scheduler.run_once(t0 + TimeDelta::hours(18)).await.unwrap();
    assert_eq!(
        (pass.called, pass.final_actions),
        (1, 1),
        "exhausted, then cancelled"
    );
    assert_eq!(fake.count("POST /v1/invoices/in_1/pay"), 2);
    assert_eq!(fake.count("DELETE /v1/subscriptions/sub_1"), 1);
    assert_eq!(fake.changes(), vec!["subscription sub_1 canceled"]);

    let shown = detail(&app, "in_1").await;
    assert_eq!(shown["retry"]["status"], "exhausted");
    assert_eq!(shown["retry"]["final_action"], "cancel");
    assert!(shown["retry"]["final_action_at"].is_string());
    assert_eq!(shown["final_action"]["outcome"], "done");
    assert_eq!(shown["final_action"]["answer"], "subscription canceled");
    assert_eq!(
        shown["final_action"]["idempotency_key"],
        final_action_key("stripe", "in_1", subsync::config::FinalAction::Cancel)
    );
    // The timeline explains each decision: the code, the bucket, the rule, the time.
    let reasons: Vec<&str> = shown["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or(""))
        .collect();
    assert!(
        reasons[0].starts_with("failed: insufficient_funds → retry_soon [backoff 1 of 2"),
        "{reasons:#?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("stop (max_attempts), then cancel")),
        "{reasons:#?}"
    );
    assert!(
        reasons
            .last()
            .unwrap()
            .starts_with("final action cancel: done"),
        "{reasons:#?}"
    );
    // The subscription view shows it too.
    let view = app
        .db
        .subscription("stripe", "sub_1")
        .await
        .unwrap()
        .unwrap();
    let action = view.final_action.expect("the final action");
    assert_eq!(
        (action.action.as_str(), action.outcome.as_deref()),
        ("cancel", Some("done"))
    );

    // The command line shows the same history.
    let config_path = config.write();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_subsync"))
        .args(["retries", "show", "stripe:in_1"])
        .env("SUBSYNC_CONFIG", &config_path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&config_path);
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(shown.contains("final action cancel: done at "), "{shown}");
    assert!(shown.contains("subscription canceled"), "{shown}");
    assert!(
        shown.contains("stop (max_attempts), then cancel"),
        "{shown}"
    );

    // Never twice.
    let pass = scheduler.run_once(t0 + TimeDelta::days(30)).await.unwrap();
    assert_eq!((pass.called, pass.final_actions), (0, 0));
    assert_eq!(fake.count("DELETE"), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_crash_between_the_pause_and_its_commit_resends_the_same_key() {
    let fake = FakeStripe {
        slow_first: Some(("/subscriptions/sub_1", Duration::from_secs(3))),
        ..FakeStripe::with("in_1", "sub_1")
    };
    // A hard decline stops at once: the final action is due on the next pass.
    let policy = r#"{ jitter = false, final_action = "pause" }"#;
    let (_server, _config, app) = stripe_app(&fake, policy).await;
    let t0 = t0();
    send(&app, "evt_f1", failed("evt_f1", "stolen_card", t0)).await;
    let scheduler = super::scheduler(&app, Duration::from_secs(1));

    // The process dies while Stripe has paused collection and not answered yet.
    let died = tokio::time::timeout(Duration::from_millis(1500), scheduler.run_once(t0)).await;
    assert!(died.is_err(), "the pass was cut off during the call");
    let paused = "subscription sub_1 pause_collection[behavior]=mark_uncollectible";
    assert_eq!(fake.changes(), vec![paused]);
    let shown = detail(&app, "in_1").await;
    assert_eq!(
        shown["final_action"]["outcome"],
        Value::Null,
        "sent, not answered"
    );
    assert!(shown["retry"]["final_action_at"].is_null());

    // After the in-flight timeout a restarted scheduler re-sends it with the same key:
    // Stripe replays its first answer and changes nothing.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let pass = scheduler.run_once(t0).await.unwrap();
    assert_eq!(pass.final_actions, 1);
    assert_eq!(fake.count("POST /v1/subscriptions/sub_1"), 2);
    assert_eq!(fake.changes(), vec![paused], "changed once");
    let shown = detail(&app, "in_1").await;
    assert_eq!(shown["final_action"]["sends"], 2);
    assert_eq!(shown["final_action"]["outcome"], "done");
    assert_eq!(
        shown["final_action"]["answer"],
        "subscription past_due, collection paused (mark_uncollectible)"
    );
    assert_eq!(
        shown["final_action"]["idempotency_key"],
        final_action_key("stripe", "in_1", subsync::config::FinalAction::Pause)
    );
    assert_eq!(scheduler.run_once(t0).await.unwrap().final_actions, 0);
    app.stop().await;
}

#[tokio::test]
async fn an_unpaid_invoice_is_marked_uncollectible_once() {
    let fake = FakeStripe::with("in_1", "sub_1");
    let (_server, _config, app) = stripe_app(&fake, "{ jitter = false }").await;
    let t0 = t0();
    send(&app, "evt_f1", failed("evt_f1", "stolen_card", t0)).await;
    let scheduler = super::scheduler(&app, Duration::from_secs(300));
    assert_eq!(scheduler.run_once(t0).await.unwrap().final_actions, 1);
    assert_eq!(fake.changes(), vec!["invoice in_1 uncollectible"]);
    let shown = detail(&app, "in_1").await;
    assert_eq!(shown["retry"]["status"], "stopped");
    assert_eq!(shown["final_action"]["outcome"], "done");
    assert_eq!(shown["final_action"]["answer"], "invoice uncollectible");
    let reasons = shown["timeline"].to_string();
    assert!(reasons.contains("stolen_card → never_retry [never_retry: stop at once] → stop (never_retry), then mark_unpaid"), "{reasons}");
    assert_eq!(scheduler.run_once(t0).await.unwrap().final_actions, 0);
    assert_eq!(fake.count("POST /v1/invoices/in_1/mark_uncollectible"), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_payment_before_the_final_action_cancels_it() {
    // Stopped by a hard decline, then paid by webhook before the scheduler's next pass.
    let fake = FakeStripe::with("in_1", "sub_1");
    let policy = r#"{ jitter = false, final_action = "pause" }"#;
    let (_server, _config, app) = stripe_app(&fake, policy).await;
    let t0 = t0();
    send(&app, "evt_f1", failed("evt_f1", "stolen_card", t0)).await;
    let paid = super::invoice_event("evt_p1", "invoice.paid", "in_1", 2, None, t0);
    send(&app, "evt_p1", paid).await;
    let scheduler = super::scheduler(&app, Duration::from_secs(300));
    assert_eq!(scheduler.run_once(t0).await.unwrap().final_actions, 0);
    let shown = detail(&app, "in_1").await;
    assert_eq!(shown["retry"]["status"], "recovered");
    assert_eq!(shown["final_action"]["outcome"], "skipped");
    assert!(
        shown["final_action"]["answer"]
            .as_str()
            .unwrap()
            .starts_with("paid before the final action"),
        "{shown:#}"
    );

    // Paid at Stripe without a webhook yet: the read before the call finds it.
    send(
        &app,
        "evt_f2",
        super::invoice_event(
            "evt_f2",
            "invoice.payment_failed",
            "in_2",
            1,
            Some("stolen_card"),
            t0,
        ),
    )
    .await;
    fake.state
        .lock()
        .unwrap()
        .invoices
        .insert("in_2".into(), "paid".into());
    assert_eq!(scheduler.run_once(t0).await.unwrap().final_actions, 1);
    let shown = detail(&app, "in_2").await;
    assert_eq!(shown["retry"]["status"], "recovered");
    assert_eq!(shown["final_action"]["outcome"], "skipped");
    assert!(
        fake.changes().is_empty(),
        "nothing paused: {:?}",
        fake.changes()
    );
    assert_eq!(fake.count("POST /v1/subscriptions"), 0);
    app.stop().await;
}

/// A history recorded through the whole pipeline (webhooks, the worker, the scheduler
/// against the fake) replays exactly through the policy that made it, from the library and
/// from `subsync dunning simulate`; a stricter candidate drops retries.
#[tokio::test]
async fn the_recorded_policy_replays_the_recorded_schedule_exactly() {
    let fake = FakeStripe::with("in_1", "sub_1");
    for invoice in ["in_2", "in_3", "in_4"] {
        fake.state
            .lock()
            .unwrap()
            .invoices
            .insert(invoice.into(), "open".into());
    }
    let policy = r#"{ jitter = false, max_attempts = 3, final_action = "cancel" }"#;
    let (_server, config, app) = stripe_app(&fake, policy).await;
    let t0 = t0();
    let failures = [
        ("in_1", "insufficient_funds"),
        ("in_2", "do_not_honor"),
        ("in_3", "stolen_card"),
        ("in_4", "expired_card"),
    ];
    for (i, (invoice, code)) in failures.iter().enumerate() {
        let id = format!("evt_f{i}");
        let at = t0 + TimeDelta::minutes(i as i64 * 17);
        let body = super::invoice_event(&id, "invoice.payment_failed", invoice, 1, Some(code), at);
        send(&app, &id, body).await;
    }
    // The scheduler runs at each due time until nothing is due.
    let scheduler = super::scheduler(&app, Duration::from_secs(300));
    loop {
        let due = subsync::dunning::views::list(&app.db, &Default::default())
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.status == "scheduled")
            .filter_map(|r| r.due_at)
            .min();
        let Some(due) = due else { break };
        scheduler.run_once(due).await.unwrap();
    }
    assert_eq!(fake.count("POST /v1/invoices/in_1/pay"), 3);
    assert_eq!(fake.count("POST /v1/invoices/in_2/pay"), 3);

    let cycles = subsync::dunning::simulate::load(&app.db, Some("stripe"), None)
        .await
        .unwrap();
    let recorded_with = subsync::config::RetryPolicySettings {
        jitter: false,
        max_attempts: 3,
        final_action: subsync::config::FinalAction::Cancel,
        ..Default::default()
    };
    let same = subsync::dunning::policy::RetryPolicy::new(&recorded_with);
    let report = subsync::dunning::simulate::simulate(&same, &cycles);
    // 2 × (the failure and 3 declined retries) + a hard decline + a wait for the customer.
    assert_eq!((report.failures, report.decisions), (4, 10));
    assert_eq!(report.decisions_reproduced, 10, "{report:#?}");
    let soon = report
        .buckets
        .iter()
        .find(|b| b.bucket == "retry_soon")
        .unwrap();
    assert_eq!((soon.retries_recorded, soon.retries_candidate), (6, 6));
    assert_eq!((soon.retries_added, soon.retries_dropped), (0, 0));
    assert_eq!(soon.first_retry_after_secs_candidate, Some(6 * 3600));
    assert_eq!(
        soon.last_retry_after_secs_candidate,
        soon.last_retry_after_secs_recorded
    );
    assert_eq!(soon.final_actions_candidate["cancel"], 2);

    // The same from the command line, and a candidate with one try.
    let path = std::env::temp_dir().join(format!("candidate-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(
        &path,
        "jitter = false\nmax_attempts = 1\nfinal_action = \"cancel\"\n",
    )
    .unwrap();
    let config_path = config.write();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_subsync"))
        .args([
            "dunning", "simulate", "--source", "stripe", "--since", "30d", "--json", "--policy",
        ])
        .arg(&path)
        .env("SUBSYNC_CONFIG", &config_path)
        .output()
        .unwrap();
    let _ = (
        std::fs::remove_file(&config_path),
        std::fs::remove_file(&path),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["failures"], 4);
    let soon = json["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["bucket"] == "retry_soon")
        .unwrap();
    assert_eq!(
        (
            soon["retries_candidate"].as_u64(),
            soon["retries_dropped"].as_u64()
        ),
        (Some(2), Some(4))
    );
    assert!(json["decisions_reproduced"].as_u64().unwrap() < 10);
    app.stop().await;
}
