//! Hostile clients for scenario 9: connections that trickle a request head one byte every
//! few seconds, connections that send one request and then sit idle on keep-alive, both
//! reconnecting whenever the server closes them (as a persistent attacker would, paced so
//! the test stays bounded); a poster of valid webhooks that retries a request that got no
//! HTTP answer or a 503 (a provider redelivers) and records how long each webhook took to
//! get its 2xx; and a sampler of the server process's memory and descriptors.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::{Semaphore, watch},
    task::JoinSet,
};

use crate::load::{Answer, Entry, Load, Report};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Sends a request head one byte at a time, never finishing it.
    Trickle,
    /// Sends one complete request, reads its answer, then sends nothing.
    Idle,
}

/// What the attackers saw (client side).
#[derive(Default)]
pub struct AttackStats {
    pub connections: AtomicUsize,
    pub connect_failures: AtomicUsize,
    pub closed_by_server: AtomicUsize,
    pub open: AtomicUsize,
    pub peak_open: AtomicUsize,
}

impl AttackStats {
    pub fn summary(&self) -> String {
        let get = |a: &AtomicUsize| a.load(Ordering::SeqCst);
        format!(
            "{} connections made ({} attempts failed or timed out), {} closed by the server, at most {} open at once (client side, the kernel's backlog included)",
            get(&self.connections),
            get(&self.connect_failures),
            get(&self.closed_by_server),
            get(&self.peak_open)
        )
    }
}

/// Starts `count` attackers of `kind` against `addr` until `over` turns true.
pub fn attack(
    tasks: &mut JoinSet<()>,
    addr: SocketAddr,
    kind: Kind,
    count: usize,
    byte_every: Duration,
    stats: &Arc<AttackStats>,
    over: &watch::Receiver<bool>,
) {
    for _ in 0..count {
        let (stats, mut over) = (stats.clone(), over.clone());
        tasks.spawn(async move {
            while !*over.borrow() {
                let connect =
                    tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr));
                let Ok(Ok(stream)) = connect.await else {
                    stats.connect_failures.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                };
                stats.connections.fetch_add(1, Ordering::SeqCst);
                let open = stats.open.fetch_add(1, Ordering::SeqCst) + 1;
                stats.peak_open.fetch_max(open, Ordering::SeqCst);
                let closed = tokio::select! {
                    closed = hold(stream, kind, byte_every) => closed,
                    _ = over.wait_for(|o| *o) => false,
                };
                stats.open.fetch_sub(1, Ordering::SeqCst);
                if closed {
                    stats.closed_by_server.fetch_add(1, Ordering::SeqCst);
                }
                // Reconnect paced, so the attack is bounded in rate as well as in count.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
}

/// Holds one connection the hostile way; true once the server closed it.
async fn hold(mut stream: TcpStream, kind: Kind, byte_every: Duration) -> bool {
    let mut buf = [0u8; 2048];
    if kind == Kind::Idle {
        let request =
            b"POST /webhooks/no-such-source HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n";
        if stream.write_all(request).await.is_err() {
            return true;
        }
        match stream.read(&mut buf).await {
            Ok(n) if n > 0 => {}
            _ => return true,
        }
        // Idle now: readable again only when the server closes.
        return matches!(stream.read(&mut buf).await, Ok(0) | Err(_));
    }
    let head = b"POST /webhooks/stripe HTTP/1.1\r\nhost: 127.0.0.1\r\nx-trickle: ";
    for byte in head.iter().chain(std::iter::repeat(&b'a')) {
        if stream.write_all(&[*byte]).await.is_err() {
            return true;
        }
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(byte_every, stream.read(&mut buf)).await {
            return true;
        }
    }
    unreachable!("the head never ends")
}

/// Sends webhook `0..count` at `rate` per second; each is retried (after 200 ms) while it
/// gets no HTTP answer within 5 s or a 503, for at most `give_up`. Returns the report (answer =
/// the last one) and, per webhook, how long it took to get its 2xx.
pub async fn post_until_accepted(
    load: &Load,
    count: usize,
    rate: f64,
    give_up: Duration,
) -> (Report, Vec<Duration>) {
    let client = reqwest::Client::builder()
        // A provider's patience with one attempt (Shopify's is 5 s), then it tries again.
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(64));
    let mut tasks = JoinSet::new();
    for n in 0..count {
        tokio::time::sleep_until((started + Duration::from_secs_f64(n as f64 / rate)).into()).await;
        let permit = permits.clone().acquire_owned().await.unwrap();
        let (load, client) = (load.clone(), client.clone());
        tasks.spawn(async move {
            let webhook = (load.make)(n);
            let first = Instant::now();
            let mut tries = Vec::new();
            let answer = loop {
                let attempt = Instant::now();
                let (answer, error) = post(&client, &load, &webhook.id, &webhook.body).await;
                tries.push(format!(
                    "{answer:?} after {:.2?} {error}",
                    attempt.elapsed()
                ));
                let retry = matches!(answer, Answer::Error | Answer::Status(503));
                if !retry || first.elapsed() > give_up {
                    break answer;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            drop(permit);
            if !answer.ok() {
                eprintln!("[faults] webhook {} got no 2xx: {tries:?}", webhook.id);
            }
            (
                Entry {
                    id: webhook.id,
                    index: n,
                    answer,
                },
                first.elapsed(),
            )
        });
    }
    let mut entries = Vec::with_capacity(count);
    let mut took = Vec::with_capacity(count);
    while let Some(done) = tasks.join_next().await {
        let (entry, elapsed) = done.unwrap();
        if entry.answer.ok() {
            took.push(elapsed);
        }
        entries.push(entry);
    }
    entries.sort_by_key(|e| e.index);
    took.sort();
    let report = Report {
        entries,
        elapsed: started.elapsed(),
    };
    (report, took)
}

/// The answer, and for a request that got none, why (for the failure report).
async fn post(client: &reqwest::Client, load: &Load, id: &str, body: &[u8]) -> (Answer, String) {
    let mut request = client
        .post(&load.url)
        .header("content-type", "application/json");
    for (name, value) in load.source.sign(id, body, SystemTime::now()) {
        request = request.header(name, value);
    }
    match request.body(body.to_vec()).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let _ = response.bytes().await;
            (Answer::Status(status), String::new())
        }
        Err(error) => {
            let mut why = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                why.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            (Answer::Error, why)
        }
    }
}

/// The server process's open descriptors and resident memory, sampled.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessFigures {
    pub fds: usize,
    /// VmRSS (KiB).
    pub rss_kib: u64,
    /// VmHWM: the peak resident set since the process started (KiB).
    pub hwm_kib: u64,
}

pub fn sample(pid: u32) -> Option<ProcessFigures> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let status = std::fs::read_to_string(proc.join("status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
    };
    Some(ProcessFigures {
        fds: std::fs::read_dir(proc.join("fd")).ok()?.count(),
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// Samples `pid` every 100 ms until `over`; returns the largest figures seen.
pub async fn peak(pid: u32, mut over: watch::Receiver<bool>) -> ProcessFigures {
    let mut peak = ProcessFigures::default();
    loop {
        if let Some(now) = sample(pid) {
            peak.fds = peak.fds.max(now.fds);
            peak.rss_kib = peak.rss_kib.max(now.rss_kib);
            peak.hwm_kib = peak.hwm_kib.max(now.hwm_kib);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = over.wait_for(|o| *o) => return peak,
        }
    }
}

/// This process's soft limit on open files.
pub fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}
