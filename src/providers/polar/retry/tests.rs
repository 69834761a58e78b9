//! The Polar retry client against a fake of Polar's API whose every route checks what the
//! definitions require of the request (method, path, security, body schema) and answers
//! with bodies valid under the definitions' response schemas.

use serde_json::json;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use super::*;
use crate::providers::polar::definitions;
use crate::providers::testing::api_settings;
use crate::providers::testing::schema::set;

const ORG_TOKEN: &str = "polar_oat_secret123";
const SESSION_TOKEN: &str = "polar_cst_session456";
const ORDER: &str = "8a4c1f0e-0000-4000-8000-000000000001";
const CUSTOMER: &str = "992fae2a-2a17-4b7a-8d9e-e287cf90131b";
const DEFAULT_METHOD: &str = "5b9d2e1f-0000-4000-8000-000000000002";
const CONFIGURED_METHOD: &str = "6c0e3f2a-0000-4000-8000-000000000003";
const CONFIRM: &str = "/v1/customer-portal/orders/{id}/confirm-payment";

/// Asserts `value` is valid under `schema` of the definitions.
fn valid(value: &Value, schema: &Value, what: &str) {
    let errors = definitions().validate(value, schema);
    assert!(errors.is_empty(), "{what}: {errors:#?}");
}

/// A renewal order in dunning (`pending`, `next_payment_attempt_at`), from the `Order`
/// schema.
fn order(status: &str, default_method: Option<&str>) -> Value {
    let spec = definitions();
    let mut order = spec.generate(spec.schema("Order"));
    set(&mut order, "/id", json!(ORDER));
    set(&mut order, "/status", json!(status));
    set(&mut order, "/customer_id", json!(CUSTOMER));
    set(&mut order, "/customer/id", json!(CUSTOMER));
    set(
        &mut order,
        "/customer/default_payment_method_id",
        json!(default_method),
    );
    set(
        &mut order,
        "/next_payment_attempt_at",
        json!("2025-01-12T08:00:00Z"),
    );
    valid(
        &order,
        spec.response("/v1/orders/{id}", "get", "200"),
        "order",
    );
    order
}

/// A `CustomerSession` of `CUSTOMER` expiring at `expires_at`.
fn session(expires_at: DateTime<Utc>) -> Value {
    let spec = definitions();
    let mut session = spec.generate(spec.schema("CustomerSession"));
    set(&mut session, "/token", json!(SESSION_TOKEN));
    set(&mut session, "/expires_at", json!(expires_at.to_rfc3339()));
    set(&mut session, "/customer_id", json!(CUSTOMER));
    valid(
        &session,
        spec.response("/v1/customer-sessions/", "post", "201"),
        "session",
    );
    session
}

/// A confirm-payment answer with `status`, valid under the definitions.
fn answer(status: u16, body: Value) -> ResponseTemplate {
    let schema = definitions().response(CONFIRM, "post", &status.to_string());
    valid(&body, schema, "confirm-payment answer");
    ResponseTemplate::new(status).set_body_json(body)
}

fn confirmation(status: &str, error: Option<&str>) -> ResponseTemplate {
    answer(
        200,
        json!({"status": status, "client_secret": null, "error": error}),
    )
}

fn error(status: u16, name: &str, detail: &str) -> ResponseTemplate {
    answer(status, json!({"error": name, "detail": detail}))
}

/// Whether the request's JSON body is valid under the operation's request body schema.
fn conforms(path: &'static str, method: &'static str) -> impl Fn(&Request) -> bool {
    move |request: &Request| {
        let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
            return false;
        };
        let spec = definitions();
        spec.validate(&body, spec.request_body(path, method))
            .is_empty()
    }
}

/// How often each route must be called: the order read, the session, the confirmation.
struct Expect(u64, u64, u64);

async fn polar(
    order: Value,
    session: Value,
    confirm: ResponseTemplate,
    method_id: &str,
    Expect(reads, sessions, confirms): Expect,
) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::method("GET"))
        .and(path(format!("/v1/orders/{ORDER}")))
        .and(header(
            "authorization",
            format!("Bearer {ORG_TOKEN}").as_str(),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(order))
        .expect(reads)
        .mount(&server)
        .await;
    Mock::given(wiremock::matchers::method("POST"))
        .and(path("/v1/customer-sessions/"))
        .and(header(
            "authorization",
            format!("Bearer {ORG_TOKEN}").as_str(),
        ))
        .and(conforms("/v1/customer-sessions/", "post"))
        .and(body_json(json!({ "customer_id": CUSTOMER })))
        .respond_with(ResponseTemplate::new(201).set_body_json(session))
        .expect(sessions)
        .mount(&server)
        .await;
    Mock::given(wiremock::matchers::method("POST"))
        .and(path(format!(
            "/v1/customer-portal/orders/{ORDER}/confirm-payment"
        )))
        .and(header(
            "authorization",
            format!("Bearer {SESSION_TOKEN}").as_str(),
        ))
        .and(conforms(CONFIRM, "post"))
        // A saved method only, never a confirmation token as well.
        .and(body_json(
            json!({"payment_method_id": method_id, "payment_processor": "stripe"}),
        ))
        .respond_with(confirm)
        .expect(confirms)
        .mount(&server)
        .await;
    server
}

fn client(server: &MockServer, method: Option<&str>) -> PolarClient {
    let api = ApiSettings {
        payment_method_id: method.map(str::to_owned),
        ..api_settings(format!("{}/", server.uri()), ORG_TOKEN)
    };
    PolarClient::new(&api, crate::providers::http::http_client().unwrap())
}

fn call() -> RetryCall {
    RetryCall {
        attempt_id: ORDER.into(),
        cycle_id: Some(ORDER.into()),
        subscription_id: None,
        idempotency_key: "subsync-polar-r1".into(),
        previous_send_at: None,
    }
}

fn in_an_hour() -> DateTime<Utc> {
    Utc::now() + TimeDelta::hours(1)
}

/// One retry of the dunning order against `confirm`, with the customer's default method.
async fn once(confirm: ResponseTemplate) -> Result<CallOutcome, ProviderApiError> {
    let server = polar(
        order("pending", Some(DEFAULT_METHOD)),
        session(in_an_hour()),
        confirm,
        DEFAULT_METHOD,
        Expect(1, 1, 1),
    )
    .await;
    let outcome = client(&server, None).retry(&call()).await;
    server.verify().await;
    outcome
}

#[tokio::test]
async fn confirmation_statuses_map() {
    assert_eq!(
        once(confirmation("succeeded", None)).await,
        Ok(CallOutcome::Charged)
    );
    let action = answer(
        200,
        json!({"status": "requires_action", "client_secret": "pi_1_secret_x", "error": null}),
    );
    assert_eq!(once(action).await, Ok(CallOutcome::RequiresAction));
    assert_eq!(
        once(confirmation("failed", Some("Your card was declined."))).await,
        Ok(CallOutcome::Declined {
            code: None,
            message: Some("Your card was declined.".into())
        })
    );
    assert_eq!(
        once(confirmation("processing", None)).await,
        Ok(CallOutcome::InProgress)
    );
    assert!(matches!(
        once(confirmation("mystery", None)).await,
        Err(ProviderApiError::Transient(m)) if m.contains("mystery")
    ));
}

#[tokio::test]
async fn one_session_per_customer_is_minted_and_reused_until_it_expires() {
    let server = polar(
        order("pending", Some(DEFAULT_METHOD)),
        session(in_an_hour()),
        confirmation("failed", Some("Your card was declined.")),
        DEFAULT_METHOD,
        Expect(3, 1, 3),
    )
    .await;
    let client = client(&server, None);
    for _ in 0..3 {
        assert!(matches!(
            client.retry(&call()).await,
            Ok(CallOutcome::Declined { .. })
        ));
    }
    server.verify().await;

    // A session about to expire (within the minute's margin) is minted anew every time.
    let server = polar(
        order("pending", Some(DEFAULT_METHOD)),
        session(Utc::now() + TimeDelta::seconds(30)),
        confirmation("succeeded", None),
        DEFAULT_METHOD,
        Expect(2, 2, 2),
    )
    .await;
    let client = self::client(&server, None);
    for _ in 0..2 {
        assert_eq!(client.retry(&call()).await, Ok(CallOutcome::Charged));
    }
    server.verify().await;
}

#[tokio::test]
async fn a_refused_session_is_forgotten() {
    let server = polar(
        order("pending", Some(DEFAULT_METHOD)),
        session(in_an_hour()),
        error(401, "Unauthorized", &format!("bad token {SESSION_TOKEN}")),
        DEFAULT_METHOD,
        Expect(2, 2, 2),
    )
    .await;
    let client = client(&server, None);
    for _ in 0..2 {
        match client.retry(&call()).await {
            Err(ProviderApiError::Rejected {
                status: 401,
                message,
            }) => {
                assert!(!message.contains(SESSION_TOKEN) && !message.contains(ORG_TOKEN));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    server.verify().await;
}

#[tokio::test]
async fn a_configured_payment_method_wins_over_the_customers_default() {
    let server = polar(
        order("pending", Some(DEFAULT_METHOD)),
        session(in_an_hour()),
        confirmation("succeeded", None),
        CONFIGURED_METHOD,
        Expect(1, 1, 1),
    )
    .await;
    let outcome = client(&server, Some(CONFIGURED_METHOD))
        .retry(&call())
        .await;
    assert_eq!(outcome, Ok(CallOutcome::Charged));
    server.verify().await;
}

#[tokio::test]
async fn without_any_payment_method_nothing_is_confirmed() {
    let server = polar(
        order("pending", None),
        session(in_an_hour()),
        confirmation("succeeded", None),
        DEFAULT_METHOD,
        Expect(1, 0, 0),
    )
    .await;
    let outcome = client(&server, None).retry(&call()).await;
    assert!(
        matches!(&outcome, Err(ProviderApiError::Rejected { status: 0, message }) if message.contains("no payment method")),
        "{outcome:?}"
    );
    server.verify().await;
}

#[tokio::test]
async fn an_order_no_longer_pending_is_not_eligible_without_a_confirmation() {
    for status in ["paid", "void", "refunded"] {
        let server = polar(
            order(status, Some(DEFAULT_METHOD)),
            session(in_an_hour()),
            confirmation("succeeded", None),
            DEFAULT_METHOD,
            Expect(1, 0, 0),
        )
        .await;
        let outcome = client(&server, None).retry(&call()).await;
        assert!(
            matches!(&outcome, Ok(CallOutcome::NotEligible(m)) if m.contains(status)),
            "{status}: {outcome:?}"
        );
        server.verify().await;
    }
}

#[tokio::test]
async fn payment_in_progress_is_in_progress() {
    let busy = error(
        409,
        "PaymentAlreadyInProgress",
        "Payment for order is already in progress.",
    );
    assert_eq!(once(busy).await, Ok(CallOutcome::InProgress));
}

#[tokio::test]
async fn the_422_tells_not_eligible_from_a_failed_confirmation_by_its_detail() {
    let detail = format!("Order {ORDER} is not eligible for payment retry.");
    assert_eq!(
        once(error(422, "OrderNotEligibleForRetry", &detail)).await,
        Ok(CallOutcome::NotEligible(detail))
    );
    for detail in [
        "Payment confirmation failed.",
        "Your card was declined.",
        "Payment failed. Please try again.",
    ] {
        assert_eq!(
            once(error(422, "OrderNotEligibleForRetry", detail)).await,
            Ok(CallOutcome::Declined {
                code: None,
                message: Some(detail.into())
            }),
            "{detail}"
        );
    }
    // Not the declared error: our request's fault (here, a method of another customer),
    // not the order's state.
    let foreign = ResponseTemplate::new(422).set_body_json(json!({
        "error": "PaymentRetryValidationError",
        "detail": "Payment method does not belong to customer"
    }));
    assert!(matches!(
        once(foreign).await,
        Err(ProviderApiError::Rejected { status: 422, message }) if message.contains("does not belong")
    ));
    // Polar's request validation error.
    let invalid = ResponseTemplate::new(422).set_body_json(
        json!({"detail": [{"loc": ["body", "payment_method_id"], "msg": "bad", "type": "uuid_parsing"}]}),
    );
    assert!(matches!(
        once(invalid).await,
        Err(ProviderApiError::Rejected { status: 422, .. })
    ));
}

#[test]
fn the_422_decision_follows_the_detail() {
    assert!(!confirmation_failed(
        "Order 1 is not eligible for payment retry."
    ));
    assert!(!confirmation_failed(
        "Order is not eligible: the last payment failed"
    ));
    assert!(!confirmation_failed(
        "Payment method does not belong to customer"
    ));
    assert!(confirmation_failed("Payment confirmation failed"));
    assert!(confirmation_failed("Card DECLINED"));
}

#[tokio::test]
async fn the_manual_retry_limit_is_not_eligible_and_a_rate_limit_waits() {
    let limited = error(
        429,
        "ManualRetryLimitExceeded",
        "Maximum retry attempts exceeded",
    );
    assert_eq!(
        once(limited.insert_header("Retry-After", "120")).await,
        Ok(CallOutcome::NotEligible(
            "Maximum retry attempts exceeded".into()
        ))
    );
    // A 429 without that error is the API's own rate limit: wait as told.
    let throttled = ResponseTemplate::new(429)
        .set_body_json(json!({"detail": "Too many requests"}))
        .insert_header("Retry-After", "120");
    assert_eq!(
        once(throttled).await,
        Err(ProviderApiError::RateLimited {
            retry_after: Some(Duration::from_secs(120))
        })
    );
}

#[tokio::test]
async fn not_found_server_errors_and_auth_errors() {
    assert_eq!(
        once(error(404, "ResourceNotFound", "Order not found.")).await,
        Err(ProviderApiError::Rejected {
            status: 404,
            message: "ResourceNotFound: Order not found.".into()
        })
    );
    assert!(matches!(
        once(ResponseTemplate::new(502)).await,
        Err(ProviderApiError::Transient(_))
    ));
}

#[tokio::test]
async fn the_order_read_and_the_session_map_their_errors() {
    // The order read refused: nothing else is sent.
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(404)
                .set_body_json(json!({"error": "ResourceNotFound", "detail": "Not found"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;
    assert!(matches!(
        client(&server, None).retry(&call()).await,
        Err(ProviderApiError::Rejected { status: 404, .. })
    ));
    server.verify().await;

    // The session refused (the organization token lacks `customer_sessions:write`).
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(order("pending", Some(DEFAULT_METHOD))),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/customer-sessions/"))
        .respond_with(ResponseTemplate::new(403).set_body_json(
            json!({"error": "InsufficientScope", "detail": format!("token {ORG_TOKEN}")}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    match client(&server, None).retry(&call()).await {
        Err(ProviderApiError::Rejected {
            status: 403,
            message,
        }) => assert!(!message.contains(ORG_TOKEN)),
        other => panic!("unexpected {other:?}"),
    }
    server.verify().await;
}

#[tokio::test]
async fn a_call_without_an_order_id_sends_nothing() {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&server)
        .await;
    let mut without = call();
    without.cycle_id = None;
    let result = client(&server, Some(CONFIGURED_METHOD))
        .retry(&without)
        .await;
    assert!(matches!(
        result,
        Err(ProviderApiError::Rejected { status: 0, .. })
    ));
}

#[test]
fn the_requests_sent_are_what_the_definitions_require() {
    let spec = definitions();
    let bearer = |path: &str, method: &str| -> Vec<String> {
        spec.operation(path, method)["security"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s.as_object().unwrap().keys().cloned())
            .collect()
    };
    // The organization token reads orders and mints sessions; confirm-payment takes a
    // customer (or member) session only.
    for (path, method) in [
        ("/v1/orders/{id}", "get"),
        ("/v1/customer-sessions/", "post"),
        ("/v1/orders/", "get"),
    ] {
        assert!(bearer(path, method).contains(&"oat".to_owned()), "{path}");
    }
    assert_eq!(
        bearer(CONFIRM, "post"),
        ["customer_session", "member_session"]
    );
    for scheme in ["oat", "customer_session"] {
        assert_eq!(
            spec.at(&format!("/components/securitySchemes/{scheme}/scheme")),
            "bearer"
        );
    }
    // The bodies this client sends.
    valid(
        &json!({ "customer_id": CUSTOMER }),
        spec.request_body("/v1/customer-sessions/", "post"),
        "session request",
    );
    valid(
        &json!({"payment_method_id": DEFAULT_METHOD, "payment_processor": "stripe"}),
        spec.request_body(CONFIRM, "post"),
        "confirm-payment request",
    );
}
