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

/// The attackers: each holds one connection at a time, until [`Attack::stop`].
pub struct Attack {
    tasks: JoinSet<()>,
    stats: Arc<AttackStats>,
    over: watch::Sender<bool>,
}

impl Attack {
    /// `trickling` + `idle` attackers against `addr`; tricklers send a byte every `every`.
    pub fn start(addr: SocketAddr, trickling: usize, idle: usize, every: Duration) -> Self {
        let (over, _) = watch::channel(false);
        let mut attack = Self {
            tasks: JoinSet::new(),
            stats: Arc::default(),
            over,
        };
        attack.spawn(addr, Kind::Trickle, trickling, every);
        attack.spawn(addr, Kind::Idle, idle, every);
        attack
    }

    fn spawn(&mut self, addr: SocketAddr, kind: Kind, count: usize, byte_every: Duration) {
        for _ in 0..count {
            let (stats, over) = (self.stats.clone(), self.over.subscribe());
            self.tasks
                .spawn(attacker(addr, kind, byte_every, stats, over));
        }
    }

    /// Ends the attack (every attacker closes its connection); what they saw.
    pub async fn stop(mut self) -> String {
        self.over.send_replace(true);
        while self.tasks.join_next().await.is_some() {}
        self.stats.summary()
    }
}

async fn attacker(
    addr: SocketAddr,
    kind: Kind,
    byte_every: Duration,
    stats: Arc<AttackStats>,
    mut over: watch::Receiver<bool>,
) {
    while !*over.borrow() {
        let connect = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr));
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

/// What the valid webhooks went through.
pub struct Delivered {
    /// Each webhook's last answer.
    pub report: Report,
    /// How long each webhook that got a 2xx took, first attempt to 2xx, sorted.
    pub took: Vec<Duration>,
    /// Webhooks that needed more than one attempt.
    pub retried: usize,
}

/// Sends webhook `0..count` at `rate` per second; each is retried (after 200 ms) while it
/// gets no HTTP answer within 5 s or a 503, for at most `give_up`.
pub async fn post_until_accepted(
    load: &Load,
    count: usize,
    rate: f64,
    give_up: Duration,
) -> Delivered {
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
            let delivered = deliver(&client, &load, n, give_up).await;
            drop(permit);
            delivered
        });
    }
    let mut entries = Vec::with_capacity(count);
    let (mut took, mut retried) = (Vec::with_capacity(count), 0);
    while let Some(done) = tasks.join_next().await {
        let (entry, elapsed, attempts) = done.unwrap();
        if entry.answer.ok() {
            took.push(elapsed);
        }
        retried += usize::from(attempts > 1);
        entries.push(entry);
    }
    entries.sort_by_key(|e| e.index);
    took.sort();
    let report = Report {
        entries,
        elapsed: started.elapsed(),
    };
    Delivered {
        report,
        took,
        retried,
    }
}

/// Webhook `n` until it gets an answer other than none or 503, or `give_up` passed: its
/// last answer, how long from the first attempt, how many attempts.
async fn deliver(
    client: &reqwest::Client,
    load: &Load,
    n: usize,
    give_up: Duration,
) -> (Entry, Duration, usize) {
    let webhook = (load.make)(n);
    let first = Instant::now();
    let mut tries = Vec::new();
    let answer = loop {
        let attempt = Instant::now();
        let (answer, error) = post(client, load, &webhook.id, &webhook.body).await;
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
    if !answer.ok() {
        eprintln!("[faults] webhook {} got no 2xx: {tries:?}", webhook.id);
    }
    let entry = Entry {
        id: webhook.id,
        index: n,
        answer,
    };
    (entry, first.elapsed(), tries.len())
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

/// What the server may use: descriptors up to what it had before plus `max_connections`
/// plus `fd_slack`, memory up to its peak before plus `kib_per_connection` per allowed
/// connection; once the attack is over, no more than `fd_slack` descriptors above before.
pub struct Bounds {
    pub max_connections: usize,
    pub fd_slack: usize,
    pub kib_per_connection: u64,
}

impl Bounds {
    pub fn check(&self, before: &ProcessFigures, peak: &ProcessFigures, after: &ProcessFigures) {
        assert!(
            peak.fds <= before.fds + self.max_connections + self.fd_slack,
            "open descriptors bounded by max_connections {}: {} before, {} at peak",
            self.max_connections,
            before.fds,
            peak.fds
        );
        let rss_bound = before.hwm_kib + self.max_connections as u64 * self.kib_per_connection;
        assert!(
            peak.hwm_kib <= rss_bound,
            "peak RSS {} KiB within {rss_bound} KiB (before + {} KiB per allowed connection)",
            peak.hwm_kib,
            self.kib_per_connection
        );
        assert!(
            after.fds <= before.fds + self.fd_slack,
            "connections released after the attack: {} fds, {} before",
            after.fds,
            before.fds
        );
    }

    /// Waits (at most 15 s) until the server is back within `fd_slack` of `before`.
    pub async fn released(&self, pid: u32, before: &ProcessFigures) -> ProcessFigures {
        let started = Instant::now();
        loop {
            let now = sample(pid).expect("/proc figures of the service");
            if now.fds <= before.fds + self.fd_slack || started.elapsed() > Duration::from_secs(15)
            {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
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

/// "p50 …, p99 …, max …" of sorted durations.
pub fn latencies(sorted: &[Duration]) -> String {
    let at = |p: f64| {
        let index = ((sorted.len().max(1) - 1) as f64 * p).round() as usize;
        sorted.get(index).copied().unwrap_or_default()
    };
    format!(
        "p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        at(0.5),
        at(0.99),
        at(1.0)
    )
}
