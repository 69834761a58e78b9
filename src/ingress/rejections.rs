//! Rejected webhooks are logged as one summary line per source and reason per interval,
//! not one line per request: a client hammering the ingress with bad signatures must not
//! be able to flood the logs (and the disk behind them). Each request's own error is
//! still logged at DEBUG, and the rejection metrics count every one.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use tokio::time::Instant;

/// One line of a summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub source: String,
    pub reason: &'static str,
    pub rejected: u64,
}

/// Counts per (source, reason) since the last summary. Sources are configured ids (or
/// "unknown"), reasons fixed labels, so the map stays small whatever clients send.
#[derive(Debug)]
pub struct Tally {
    counts: BTreeMap<(String, &'static str), u64>,
    since: Instant,
}

impl Tally {
    pub fn new(now: Instant) -> Self {
        Self {
            counts: BTreeMap::new(),
            since: now,
        }
    }

    pub fn record(&mut self, source: &str, reason: &'static str) {
        match self.counts.get_mut(&(source.to_owned(), reason)) {
            Some(count) => *count += 1,
            None => {
                self.counts.insert((source.to_owned(), reason), 1);
            }
        }
    }

    /// The counts since the last call (sorted by source and reason) and how long that
    /// was; starts a new interval.
    pub fn take(&mut self, now: Instant) -> (Vec<Summary>, Duration) {
        let elapsed = now.saturating_duration_since(self.since);
        self.since = now;
        let lines = std::mem::take(&mut self.counts)
            .into_iter()
            .map(|((source, reason), rejected)| Summary {
                source,
                reason,
                rejected,
            })
            .collect();
        (lines, elapsed)
    }
}

/// The ingress's tally, logged every `interval` by a task that ends with it; whatever is
/// left when it is dropped (at shutdown) is logged then.
pub struct RejectionLog {
    tally: Mutex<Tally>,
}

impl RejectionLog {
    /// Must be called inside a Tokio runtime (it spawns the summary task).
    pub fn start(interval: Duration) -> Arc<Self> {
        let log = Arc::new(Self {
            tally: Mutex::new(Tally::new(Instant::now())),
        });
        tokio::spawn(summarize_every(Arc::downgrade(&log), interval));
        log
    }

    pub fn record(&self, source: &str, reason: &'static str) {
        self.lock().record(source, reason);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn flush(&self) {
        let (lines, elapsed) = self.lock().take(Instant::now());
        emit(&lines, elapsed);
    }
}

impl Drop for RejectionLog {
    fn drop(&mut self) {
        self.flush();
    }
}

async fn summarize_every(log: Weak<RejectionLog>, interval: Duration) {
    let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
    loop {
        ticks.tick().await;
        let Some(log) = log.upgrade() else { return };
        log.flush();
    }
}

fn emit(lines: &[Summary], elapsed: Duration) {
    let secs = elapsed.as_secs_f64().round();
    for line in lines {
        tracing::info!(
            source = %line.source,
            reason = line.reason,
            rejected = line.rejected,
            "webhooks rejected in the last {secs}s"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_becomes_one_line_per_source_and_reason_per_interval() {
        let t0 = Instant::now();
        let mut tally = Tally::new(t0);
        for _ in 0..1234 {
            tally.record("stripe", "signature");
        }
        for _ in 0..7 {
            tally.record("stripe", "timestamp");
        }
        tally.record("unknown", "unknown_source");
        let (lines, elapsed) = tally.take(t0 + Duration::from_secs(10));
        assert_eq!(elapsed, Duration::from_secs(10));
        let summary = |source: &str, reason, rejected| Summary {
            source: source.into(),
            reason,
            rejected,
        };
        assert_eq!(
            lines,
            vec![
                summary("stripe", "signature", 1234),
                summary("stripe", "timestamp", 7),
                summary("unknown", "unknown_source", 1),
            ]
        );
        // A new interval starts empty: nothing is logged for a quiet one.
        let (lines, elapsed) = tally.take(t0 + Duration::from_secs(20));
        assert!(lines.is_empty());
        assert_eq!(elapsed, Duration::from_secs(10));
        tally.record("stripe", "signature");
        let (lines, _) = tally.take(t0 + Duration::from_secs(30));
        assert_eq!(lines, vec![summary("stripe", "signature", 1)]);
    }

    #[tokio::test]
    async fn the_log_summarizes_on_its_interval_and_stops_with_its_owner() {
        let log = RejectionLog::start(Duration::from_millis(100));
        for _ in 0..500 {
            log.record("demo", "signature");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        // The periodic task took the counts: the tally is empty again.
        let (lines, elapsed) = log.lock().take(Instant::now());
        assert!(lines.is_empty(), "{lines:?}");
        assert!(elapsed < Duration::from_millis(150), "{elapsed:?}");
        let weak = Arc::downgrade(&log);
        drop(log);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(
            weak.upgrade().is_none(),
            "the task holds no strong reference"
        );
    }
}
