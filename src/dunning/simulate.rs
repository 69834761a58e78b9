//! `dunning simulate`: a candidate retry policy tried on the recorded history before it is
//! used. Reads the decision log (`retry_decisions`), the retry calls made and how each
//! cycle ended, in a read-only transaction; calls no provider and changes nothing.
//!
//! What is observed and what is estimated:
//! - **Observed** (counted from the record): failures (cycles whose first recorded decision
//!   falls in the window), retries made, cycles recovered, and per bucket and retry number
//!   how many cycles were retried that often and how many were recovered after exactly that
//!   many retries (the outcome after comparable attempts).
//! - **Reproduced**: each recorded decision fed to the candidate with its own inputs (the
//!   bucket, the retries made, the first failure, the time decided from); the share that
//!   comes out the same (status, time, final action). A policy identical to the one that
//!   decided reproduces every decision; with jitter a recorded time counts as the same when
//!   it lies in the candidate's jitter range `[d, 2d]`.
//! - **Estimated** (replayed, per cycle): the retries the candidate would make and when.
//!   The replay follows the record for as long as the candidate decides as recorded (so a
//!   policy identical to the recorded one replays the record exactly, jitter and all).
//!   From its first different decision it uses its own times, un-jittered (the lower bound
//!   of a jittered time), and its retry n is assumed to end as the recorded retry n did:
//!   declined with the recorded bucket, or recovering the cycle if the recorded retry n
//!   did. Where the record has no retry n (the recorded policy stopped earlier), the
//!   candidate's retry is assumed declined with the last recorded bucket. A cycle paid
//!   without a retry of subsync's gets no candidate retry after it was paid. Expected
//!   recoveries of the retries the recorded policy did not make are the observed recovery
//!   rate at their retry number in their bucket (the last observed number's rate past it;
//!   0 where none was observed).
//! - Not replayed: waits for the customer (their re-arming is the customer's act) and
//!   sources whose provider retries itself (no decision of subsync's is logged for them).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use super::decline::{self, DeclineBucket};
use super::policy::{Decision, RetryPolicy};
use super::schedule::row_for;
use crate::config::FinalAction;
use crate::db::{Db, DbError};

/// How a replay that waits for the customer ends, among the final actions.
const AWAITS: &str = "awaits the customer";

/// Most retries replayed for one cycle (a policy without limits stops here).
const MAX_REPLAYED: u32 = 1_000;

/// One recorded decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub decided_at: DateTime<Utc>,
    pub bucket: DeclineBucket,
    pub retries_done: u32,
    pub status: String,
    pub due_at: Option<DateTime<Utc>>,
    pub final_action: Option<String>,
}

/// One failed cycle as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Cycle {
    pub first_failed_at: DateTime<Utc>,
    /// Its decisions, oldest first (at least one).
    pub decisions: Vec<Recorded>,
    /// Retry calls made (distinct retry numbers).
    pub retries: u32,
    /// When it was paid and after how many of subsync's retries, if it was.
    pub recovered: Option<(DateTime<Utc>, u32)>,
}

/// What the candidate does with one bucket's failures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BucketReport {
    pub bucket: String,
    /// Observed: cycles whose first decision had this bucket.
    pub failures: usize,
    /// Observed: retries made for them.
    pub retries_recorded: u64,
    /// Observed: those recovered (paid).
    pub recovered_recorded: usize,
    /// Estimated: retries the candidate would make.
    pub retries_candidate: u64,
    /// Estimated: candidate retries beyond those made, summed over cycles.
    pub retries_added: u64,
    /// Estimated: retries made that the candidate would not make.
    pub retries_dropped: u64,
    /// Median time from the first failure to the first retry, in seconds (recorded: from
    /// the recorded decisions; candidate: replayed). `null` when there is none.
    pub first_retry_after_secs_recorded: Option<i64>,
    pub first_retry_after_secs_candidate: Option<i64>,
    /// Median time from the first failure to the last retry, in seconds.
    pub last_retry_after_secs_recorded: Option<i64>,
    pub last_retry_after_secs_candidate: Option<i64>,
    /// Observed: per retry number n, cycles retried at least n times, and those recovered
    /// after exactly n retries.
    pub by_retry: Vec<RetryOutcome>,
    /// Estimated: recoveries expected from the added retries (observed rates).
    pub recoveries_expected_from_added: f64,
    /// Estimated: recorded recoveries by a retry the candidate would not make.
    pub recoveries_lost_with_dropped: u64,
    /// Estimated: cycles the candidate ends with each final action (or `awaits the
    /// customer`: its deadline then brings the final action).
    pub final_actions_candidate: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RetryOutcome {
    pub retry: u32,
    pub retried: u64,
    pub recovered: u64,
}

/// The whole comparison.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub candidate: String,
    pub since: Option<DateTime<Utc>>,
    pub source: Option<String>,
    pub failures: usize,
    pub decisions: u64,
    /// Recorded decisions the candidate decides the same, given the same inputs.
    pub decisions_reproduced: u64,
    pub buckets: Vec<BucketReport>,
    /// How each figure was obtained (see the module doc).
    pub method: Vec<&'static str>,
}

pub const METHOD: [&str; 4] = [
    "observed: failures, retries made, recovered, and the outcome after comparable retries (same bucket, same retry number) are counted from the record",
    "reproduced: each recorded decision is decided again by the candidate from the same inputs (bucket, retries made, first failure, time); with jitter a time within [d, 2d] counts as the same",
    "estimated: the candidate's retries are replayed per cycle, following the record while it decides as recorded; from its first different decision, its own un-jittered times, its retry n ending as the recorded retry n did (declined with its bucket, or recovering) and a retry the record lacks assumed declined with the last bucket",
    "estimated: recoveries from added retries are the observed recovery rate at that retry number in that bucket (0 where none was observed); recoveries lost are the recorded ones made by a retry the candidate would not make",
];

/// Reads the history in a read-only transaction: cycles whose first failure is at or
/// after `since`, of `source` or every source.
pub async fn load(
    db: &Db,
    source: Option<&str>,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<Cycle>, DbError> {
    let mut tx = db.pool().begin().await?;
    sqlx::query("SET TRANSACTION READ ONLY")
        .execute(&mut *tx)
        .await?;
    type Row = (
        String,
        String,
        DateTime<Utc>,
        String,
        i32,
        DateTime<Utc>,
        String,
        Option<DateTime<Utc>>,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT source_id, cycle_key, decided_at, bucket, retries_done, first_failed_at, status, due_at,
                final_action
         FROM retry_decisions
         WHERE ($1::text IS NULL OR source_id = $1) AND ($2::timestamptz IS NULL OR first_failed_at >= $2)
         ORDER BY source_id, cycle_key, id",
    )
    .bind(source)
    .bind(since)
    .fetch_all(&mut *tx)
    .await?;
    type Ended = (String, String, String, i32, DateTime<Utc>, i64);
    let ended: Vec<Ended> = sqlx::query_as(
        "SELECT r.source_id, r.cycle_key, r.status, r.retries_done, r.updated_at,
                (SELECT count(*) FROM retry_calls c WHERE c.source_id = r.source_id AND c.cycle_key = r.cycle_key)
         FROM retries r
         WHERE ($1::text IS NULL OR r.source_id = $1) AND ($2::timestamptz IS NULL OR r.first_failed_at >= $2)",
    )
    .bind(source)
    .bind(since)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    // (status, retries done, last change, retry calls) by (source, cycle).
    type Ending = (String, i32, DateTime<Utc>, i64);
    let ended: HashMap<(String, String), Ending> = ended
        .into_iter()
        .map(|(s, c, status, done, at, calls)| ((s, c), (status, done, at, calls)))
        .collect();
    let mut cycles: BTreeMap<(String, String), Cycle> = BTreeMap::new();
    for (source_id, cycle_key, decided_at, bucket, done, first, status, due_at, action) in rows {
        let Some(bucket) = decline::bucket_from_str(&bucket) else {
            continue;
        };
        let key = (source_id, cycle_key);
        let cycle = cycles.entry(key.clone()).or_insert_with(|| {
            let (status, done, at, calls) = ended
                .get(&key)
                .cloned()
                .unwrap_or_else(|| (String::new(), 0, first, 0));
            Cycle {
                first_failed_at: first,
                decisions: Vec::new(),
                retries: u32::try_from(calls).unwrap_or(0),
                recovered: (status == "recovered").then(|| (at, u32::try_from(done).unwrap_or(0))),
            }
        });
        cycle.decisions.push(Recorded {
            decided_at,
            bucket,
            retries_done: u32::try_from(done).unwrap_or(0),
            status,
            due_at,
            final_action: action,
        });
    }
    Ok(cycles.into_values().collect())
}

/// Whether the candidate decides `recorded` the same from its inputs. With jitter, a
/// recorded time within `[d, 2d]` is the same, and so is a stop for age that a delay in
/// that range reaches.
fn reproduces(
    candidate: &RetryPolicy,
    plain: &RetryPolicy,
    first: DateTime<Utc>,
    d: &Recorded,
) -> bool {
    let decided = plain.decide(d.bucket, d.retries_done, first, d.decided_at);
    let same = |decision: &Decision| {
        let (status, due_at, action) = row_for(decision);
        status.as_str() == d.status && action == d.final_action.as_deref() && due_at == d.due_at
    };
    if same(&decided) {
        return true;
    }
    let Decision::RetryAt(low) = decided else {
        return false;
    };
    if !candidate.jittered() {
        return false;
    }
    let high = low + (low - d.decided_at);
    match d.due_at {
        Some(recorded) => d.status == "scheduled" && (low..=high).contains(&recorded),
        // Deciding from `low` adds the same delay again: the end of the jitter range.
        None => same(&plain.decide(d.bucket, d.retries_done, first, low)),
    }
}

/// One step of a replay.
enum Step {
    Retry(DateTime<Utc>),
    Stop(Option<&'static str>),
    Await,
}

impl Step {
    fn of(decision: Decision) -> Self {
        match decision {
            Decision::RetryAt(at) => Step::Retry(at),
            Decision::AwaitCustomer => Step::Await,
            Decision::Stop { action, .. } => Step::Stop(Some(action.as_str())),
        }
    }

    /// The step a recorded decision took.
    fn recorded(d: &Recorded) -> Self {
        match (d.status.as_str(), d.due_at) {
            ("scheduled", Some(at)) => Step::Retry(at),
            ("awaiting_customer", _) => Step::Await,
            _ => Step::Stop(
                d.final_action
                    .as_deref()
                    .and_then(FinalAction::parse)
                    .map(FinalAction::as_str),
            ),
        }
    }
}

/// The candidate's replay of one cycle: its retry times and how it ends.
struct Replayed {
    times: Vec<DateTime<Utc>>,
    final_action: Option<&'static str>,
}

/// Follows the record for as long as the candidate decides as recorded; from the first
/// decision it makes differently, its own (un-jittered) times, each retry ending as the
/// recorded retry of that number did.
fn replay(candidate: &RetryPolicy, plain: &RetryPolicy, cycle: &Cycle) -> Replayed {
    let first = cycle.first_failed_at;
    let decision_after = |n: u32| cycle.decisions.iter().find(|d| d.retries_done == n);
    let paid_outside = (cycle.recovered)
        .filter(|(_, after)| *after == 0)
        .map(|(at, _)| at);
    let recovered_by = cycle.recovered.map(|(_, after)| after).filter(|n| *n > 0);
    let mut bucket = cycle.decisions[0].bucket;
    let mut now = cycle.decisions[0].decided_at;
    let mut on_record = true;
    let mut times = Vec::new();
    let ended = |times, final_action| Replayed {
        times,
        final_action,
    };
    for n in 0..MAX_REPLAYED {
        let recorded = decision_after(n).filter(|d| on_record && d.decided_at == now);
        let step = match recorded {
            Some(d) if reproduces(candidate, plain, first, d) => Step::recorded(d),
            _ => {
                on_record = false;
                Step::of(plain.decide(bucket, n, first, now))
            }
        };
        let at = match step {
            Step::Retry(at) => at,
            Step::Stop(action) => return ended(times, action),
            Step::Await => return ended(times, Some(AWAITS)),
        };
        if paid_outside.is_some_and(|paid| at >= paid) {
            return ended(times, None);
        }
        times.push(at);
        if recovered_by == Some(n + 1) {
            return ended(times, None);
        }
        // Retry n + 1 ends as the recorded one did (or, past the record, as the last did).
        match decision_after(n + 1) {
            Some(d) => {
                bucket = d.bucket;
                now = if on_record { d.decided_at } else { at };
            }
            None => {
                on_record = false;
                now = at;
            }
        }
    }
    ended(times, None)
}

fn median(mut values: Vec<i64>) -> Option<i64> {
    values.sort_unstable();
    values.get(values.len().checked_sub(1)? / 2).copied()
}

/// One bucket's figures while they are gathered.
#[derive(Default)]
struct Gathered {
    report: BucketReport,
    /// Offsets from the first failure, in seconds: first and last retry, recorded and
    /// replayed.
    first_recorded: Vec<i64>,
    last_recorded: Vec<i64>,
    first_candidate: Vec<i64>,
    last_candidate: Vec<i64>,
    /// Per cycle: (retries made, retries the candidate makes).
    counts: Vec<(u32, u32)>,
}

impl Gathered {
    fn add(&mut self, cycle: &Cycle, replayed: &Replayed) {
        let b = &mut self.report;
        let made = u32::try_from(replayed.times.len()).unwrap_or(u32::MAX);
        b.failures += 1;
        b.retries_recorded += u64::from(cycle.retries);
        b.recovered_recorded += usize::from(cycle.recovered.is_some());
        b.retries_candidate += u64::from(made);
        b.retries_added += u64::from(made.saturating_sub(cycle.retries));
        b.retries_dropped += u64::from(cycle.retries.saturating_sub(made));
        if cycle.recovered.is_some_and(|(_, after)| after > made) {
            b.recoveries_lost_with_dropped += 1;
        }
        if let Some(action) = replayed.final_action {
            *b.final_actions_candidate
                .entry(action.to_owned())
                .or_default() += 1;
        }
        for n in 1..=cycle.retries {
            let index = n as usize - 1;
            if b.by_retry.len() <= index {
                b.by_retry.push(RetryOutcome {
                    retry: n,
                    ..Default::default()
                });
            }
            b.by_retry[index].retried += 1;
            if cycle.recovered.is_some_and(|(_, after)| after == n) {
                b.by_retry[index].recovered += 1;
            }
        }
        self.counts.push((cycle.retries, made));
        // The recorded retry times: what the recorded decisions scheduled.
        let offset = |at: DateTime<Utc>| (at - cycle.first_failed_at).num_seconds();
        let recorded: Vec<i64> = (cycle.decisions.iter())
            .filter_map(|d| d.due_at)
            .take(cycle.retries as usize)
            .map(offset)
            .collect();
        if let (Some(first), Some(last)) = (recorded.first(), recorded.last()) {
            self.first_recorded.push(*first);
            self.last_recorded.push(*last);
        }
        if let (Some(first), Some(last)) = (replayed.times.first(), replayed.times.last()) {
            self.first_candidate.push(offset(*first));
            self.last_candidate.push(offset(*last));
        }
    }

    fn finish(mut self) -> BucketReport {
        let b = &mut self.report;
        // The observed recovery rate at retry n; the last observed one stands for later n.
        let rate = |n: usize| {
            let last = b.by_retry.len();
            (last > 0)
                .then(|| &b.by_retry[n.min(last) - 1])
                .filter(|o| o.retried > 0)
                .map_or(0.0, |o| o.recovered as f64 / o.retried as f64)
        };
        let expected: f64 = (self.counts.iter())
            .flat_map(|&(done, made)| (done as usize + 1)..=(made as usize))
            .map(rate)
            .sum();
        // (`+ 0.0`: an empty sum is -0.0.)
        b.recoveries_expected_from_added = (expected * 100.0).round() / 100.0 + 0.0;
        b.first_retry_after_secs_recorded = median(self.first_recorded);
        b.last_retry_after_secs_recorded = median(self.last_recorded);
        b.first_retry_after_secs_candidate = median(self.first_candidate);
        b.last_retry_after_secs_candidate = median(self.last_candidate);
        self.report
    }
}

/// Replays `cycles` through `candidate`.
pub fn simulate(candidate: &RetryPolicy, cycles: &[Cycle]) -> Report {
    let plain = candidate.without_jitter();
    let mut report = Report {
        candidate: candidate.describe(),
        failures: cycles.len(),
        method: METHOD.to_vec(),
        ..Report::default()
    };
    let mut buckets: BTreeMap<&'static str, Gathered> = BTreeMap::new();
    for cycle in cycles {
        let Some(first) = cycle.decisions.first() else {
            continue;
        };
        for d in &cycle.decisions {
            report.decisions += 1;
            if reproduces(candidate, &plain, cycle.first_failed_at, d) {
                report.decisions_reproduced += 1;
            }
        }
        let gathered = buckets.entry(first.bucket.as_str()).or_default();
        gathered.report.bucket = first.bucket.as_str().to_owned();
        gathered.add(cycle, &replay(candidate, &plain, cycle));
    }
    report.buckets = buckets.into_values().map(Gathered::finish).collect();
    report
}

/// `93784` → `1d2h3m4s` (`-` for none).
fn span(secs: Option<i64>) -> String {
    let Some(secs) = secs else {
        return "-".into();
    };
    let delta = TimeDelta::seconds(secs);
    let (d, h, m) = (
        delta.num_days(),
        delta.num_hours() % 24,
        delta.num_minutes() % 60,
    );
    match (d, h, m) {
        (0, 0, m) => format!("{m}m"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h{m}m"),
        (d, 0, 0) => format!("{d}d"),
        (d, h, _) => format!("{d}d{h}h"),
    }
}

impl Report {
    /// The report for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let window = self.since.map_or("all time".to_owned(), |s| {
            format!(
                "since {}",
                s.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        });
        let source = self.source.as_deref().unwrap_or("every source");
        out.push_str(&format!("candidate: {}\n", self.candidate));
        out.push_str(&format!(
            "history: {} failures, {} recorded decisions ({window}, {source})\n",
            self.failures, self.decisions
        ));
        out.push_str(&format!(
            "recorded decisions the candidate makes the same: {} of {} (reproduced)\n\n",
            self.decisions_reproduced, self.decisions
        ));
        out.push_str(
            "bucket                 failures | retries made  recovered | retries (est.)  added  dropped | 1st retry after (rec→est.)  last retry after (rec→est.) | recoveries: +from added  -with dropped (est.) | final actions (est.)\n",
        );
        for b in &self.buckets {
            let actions: Vec<String> = b
                .final_actions_candidate
                .iter()
                .map(|(a, n)| format!("{a} {n}"))
                .collect();
            out.push_str(&format!(
                "{:<22} {:>8} | {:>12} {:>10} | {:>14} {:>6} {:>8} | {:>12} → {:<12} {:>13} → {:<13} | {:>+23.2} {:>14} | {}\n",
                b.bucket,
                b.failures,
                b.retries_recorded,
                b.recovered_recorded,
                b.retries_candidate,
                b.retries_added,
                b.retries_dropped,
                span(b.first_retry_after_secs_recorded),
                span(b.first_retry_after_secs_candidate),
                span(b.last_retry_after_secs_recorded),
                span(b.last_retry_after_secs_candidate),
                b.recoveries_expected_from_added,
                format!("-{}", b.recoveries_lost_with_dropped),
                if actions.is_empty() { "-".to_owned() } else { actions.join(", ") },
            ));
        }
        out.push_str(
            "\nobserved after comparable retries (bucket: retry n retried → recovered after it):\n",
        );
        for b in &self.buckets {
            let by: Vec<String> = b
                .by_retry
                .iter()
                .map(|o| {
                    let pct = 100.0 * o.recovered as f64 / o.retried.max(1) as f64;
                    format!("#{} {}→{} ({pct:.1}%)", o.retry, o.retried, o.recovered)
                })
                .collect();
            let by = if by.is_empty() {
                "no retries".to_owned()
            } else {
                by.join(", ")
            };
            out.push_str(&format!("  {}: {by}\n", b.bucket));
        }
        out.push_str("\nhow:\n");
        for line in &self.method {
            out.push_str(&format!("  - {line}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests;
