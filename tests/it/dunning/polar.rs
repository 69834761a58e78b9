//! Polar dunning end to end, against a fake of Polar's API that holds every request to
//! what Polar's own definitions require of it (the operation exists for that method and
//! path, the bearer token is of a security scheme the operation accepts, the JSON body is
//! valid under its request schema) and answers with bodies generated from the response
//! schemas. A renewal that fails (`subscription.past_due`, then `order.updated` with the
//! order `pending` and its `next_payment_attempt_at`) is a failed attempt; the scheduler
//! reads the order, mints a customer session for the order's customer and confirms the
//! payment of that order with it.

use std::{
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use subsync::{
    app::Role,
    dunning::views::{self, RetriesQuery},
};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers};

use super::{scheduler, t0};
use crate::common::{TestConfig, eventually, spawn_app};

use crate::schema;

const ORG_TOKEN: &str = "polar_oat_dunning";
const SESSION_TOKEN: &str = "polar_cst_minted_for_the_customer";
const SECRET: &str = "whsec_ExampleExampleExampleExampleExampl0AbCdE";
const ORDER: &str = "8a4c1f0e-0000-4000-8000-0000000000a1";
const SUB: &str = "e5149aae-e521-42b9-b24c-abb8d71eea2e";
const CUSTOMER: &str = "992fae2a-2a17-4b7a-8d9e-e287cf90131b";
const METHOD: &str = "5b9d2e1f-0000-4000-8000-0000000000b2";

fn definitions() -> &'static schema::Spec {
    static SPEC: OnceLock<schema::Spec> = OnceLock::new();
    SPEC.get_or_init(|| {
        schema::Spec::parse(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/polar/polar-openapi-2026-10.subset.json"
        )))
    })
}

/// `value` generated from `schema`, `patch`ed, and checked valid under it.
fn generated(schema: &Value, patch: &[(&str, Value)]) -> Value {
    let spec = definitions();
    let mut value = spec.generate(schema);
    for (pointer, v) in patch {
        schema::set(&mut value, pointer, v.clone());
    }
    let errors = spec.validate(&value, schema);
    assert!(errors.is_empty(), "{errors:#?}");
    value
}

/// The renewal order in Polar's dunning: `pending`, its next automatic retry scheduled.
fn renewal(modified: DateTime<Utc>) -> Value {
    let at = modified.to_rfc3339();
    generated(
        definitions().schema("Order"),
        &[
            ("/id", json!(ORDER)),
            ("/status", json!("pending")),
            ("/paid", json!(false)),
            ("/billing_reason", json!("subscription_cycle")),
            ("/created_at", json!(at)),
            ("/modified_at", json!(at)),
            ("/total_amount", json!(1999)),
            ("/currency", json!("usd")),
            ("/customer_id", json!(CUSTOMER)),
            ("/customer/id", json!(CUSTOMER)),
            ("/customer/default_payment_method_id", json!(METHOD)),
            ("/subscription_id", json!(SUB)),
            ("/subscription/id", json!(SUB)),
            ("/subscription/status", json!("past_due")),
            (
                "/next_payment_attempt_at",
                json!((modified + chrono::Duration::days(2)).to_rfc3339()),
            ),
        ],
    )
}

/// One request the fake received, as the checks read it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    method: String,
    /// The operation's path template in the definitions.
    operation: &'static str,
    /// The path as sent.
    path: String,
    /// Which token: `organization` or `session`.
    token: &'static str,
    body: Value,
    idempotency_key: Option<String>,
}

/// Polar's API for one order: `GET /v1/orders/{id}`, `POST /v1/customer-sessions/`,
/// `POST /v1/customer-portal/orders/{id}/confirm-payment`. A request the definitions do
/// not allow is answered 400 and recorded as a violation.
#[derive(Clone, Default)]
struct FakePolar {
    order: Value,
    seen: Arc<Mutex<Vec<Seen>>>,
    violations: Arc<Mutex<Vec<String>>>,
    /// Confirm-payment answers `failed` (the card is declined) instead of `succeeded`.
    declines: bool,
    /// The subscription's status, as revoking or updating it leaves it.
    subscription: Arc<Mutex<String>>,
    /// Times the subscription's status changed.
    changes: Arc<Mutex<u32>>,
    /// Delay of the first revoke's answer, to die in the middle of the call.
    slow_first_revoke: Option<Duration>,
}

const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/orders/{id}"),
    ("POST", "/v1/customer-sessions/"),
    ("POST", "/v1/customer-portal/orders/{id}/confirm-payment"),
    ("DELETE", "/v1/subscriptions/{id}"),
    ("PATCH", "/v1/subscriptions/{id}"),
];

/// Whether `path` is an instance of `template` (`{id}` a uuid).
fn instance_of(path: &str, template: &str) -> bool {
    let (path, template): (Vec<&str>, Vec<&str>) =
        (path.split('/').collect(), template.split('/').collect());
    path.len() == template.len()
        && path
            .iter()
            .zip(&template)
            .all(|(p, t)| p == t || (*t == "{id}" && uuid::Uuid::parse_str(p).is_ok()))
}

impl FakePolar {
    fn check(&self, request: &Request) -> Result<(Seen, ResponseTemplate), String> {
        let spec = definitions();
        let method = request.method.as_str().to_owned();
        let path = request.url.path().to_owned();
        let (_, template) = ROUTES
            .iter()
            .find(|(m, t)| *m == method && instance_of(&path, t))
            .ok_or_else(|| format!("{method} {path}: no such operation here"))?;
        let operation = spec.operation(template, &method.to_ascii_lowercase());
        // The security schemes the operation accepts, and the token that was sent.
        let accepted: Vec<&str> = operation["security"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s.as_object().unwrap().keys().map(String::as_str))
            .collect();
        let auth = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let token = match auth.strip_prefix("Bearer ") {
            Some(ORG_TOKEN) if accepted.contains(&"oat") => "organization",
            Some(SESSION_TOKEN) if accepted.contains(&"customer_session") => "session",
            _ => {
                return Err(format!(
                    "{method} {path}: {auth:?} is not one of {accepted:?}"
                ));
            }
        };
        for scheme in &accepted {
            let bearer = spec.at(&format!("/components/securitySchemes/{scheme}"));
            if bearer["type"] == "http" && bearer["scheme"] != "bearer" {
                return Err(format!("{scheme} is not a bearer scheme"));
            }
        }
        let body = if operation["requestBody"].is_object() {
            let body: Value = serde_json::from_slice(&request.body)
                .map_err(|e| format!("{method} {path}: body is not JSON: {e}"))?;
            let errors = spec.validate(
                &body,
                spec.request_body(template, &method.to_ascii_lowercase()),
            );
            if !errors.is_empty() {
                return Err(format!("{method} {path}: {errors:?}"));
            }
            body
        } else {
            Value::Null
        };
        let answer = match *template {
            "/v1/orders/{id}" if path.ends_with(ORDER) => {
                ResponseTemplate::new(200).set_body_json(&self.order)
            }
            "/v1/customer-sessions/" if body["customer_id"] == CUSTOMER => {
                let expires = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
                let session = generated(
                    spec.response(template, "post", "201"),
                    &[
                        ("/token", json!(SESSION_TOKEN)),
                        ("/expires_at", json!(expires)),
                        ("/customer_id", json!(CUSTOMER)),
                    ],
                );
                ResponseTemplate::new(201).set_body_json(session)
            }
            "/v1/customer-portal/orders/{id}/confirm-payment" if path.contains(ORDER) => {
                let (status, error) = match self.declines {
                    true => ("failed", json!("Your card was declined.")),
                    false => ("succeeded", Value::Null),
                };
                let confirmation = generated(
                    spec.response(template, "post", "200"),
                    &[
                        ("/status", json!(status)),
                        ("/client_secret", Value::Null),
                        ("/error", error),
                    ],
                );
                ResponseTemplate::new(200).set_body_json(confirmation)
            }
            "/v1/subscriptions/{id}" if path.ends_with(SUB) => {
                let verb = method.to_ascii_lowercase();
                let mut status = self.subscription.lock().unwrap();
                if *status == "canceled" {
                    let refused = generated(
                        spec.response(template, &verb, "403"),
                        &[
                            ("/error", json!("AlreadyCanceledSubscription")),
                            ("/detail", json!("This subscription is already revoked.")),
                        ],
                    );
                    ResponseTemplate::new(403).set_body_json(refused)
                } else {
                    *status = "canceled".into();
                    *self.changes.lock().unwrap() += 1;
                    let now = Utc::now().to_rfc3339();
                    let revoked = generated(
                        spec.response(template, &verb, "200"),
                        &[
                            ("/id", json!(SUB)),
                            ("/status", json!("canceled")),
                            ("/cancel_at_period_end", json!(false)),
                            ("/canceled_at", json!(now)),
                            ("/ended_at", json!(now)),
                        ],
                    );
                    ResponseTemplate::new(200).set_body_json(revoked)
                }
            }
            _ => {
                let missing = json!({"error": "ResourceNotFound", "detail": "Not found"});
                ResponseTemplate::new(404).set_body_json(missing)
            }
        };
        let idempotency_key = request
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let seen = Seen {
            method,
            operation: template,
            path,
            token,
            body,
            idempotency_key,
        };
        Ok((seen, answer))
    }
}

impl Respond for FakePolar {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        match self.check(request) {
            Ok((seen, answer)) => {
                let mut all = self.seen.lock().unwrap();
                let first_revoke =
                    seen.method == "DELETE" && !all.iter().any(|s| s.method == "DELETE");
                all.push(seen);
                match self.slow_first_revoke {
                    Some(delay) if first_revoke => answer.set_delay(delay),
                    _ => answer,
                }
            }
            Err(violation) => {
                self.violations.lock().unwrap().push(violation);
                ResponseTemplate::new(400)
            }
        }
    }
}

/// A Polar webhook `{type, timestamp, data}` valid under the definitions.
fn webhook(event_type: &str, data: &Value, at: DateTime<Utc>) -> Vec<u8> {
    let body = json!({ "type": event_type, "timestamp": at.to_rfc3339(), "data": data });
    let spec = definitions();
    let errors = spec.validate(&body, spec.webhook_body(event_type));
    assert!(errors.is_empty(), "{event_type}: {errors:#?}");
    serde_json::to_vec(&body).unwrap()
}

#[tokio::test]
async fn a_failed_renewal_is_confirmed_with_a_session_of_the_orders_customer() {
    let t0 = t0();
    let order = renewal(t0);
    let fake = FakePolar {
        order: order.clone(),
        ..FakePolar::default()
    };
    let server = MockServer::start().await;
    Mock::given(matchers::any())
        .respond_with(fake.clone())
        .mount(&server)
        .await;
    let mut config = TestConfig::new().await;
    config.extra = format!(
        r#"
[[sources]]
id = "polar"
provider = "polar"
secrets = ["{SECRET}"]
api = {{ base_url = "{}", token = "{ORG_TOKEN}" }}
retry = {{ jitter = false }}

# The service's own scheduler stays out of the way: this test drives the clock.
[dunning]
interval_ms = 3600000
"#,
        server.uri()
    );
    let app = spawn_app(&config, Role::All).await;

    // Polar's renewal fails: the subscription goes past due, the order stays pending with
    // its next automatic retry.
    let subscription = generated(
        definitions().schema("Subscription"),
        &[
            ("/id", json!(SUB)),
            ("/status", json!("past_due")),
            ("/customer_id", json!(CUSTOMER)),
            ("/currency", json!("usd")),
            ("/modified_at", json!(t0.to_rfc3339())),
        ],
    );
    let events = [
        (
            "msg_past_due",
            webhook("subscription.past_due", &subscription, t0),
        ),
        ("msg_order_updated", webhook("order.updated", &order, t0)),
    ];
    for (id, body) in &events {
        assert_eq!(
            app.post_signed("polar", id, body).await.status(),
            202,
            "{id}"
        );
    }
    let reconciled = eventually(Duration::from_secs(20), || async {
        let mut all = true;
        for (id, _) in &events {
            all &= app.db.archived_count("polar", id).await.unwrap() == 1;
        }
        all
    })
    .await;
    assert!(reconciled, "both webhooks reconciled");
    let view = app.db.subscription("polar", SUB).await.unwrap().unwrap();
    assert_eq!(view.status.as_deref(), Some("past_due"));
    let attempt = view
        .attempts
        .iter()
        .find(|a| a.attempt_id == ORDER)
        .unwrap();
    assert_eq!(
        (attempt.status.as_str(), attempt.provider_status.as_str()),
        ("failed", "pending")
    );

    let retries = views::list(&app.db, &RetriesQuery::default())
        .await
        .unwrap();
    let [retry] = retries.as_slice() else {
        panic!("one retry row: {retries:?}");
    };
    assert_eq!(
        (
            retry.cycle_key.as_str(),
            retry.status.as_str(),
            retry.subscription_id.as_deref()
        ),
        (ORDER, "scheduled", Some(SUB))
    );
    let due = retry.due_at.expect("a due time");
    assert!(
        fake.seen.lock().unwrap().is_empty(),
        "nothing called before it is due"
    );

    let scheduler = scheduler(&app, Duration::from_secs(300));
    assert_eq!(scheduler.run_once(due).await.unwrap().called, 1);
    let violations = fake.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:#?}");
    let seen = fake.seen.lock().unwrap().clone();
    let confirm = format!("/v1/customer-portal/orders/{ORDER}/confirm-payment");
    assert_eq!(
        seen.iter()
            .map(|s| (s.method.as_str(), s.path.as_str(), s.token))
            .collect::<Vec<_>>(),
        [
            (
                "GET",
                format!("/v1/orders/{ORDER}").as_str(),
                "organization"
            ),
            ("POST", "/v1/customer-sessions/", "organization"),
            ("POST", confirm.as_str(), "session"),
        ],
        "read the order, mint a session for its customer, confirm with it"
    );
    assert_eq!(seen[1].body, json!({ "customer_id": CUSTOMER }));
    assert_eq!(
        seen[2].body,
        json!({ "payment_method_id": METHOD, "payment_processor": "stripe" }),
        "the customer's default payment method"
    );
    let retries = views::list(&app.db, &RetriesQuery::default())
        .await
        .unwrap();
    assert_eq!(retries[0].status, "recovered");
    assert_eq!(retries[0].retries_done, 1);

    // Nothing more is due: the confirmed order is not retried again.
    let later = scheduler
        .run_once(due + chrono::Duration::days(30))
        .await
        .unwrap();
    assert_eq!(later.called, 0);
    assert_eq!(fake.seen.lock().unwrap().len(), 3);
    assert!(app.db.verify_ledger().await.unwrap().is_empty());
    app.stop().await;
}

/// The fake Polar and a service pointed at it, with `retry` as the source's policy (its
/// own scheduler idle: these tests drive the clock).
async fn polar_app(
    fake: &FakePolar,
    retry: &str,
) -> (MockServer, TestConfig, crate::common::TestApp) {
    let server = MockServer::start().await;
    Mock::given(matchers::any())
        .respond_with(fake.clone())
        .mount(&server)
        .await;
    let mut config = TestConfig::new().await;
    config.extra = format!(
        "[[sources]]\nid = \"polar\"\nprovider = \"polar\"\nsecrets = [\"{SECRET}\"]\n\
         api = {{ base_url = \"{}\", token = \"{ORG_TOKEN}\" }}\nretry = {retry}\n\
         [dunning]\ninterval_ms = 3600000\n",
        server.uri()
    );
    let app = spawn_app(&config, Role::All).await;
    (server, config, app)
}

/// Posts a Polar webhook and waits until it is reconciled.
async fn deliver(app: &crate::common::TestApp, id: &str, body: &[u8]) {
    assert_eq!(
        app.post_signed("polar", id, body).await.status(),
        202,
        "{id}"
    );
    let reconciled = eventually(Duration::from_secs(20), || async {
        app.db.archived_count("polar", id).await.unwrap() == 1
    })
    .await;
    assert!(reconciled, "{id} reconciled");
}

/// A fake whose renewal order is `order`, its subscription past due, its retries declined.
fn declining(order: &Value) -> FakePolar {
    FakePolar {
        order: order.clone(),
        declines: true,
        subscription: Arc::new(Mutex::new("past_due".into())),
        ..FakePolar::default()
    }
}

fn revokes(fake: &FakePolar) -> Vec<Seen> {
    let seen = fake.seen.lock().unwrap();
    seen.iter()
        .filter(|s| s.method == "DELETE")
        .cloned()
        .collect()
}

fn cancel_key() -> String {
    subsync::dunning::scheduler::final_action_key(
        "polar",
        ORDER,
        subsync::config::FinalAction::Cancel,
    )
}

#[tokio::test]
async fn declined_retries_run_out_and_the_subscription_is_revoked_once() {
    let t0 = t0();
    let order = renewal(t0);
    let fake = declining(&order);
    let policy = r#"{ jitter = false, max_attempts = 2, final_action = "cancel" }"#;
    let (_server, _config, app) = polar_app(&fake, policy).await;
    deliver(
        &app,
        "msg_order_updated",
        &webhook("order.updated", &order, t0),
    )
    .await;

    // Two retries, each declined; the second exhausts the cycle and revokes the subscription.
    let scheduler = scheduler(&app, Duration::from_secs(300));
    let mut at = t0;
    for expected_final in [0, 1] {
        let retry = views::list(&app.db, &RetriesQuery::default())
            .await
            .unwrap()
            .remove(0);
        at = retry.due_at.unwrap_or(at);
        let pass = scheduler.run_once(at).await.unwrap();
        assert_eq!(
            (pass.called, pass.final_actions),
            (1, expected_final),
            "{retry:?}"
        );
    }
    let violations = fake.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:#?}");
    let seen = fake.seen.lock().unwrap().clone();
    let revoked = revokes(&fake);
    assert_eq!(revoked.len(), 1, "{seen:#?}");
    assert_eq!(revoked[0].path, format!("/v1/subscriptions/{SUB}"));
    assert_eq!(revoked[0].idempotency_key, Some(cancel_key()));
    let detail = views::show(&app.db, "polar", ORDER).await.unwrap().unwrap();
    assert_eq!(detail.retry.status, "exhausted");
    let action = detail.final_action.unwrap();
    assert_eq!(
        (
            action.action.as_str(),
            action.outcome.as_deref(),
            action.answer.as_deref()
        ),
        ("cancel", Some("done"), Some("subscription canceled"))
    );

    // Never twice; and a re-sent revoke (the answer lost) would be `already_done`.
    let later = scheduler
        .run_once(at + chrono::Duration::days(60))
        .await
        .unwrap();
    assert_eq!((later.called, later.final_actions), (0, 0));
    assert_eq!(
        fake.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.method == "DELETE")
            .count(),
        1
    );
    app.stop().await;
}

#[tokio::test]
async fn a_crash_between_the_revoke_and_its_commit_resends_the_same_key() {
    let t0 = t0();
    let order = renewal(t0);
    let fake = FakePolar {
        slow_first_revoke: Some(Duration::from_secs(3)),
        ..declining(&order)
    };
    // No retry at all: the first failure exhausts the cycle, its final action due next pass.
    let policy = r#"{ jitter = false, max_attempts = 0, final_action = "cancel" }"#;
    let (_server, _config, app) = polar_app(&fake, policy).await;
    deliver(
        &app,
        "msg_order_updated",
        &webhook("order.updated", &order, t0),
    )
    .await;
    let scheduler = scheduler(&app, Duration::from_secs(1));

    // The process dies while Polar has revoked the subscription and not answered yet.
    let died = tokio::time::timeout(Duration::from_millis(1500), scheduler.run_once(t0)).await;
    assert!(died.is_err(), "the pass was cut off during the call");
    assert_eq!(*fake.changes.lock().unwrap(), 1);

    // After the in-flight timeout the revoke is sent again with the same key; Polar says
    // it is already revoked, and nothing changes twice.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(scheduler.run_once(t0).await.unwrap().final_actions, 1);
    let revoked = revokes(&fake);
    assert_eq!(revoked.len(), 2);
    assert!(
        revoked
            .iter()
            .all(|r| r.idempotency_key == Some(cancel_key())),
        "{revoked:#?}"
    );
    assert_eq!(*fake.changes.lock().unwrap(), 1, "revoked once");
    let detail = views::show(&app.db, "polar", ORDER).await.unwrap().unwrap();
    let action = detail.final_action.unwrap();
    assert_eq!(
        (action.sends, action.outcome.as_deref()),
        (2, Some("already_done"))
    );
    assert_eq!(
        action.answer.as_deref(),
        Some("This subscription is already revoked.")
    );
    assert_eq!(scheduler.run_once(t0).await.unwrap().final_actions, 0);
    assert!(fake.violations.lock().unwrap().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_payment_before_the_revoke_cancels_it() {
    let t0 = t0();
    let order = renewal(t0);
    let fake = declining(&order);
    let policy = r#"{ jitter = false, max_attempts = 0, final_action = "cancel" }"#;
    let (_server, _config, app) = polar_app(&fake, policy).await;
    deliver(
        &app,
        "msg_order_updated",
        &webhook("order.updated", &order, t0),
    )
    .await;
    let exhausted = views::show(&app.db, "polar", ORDER).await.unwrap().unwrap();
    assert_eq!(exhausted.retry.status, "exhausted");

    // Polar's own retry pays the order before subsync's scheduler gets to it.
    let mut paid = order.clone();
    paid["status"] = json!("paid");
    paid["paid"] = json!(true);
    paid["next_payment_attempt_at"] = Value::Null;
    deliver(
        &app,
        "msg_order_paid",
        &webhook("order.paid", &paid, t0 + chrono::Duration::hours(1)),
    )
    .await;

    let scheduler = scheduler(&app, Duration::from_secs(300));
    assert_eq!(scheduler.run_once(t0).await.unwrap().final_actions, 0);
    assert!(revokes(&fake).is_empty(), "nothing revoked");
    let detail = views::show(&app.db, "polar", ORDER).await.unwrap().unwrap();
    assert_eq!(detail.retry.status, "recovered");
    let action = detail.final_action.unwrap();
    assert_eq!(action.outcome.as_deref(), Some("skipped"));
    app.stop().await;
}
