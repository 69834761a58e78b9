//! Malformed webhook requests for the bad-input run: random and mangled headers, bodies
//! that no longer match their signature (swapped, truncated, re-encoded), replayed
//! signatures (another body, another source, a stale or future timestamp, a wrong
//! secret), huge bodies, unknown sources, wrong methods, and raw TCP that is not quite
//! HTTP. Every one must be refused (4xx, or the connection closed), never 5xx or queued.
//!
//! Deliberately absent: an exact replay of a valid request inside the timestamp window
//! (that is a redelivery, accepted and deduplicated), a Shopify or generic-HMAC request
//! re-signed over the same body (no timestamp in those schemes), and a Rebilly request
//! with the right credentials (Basic auth does not cover the body).

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use base64::Engine;
use reqwest::header::{HeaderName, HeaderValue};
use subsync::{
    config::{ProviderKind, SourceSettings},
    providers::Source,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every other provider beside the scenario's `stripe` source.
pub fn sources() -> String {
    format!(
        "[[sources]]\nid = \"demo\"\nprovider = \"standard\"\nsecrets = [\"{}\"]\n{}",
        crate::common::DEMO_SECRET,
        crate::common::PROVIDER_SOURCES
    )
}

/// Header names the providers read, to aim random values at.
const KNOWN: &[&str] = &[
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "svix-id",
    "svix-timestamp",
    "svix-signature",
    "stripe-signature",
    "x-shopify-hmac-sha256",
    "x-shopify-topic",
    "x-shopify-webhook-id",
    "paynow-signature",
    "paynow-timestamp",
    "authorization",
    "x-signature",
    "content-type",
    "content-encoding",
];

/// A small deterministic generator (xorshift64*), so a failing input can be reproduced.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn printable(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b' ' + (self.next() % 95) as u8))
            .collect()
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A configured source, with a twin that signs with the wrong secret.
pub struct Target {
    pub id: String,
    kind: ProviderKind,
    real: Source,
    impostor: Source,
}

impl Target {
    pub fn all(sources: &[SourceSettings]) -> Vec<Arc<Target>> {
        sources
            .iter()
            .map(|s| {
                let mut other = s.clone();
                let secret = match s.provider {
                    ProviderKind::Standard | ProviderKind::Svix | ProviderKind::Appstle => {
                        format!(
                            "whsec_{}",
                            base64::engine::general_purpose::STANDARD
                                .encode("impostor-signing-key-0001")
                        )
                    }
                    _ => "impostor_secret_0001".to_owned(),
                };
                other.secrets = vec![secret.into()];
                if let Some(auth) = &mut other.basic_auth {
                    auth.password = "not-the-password".to_owned().into();
                }
                Arc::new(Target {
                    id: s.id.clone(),
                    kind: s.provider,
                    real: crate::common::source(s).unwrap(),
                    impostor: crate::common::source(&other).unwrap(),
                })
            })
            .collect()
    }

    /// The signature covers a timestamp (so an old signature is a replay).
    fn timestamped(&self) -> bool {
        !matches!(
            self.kind,
            ProviderKind::Shopify | ProviderKind::Rebilly | ProviderKind::Hmac
        )
    }

    /// A timestamp in the future is refused too (Stripe and PayNow check only the age,
    /// as their SDKs do).
    fn two_sided(&self) -> bool {
        matches!(
            self.kind,
            ProviderKind::Standard
                | ProviderKind::Svix
                | ProviderKind::Appstle
                | ProviderKind::Polar
        )
    }

    /// The signature covers the body (Rebilly's Basic auth does not).
    fn body_signed(&self) -> bool {
        self.kind != ProviderKind::Rebilly
    }
}

pub enum Request {
    Http {
        method: reqwest::Method,
        path: String,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Vec<u8>,
    },
    /// Bytes written on a fresh connection, then the write side is closed.
    Raw(Vec<u8>),
}

pub struct Generated {
    pub kind: &'static str,
    pub request: Request,
}

fn header(name: &str, value: &[u8]) -> Option<(HeaderName, HeaderValue)> {
    Some((
        HeaderName::from_bytes(name.as_bytes()).ok()?,
        HeaderValue::from_bytes(value).ok()?,
    ))
}

fn headers(list: &[(String, String)]) -> Vec<(HeaderName, HeaderValue)> {
    list.iter()
        .filter_map(|(n, v)| header(n, v.as_bytes()))
        .collect()
}

fn json() -> (HeaderName, HeaderValue) {
    header("content-type", b"application/json").unwrap()
}

/// The header that carries the proof (signature or credentials).
fn is_proof(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.contains("signature") || name.contains("hmac") || name == "authorization"
}

/// Changes one character in the middle of `value` to another of its class, so any
/// encoding of any signature (hex, base64, Basic) no longer verifies.
fn flip(rng: &mut Rng, value: &str) -> String {
    let mut chars: Vec<char> = value.chars().collect();
    let (lo, hi) = (
        chars.len() / 4,
        (chars.len() * 3 / 4).max(chars.len() / 4 + 1),
    );
    let candidates: Vec<usize> = (lo..hi.min(chars.len()))
        .filter(|&i| chars[i].is_ascii_alphanumeric())
        .collect();
    if candidates.is_empty() {
        return format!("{value}x");
    }
    let i = *rng.pick(&candidates);
    let c = chars[i];
    let (base, span) = if c.is_ascii_digit() {
        (b'0', 10)
    } else if c.is_ascii_lowercase() {
        (b'a', 26)
    } else {
        (b'A', 26)
    };
    let shift = 1 + rng.below(span as usize - 1) as u8;
    chars[i] = char::from(base + (c as u8 - base + shift) % span);
    chars.into_iter().collect()
}

fn latin1(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .collect()
}

fn utf16le_bom(text: &str) -> Vec<u8> {
    let mut out = vec![0xFF, 0xFE];
    for unit in text.encode_utf16() {
        out.extend_from_slice(&unit.to_le_bytes());
    }
    out
}

/// Request `n`: a kind picked by the generator, aimed at one of `targets`.
pub fn generate(n: usize, rng: &mut Rng, targets: &[Arc<Target>]) -> Generated {
    let target = rng.pick(targets).clone();
    let now = SystemTime::now();
    let event_id = format!("evt_bad_{n}");
    let body = target.real.sample_body(&event_id, now);
    let path = format!("/webhooks/{}", target.id);
    let http = |kind, headers: Vec<(HeaderName, HeaderValue)>, body: Vec<u8>| Generated {
        kind,
        request: Request::Http {
            method: reqwest::Method::POST,
            path: path.clone(),
            headers,
            body,
        },
    };
    let roll = rng.below(100);
    match roll {
        0..=7 => http("unsigned", vec![json()], body),
        8..=17 => {
            let mut list = vec![json()];
            for _ in 0..1 + rng.below(8) {
                let name = if rng.below(2) == 0 {
                    rng.pick(KNOWN).to_string()
                } else {
                    let len = 1 + rng.below(20);
                    (0..len)
                        .map(|_| char::from(*rng.pick(b"abcdefghijklmnopqrstuvwxyz-_0123456789")))
                        .collect()
                };
                let (short, long) = (1 + rng.below(80), 4096 + rng.below(12 * 1024));
                let value: Vec<u8> = match rng.below(5) {
                    0 => rng.printable(short).into_bytes(),
                    // obs-text: bytes that are not ASCII (and not UTF-8)
                    1 => (0..1 + rng.below(40))
                        .map(|_| 0x80 | rng.next() as u8)
                        .collect(),
                    2 => rng.printable(long).into_bytes(),
                    3 => Vec::new(),
                    _ => format!("v1,{}", rng.printable(44)).into_bytes(),
                };
                list.extend(header(&name, &value));
            }
            http("random headers", list, body)
        }
        18..=25 if target.body_signed() => {
            let signed = target.real.sign(&event_id, &body, now);
            let other = target.real.sample_body(&format!("evt_other_{n}"), now);
            let mut list = headers(&signed);
            list.push(json());
            http("signature of another body", list, other)
        }
        26..=33 if target.body_signed() => {
            let signed = target.real.sign(&event_id, &body, now);
            let cut = rng.below(body.len());
            let mut list = headers(&signed);
            list.push(json());
            http("truncated body", list, body[..cut].to_vec())
        }
        34..=41 if target.timestamped() => {
            let then = now - Duration::from_secs(3600 + rng.below(86_400) as u64);
            let mut list = headers(&target.real.sign(&event_id, &body, then));
            list.push(json());
            http("stale replay", list, body)
        }
        42..=45 if target.two_sided() => {
            let then = now + Duration::from_secs(3600 + rng.below(86_400) as u64);
            let mut list = headers(&target.real.sign(&event_id, &body, then));
            list.push(json());
            http("future timestamp", list, body)
        }
        46 => {
            // Over the 1 MiB limit, correctly signed: refused for its size alone.
            let pad = 1024 * 1024 + rng.below(512 * 1024);
            let text = String::from_utf8(body).unwrap();
            let huge = format!(r#"{{"pad":"{}",{}"#, "x".repeat(pad), &text[1..]).into_bytes();
            let mut list = headers(&target.real.sign(&event_id, &huge, now));
            list.push(json());
            http("huge body", list, huge)
        }
        47..=54 if target.body_signed() => {
            // Signed over UTF-8, delivered re-encoded by something in between.
            let mut value: serde_json::Value = serde_json::from_slice(&body).unwrap();
            value["note"] = serde_json::json!("Zoë Müller, café");
            let text = serde_json::to_string(&value).unwrap();
            let mut list = headers(&target.real.sign(&event_id, text.as_bytes(), now));
            let (kind, sent, content_type): (_, Vec<u8>, &[u8]) = match rng.below(4) {
                0 => (
                    "UTF-16 body",
                    utf16le_bom(&text),
                    b"application/json; charset=utf-16",
                ),
                1 => (
                    "Latin-1 body",
                    latin1(&text),
                    b"application/json; charset=iso-8859-1",
                ),
                2 => (
                    "pretty-printed body",
                    serde_json::to_vec_pretty(&value).unwrap(),
                    b"application/json",
                ),
                _ => (
                    "BOM-prefixed body",
                    [&[0xEF, 0xBB, 0xBF][..], text.as_bytes()].concat(),
                    b"application/json",
                ),
            };
            list.extend(header("content-type", content_type));
            http(kind, list, sent)
        }
        55..=64 => {
            let signed = target.real.sign(&event_id, &body, now);
            let mut list = vec![json()];
            let mut kind = "mangled signature";
            for (name, value) in &signed {
                if !is_proof(name) {
                    list.extend(header(name, value.as_bytes()));
                    continue;
                }
                let mangled: Vec<u8> = match rng.below(6) {
                    0 | 1 => flip(rng, value).into_bytes(),
                    2 => Vec::new(),
                    3 => value.as_bytes()[..value.len() / 2].to_vec(),
                    4 => {
                        kind = "signature re-encoded";
                        base64::engine::general_purpose::STANDARD
                            .encode(value)
                            .into_bytes()
                    }
                    _ => {
                        kind = "undecodable signature";
                        let mut v = flip(rng, value).into_bytes();
                        let at = v.len() / 2;
                        v.insert(at, 0xFF);
                        v
                    }
                };
                list.extend(header(name, &mangled));
            }
            http(kind, list, body)
        }
        65..=69 => {
            // The right signature header twice: once valid, once not.
            let signed = target.real.sign(&event_id, &body, now);
            let mut list = vec![json()];
            for (name, value) in &signed {
                list.extend(header(name, value.as_bytes()));
                if is_proof(name) {
                    list.extend(header(name, flip(rng, value).as_bytes()));
                }
            }
            http("duplicated signature header", list, body)
        }
        80..=83 => {
            let path = match rng.below(4) {
                0 => format!("/webhooks/nope_{}", rng.below(1000)),
                1 => "/webhooks/%FF%FE%00".to_owned(),
                2 => format!("/webhooks/{}", "a".repeat(4000 + rng.below(4000))),
                _ => format!("/webhooks/{}/extra", target.id),
            };
            let mut list = headers(&target.real.sign(&event_id, &body, now));
            list.push(json());
            Generated {
                kind: "unknown source or path",
                request: Request::Http {
                    method: reqwest::Method::POST,
                    path,
                    headers: list,
                    body,
                },
            }
        }
        84..=86 => {
            let method = rng
                .pick(&[
                    reqwest::Method::GET,
                    reqwest::Method::PUT,
                    reqwest::Method::DELETE,
                    reqwest::Method::PATCH,
                ])
                .clone();
            let mut list = headers(&target.real.sign(&event_id, &body, now));
            list.push(json());
            Generated {
                kind: "wrong method",
                request: Request::Http {
                    method,
                    path,
                    headers: list,
                    body,
                },
            }
        }
        87..=89 => {
            let len = rng.below(4096);
            let garbage = rng.bytes(len);
            let mut list = vec![];
            let name = rng.pick::<&str>(KNOWN);
            let value = rng.printable(40);
            list.extend(header(name, value.as_bytes()));
            let content_types: [&[u8]; 4] = [
                b"application/octet-stream",
                b"text/plain; charset=utf-7",
                b"application/json",
                b"multipart/form-data; boundary=x",
            ];
            list.extend(header("content-type", rng.pick::<&[u8]>(&content_types)));
            http("garbage body", list, garbage)
        }
        90..=99 => raw(rng, &target, &event_id, &body, now),
        // The kinds a target cannot take (no timestamp, body not signed), the wrong
        // secret and a request signed for one source sent to another.
        _ => {
            if rng.below(2) == 0 {
                let mut list = headers(&target.impostor.sign(&event_id, &body, now));
                list.push(json());
                http("wrong secret", list, body)
            } else {
                let other = rng.pick(targets).clone();
                let other = if other.id == target.id {
                    targets.iter().find(|t| t.id != target.id).unwrap().clone()
                } else {
                    other
                };
                let mut list = headers(&other.real.sign(&event_id, &body, now));
                list.push(json());
                http("signed for another source", list, body)
            }
        }
    }
}

fn raw(rng: &mut Rng, target: &Target, event_id: &str, body: &[u8], now: SystemTime) -> Generated {
    let path = format!("/webhooks/{}", target.id);
    // The body below never matches the signature; where the proof does not cover the
    // body (Rebilly's Basic auth), the credentials must be wrong instead.
    let signer = if target.body_signed() {
        &target.real
    } else {
        &target.impostor
    };
    let signed: String = signer
        .sign(event_id, body, now)
        .iter()
        .map(|(n, v)| format!("{n}: {v}\r\n"))
        .collect();
    let with_body = |head: String, body: &[u8]| [head.as_bytes(), body].concat();
    let (kind, bytes) = match rng.below(10) {
        0 => {
            let len = 1 + rng.below(2048);
            ("raw: not HTTP", rng.bytes(len))
        }
        1 => (
            "raw: body shorter than Content-Length",
            with_body(
                format!(
                    "POST {path} HTTP/1.1\r\nhost: x\r\n{signed}content-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len() + 1 + rng.below(1000)
                ),
                body,
            ),
        ),
        2 => (
            "raw: NUL in a header name",
            with_body(
                format!(
                    "POST {path} HTTP/1.1\r\nhost: x\r\nstripe-sig\0nature: t=1,v1=00\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                ),
                body,
            ),
        ),
        3 => (
            "raw: bad chunk size",
            format!(
                "POST {path} HTTP/1.1\r\nhost: x\r\n{signed}transfer-encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n"
            )
            .into_bytes(),
        ),
        4 => (
            "raw: Content-Length overflow",
            with_body(
                format!(
                    "POST {path} HTTP/1.1\r\nhost: x\r\n{signed}content-length: 99999999999999999999999\r\n\r\n"
                ),
                body,
            ),
        ),
        5 => (
            "raw: Content-Length and chunked",
            format!(
                "POST {path} HTTP/1.1\r\nhost: x\r\n{signed}content-length: 5\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
            )
            .into_bytes(),
        ),
        6 => {
            let mut head = format!("POST {path} HTTP/1.1\r\nhost: x\r\n").into_bytes();
            for (name, value) in target.real.sign(event_id, body, now) {
                head.extend_from_slice(name.as_bytes());
                head.extend_from_slice(b": ");
                let mut v = value.into_bytes();
                let at = v.len() / 2;
                v[at] = 0xFF;
                head.extend_from_slice(&v);
                head.extend_from_slice(b"\r\n");
            }
            head.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
            head.extend_from_slice(body);
            ("raw: 0xFF inside the signature", head)
        }
        7 => (
            "raw: HTTP/1.0, no host, bare LF",
            with_body(
                format!(
                    "POST {path} HTTP/1.0\n{}content-length: {}\n\n",
                    signed.replace("\r\n", "\n"),
                    body.len()
                ),
                &body[..body.len() / 2],
            ),
        ),
        8 => (
            "raw: huge URI",
            format!(
                "POST /webhooks/{} HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{{}}",
                "%41".repeat(20_000 + rng.below(20_000))
            )
            .into_bytes(),
        ),
        _ => (
            "raw: declared 2 MiB, sent 10 bytes",
            with_body(
                format!(
                    "POST {path} HTTP/1.1\r\nhost: x\r\n{signed}content-length: 2097152\r\n\r\n"
                ),
                &body[..10.min(body.len())],
            ),
        ),
    };
    Generated {
        kind,
        request: Request::Raw(bytes),
    }
}

/// What came back: a status, or the connection closed / timed out without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Status(u16),
    Closed,
    Timeout,
}

pub async fn send(
    client: &reqwest::Client,
    ingress: &str,
    addr: std::net::SocketAddr,
    request: Request,
) -> Outcome {
    match request {
        Request::Http {
            method,
            path,
            headers,
            body,
        } => {
            let mut builder = client.request(method, format!("{ingress}{path}"));
            for (name, value) in headers {
                builder = builder.header(name, value);
            }
            match builder.body(body).send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let _ = response.bytes().await;
                    Outcome::Status(status)
                }
                Err(error) if error.is_timeout() => Outcome::Timeout,
                Err(_) => Outcome::Closed,
            }
        }
        Request::Raw(bytes) => {
            let exchange = async {
                let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
                // The server may answer (and close) before reading everything.
                let _ = stream.write_all(&bytes).await;
                let mut answer = Vec::new();
                // A complete request is answered at once; an incomplete one only once the
                // server sees the end of our stream (closing it at once instead makes the
                // server drop a request still in flight, without an answer).
                let status_line = |answer: &Vec<u8>| answer.len() >= 12;
                let quick = async {
                    while !status_line(&answer) {
                        let mut buf = [0u8; 256];
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return true,
                            Ok(n) => answer.extend_from_slice(&buf[..n]),
                        }
                    }
                    true
                };
                let done = tokio::time::timeout(Duration::from_secs(1), quick)
                    .await
                    .unwrap_or(false);
                if !done {
                    let _ = stream.shutdown().await;
                    while !status_line(&answer) {
                        let mut buf = [0u8; 256];
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => answer.extend_from_slice(&buf[..n]),
                        }
                    }
                }
                Some(answer)
            };
            match tokio::time::timeout(Duration::from_secs(15), exchange).await {
                Err(_) => Outcome::Timeout,
                Ok(None) => Outcome::Closed,
                Ok(Some(answer)) => {
                    let head = String::from_utf8_lossy(&answer[..answer.len().min(64)]);
                    head.strip_prefix("HTTP/1.")
                        .and_then(|rest| rest.get(2..5))
                        .and_then(|code| code.parse().ok())
                        .map_or(Outcome::Closed, Outcome::Status)
                }
            }
        }
    }
}
