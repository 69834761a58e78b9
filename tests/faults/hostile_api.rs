//! A hostile Stripe: a raw HTTP/1.1 server on loopback that answers subsync's calls the
//! way a broken or malicious provider could. The misbehaviour is chosen by the invoice id
//! of `POST /v1/invoices/{id}/pay` (`in_{mode}_{n}`, see [`Mode`]); `GET /v1/invoices`
//! answers a Stripe list whose `starting_after` cursor cycles forever, and `GET
//! /v1/invoices/{id}` (a final action's read) that it knows no such invoice. A second server,
//! the redirect target, records every request it gets, so the test can show that no
//! credential ever left for another host.
//!
//! Requests are checked against Stripe's definition of the call (method, path, a Bearer
//! token, an `Idempotency-Key` on the charge); the answers are deliberately not Stripe's.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// What the hostile provider does with a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// 429 with `Retry-After: 1e20` (not an RFC 9110 value; once a panic).
    RetryAfterFloat,
    /// 429 with `Retry-After: 10000000000000` (seconds; once a chrono overflow).
    RetryAfterHuge,
    /// 200 with a 2 GiB streamed body.
    HugeBody,
    /// 302 to another host.
    Redirect,
    /// Reads the request, then says nothing for 30 s.
    Stall,
}

impl Mode {
    pub const ALL: [Mode; 5] = [
        Mode::RetryAfterFloat,
        Mode::RetryAfterHuge,
        Mode::HugeBody,
        Mode::Redirect,
        Mode::Stall,
    ];

    pub fn tag(self) -> &'static str {
        match self {
            Mode::RetryAfterFloat => "raf",
            Mode::RetryAfterHuge => "rah",
            Mode::HugeBody => "huge",
            Mode::Redirect => "redir",
            Mode::Stall => "stall",
        }
    }

    fn of_invoice(invoice: &str) -> Option<Mode> {
        let tag = invoice.strip_prefix("in_")?.split('_').next()?;
        Mode::ALL.into_iter().find(|m| m.tag() == tag)
    }
}

/// 2 GiB: what a `HugeBody` answer would be if the client read it all.
const HUGE: u64 = 2 << 30;
const STALL: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Seen {
    /// Charge requests per mode.
    pub charges: BTreeMap<Mode, usize>,
    /// List requests, and the `starting_after` values they carried.
    pub list_pages: usize,
    pub cursors: Vec<String>,
    /// Charges of the cycling list's invoices (answered 404 `resource_missing`).
    pub unknown_invoice_charges: usize,
    /// Reads of one invoice (`GET /v1/invoices/{id}`, what a final action reads first),
    /// answered 404 `resource_missing`: this Stripe knows no invoice to read.
    pub invoice_reads: usize,
    /// Requests that broke Stripe's definition of the call (method, path, auth, key).
    pub malformed: Vec<String>,
}

#[derive(Clone)]
pub struct Hostile {
    pub token: &'static str,
    pub seen: Arc<Mutex<Seen>>,
    /// Bytes written into `HugeBody` answers, all connections together.
    pub huge_bytes_sent: Arc<AtomicU64>,
    /// Requests that reached the redirect target, with their headers (lower-case names).
    pub redirected: Arc<Mutex<Vec<Headers>>>,
    pub connections: Arc<AtomicUsize>,
}

/// A request's headers, names in lower case.
pub type Headers = Vec<(String, String)>;

/// One parsed request: method, target, headers.
struct Request {
    method: String,
    target: String,
    headers: Headers,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request head (and skips its body by `Content-Length`); `None` at EOF.
async fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 * 1024 || stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers: Headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let request = Request {
        method,
        target,
        headers,
    };
    let length: u64 = request
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length.min(1 << 20) as usize];
    stream.read_exact(&mut body).await.ok()?;
    Some(request)
}

fn answer(status: &str, headers: &[(&str, String)], body: &str) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n", body.len());
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

impl Hostile {
    pub fn new(token: &'static str) -> Self {
        Self {
            token,
            seen: Arc::default(),
            huge_bytes_sent: Arc::default(),
            redirected: Arc::default(),
            connections: Arc::default(),
        }
    }

    /// Starts the provider and its redirect target; returns the provider's base URL.
    pub async fn serve(&self) -> String {
        let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target_addr = target.local_addr().unwrap();
        let recorder = self.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = target.accept().await {
                let recorder = recorder.clone();
                tokio::spawn(async move {
                    while let Some(request) = read_request(&mut stream).await {
                        recorder.redirected.lock().unwrap().push(request.headers);
                        let ok = answer("200 OK", &[], "{}");
                        if stream.write_all(&ok).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                me.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(me.clone().connection(stream, target_addr));
            }
        });
        base
    }

    async fn connection(self, mut stream: TcpStream, target: std::net::SocketAddr) {
        while let Some(request) = read_request(&mut stream).await {
            let out = self.respond(&request, target).await;
            let Some(out) = out else {
                // A streamed or stalled answer owns the connection until it ends.
                self.misbehave(&request, stream).await;
                return;
            };
            if stream.write_all(&out).await.is_err() {
                return;
            }
        }
    }

    /// The answer to write, or `None` for one that streams or stalls.
    async fn respond(&self, request: &Request, target: std::net::SocketAddr) -> Option<Vec<u8>> {
        let bearer = format!("Bearer {}", self.token);
        let mut seen = self.seen.lock().unwrap();
        if request.header("authorization") != Some(bearer.as_str()) {
            seen.malformed
                .push(format!("no bearer: {}", request.target));
        }
        let path = request.target.split('?').next().unwrap_or_default();
        if request.method == "GET" && path == "/v1/invoices" {
            // starting_after cycles in_cyc_1 -> in_cyc_2 -> in_cyc_3 -> in_cyc_1 ...
            let after = request
                .target
                .split(['?', '&'])
                .find_map(|kv| kv.strip_prefix("starting_after="))
                .unwrap_or_default()
                .to_owned();
            seen.list_pages += 1;
            seen.cursors.push(after.clone());
            let next = match after.as_str() {
                "in_cyc_1" => 2,
                "in_cyc_2" => 3,
                _ => 1,
            };
            return Some(answer(
                "200 OK",
                &[("content-type", "application/json".into())],
                &cycling_page(next),
            ));
        }
        let one = path.strip_prefix("/v1/invoices/");
        if request.method == "GET" && one.is_some_and(|id| !id.is_empty() && !id.contains('/')) {
            seen.invoice_reads += 1;
            return Some(answer(
                "404 Not Found",
                &[("content-type", "application/json".into())],
                r#"{"error":{"type":"invalid_request_error","code":"resource_missing","message":"No such invoice"}}"#,
            ));
        }
        let invoice = one.and_then(|rest| rest.strip_suffix("/pay"));
        let (Some(invoice), "POST") = (invoice, request.method.as_str()) else {
            seen.malformed
                .push(format!("{} {}", request.method, request.target));
            return Some(answer("404 Not Found", &[], "{}"));
        };
        if invoice.starts_with("in_cyc_") {
            // The cycling list's invoices, healed by sync and retried: Stripe's answer for
            // an invoice it does not know.
            seen.unknown_invoice_charges += 1;
            return Some(answer(
                "404 Not Found",
                &[("content-type", "application/json".into())],
                r#"{"error":{"type":"invalid_request_error","code":"resource_missing","message":"No such invoice"}}"#,
            ));
        }
        if request.header("idempotency-key").is_none() {
            seen.malformed
                .push(format!("no idempotency key: {invoice}"));
        }
        let Some(mode) = Mode::of_invoice(invoice) else {
            seen.malformed.push(format!("unknown invoice {invoice}"));
            return Some(answer("404 Not Found", &[], "{}"));
        };
        *seen.charges.entry(mode).or_default() += 1;
        let json = ("content-type", "application/json".to_owned());
        match mode {
            Mode::RetryAfterFloat => Some(answer(
                "429 Too Many Requests",
                &[json, ("retry-after", "1e20".into())],
                r#"{"error":{"type":"rate_limit_error"}}"#,
            )),
            Mode::RetryAfterHuge => Some(answer(
                "429 Too Many Requests",
                &[json, ("retry-after", "10000000000000".into())],
                r#"{"error":{"type":"rate_limit_error"}}"#,
            )),
            Mode::Redirect => Some(answer(
                "302 Found",
                &[(
                    "location",
                    format!("http://{target}/v1/invoices/{invoice}/pay"),
                )],
                "",
            )),
            Mode::HugeBody | Mode::Stall => None,
        }
    }

    async fn misbehave(&self, request: &Request, mut stream: TcpStream) {
        let path = request.target.split('?').next().unwrap_or_default();
        let invoice = path
            .trim_start_matches("/v1/invoices/")
            .trim_end_matches("/pay");
        if Mode::of_invoice(invoice) == Some(Mode::Stall) {
            tokio::time::sleep(STALL).await;
            let _ = stream
                .write_all(&answer("504 Gateway Timeout", &[], ""))
                .await;
            return;
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {HUGE}\r\n\r\n{{\"id\":\"{invoice}\",\"object\":\"invoice\",\"status\":\"paid\",\"padding\":\""
        );
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b'a'; 64 * 1024];
        let mut sent = head.len() as u64;
        while sent < HUGE {
            if stream.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len() as u64;
            self.huge_bytes_sent
                .fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
    }
}

/// A Stripe invoice list page (`object: list`, `has_more: true`) holding `in_cyc_{n}`: the
/// next page's `starting_after` is that id, so the cursor cycles through three ids. The
/// invoice's fields are among those of the current API version's `Invoice` (Stripe's SDK
/// types, `tests/fixtures/stripe/`): its subscription under `parent`, no `payment_intent`
/// (the current Invoice has none; a listed invoice carries no decline code).
fn cycling_page(n: u32) -> String {
    serde_json::json!({
        "object": "list", "url": "/v1/invoices", "has_more": true,
        "data": [{
            "id": format!("in_cyc_{n}"), "object": "invoice", "customer": "cus_cyc",
            "parent": { "type": "subscription_details", "quote_details": null,
                "subscription_details": { "subscription": "sub_cyc", "metadata": null } },
            "status": "open", "attempt_count": 1, "attempted": true,
            "amount_due": 2500, "amount_paid": 0, "currency": "usd", "created": 1_763_700_000,
            "status_transitions": { "finalized_at": 1_763_700_060, "paid_at": null },
            "next_payment_attempt": 1_763_786_400
        }]
    })
    .to_string()
}
