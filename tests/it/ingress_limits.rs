//! Hostile clients against the real ingress, with small limits so it runs in seconds:
//! slow request heads and idle keep-alive connections are closed after their deadlines,
//! a full connection table still admits a signed webhook, and an unknown source is
//! answered without waiting for its (announced, never sent) body. The fault suite
//! (`s9_`) runs the same at scale against the binary.

use crate::common;

use std::time::{Duration, Instant};

use common::{TestConfig, body};
use subsync::{
    app::{self, Role, Running},
    config::Settings,
    queue::Broker,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;

struct Limited {
    running: Option<Running>,
    shutdown: CancellationToken,
    settings: Settings,
    addr: std::net::SocketAddr,
}

/// The ingress with `max` connections, `header_ms` to send a head, `idle_ms` of keep-alive.
async fn ingress(max: usize, header_ms: u64, idle_ms: u64) -> Limited {
    let mut settings = TestConfig::new().await.settings();
    settings.http.max_connections = max;
    settings.http.header_read_timeout_ms = header_ms;
    settings.http.keep_alive_idle_ms = idle_ms;
    let shutdown = CancellationToken::new();
    let running = app::start(&settings, Role::Ingress, shutdown.clone())
        .await
        .expect("app starts");
    assert!(running.broker.wait_connected(Duration::from_secs(20)).await);
    Limited {
        addr: running.ingress_addr.unwrap(),
        running: Some(running),
        shutdown,
        settings,
    }
}

impl Limited {
    /// A signed webhook on a new connection: (status, how long it took).
    async fn post_webhook(&self, id: &str) -> (u16, Duration) {
        let source = crate::common::source(self.settings.source("demo").unwrap()).unwrap();
        let payload = body("invoice.paid", 1);
        let started = Instant::now();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut request = client
            .post(format!("http://{}/webhooks/demo", self.addr))
            .header("content-type", "application/json");
        for (name, value) in source.sign(id, &payload, std::time::SystemTime::now()) {
            request = request.header(name, value);
        }
        let status = request
            .body(payload)
            .send()
            .await
            .expect("an answer")
            .status();
        (status.as_u16(), started.elapsed())
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(20), running.wait())
                .await
                .expect("stops within 20 s with hostile connections open");
        }
        let token = CancellationToken::new();
        let cleaner = Broker::start(&self.settings.amqp, token.clone());
        if cleaner.wait_connected(Duration::from_secs(10)).await {
            let _ = cleaner.delete_topology().await;
        }
        token.cancel();
    }
}

/// How long until the server closes `stream` (reads until EOF or reset), at most `limit`.
async fn closed_after(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// A connection that sent one complete request (answered 404, kept alive) and then idles.
async fn idle_keep_alive(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /webhooks/nope HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    stream
}

/// A connection that sends a request head one byte every `every`, never finishing it.
fn trickle(addr: std::net::SocketAddr, every: Duration) -> tokio::task::JoinHandle<Duration> {
    tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        for byte in b"POST /webhooks/demo HTTP/1.1\r\nhost: x\r\nx-slow: "
            .iter()
            .cycle()
        {
            if stream.write_all(&[*byte]).await.is_err() {
                break;
            }
            let mut probe = [0u8; 1];
            // Readable only when closed (nothing is ever answered).
            if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(every, stream.read(&mut probe)).await {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                break;
            }
        }
        started.elapsed()
    })
}

#[tokio::test]
async fn unknown_source_and_oversized_body_are_answered_without_reading_the_body() {
    let app = ingress(64, 10_000, 75_000).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(b"POST /webhooks/no-such-source HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000000000\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
        .await
        .expect("answered at once, not after the body or a timeout")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // A known source announcing more than the body limit: 413, also without the body.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"POST /webhooks/demo HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000000\r\n\r\n")
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
        .await
        .expect("answered at once")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    app.stop().await;
}

#[tokio::test]
async fn slow_heads_and_idle_keep_alive_connections_are_closed_on_their_deadlines() {
    let app = ingress(64, 300, 1_200).await;
    // Nothing sent at all: the first head's clock starts at the accept.
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    let slow = trickle(app.addr, Duration::from_millis(50));
    let mut idle = idle_keep_alive(app.addr).await;
    let idle_since = Instant::now();

    let silent_for = closed_after(&mut silent, Duration::from_secs(5)).await;
    let silent_for = silent_for.expect("a silent connection is closed");
    assert!(silent_for < Duration::from_secs(2), "{silent_for:?}");
    // A byte every 50 ms does not extend the 300 ms the head may take.
    let slow_for = slow.await.unwrap();
    assert!(
        slow_for >= Duration::from_millis(250) && slow_for < Duration::from_secs(2),
        "{slow_for:?}"
    );
    // Idle between requests: the keep-alive deadline (1.2 s), not the head's (300 ms).
    let closed = closed_after(&mut idle, Duration::from_secs(10)).await;
    assert!(closed.is_some(), "an idle keep-alive connection is closed");
    let idle_for = idle_since.elapsed();
    assert!(
        idle_for >= Duration::from_millis(900) && idle_for < Duration::from_secs(4),
        "{idle_for:?}"
    );
    // A keep-alive connection that is used is not cut: two requests 200 ms apart, each
    // well within the head deadline.
    let mut used = idle_keep_alive(app.addr).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    used.write_all(b"POST /webhooks/nope HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = used.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 404"));
    app.stop().await;
}

#[tokio::test]
async fn at_the_limit_an_idle_connection_makes_room_for_a_webhook() {
    // Deadlines far away: only eviction can free a slot within the test's bound.
    let app = ingress(8, 5_000, 30_000).await;
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(idle_keep_alive(app.addr).await);
    }
    let (status, took) = app.post_webhook("msg_limit_idle").await;
    assert_eq!(status, 202);
    assert!(took < Duration::from_secs(2), "{took:?}");
    // The one idle the longest (the first) was closed for it.
    let first = closed_after(&mut idle[0], Duration::from_secs(1)).await;
    assert!(first.is_some(), "the longest-idle connection was closed");
    app.stop().await;
}

#[tokio::test]
async fn at_the_limit_held_by_slow_heads_the_slowest_is_closed_for_a_webhook() {
    // Heads may take 3 s, but at the limit one in progress for over 300 ms is given up.
    let app = ingress(8, 3_000, 30_000).await;
    let slow: Vec<_> = (0..8)
        .map(|_| trickle(app.addr, Duration::from_millis(50)))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, took) = app.post_webhook("msg_limit_slow").await;
    assert_eq!(status, 202, "accepted once a slow head was closed");
    // It had to wait (the limit is real), but far less than the head deadline.
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_secs(2),
        "{took:?}"
    );
    let mut held: Vec<Duration> = Vec::new();
    for handle in slow {
        held.push(handle.await.unwrap());
    }
    held.sort();
    assert!(
        held[0] < Duration::from_secs(2),
        "one closed early: {held:?}"
    );
    assert!(
        held[1] >= Duration::from_millis(2_700),
        "the others ran to the deadline: {held:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn shutdown_stops_accepting_closes_idle_connections_and_finishes_requests_in_flight() {
    let mut app = ingress(64, 10_000, 75_000).await;
    let mut idle = idle_keep_alive(app.addr).await;
    // A signed webhook whose body is half sent when shutdown begins.
    let source = crate::common::source(app.settings.source("demo").unwrap()).unwrap();
    let payload = body("invoice.paid", 2);
    let mut head = format!(
        "POST /webhooks/demo HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        payload.len()
    );
    for (name, value) in source.sign("msg_in_flight", &payload, std::time::SystemTime::now()) {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut in_flight = TcpStream::connect(app.addr).await.unwrap();
    in_flight.write_all(head.as_bytes()).await.unwrap();
    let (first, rest) = payload.split_at(payload.len() / 2);
    in_flight.write_all(first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    app.shutdown.cancel();
    let running = app.running.take().unwrap();
    let stopped = tokio::spawn(running.wait());
    let idle_closed = closed_after(&mut idle, Duration::from_secs(2)).await;
    assert!(
        idle_closed.is_some(),
        "an idle connection is closed at once"
    );
    assert!(
        TcpStream::connect(app.addr).await.is_err(),
        "the listener no longer accepts"
    );
    assert!(!stopped.is_finished(), "waits for the request in flight");
    in_flight.write_all(rest).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = in_flight.read(&mut buf).await.unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("stops once the request is answered")
        .unwrap();
    app.stop().await;
}
