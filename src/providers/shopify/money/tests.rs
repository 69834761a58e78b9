use std::time::Duration;

use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;
use crate::providers::shopify::schema;
use crate::providers::testing::api_settings;

const TOKEN: &str = "shpat_money_secret";
const ATTEMPT: &str = "gid://shopify/SubscriptionBillingAttempt/7001";
const ORDER_ID: &str = "gid://shopify/Order/9001";

fn client(server: &MockServer, version: Option<&str>) -> ShopifyMoney {
    let api = ApiSettings {
        api_version: version.map(str::to_owned),
        ..api_settings(format!("{}/", server.uri()), TOKEN)
    };
    ShopifyMoney::new(&api, crate::providers::http::http_client().unwrap())
}

fn of(attempt_id: &str) -> MoneyQuery {
    MoneyQuery {
        attempt_id: attempt_id.into(),
        subscription_id: Some("gid://shopify/SubscriptionContract/4242".into()),
        cycle_id: None,
    }
}

/// An order as `MoneyV2` writes it: the amount a `Decimal` string.
fn order(amount: &str, currency: &str) -> Value {
    json!({ "id": ORDER_ID, "totalPriceSet": {
        "presentmentMoney": { "amount": amount, "currencyCode": currency } } })
}

fn success(order: Value) -> Value {
    json!({ "id": ATTEMPT, "state": {
        "__typename": "SubscriptionBillingAttemptSuccessState", "order": order } })
}

fn answer_body(attempt: Value) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .set_body_json(json!({ "data": { "subscriptionBillingAttempt": attempt } }))
}

/// Answers on the default version's route, checking the token and the variables.
async fn answer(response: ResponseTemplate) -> Result<Money, ProviderApiError> {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/admin/api/2026-04/graphql.json"))
        .and(header("x-shopify-access-token", TOKEN))
        .and(header("content-type", "application/json"))
        .and(wiremock::matchers::body_partial_json(
            json!({ "variables": { "id": ATTEMPT } }),
        ))
        .respond_with(response)
        .expect(1)
        .mount(&server)
        .await;
    client(&server, None).money(&of(ATTEMPT)).await
}

fn rejected_with(result: Result<Money, ProviderApiError>, status: u16, words: &str) {
    match result {
        Err(ProviderApiError::Rejected { status: s, message }) => {
            assert_eq!(s, status, "{message}");
            assert!(message.contains(words), "{message}");
        }
        other => panic!("expected a rejection with {words:?}, got {other:?}"),
    }
}

/// The request as it leaves, in each version's shape, conforms to that version's copied
/// schema; a bare attempt number is sent as its gid.
#[tokio::test]
async fn the_query_conforms_to_the_schema_of_its_version() {
    for (version, configured, answer) in [
        ("2026-04", None, success(order("49.95", "USD"))),
        (
            "2025-01",
            Some("2025-01"),
            json!({ "id": ATTEMPT, "ready": true, "order": order("49.95", "USD") }),
        ),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(format!("/admin/api/{version}/graphql.json")))
            .respond_with(answer_body(answer))
            .expect(2)
            .mount(&server)
            .await;
        let client = client(&server, configured);
        let usd = Money::from_minor(4995, "USD").unwrap();
        assert_eq!(client.money(&of(ATTEMPT)).await, Ok(usd.clone()));
        assert_eq!(client.money(&of("7001")).await, Ok(usd), "{version}");
        let schema = schema::copied(version);
        for request in server.received_requests().await.unwrap() {
            let body: Value = serde_json::from_slice(&request.body).unwrap();
            let query = body["query"].as_str().unwrap();
            assert_eq!(
                schema.check_document(query),
                Vec::<String>::new(),
                "{query}"
            );
            assert_eq!(body["variables"], json!({ "id": ATTEMPT }));
            let shape = if version == "2026-04" {
                "SubscriptionBillingAttemptSuccessState"
            } else {
                "ready"
            };
            assert!(query.contains(shape), "{query}");
        }
    }
}

/// Amounts convert exactly with the currency's exponent.
#[tokio::test]
async fn amounts_convert_with_the_currency_exponent() {
    for (amount, currency, minor) in [
        ("49.95", "USD", 4995),
        ("1200.0", "JPY", 1200),
        ("3.125", "KWD", 3125),
        ("10", "EUR", 1000),
    ] {
        let money = answer(answer_body(success(order(amount, currency)))).await;
        assert_eq!(money, Ok(Money::from_minor(minor, currency).unwrap()));
    }
}

#[tokio::test]
async fn answers_without_usable_money_are_permanent() {
    rejected_with(
        answer(answer_body(Value::Null)).await,
        404,
        "no billing attempt",
    );
    let deleted = success(Value::Null);
    rejected_with(answer(answer_body(deleted)).await, 200, "no order");
    let failed = json!({ "id": ATTEMPT, "state": {
        "__typename": "SubscriptionBillingAttemptFailedState",
        "error": { "__typename": "SubscriptionBillingAttemptUnexpectedError", "message": "x" } } });
    rejected_with(answer(answer_body(failed)).await, 200, "did not succeed");
    let too_precise = success(order("1.5", "JPY"));
    rejected_with(answer(answer_body(too_precise)).await, 200, "more decimals");
    let unknown = success(order("1.00", "XYZ"));
    rejected_with(answer(answer_body(unknown)).await, 200, "unknown currency");
    let garbage = ResponseTemplate::new(200).set_body_string("<html>");
    rejected_with(answer(garbage).await, 200, "not a GraphQL answer");
    rejected_with(
        answer(ResponseTemplate::new(404).set_body_string("Not Found")).await,
        404,
        "Not Found",
    );
}

#[tokio::test]
async fn a_pending_attempt_is_transient() {
    let pending = json!({ "id": ATTEMPT, "state": {
        "__typename": "SubscriptionBillingAttemptPendingState" } });
    assert!(matches!(
        answer(answer_body(pending)).await,
        Err(ProviderApiError::Transient(_))
    ));
}

#[tokio::test]
async fn server_errors_are_transient_and_limits_wait() {
    assert!(matches!(
        answer(ResponseTemplate::new(503)).await,
        Err(ProviderApiError::Transient(_))
    ));
    let limited = ResponseTemplate::new(429).insert_header("Retry-After", "4");
    assert_eq!(
        answer(limited).await,
        Err(ProviderApiError::RateLimited {
            retry_after: Some(Duration::from_secs(4))
        })
    );
    let throttled = json!({
        "errors": [{ "message": "Throttled", "extensions": { "code": "THROTTLED" } }],
        "extensions": { "cost": { "requestedQueryCost": 10,
            "throttleStatus": { "currentlyAvailable": 0, "restoreRate": 100.0 } } }
    });
    assert_eq!(
        answer(ResponseTemplate::new(200).set_body_json(throttled)).await,
        Err(ProviderApiError::RateLimited {
            retry_after: Some(Duration::from_secs(1))
        })
    );
    let echo = ResponseTemplate::new(401).set_body_string(format!("bad token {TOKEN}"));
    match answer(echo).await {
        Err(ProviderApiError::Rejected { status, message }) => {
            assert_eq!(status, 401);
            assert!(!message.contains(TOKEN));
        }
        other => panic!("unexpected {other:?}"),
    }
}
