//! The decision log: every decision a retry policy makes after a failure, with what it
//! decided from and what it decided (`retry_decisions`). Written in the transaction of the
//! write it explains; read by `dunning simulate`, which replays it through a candidate
//! policy, and by a retry's timeline.

use chrono::{DateTime, Utc};

use super::decline::DeclineBucket;
use super::policy::{Decision, RetryPolicy};
use super::schedule::row_for;

/// One decision of the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub source_id: String,
    pub cycle_key: String,
    /// The time the policy decided from.
    pub decided_at: DateTime<Utc>,
    /// The decline code (or provider status, or `no outcome`) that chose the bucket.
    pub code: String,
    pub bucket: DeclineBucket,
    pub retries_done: i32,
    pub first_failed_at: DateTime<Utc>,
    pub status: &'static str,
    pub due_at: Option<DateTime<Utc>>,
    pub final_action: Option<&'static str>,
    pub rule: String,
    pub policy: String,
}

/// What a policy decides for a failure, as logged.
pub struct Failure<'a> {
    pub source_id: &'a str,
    pub cycle_key: &'a str,
    pub code: &'a str,
    pub bucket: DeclineBucket,
    pub retries_done: u32,
    pub first_failed_at: DateTime<Utc>,
    pub now: DateTime<Utc>,
}

impl Failure<'_> {
    /// The policy's decision and its log entry.
    pub fn decide(&self, policy: &RetryPolicy) -> (Decision, Decided) {
        let decision = policy.decide(
            self.bucket,
            self.retries_done,
            self.first_failed_at,
            self.now,
        );
        let (status, due_at, final_action) = row_for(&decision);
        let logged = Decided {
            source_id: self.source_id.to_owned(),
            cycle_key: self.cycle_key.to_owned(),
            decided_at: self.now,
            code: self.code.to_owned(),
            bucket: self.bucket,
            retries_done: i32::try_from(self.retries_done).unwrap_or(i32::MAX),
            first_failed_at: self.first_failed_at,
            status: status.as_str(),
            due_at,
            final_action,
            rule: policy.rule(self.bucket, self.retries_done),
            policy: policy.describe(),
        };
        (decision, logged)
    }
}

/// Appends `decided` in one statement.
pub async fn log(tx: &mut sqlx::PgConnection, decided: &[Decided]) -> Result<(), sqlx::Error> {
    if decided.is_empty() {
        return Ok(());
    }
    fn column<'a, T>(rows: &'a [Decided], f: impl Fn(&'a Decided) -> T) -> Vec<T> {
        rows.iter().map(f).collect()
    }
    sqlx::query(
        "INSERT INTO retry_decisions (source_id, cycle_key, decided_at, code, bucket, retries_done,
                                      first_failed_at, status, due_at, final_action, rule, policy)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[],
                              $6::int4[], $7::timestamptz[], $8::text[], $9::timestamptz[],
                              $10::text[], $11::text[], $12::text[])",
    )
    .persistent(false)
    .bind(column(decided, |d| d.source_id.as_str()))
    .bind(column(decided, |d| d.cycle_key.as_str()))
    .bind(column(decided, |d| d.decided_at))
    .bind(column(decided, |d| d.code.as_str()))
    .bind(column(decided, |d| d.bucket.as_str()))
    .bind(column(decided, |d| d.retries_done))
    .bind(column(decided, |d| d.first_failed_at))
    .bind(column(decided, |d| d.status))
    .bind(column(decided, |d| d.due_at))
    .bind(column(decided, |d| d.final_action))
    .bind(column(decided, |d| d.rule.as_str()))
    .bind(column(decided, |d| d.policy.as_str()))
    .execute(&mut *tx)
    .await?;
    Ok(())
}
