use std::time::Duration;

use serde_json::{Value, json};
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;
use crate::providers::testing::api_settings;

const TOKEN: &str = "apst_money_secret";
const PAST_ORDERS: &str = "/api/external/v2/subscription-billing-attempts/past-orders";
const CONTRACT: &str = "/api/external/v2/contract-raw-response";

fn client(server: &MockServer) -> AppstleMoney {
    let api = api_settings(format!("{}/", server.uri()), TOKEN);
    AppstleMoney::new(&api, crate::providers::http::http_client().unwrap())
}

fn of(attempt: &str) -> MoneyQuery {
    MoneyQuery {
        attempt_id: attempt.into(),
        subscription_id: Some("77".into()),
        cycle_id: Some("77@2026-12-01T09:00:00Z".into()),
    }
}

/// A past order as Appstle lists it (BillingAttempt fields of the fact sheet).
fn listed(id: u64, billed: &str, amount: Value) -> Value {
    json!({ "id": id, "shop": "demo.myshopify.com", "contractId": 77, "status": "SUCCESS",
            "billingDate": billed, "attemptCount": 1, "orderAmount": amount,
            "retryingNeeded": false })
}

/// Past orders of contract 77 (`page`), checked: method, route, key header, query.
async fn past_orders(server: &MockServer, page: u32, attempts: Value) {
    Mock::given(method("GET"))
        .and(path(PAST_ORDERS))
        .and(header("x-api-key", TOKEN))
        .and(query_param("contractId", "77"))
        .and(query_param("page", page.to_string()))
        .and(query_param("size", "50"))
        .respond_with(ResponseTemplate::new(200).set_body_json(attempts))
        .expect(1)
        .mount(server)
        .await;
}

/// The raw Shopify contract, `times` reads.
async fn contract(server: &MockServer, response: ResponseTemplate, times: u64) {
    Mock::given(method("GET"))
        .and(path(CONTRACT))
        .and(header("x-api-key", TOKEN))
        .and(query_param("contractId", "77"))
        .respond_with(response)
        .expect(times)
        .mount(server)
        .await;
}

fn raw_contract(currency: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "__typename": "SubscriptionContract", "id": "gid://shopify/SubscriptionContract/77",
        "status": "ACTIVE", "currencyCode": currency }))
}

#[tokio::test]
async fn the_amount_of_the_past_order_in_the_contracts_currency() {
    let server = MockServer::start().await;
    past_orders(
        &server,
        0,
        json!([
            listed(902, "2027-01-01T09:00:00Z", json!(12.5)),
            listed(901, "2026-12-01T09:00:00Z", json!(49.95)),
        ]),
    )
    .await;
    contract(&server, raw_contract("EUR"), 1).await;
    assert_eq!(
        client(&server).money(&of("901")).await,
        Ok(Money::from_minor(4995, "EUR").unwrap())
    );
}

/// A record naming its currency, or an `orderAmountContractCurrency` object, needs no
/// contract read; a bare contract-currency amount wins over `orderAmount`.
#[tokio::test]
async fn a_record_that_names_its_currency_needs_no_contract() {
    let server = MockServer::start().await;
    let mut named = listed(901, "2026-12-01T09:00:00Z", json!("1200"));
    named["currencyCode"] = json!("JPY");
    let mut object = listed(902, "2026-12-01T09:00:00Z", json!(10));
    object["orderAmountContractCurrency"] = json!({ "amount": "3.125", "currencyCode": "KWD" });
    past_orders(&server, 0, json!([named, object])).await;
    contract(&server, raw_contract("EUR"), 0).await;
    let client = client(&server);
    assert_eq!(
        client.money(&of("901")).await,
        Ok(Money::from_minor(1200, "JPY").unwrap())
    );
    server.reset().await;
    let mut bare = listed(903, "2026-12-01T09:00:00Z", json!(10));
    bare["orderAmountContractCurrency"] = json!(9.5);
    past_orders(&server, 0, json!([bare])).await;
    contract(&server, raw_contract("GBP"), 1).await;
    assert_eq!(
        client.money(&of("903")).await,
        Ok(Money::from_minor(950, "GBP").unwrap())
    );
    server.reset().await;
    past_orders(&server, 0, json!([object_only()])).await;
    assert_eq!(
        client.money(&of("902")).await,
        Ok(Money::from_minor(3125, "KWD").unwrap())
    );
}

fn object_only() -> Value {
    let mut object = listed(902, "2026-12-01T09:00:00Z", json!(10));
    object["orderAmountContractCurrency"] = json!({ "amount": "3.125", "currencyCode": "KWD" });
    object
}

/// Pages are read until the attempt is found, and no further than its billing date.
#[tokio::test]
async fn paging_stops_at_the_attempt_or_before_its_billing_date() {
    let server = MockServer::start().await;
    let newer: Vec<Value> = (0..50)
        .map(|n| listed(1000 + n, "2027-02-01T09:00:00Z", json!(1)))
        .collect();
    past_orders(&server, 0, Value::Array(newer)).await;
    let older: Vec<Value> = (0..50)
        .map(|n| listed(2000 + n, "2026-11-01T09:00:00Z", json!(1)))
        .collect();
    past_orders(&server, 1, Value::Array(older)).await;
    contract(&server, raw_contract("USD"), 0).await;
    match client(&server).money(&of("901")).await {
        Err(ProviderApiError::Rejected {
            status: 404,
            message,
        }) => {
            assert!(message.contains("not among the past orders"), "{message}")
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn answers_without_usable_money_are_permanent() {
    let cases = [
        (
            json!([listed(901, "2026-12-01T09:00:00Z", Value::Null)]),
            raw_contract("EUR"),
            "no orderAmount",
        ),
        (
            json!([listed(901, "2026-12-01T09:00:00Z", json!("4.999"))]),
            raw_contract("EUR"),
            "more decimals",
        ),
        (
            json!([listed(901, "2026-12-01T09:00:00Z", json!(5))]),
            raw_contract("XYZ"),
            "unknown currency",
        ),
        (
            json!([listed(901, "2026-12-01T09:00:00Z", json!(5))]),
            ResponseTemplate::new(200).set_body_json(json!({ "id": 77 })),
            "no currencyCode",
        ),
        (
            json!([listed(901, "2026-12-01T09:00:00Z", json!(5))]),
            ResponseTemplate::new(404).set_body_string("Not Found"),
            "Not Found",
        ),
    ];
    for (attempts, contract_answer, words) in cases {
        let server = MockServer::start().await;
        past_orders(&server, 0, attempts).await;
        Mock::given(method("GET"))
            .and(path(CONTRACT))
            .respond_with(contract_answer)
            .mount(&server)
            .await;
        match client(&server).money(&of("901")).await {
            Err(ProviderApiError::Rejected { message, .. }) => {
                assert!(message.contains(words), "{words}: {message}")
            }
            other => panic!("{words}: unexpected {other:?}"),
        }
    }
    let server = MockServer::start().await;
    let garbage = ResponseTemplate::new(200).set_body_string("<html>");
    Mock::given(method("GET"))
        .and(path(PAST_ORDERS))
        .respond_with(garbage)
        .mount(&server)
        .await;
    assert!(matches!(
        client(&server).money(&of("901")).await,
        Err(ProviderApiError::Rejected { .. })
    ));
    let without = MoneyQuery {
        attempt_id: "901".into(),
        subscription_id: None,
        cycle_id: None,
    };
    assert!(matches!(
        client(&server).money(&without).await,
        Err(ProviderApiError::Rejected { status: 0, .. })
    ));
}

#[tokio::test]
async fn server_errors_are_transient_and_limits_wait() {
    let answer = |response: ResponseTemplate| async move {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path(PAST_ORDERS))
            .respond_with(response)
            .expect(1)
            .mount(&server)
            .await;
        client(&server).money(&of("901")).await
    };
    assert!(matches!(
        answer(ResponseTemplate::new(502)).await,
        Err(ProviderApiError::Transient(_))
    ));
    assert_eq!(
        answer(ResponseTemplate::new(429).insert_header("Retry-After", "7")).await,
        Err(ProviderApiError::RateLimited {
            retry_after: Some(Duration::from_secs(7))
        })
    );
    match answer(ResponseTemplate::new(401).set_body_string(format!("key {TOKEN}"))).await {
        Err(ProviderApiError::Rejected { status, message }) => {
            assert_eq!(status, 401);
            assert!(!message.contains(TOKEN));
        }
        other => panic!("unexpected {other:?}"),
    }
}
