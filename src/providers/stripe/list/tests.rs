//! The Stripe list client against a fake of `GET /v1/invoices` that accepts only what
//! Stripe's definitions allow (every query parameter one of `InvoiceListParams` and its
//! `PaginationParams`, every `expand[]` a path to an object of the Invoice) and answers
//! lists of invoices valid under the `Invoice` type.

use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use super::*;
use crate::canonical::{AttemptStatus, CanonicalEvent};
use crate::config::ProviderKind;
use crate::providers::stripe::{definitions, invoice, query_problems};
use crate::providers::testing::{EMPTY_END, normalize_with, request};
use crate::providers::testing::{api_settings, assert_errors_map};

fn client(server: &MockServer) -> StripeList {
    StripeList::new(
        &api_settings(server.uri(), "sk_test_123"),
        crate::providers::http::http_client().unwrap(),
    )
}

/// Only a request Stripe would accept (another is not answered: the fake's 404).
fn conforms(request: &Request) -> bool {
    let problems = query_problems(&request.url, "InvoiceListParams", "Invoice");
    if !problems.is_empty() {
        eprintln!("Stripe would refuse {}: {problems:#?}", request.url);
    }
    problems.is_empty()
}

/// A list page as Stripe answers it, checked against `ApiList` and `Invoice`.
fn page(has_more: bool, invoices: Vec<Value>) -> ResponseTemplate {
    let spec = definitions();
    let list =
        json!({"object": "list", "url": "/v1/invoices", "has_more": has_more, "data": invoices});
    let errors = spec.validate(&list, "ApiList");
    assert!(errors.is_empty(), "{errors:#?}");
    ResponseTemplate::new(200).set_body_json(list)
}

#[test]
fn the_fake_refuses_what_stripe_refuses() {
    let url = |query: &str| {
        let url = format!("http://stripe.test/v1/invoices?{query}");
        query_problems(
            &reqwest::Url::parse(&url).unwrap(),
            "InvoiceListParams",
            "Invoice",
        )
    };
    assert_eq!(
        url("limit=2&starting_after=in_2&created%5Bgte%5D=1700000000"),
        Vec::<String>::new()
    );
    assert_eq!(
        url("expand%5B%5D=data.payments&status=open"),
        Vec::<String>::new()
    );
    // The Invoice of the current API version has no payment_intent.
    assert_eq!(url("limit=2&expand%5B%5D=data.payment_intent").len(), 1);
    assert_eq!(url("limit=two").len(), 1);
    assert_eq!(url("since=1700000000").len(), 1);
    assert_eq!(url("customer%5Bid%5D=cus_1").len(), 1);
}

#[tokio::test]
async fn pages_with_starting_after_until_has_more_is_false() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/invoices"))
        .and(header("authorization", "Bearer sk_test_123"))
        .and(query_param("limit", "2"))
        .and(query_param("starting_after", "in_2"))
        .and(conforms)
        .respond_with(page(false, vec![invoice("in_3", "draft", 0)]))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/invoices"))
        .and(header("authorization", "Bearer sk_test_123"))
        .and(query_param("limit", "2"))
        .and(conforms)
        .respond_with(page(
            true,
            vec![invoice("in_1", "paid", 1), invoice("in_2", "open", 2)],
        ))
        .expect(1)
        .mount(&server)
        .await;
    let client = client(&server);

    let first = client.page(request(None)).await.unwrap();
    assert_eq!(first.next.as_deref(), Some("in_2"));
    let keys: Vec<_> = first.records.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["invoice:in_1:1", "invoice:in_2:2"]);

    let last = client.page(request(Some("in_2"))).await.unwrap();
    assert_eq!(last.next, None);
    assert!(last.records.is_empty(), "a draft carries no attempt");
    server.verify().await;

    let paid = normalize_with(ProviderKind::Stripe, &first.records[0]);
    let failed = normalize_with(ProviderKind::Stripe, &first.records[1]);
    match (&paid[..], &failed[..]) {
        ([CanonicalEvent::BillingAttempt(p)], [CanonicalEvent::BillingAttempt(f)]) => {
            assert_eq!(
                (p.attempt_id.as_str(), p.status),
                ("in_1:1", AttemptStatus::Succeeded)
            );
            assert_eq!(p.amount.as_ref().map(|m| m.minor), Some(1500));
            assert_eq!(p.subscription_id.as_deref(), Some("sub_1"));
            assert_eq!(
                p.attempted_at,
                chrono::DateTime::from_timestamp(1_700_000_100, 0)
            );
            assert_eq!(
                (f.attempt_id.as_str(), f.status),
                ("in_2:2", AttemptStatus::Failed)
            );
            assert_eq!(f.subscription_id.as_deref(), Some("sub_1"));
            // A listed invoice names no PaymentIntent to read a decline from.
            assert_eq!((&f.error_code, &f.error_message), (&None, &None));
        }
        other => panic!("unexpected events {other:?}"),
    }
}

#[tokio::test]
async fn since_is_sent_as_created_gte() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/invoices"))
        .and(query_param("created[gte]", "1700000000"))
        .and(conforms)
        .respond_with(page(false, vec![]))
        .expect(1)
        .mount(&server)
        .await;
    let since = chrono::DateTime::from_timestamp(1_700_000_000, 0);
    let page = client(&server)
        .page(PageRequest {
            since,
            ..request(None)
        })
        .await
        .unwrap();
    assert_eq!(page, EMPTY_END);
}

#[tokio::test]
async fn errors_map_to_api_errors() {
    let server = MockServer::start().await;
    let client = client(&server);
    assert_errors_map(&server, || client.page(request(None)), "sk_test_123").await;
}

#[test]
fn every_invoice_status_is_decided_and_a_new_one_counted() {
    for word in definitions().enum_values("Invoice.Status") {
        let listed = json!({"has_more": false, "data": [invoice("in_1", &word, 1)]});
        let page = parse(&listed.to_string()).unwrap();
        let expected = usize::from(matches!(word.as_str(), "paid" | "open" | "uncollectible"));
        assert_eq!(page.records.len(), expected, "{word}");
    }
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let listed = json!({"has_more": false, "data": [invoice("in_1", "frozen", 1)]});
    let page = metrics::with_local_recorder(&recorder, || parse(&listed.to_string())).unwrap();
    assert!(page.records.is_empty());
    let line =
        "subsync_unknown_provider_values_total{provider=\"stripe\",field=\"invoice.status\"} 1";
    assert!(
        handle.render().lines().any(|l| l == line),
        "{}",
        handle.render()
    );
}
