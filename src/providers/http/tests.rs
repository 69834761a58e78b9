use futures_util::future::BoxFuture;
use wiremock::matchers::{any, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;
use crate::providers::testing::{api_settings, assert_errors_map};

/// A list page's cap in these tests.
const PAGE: Cap = Cap::page(1 << 20);

#[tokio::test]
async fn read_maps_answers_to_api_errors() {
    let server = MockServer::start().await;
    let settings = api_settings(server.uri(), "tok_secret");
    let bearer = Credential::Authorization("Bearer");
    let api = Endpoint::new(&settings, http_client().unwrap(), bearer);
    let call = || -> BoxFuture<'_, Result<String, ProviderApiError>> {
        Box::pin(async {
            let request = api.request(Method::GET, &["list"])?;
            Ok(read(request, "Provider", PAGE).await?.body)
        })
    };
    assert_errors_map(&server, call, "tok_secret").await;

    let answers = [
        (
            ResponseTemplate::new(200).set_body_string(" [1] "),
            Ok(" [1] ".to_owned()),
        ),
        (
            ResponseTemplate::new(429),
            Err(ProviderApiError::RateLimited { retry_after: None }),
        ),
        (
            ResponseTemplate::new(503),
            Err(ProviderApiError::Transient(
                "Provider answered 503 Service Unavailable".to_owned(),
            )),
        ),
    ];
    for (answer, expected) in answers {
        server.reset().await;
        Mock::given(any()).respond_with(answer).mount(&server).await;
        assert_eq!(call().await, expected);
    }

    server.reset().await;
    let slow = ResponseTemplate::new(200).set_delay(Duration::from_millis(500));
    Mock::given(any()).respond_with(slow).mount(&server).await;
    let settings = ApiSettings {
        timeout_ms: 50,
        ..settings
    };
    let api = Endpoint::new(
        &settings,
        http_client().unwrap(),
        Credential::Authorization("Bearer"),
    );
    let result = read(
        api.request(Method::GET, &["list"]).unwrap(),
        "Provider",
        PAGE,
    )
    .await;
    assert!(matches!(result, Err(ProviderApiError::Transient(m)) if m.starts_with("timeout")));
}

#[tokio::test]
async fn endpoint_requests_carry_the_token_in_its_header() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path("/base/v1/a%2Fb"))
        .and(header("authorization", "APIKey k1"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/base/v1"))
        .and(header("x-api-key", "k2"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let base = format!("{}/base/", server.uri());
    let http = http_client().unwrap();
    let scheme = Endpoint::new(
        &api_settings(base.as_str(), "k1"),
        http.clone(),
        Credential::Authorization("APIKey"),
    );
    let request = scheme.request(Method::PUT, &["v1", "a/b"]).unwrap();
    assert_eq!(request.send().await.unwrap().status(), 204);
    let own = Credential::Header(HeaderName::from_static("x-api-key"));
    let own = Endpoint::new(&api_settings(base.as_str(), "k2"), http.clone(), own);
    let request = own.request(Method::GET, &["v1"]).unwrap();
    assert_eq!(request.send().await.unwrap().status(), 204);

    // A token that is no header value is final, and never echoed.
    let bad = Endpoint::new(
        &api_settings(base, "k\n3"),
        http,
        Credential::Authorization("Bearer"),
    );
    match bad.request(Method::GET, &["v1"]) {
        Err(ProviderApiError::Rejected { status: 0, message }) => {
            assert!(!message.contains("k\n3"))
        }
        other => panic!("unexpected {:?}", other.map(|_| ())),
    }
}

#[test]
fn endpoint_trims_and_encodes() {
    let url = endpoint(&trim_base("http://h/p/"), &["v1", "a/b?c"]).unwrap();
    assert_eq!(url.as_str(), "http://h/p/v1/a%2Fb%3Fc");
    let url = endpoint("http://h", &["x"]).unwrap();
    assert_eq!(url.as_str(), "http://h/x");
    assert!(matches!(
        endpoint("not a url", &["x"]),
        Err(ProviderApiError::Rejected { status: 0, .. })
    ));
}

#[test]
fn snippet_truncates_on_char_boundaries() {
    assert_eq!(snippet("  short "), "short");
    let long = "é".repeat(400);
    assert_eq!(snippet(&long).chars().count(), 303);
}
