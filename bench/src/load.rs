//! The HTTP load generator: N keep-alive HTTP/1.1 connections (hyper), one request in
//! flight on each, latencies kept exactly (a sorted vector of microseconds).
//!
//! Closed loop: every connection sends its next request as soon as the previous answer
//! arrived (the most the server can take). Open loop: request `i` is due at
//! `start + i / rate` whatever happened before; the next free connection sends it, and its
//! latency counts from when it was due, so waiting for a connection (queueing) is included.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use axum::http::{Method, Request, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::cpu::{CpuUsage, CpuWatch};
use crate::payloads::Prepared;

/// What one load run measured.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Latency of every 2xx answer in the measured window, sorted (µs).
    pub latencies_us: Vec<u32>,
    /// Answers by status code in the measured window.
    pub statuses: BTreeMap<u16, u64>,
    /// Transport errors (connection reset...) in the measured window.
    pub transport_errors: u64,
    /// 2xx answers over the whole run, warm-up included.
    pub ok_total: u64,
    /// Open loop: requests never sent because the run overran its grace period.
    pub unsent: u64,
    /// Length of the measured window (open loop: of the schedule).
    pub window: Duration,
    /// Open loop: from the first due time until the last answer.
    pub elapsed: Duration,
    /// Open loop: wall-clock time the first request was due.
    pub started: Option<chrono::DateTime<chrono::Utc>>,
    /// CPU use over the measured window.
    pub cpu: CpuUsage,
    /// Open loop: (due time from the start in ms, latency in µs) of every 2xx answer.
    pub timeline: Vec<(u32, u32)>,
}

impl LoadResult {
    pub fn ok(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| (200..300).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn failed(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s))
            .map(|(_, n)| n)
            .sum::<u64>()
            + self.transport_errors
            + self.unsent
    }

    /// 2xx answers per second in the measured window.
    pub fn rate(&self) -> f64 {
        self.ok() as f64 / self.window.as_secs_f64()
    }

    /// The `q` quantile of the 2xx latencies, in milliseconds.
    pub fn pct_ms(&self, q: f64) -> f64 {
        percentile(&self.latencies_us, q) as f64 / 1000.0
    }

    /// Non-2xx answers and errors, for the report ("none" when clean).
    pub fn failures_text(&self) -> String {
        let mut parts: Vec<String> = self
            .statuses
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s))
            .map(|(s, n)| format!("{n}× {s}"))
            .collect();
        if self.transport_errors > 0 {
            parts.push(format!("{} transport errors", self.transport_errors));
        }
        if self.unsent > 0 {
            parts.push(format!("{} never sent", self.unsent));
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }

    fn merge(&mut self, other: Recorder) {
        self.latencies_us.extend(other.latencies_us);
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
        self.ok_total += other.ok_total;
        self.timeline.extend(other.timeline);
    }

    /// Open loop: the p99 and max latency (ms) of each second of the schedule.
    pub fn per_second(&self) -> Vec<(f64, f64)> {
        let mut seconds: Vec<Vec<u32>> = Vec::new();
        for &(due_ms, latency) in &self.timeline {
            let s = (due_ms / 1000) as usize;
            if seconds.len() <= s {
                seconds.resize_with(s + 1, Vec::new);
            }
            seconds[s].push(latency);
        }
        seconds
            .into_iter()
            .map(|mut l| {
                l.sort_unstable();
                let max = l.last().copied().unwrap_or(0);
                (percentile(&l, 0.99) as f64 / 1000.0, max as f64 / 1000.0)
            })
            .collect()
    }
}

/// Nearest-rank percentile of sorted `values` (0 when empty).
pub fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Default)]
struct Recorder {
    latencies_us: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    ok_total: u64,
    timeline: Vec<(u32, u32)>,
}

impl Recorder {
    fn record(
        &mut self,
        measured: bool,
        outcome: &Result<StatusCode, hyper::Error>,
        took: Duration,
    ) {
        if let Ok(status) = outcome
            && status.is_success()
        {
            self.ok_total += 1;
        }
        if !measured {
            return;
        }
        match outcome {
            Ok(status) => {
                *self.statuses.entry(status.as_u16()).or_default() += 1;
                if status.is_success() {
                    self.latencies_us
                        .push(took.as_micros().min(u32::MAX as u128) as u32);
                }
            }
            Err(_) => self.transport_errors += 1,
        }
    }
}

/// One keep-alive connection.
struct Conn {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let mut conn = Self { addr, sender: None };
        conn.reconnect().await?;
        Ok(conn)
    }

    async fn reconnect(&mut self) -> anyhow::Result<()> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        self.sender = Some(sender);
        Ok(())
    }

    /// Sends `request` and reads the whole answer; on a transport error the connection is
    /// replaced for the next request.
    async fn send(&mut self, request: &Prepared) -> Result<StatusCode, hyper::Error> {
        let result = async {
            let sender = self.sender.as_mut().expect("connected");
            sender.ready().await?;
            let mut req = Request::new(Full::new(request.body.clone()));
            *req.method_mut() = Method::POST;
            *req.uri_mut() = request.path.clone();
            *req.headers_mut() = request.headers.clone();
            let response = sender.send_request(req).await?;
            let status = response.status();
            response.into_body().collect().await?;
            Ok(status)
        }
        .await;
        if result.is_err() {
            self.sender = None;
            if self.reconnect().await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        result
    }

    async fn ensure(&mut self) {
        if self.sender.is_none() && self.reconnect().await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn open_all(addr: SocketAddr, connections: usize) -> anyhow::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(Conn::open(addr).await?);
    }
    Ok(conns)
}

/// Closed loop for `warmup + duration`; only requests sent after the warm-up count.
/// Requests cycle through `requests`.
pub async fn closed_loop(
    addr: SocketAddr,
    requests: Arc<Vec<Prepared>>,
    connections: usize,
    warmup: Duration,
    duration: Duration,
    server_pid: Option<u32>,
) -> anyhow::Result<LoadResult> {
    anyhow::ensure!(!requests.is_empty(), "no requests");
    let conns = open_all(addr, connections).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let watch = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from).await;
        CpuWatch::start(server_pid)
    });
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (requests, next) = (requests.clone(), next.clone());
            tokio::spawn(async move {
                let mut rec = Recorder::default();
                loop {
                    conn.ensure().await;
                    let sent = Instant::now();
                    if sent >= end {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed) % requests.len();
                    let outcome = conn.send(&requests[i]).await;
                    rec.record(sent >= measure_from, &outcome, sent.elapsed());
                }
                rec
            })
        })
        .collect();
    let mut result = LoadResult {
        window: duration,
        ..Default::default()
    };
    for task in tasks {
        result.merge(task.await?);
    }
    result.cpu = watch.await?.finish();
    result.latencies_us.sort_unstable();
    Ok(result)
}

/// Open loop: all of `requests`, request `i` due at `start + i / rate`. Requests still
/// unsent `grace` after the last one was due are counted as never sent.
pub async fn open_loop(
    addr: SocketAddr,
    requests: Arc<Vec<Prepared>>,
    connections: usize,
    rate: f64,
    grace: Duration,
    server_pid: Option<u32>,
) -> anyhow::Result<LoadResult> {
    let conns = open_all(addr, connections).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let total = requests.len();
    let interval_ns = 1e9 / rate;
    let start = Instant::now() + Duration::from_millis(50);
    let started = chrono::Utc::now() + Duration::from_millis(50);
    let schedule = Duration::from_nanos((total as f64 * interval_ns) as u64);
    let cutoff = start + schedule + grace;
    let watch = CpuWatch::start(server_pid);
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (requests, next) = (requests.clone(), next.clone());
            tokio::spawn(async move {
                let mut rec = Recorder::default();
                let mut unsent = 0u64;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let due = start + Duration::from_nanos((i as f64 * interval_ns) as u64);
                    tokio::time::sleep_until(due).await;
                    conn.ensure().await;
                    if Instant::now() >= cutoff {
                        unsent += 1;
                        continue;
                    }
                    let outcome = conn.send(&requests[i]).await;
                    let took = due.elapsed();
                    rec.record(true, &outcome, took);
                    if matches!(&outcome, Ok(s) if s.is_success()) {
                        let due_ms = (due - start).as_millis() as u32;
                        rec.timeline
                            .push((due_ms, took.as_micros().min(u32::MAX as u128) as u32));
                    }
                }
                (rec, unsent)
            })
        })
        .collect();
    let mut result = LoadResult {
        window: schedule,
        started: Some(started),
        ..Default::default()
    };
    for task in tasks {
        let (rec, unsent) = task.await?;
        result.merge(rec);
        result.unsent += unsent;
    }
    result.elapsed = start.elapsed();
    result.cpu = watch.finish();
    result.latencies_us.sort_unstable();
    Ok(result)
}
