//! The Stripe payment client against fakes of `GET /v1/invoice_payments` and
//! `GET /v1/charges/{id}` that accept only what Stripe's definitions allow (every query
//! parameter one of `InvoicePaymentListParams`, every `expand[]` a path to an object of
//! the InvoicePayment) and answer objects valid under the `InvoicePayment`, `Invoice` and
//! `Charge` types.

use serde_json::{Value, json};
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use super::*;
use crate::providers::stripe::{definitions, invoice, query_problems};
use crate::providers::testing::{api_settings, assert_errors_map};

fn client(server: &MockServer) -> StripePayments {
    StripePayments::new(
        &api_settings(server.uri(), "sk_test_123"),
        crate::providers::http::http_client().unwrap(),
    )
}

/// Only a list request Stripe would accept (another is not answered: the fake's 404).
fn conforms(request: &Request) -> bool {
    let problems = query_problems(&request.url, "InvoicePaymentListParams", "InvoicePayment");
    if !problems.is_empty() {
        eprintln!("Stripe would refuse {}: {problems:#?}", request.url);
    }
    problems.is_empty()
}

/// An InvoicePayment of `pi` paying `invoice` (expanded), checked against the type.
fn invoice_payment(pi: &str, status: &str, invoice: Value) -> Value {
    let spec = definitions();
    let mut payment = spec.generate("InvoicePayment");
    payment["id"] = json!(format!("inpay_{pi}"));
    payment["status"] = json!(status);
    payment["invoice"] = invoice;
    payment["payment"] = json!({"type": "payment_intent", "payment_intent": pi});
    let errors = spec.validate(&payment, "InvoicePayment");
    assert!(errors.is_empty(), "{errors:#?}");
    payment
}

/// A list answer, checked against `ApiList` (its elements were checked above).
fn list(payments: Vec<Value>) -> ResponseTemplate {
    let body = json!({"object": "list", "url": "/v1/invoice_payments", "has_more": false,
        "data": payments});
    let errors = definitions().validate(&body, "ApiList");
    assert!(errors.is_empty(), "{errors:#?}");
    ResponseTemplate::new(200).set_body_json(body)
}

/// A Charge of `payment_intent` (or of none), checked against the type.
fn charge(id: &str, payment_intent: Option<&str>) -> ResponseTemplate {
    let spec = definitions();
    let mut charge = spec.generate("Charge");
    charge["id"] = json!(id);
    charge["payment_intent"] = json!(payment_intent);
    let errors = spec.validate(&charge, "Charge");
    assert!(errors.is_empty(), "{errors:#?}");
    ResponseTemplate::new(200).set_body_json(charge)
}

async fn mount_list(server: &MockServer, pi: &str, answer: ResponseTemplate) {
    Mock::given(method("GET"))
        .and(path("/v1/invoice_payments"))
        .and(header("authorization", "Bearer sk_test_123"))
        .and(query_param("payment[type]", "payment_intent"))
        .and(query_param("payment[payment_intent]", pi))
        .and(query_param("expand[]", "data.invoice"))
        .and(conforms)
        .respond_with(answer)
        .expect(1)
        .mount(server)
        .await;
}

#[test]
fn the_fake_refuses_what_stripe_refuses() {
    let url = |query: &str| {
        let url = format!("http://stripe.test/v1/invoice_payments?{query}");
        query_problems(
            &reqwest::Url::parse(&url).unwrap(),
            "InvoicePaymentListParams",
            "InvoicePayment",
        )
    };
    let ok = "payment%5Btype%5D=payment_intent&payment%5Bpayment_intent%5D=pi_1&expand%5B%5D=data.invoice";
    assert_eq!(url(ok), Vec::<String>::new());
    // The list takes no charge (its `payment[type]` enum is open, its fields are not);
    // expand must name an object of the InvoicePayment.
    assert_eq!(
        url("payment%5Btype%5D=charge&payment%5Bcharge%5D=ch_1").len(),
        1
    );
    assert_eq!(url("expand%5B%5D=data.amount_paid").len(), 1);
    assert_eq!(url("payment_intent=pi_1").len(), 1);
}

#[tokio::test]
async fn a_payment_intent_is_linked_to_the_attempt_that_paid_its_invoice() {
    let server = MockServer::start().await;
    let paid = invoice_payment("pi_1", "paid", invoice("in_1", "paid", 3));
    let canceled = invoice_payment("pi_1", "canceled", invoice("in_0", "void", 1));
    mount_list(&server, "pi_1", list(vec![canceled, paid])).await;
    let link = client(&server).attempt_of("pi_1").await.unwrap();
    assert_eq!(
        link,
        Some(PaymentLink {
            attempt_id: "in_1:3".to_owned(),
            subscription_id: Some("sub_1".to_owned()),
            cycle_id: Some("in_1".to_owned()),
        })
    );
}

#[tokio::test]
async fn a_charge_is_followed_to_its_payment_intent() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/charges/ch_1"))
        .and(header("authorization", "Bearer sk_test_123"))
        .respond_with(charge("ch_1", Some("pi_2")))
        .expect(1)
        .mount(&server)
        .await;
    let paid = invoice_payment("pi_2", "paid", invoice("in_2", "paid", 1));
    mount_list(&server, "pi_2", list(vec![paid])).await;
    let link = client(&server).attempt_of("ch_1").await.unwrap().unwrap();
    assert_eq!(link.attempt_id, "in_2:1");
}

#[tokio::test]
async fn a_payment_of_no_invoice_links_to_nothing() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/charges/ch_9"))
        .respond_with(charge("ch_9", None))
        .expect(1)
        .mount(&server)
        .await;
    mount_list(&server, "pi_9", list(vec![])).await;
    let client = client(&server);
    assert_eq!(client.attempt_of("ch_9").await.unwrap(), None);
    assert_eq!(client.attempt_of("pi_9").await.unwrap(), None);
}

#[tokio::test]
async fn an_answer_not_of_the_definitions_is_rejected() {
    let server = MockServer::start().await;
    // The invoice not expanded: no attempt count to name the attempt by.
    let mut unexpanded = invoice_payment("pi_3", "paid", invoice("in_3", "paid", 1));
    unexpanded["invoice"] = json!("in_3");
    mount_list(&server, "pi_3", list(vec![unexpanded])).await;
    let error = client(&server).attempt_of("pi_3").await.unwrap_err();
    assert!(
        matches!(&error, ProviderApiError::Rejected { message, .. } if message.contains("unexpanded")),
        "{error:?}"
    );
}

#[tokio::test]
async fn errors_map_to_api_errors() {
    let server = MockServer::start().await;
    let client = client(&server);
    assert_errors_map(&server, || client.attempt_of("pi_1"), "sk_test_123").await;
}
