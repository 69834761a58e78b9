//! Test harness shared by the provider clients' tests: API settings pointing at a fake
//! server, the error mapping every client must show, and the list-client checks (pages,
//! unreadable answers, records that the provider's own normalizer accepts).

use std::fmt::Debug;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use secrecy::SecretString;
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::canonical::CanonicalEvent;
use crate::config::{
    ApiSettings, BasicAuthSettings, HmacEncoding, HmacSettings, ProviderKind, SourceSettings,
};
use crate::envelope::Envelope;
use crate::providers::Source;
use crate::providers::contract::{Page, PageRequest, Record};
use crate::providers::http::ProviderApiError;

pub(crate) mod digest;
pub(crate) mod schema;

/// Settings of a `kind` source that every connector accepts: a Standard Webhooks secret,
/// Basic credentials (Rebilly) and an `[hmac]` table (the generic HMAC), no API.
pub(crate) fn settings_for(kind: ProviderKind) -> SourceSettings {
    SourceSettings {
        id: format!("src-{}", kind.as_str()),
        provider: kind,
        secrets: vec![SecretString::from("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")],
        tolerance_secs: None,
        basic_auth: Some(BasicAuthSettings {
            username: "user".into(),
            password: SecretString::from("pass"),
        }),
        allow_ips: None,
        hmac: Some(HmacSettings {
            signature_header: "x-signature".into(),
            encoding: HmacEncoding::Hex,
            signature_prefix: Some("sha256=".into()),
            timestamp_header: Some("x-timestamp".into()),
            event_id_field: None,
            event_id_header: None,
        }),
        retry: Default::default(),
        api: None,
        sync: None,
    }
}

/// The settings of a provider API at `base_url` with `token`: no provider-specific
/// field, a 2 s timeout.
pub(crate) fn api_settings(base_url: impl Into<String>, token: &str) -> ApiSettings {
    ApiSettings {
        base_url: base_url.into(),
        token: SecretString::from(token),
        api_version: None,
        payment_method_id: None,
        store_id: None,
        timeout_ms: 2_000,
        max_answer_bytes: 1 << 20,
        requests_per_second: None,
    }
}

/// Asserts that `call`, answered by `server` with each unsuccessful status in turn,
/// fails as [`read`] maps it: 429 is `RateLimited` with the `Retry-After`, 5xx
/// `Transient`, 401/403 `Rejected` without echoing `token` (which the body carries), any
/// other 4xx `Rejected` with the body. Each status is answered to exactly one request;
/// the server is reset before each.
pub(crate) async fn assert_errors_map<'c, T: Debug>(
    server: &MockServer,
    call: impl Fn() -> BoxFuture<'c, Result<T, ProviderApiError>>,
    token: &str,
) {
    let echo = format!("{{\"message\": \"invalid key {token}\"}}");
    let problem = r#"{"title": "Bad Request", "detail": "no such field"}"#;
    for status in [429, 500, 502, 503, 401, 403, 400, 404, 422] {
        let body = if matches!(status, 401 | 403) {
            echo.as_str()
        } else {
            problem
        };
        server.reset().await;
        Mock::given(any())
            .respond_with(
                ResponseTemplate::new(status)
                    .insert_header("retry-after", "3")
                    .set_body_string(body),
            )
            .expect(1)
            .mount(server)
            .await;
        let result = call().await;
        server.verify().await;
        match (status, result) {
            (429, Err(ProviderApiError::RateLimited { retry_after })) => {
                assert_eq!(retry_after, Some(Duration::from_secs(3)))
            }
            (500.., Err(ProviderApiError::Transient(_))) => {}
            (401 | 403, Err(ProviderApiError::Rejected { status: s, message })) => {
                assert_eq!(s, status);
                assert!(!message.contains(token), "the token is echoed: {message}");
            }
            (_, Err(ProviderApiError::Rejected { status: s, message })) if s == status => {
                assert_eq!(message, problem)
            }
            (status, other) => panic!("{status}: unexpected {other:?}"),
        }
    }
    server.reset().await;
}

/// The first page of a run (`cursor` `None`) or the page after `cursor`: 2 records, no
/// `since`, no known subscriptions.
pub(crate) fn request(cursor: Option<&str>) -> PageRequest<'_> {
    PageRequest {
        cursor,
        since: None,
        known_subscriptions: &[],
        page_size: 2,
        max_page_bytes: 1 << 20,
    }
}

/// An empty page that ends the listing.
pub(crate) const EMPTY_END: Page = Page::new(Vec::new(), None);

/// Asserts that `call`, answered 200 by `server` with `body` (not the provider's list),
/// is final: `Rejected { status: 200 }` with a message containing `says`.
pub(crate) async fn assert_unreadable<'c>(
    server: &MockServer,
    call: impl Fn() -> BoxFuture<'c, Result<Page, ProviderApiError>>,
    body: &str,
    says: &str,
) {
    server.reset().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_string(body))
        .expect(1)
        .mount(server)
        .await;
    match call().await {
        Err(ProviderApiError::Rejected {
            status: 200,
            message,
        }) => assert!(message.contains(says), "{message}"),
        other => panic!("{body}: expected Rejected 200, got {other:?}"),
    }
    server.verify().await;
}

/// Normalizes a rendered record with the provider's webhook normalizer, as the worker
/// will: the record must be a payload the provider's adapter accepts.
pub(crate) fn normalize_with(kind: ProviderKind, record: &Record) -> Vec<CanonicalEvent> {
    let http = crate::providers::http::http_client().expect("client");
    let source = Source::new(&settings_for(kind), &http).expect("source");
    let envelope = Envelope {
        source_id: "src".to_owned(),
        provider: kind,
        event_id: format!("sync:{}", record.key),
        received_at: SystemTime::now().into(),
        content_type: Some("application/json".to_owned()),
        headers: record.headers.clone(),
        body: record.body.clone().into(),
    };
    match source.normalize(&envelope) {
        Ok(normalized) => normalized.events,
        Err(e) => panic!("{} does not normalize: {e}", record.key),
    }
}
