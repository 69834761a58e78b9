//! A hostile provider against the shared plumbing: endless or oversized bodies, a body
//! that stalls, redirects that would carry the credential elsewhere. Each must cost one
//! call, answered with a clear error, and nothing else.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;
use crate::providers::testing::api_settings;

const TOKEN: &str = "tok_hostile_secret";

fn endpoint(base_url: String, timeout_ms: u64, credential: Credential) -> Endpoint {
    let settings = ApiSettings {
        timeout_ms,
        max_answer_bytes: 1024,
        ..api_settings(base_url, TOKEN)
    };
    Endpoint::new(&settings, http_client().unwrap(), credential)
}

fn bearer() -> Credential {
    Credential::Authorization("Bearer")
}

#[tokio::test]
async fn an_answer_over_the_cap_fails_cleanly_and_one_at_the_cap_is_read() {
    let server = MockServer::start().await;
    let api = endpoint(server.uri(), 2_000, bearer());
    for (status, size) in [(200, 1025), (402, 5000), (200, 1024)] {
        server.reset().await;
        let body = "x".repeat(size);
        let answer = ResponseTemplate::new(status).set_body_string(body.clone());
        Mock::given(any()).respond_with(answer).mount(&server).await;

        let call = exchange(
            api.request(Method::POST, &["pay"]).unwrap(),
            api.answer_cap(),
        );
        let page = read(
            api.request(Method::GET, &["list"]).unwrap(),
            "Provider",
            Cap::page(1024),
        );
        match (size, call.await, page.await) {
            (1024, Ok((_, _, got)), Ok(answer)) => {
                assert_eq!(got, body);
                assert_eq!(answer.body, body);
            }
            (
                _,
                Err(ProviderApiError::Transient(call)),
                Err(ProviderApiError::Rejected { status: s, message }),
            ) => {
                // A call's outcome is unknown: the same call (same key) may be sent again.
                let cap = "answer larger than 1024 bytes (api.max_answer_bytes)";
                assert!(call.starts_with(cap), "{call}");
                assert!(call.contains("outcome is unknown"), "{call}");
                assert_eq!(s, status);
                let cap = "answer larger than 1024 bytes (sync.max_page_bytes)";
                assert!(message.starts_with(cap), "{message}");
            }
            (size, call, page) => panic!("{size}: {call:?} / {:?}", page.map(|a| a.body)),
        }
    }
    // An oversized error answer still fails as its status says (a 503 is retried).
    server.reset().await;
    let unavailable = ResponseTemplate::new(503).set_body_string("x".repeat(5000));
    Mock::given(any())
        .respond_with(unavailable)
        .mount(&server)
        .await;
    let request = api.request(Method::GET, &["list"]).unwrap();
    let page = read(request, "Provider", Cap::page(1024)).await;
    assert!(
        matches!(page, Err(ProviderApiError::Transient(m)) if m == "Provider answered 503 Service Unavailable")
    );
}

/// A provider on a raw socket: answers every request with `head`, then calls `body` with
/// the stream (bytes it wrote are counted in the returned counter).
async fn raw_provider<F, Fut>(head: &'static str, body: F) -> (String, Arc<AtomicU64>)
where
    F: Fn(tokio::net::TcpStream, Arc<AtomicU64>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let written = Arc::new(AtomicU64::new(0));
    let counter = written.clone();
    let body = Arc::new(body);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (body, counter) = (body.clone(), counter.clone());
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                if stream.write_all(head.as_bytes()).await.is_ok() {
                    body(stream, counter).await;
                }
            });
        }
    });
    (url, written)
}

/// Writes 64 KiB chunks (chunked encoding) until the client goes away, at most 1 GiB.
async fn endless(mut stream: tokio::net::TcpStream, written: Arc<AtomicU64>) {
    let data = vec![b'x'; 64 * 1024];
    let frame = [format!("{:x}\r\n", data.len()).as_bytes(), &data, b"\r\n"].concat();
    while written.load(Ordering::Relaxed) < 1 << 30 {
        if stream.write_all(&frame).await.is_err() {
            return;
        }
        written.fetch_add(frame.len() as u64, Ordering::Relaxed);
    }
}

#[tokio::test]
async fn an_endless_body_is_read_only_up_to_the_cap() {
    let head =
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
    let (url, written) = raw_provider(head, endless).await;
    let api = endpoint(url, 30_000, bearer());
    let started = Instant::now();
    let page = read(
        api.request(Method::GET, &["list"]).unwrap(),
        "Provider",
        Cap::page(1 << 20),
    )
    .await;
    let message = match page {
        Err(ProviderApiError::Rejected {
            status: 200,
            message,
        }) => message,
        other => panic!("unexpected {:?}", other.map(|a| a.body.len())),
    };
    assert!(
        message.contains("1048576 bytes (sync.max_page_bytes)"),
        "{message}"
    );
    let call = exchange(
        api.request(Method::POST, &["pay"]).unwrap(),
        api.answer_cap(),
    )
    .await;
    assert!(
        matches!(&call, Err(ProviderApiError::Transient(m)) if m.contains("api.max_answer_bytes"))
    );
    assert!(started.elapsed() < Duration::from_secs(10), "stopped early");

    // The reads stopped: the provider's writes fail once the connections are dropped,
    // far below the 1 GiB it would have sent (what it wrote sat in socket buffers).
    let settled = async {
        loop {
            let before = written.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(300)).await;
            if written.load(Ordering::Relaxed) == before {
                return before;
            }
        }
    };
    let total = tokio::time::timeout(Duration::from_secs(10), settled)
        .await
        .expect("the provider stops writing");
    assert!(
        total < 64 << 20,
        "{total} bytes written before the reads stopped"
    );
}

/// Announces 1,000 bytes, sends 10 and stalls for a minute.
async fn stall(mut stream: tokio::net::TcpStream, _: Arc<AtomicU64>) {
    let _ = stream.write_all(b"{\"data\": [").await;
    tokio::time::sleep(Duration::from_secs(60)).await;
}

#[tokio::test]
async fn a_body_that_stalls_costs_one_call_timeout() {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n";
    let (url, _) = raw_provider(head, stall).await;
    let api = endpoint(url, 300, bearer());
    let started = Instant::now();
    let page = read(
        api.request(Method::GET, &["list"]).unwrap(),
        "Provider",
        Cap::page(1 << 20),
    )
    .await;
    assert!(
        matches!(&page, Err(ProviderApiError::Transient(m)) if m.starts_with("timeout")),
        "{:?}",
        page.map(|a| a.body)
    );
    let call = exchange(
        api.request(Method::POST, &["pay"]).unwrap(),
        api.answer_cap(),
    )
    .await;
    assert!(
        matches!(&call, Err(ProviderApiError::Transient(m)) if m.starts_with("timeout")),
        "{call:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn redirects_are_not_followed_and_the_credential_never_leaves() {
    let elsewhere = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_string("{}"))
        .mount(&elsewhere)
        .await;
    let provider = MockServer::start().await;
    // Userinfo and a query in the Location: neither may show up in the error.
    let location = elsewhere.uri().replace("http://", "http://tok_user:pw@") + "/steal?key=k";
    let credentials = [
        Credential::Authorization("Bearer"),
        Credential::Header(HeaderName::from_static("x-shopify-access-token")),
        Credential::Header(HeaderName::from_static("x-api-key")),
        Credential::Header(HeaderName::from_static("reb-apikey")),
    ];
    for status in [301, 302, 303, 307, 308] {
        provider.reset().await;
        let redirect = ResponseTemplate::new(status).insert_header("location", location.as_str());
        Mock::given(any())
            .respond_with(redirect)
            .mount(&provider)
            .await;
        for credential in &credentials {
            let api = endpoint(provider.uri(), 2_000, credential.clone());
            let call = exchange(
                api.request(Method::POST, &["pay"]).unwrap(),
                api.answer_cap(),
            );
            let page = read(
                api.request(Method::GET, &["list"]).unwrap(),
                "Provider",
                Cap::page(1024),
            );
            for result in [call.await.map(|_| ()), page.await.map(|_| ())] {
                match result {
                    Err(ProviderApiError::Rejected { status: s, message }) => {
                        assert_eq!(s, status);
                        assert_eq!(message, "redirect to 127.0.0.1 not followed");
                    }
                    other => panic!("{status} {credential:?}: {other:?}"),
                }
            }
        }
        let asked = provider.received_requests().await.unwrap();
        assert_eq!(asked.len(), 2 * credentials.len());
        let names = [
            "authorization",
            "x-shopify-access-token",
            "x-api-key",
            "reb-apikey",
        ];
        for (request, name) in asked.iter().zip(names.iter().flat_map(|n| [n, n])) {
            let sent = request.headers.get(*name).unwrap().to_str().unwrap();
            assert!(
                sent.ends_with(TOKEN),
                "{name}: the provider got the credential"
            );
        }
    }
    let leaked = elsewhere.received_requests().await.unwrap();
    assert!(leaked.is_empty(), "followed a redirect: {leaked:?}");
}
