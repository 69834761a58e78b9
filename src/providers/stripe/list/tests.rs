//! The Stripe list client against a fake of `GET /v1/invoices` that accepts only what
//! Stripe's definitions allow (every query parameter one of `InvoiceListParams` and its
//! `PaginationParams`, every `expand[]` a path to an object of the Invoice) and answers
//! lists of invoices valid under the `Invoice` type.

use wiremock::matchers::{header, method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use super::*;
use crate::canonical::{AttemptStatus, CanonicalEvent};
use crate::config::ProviderKind;
use crate::providers::stripe::{definitions, event, invoice, query_problems};
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

/// A run from further back than the Events API keeps sweeps every invoice: one created
/// before the window may have been tried in it.
#[tokio::test]
async fn a_since_older_than_the_events_history_sweeps_every_invoice() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/invoices"))
        .and(query_param_is_missing("created[gte]"))
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

/// Only an events request Stripe would accept.
fn events_conform(request: &Request) -> bool {
    let problems = query_problems(&request.url, "EventListParams", "Event");
    if !problems.is_empty() {
        eprintln!("Stripe would refuse {}: {problems:#?}", request.url);
    }
    problems.is_empty()
}

/// A page of the Events API, checked against `ApiList` (the events against their types).
fn events_page(has_more: bool, events: Vec<Value>) -> ResponseTemplate {
    let list = json!({"object": "list", "url": "/v1/events", "has_more": has_more, "data": events});
    let errors = definitions().validate(&list, "ApiList");
    assert!(errors.is_empty(), "{errors:#?}");
    ResponseTemplate::new(200).set_body_json(list)
}

/// A recent run lists the events of every booked type since then, page by page; each is
/// the webhook itself, so both attempts of an invoice created long before are seen.
#[tokio::test]
async fn a_recent_since_lists_the_booked_events_page_by_page() {
    let server = MockServer::start().await;
    let since = Utc::now() - chrono::Duration::hours(2);
    let at = since.timestamp() + 600;
    let failed = event(
        "evt_2",
        "invoice.payment_failed",
        at,
        invoice("in_1", "open", 1),
    );
    let paid = event(
        "evt_3",
        "invoice.paid",
        at + 600,
        invoice("in_1", "paid", 2),
    );
    let types: Vec<&str> = booked_types().collect();
    assert!(
        types.len() <= 20,
        "Stripe takes up to 20 types: {}",
        types.len()
    );
    let mock = |after: Option<&str>| {
        let mut mock = Mock::given(method("GET"))
            .and(path("/v1/events"))
            .and(header("authorization", "Bearer sk_test_123"))
            .and(query_param("limit", "1"))
            .and(query_param(
                "created[gte]",
                since.timestamp().to_string().as_str(),
            ))
            .and(events_conform);
        let types = types.clone();
        mock = mock.and(move |request: &Request| {
            let asked: Vec<String> = (request.url.query_pairs())
                .filter(|(k, _)| k == "types[]")
                .map(|(_, v)| v.into_owned())
                .collect();
            asked == types
        });
        match after {
            Some(after) => mock.and(query_param("starting_after", after)),
            None => mock.and(query_param_is_missing("starting_after")),
        }
    };
    mock(None)
        .respond_with(events_page(true, vec![paid]))
        .expect(1)
        .mount(&server)
        .await;
    mock(Some("evt_3"))
        .respond_with(events_page(false, vec![failed]))
        .expect(1)
        .mount(&server)
        .await;
    let client = client(&server);
    let first = client
        .page(PageRequest {
            since: Some(since),
            page_size: 1,
            ..request(None)
        })
        .await
        .unwrap();
    assert_eq!(first.next.as_deref(), Some("evt_3"));
    let last = client
        .page(PageRequest {
            since: Some(since),
            page_size: 1,
            ..request(first.next.as_deref())
        })
        .await
        .unwrap();
    assert_eq!(last.next, None);
    let mut attempts = Vec::new();
    for record in first.records.iter().chain(&last.records) {
        assert!(record.key.starts_with("event:evt_"), "{}", record.key);
        match normalize_with(ProviderKind::Stripe, record).as_slice() {
            [CanonicalEvent::BillingAttempt(a)] => attempts.push((a.attempt_id.clone(), a.status)),
            other => panic!("{}: {other:?}", record.key),
        }
    }
    assert_eq!(
        attempts,
        [
            ("in_1:2".to_owned(), AttemptStatus::Succeeded),
            ("in_1:1".to_owned(), AttemptStatus::Failed)
        ]
    );
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
        let page = parse(&listed.to_string(), "invoices", render).unwrap();
        let expected = usize::from(matches!(word.as_str(), "paid" | "open" | "uncollectible"));
        assert_eq!(page.records.len(), expected, "{word}");
    }
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let listed = json!({"has_more": false, "data": [invoice("in_1", "frozen", 1)]});
    let page =
        metrics::with_local_recorder(&recorder, || parse(&listed.to_string(), "invoices", render))
            .unwrap();
    assert!(page.records.is_empty());
    let line =
        "subsync_unknown_provider_values_total{provider=\"stripe\",field=\"invoice.status\"} 1";
    assert!(
        handle.render().lines().any(|l| l == line),
        "{}",
        handle.render()
    );
}

#[test]
fn the_request_budget_follows_the_key_s_mode() {
    let http = crate::providers::http::http_client().unwrap();
    let rate = |key: &str| {
        StripeList::new(&api_settings("https://api.stripe.com", key), http.clone())
            .requests_per_second()
    };
    assert_eq!(rate("sk_live_123"), Some(100.0));
    assert_eq!(rate("rk_live_123"), Some(100.0));
    assert_eq!(rate("sk_test_123"), Some(25.0));
    assert_eq!(rate("rk_test_123"), Some(25.0));
}
