//! What one retry call's result does to its row, as a pure function the scheduler applies.
//!
//! Two kinds of results. A provider's answer about the payment (charged, declined,
//! accepted, in progress, needs the customer, not eligible) is a normal outcome: the policy
//! or the answer decides, and the count of consecutive failures goes back to 0. A call
//! that produced no usable answer (transport error, timeout, 5xx, rate limit, a request we
//! could not build, a rejected request, no client, a panicking client) is a failure of
//! subsync's own: it counts, and after `park_after` in a row the retry is `parked` with the
//! error text instead of looping forever (an operator resumes it).
//!
//! Every time computed here is checked: a provider's `Retry-After` (or Shopify throttle)
//! is clamped to [`Waits::max_rate_limit`], and a time past chrono's range saturates, so no
//! value from a provider can panic the scheduler.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::decisions::{Decided, Failure};
use super::decline::{self, DeclineBucket};
use super::policy::RetryPolicy;
use super::schedule::{explain, row_for};
use super::status::RetryStatus;
use crate::providers::contract::CallOutcome;
use crate::providers::http::ProviderApiError;

/// How long failures make a retry wait (`dunning.failure_wait_secs`,
/// `dunning.max_rate_limit_wait_secs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waits {
    /// After a failure that names no time of its own (5xx, timeout, panic, ...).
    pub failure: Duration,
    /// Longest wait a provider's rate limit imposes on one retry; a longer one is clamped
    /// (and the error text says so), so a confused provider cannot freeze a retry.
    pub max_rate_limit: Duration,
}

impl Default for Waits {
    fn default() -> Self {
        Self {
            failure: Duration::from_secs(300),
            max_rate_limit: Duration::from_secs(3600),
        }
    }
}

/// Wait after a rate limit without `Retry-After` (capped by `Waits::max_rate_limit`).
const RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// Longest error text kept (a provider's body snippet or a panic message).
const MAX_ERROR_CHARS: usize = 300;

/// What a call produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Called {
    /// The provider answered about the payment.
    Answer(CallOutcome),
    /// No usable answer.
    Error(ProviderApiError),
    /// The source has no retry client (its `api` is not configured): nothing was sent.
    NoClient,
    /// The client panicked; the payload's message.
    Panicked(String),
}

/// The retry as the scheduler claimed it.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub source_id: &'a str,
    pub cycle_key: &'a str,
    pub policy: Option<&'a RetryPolicy>,
    /// The number of this call (retries done before it plus one).
    pub retry_number: i32,
    pub first_failed_at: DateTime<Utc>,
    /// Consecutive failures before this call.
    pub prior_failures: i32,
    /// Consecutive failures that park the retry (at least 1).
    pub park_after: u32,
    pub waits: Waits,
    pub now: DateTime<Utc>,
}

/// The row after the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub status: RetryStatus,
    pub due_at: Option<DateTime<Utc>>,
    /// The deadline of a wait for the customer (from the policy).
    pub expires_at: Option<DateTime<Utc>>,
    pub retries_done: i32,
    pub final_action: Option<&'static str>,
    pub bucket: Option<&'static str>,
    /// Consecutive failures after this call (0 after an answer).
    pub consecutive_failures: i32,
    /// This call's failure (never a secret), when it got no usable answer.
    pub error: Option<String>,
    /// What operators read as the last outcome.
    pub outcome: String,
    /// The policy's decision, for the decision log (when the policy decided).
    pub decided: Option<Decided>,
}

/// `now + wait`, saturating at the end of time instead of panicking.
pub fn after(now: DateTime<Utc>, wait: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(wait)
        .ok()
        .and_then(|wait| now.checked_add_signed(wait))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The row a call's result leads to.
pub fn update_for(called: &Called, cx: &Context<'_>) -> Update {
    let mut update = decided(called, cx);
    update.expires_at = cx.policy.and_then(|p| p.deadline(update.status, cx.now));
    update
}

fn decided(called: &Called, cx: &Context<'_>) -> Update {
    let n = cx.retry_number;
    // The row the policy decides, with why (the timeline's reason).
    let decide = |bucket: DeclineBucket, code: &str| {
        let done = u32::try_from(n).unwrap_or(0);
        let Some(policy) = cx.policy else {
            let why = format!("{code}: no retry policy for this source any more");
            return (RetryStatus::Exhausted, None, None, why, None);
        };
        let failure = Failure {
            source_id: cx.source_id,
            cycle_key: cx.cycle_key,
            code,
            bucket,
            retries_done: done,
            first_failed_at: cx.first_failed_at,
            now: cx.now,
        };
        let (decision, logged) = failure.decide(policy);
        let (status, due_at, action) = row_for(&decision);
        let why = explain(policy, code, bucket, done, &decision);
        (status, due_at, action, why, Some(logged))
    };
    let answer = |status, due_at, final_action, bucket, outcome: String| Update {
        status,
        due_at,
        expires_at: None,
        retries_done: n,
        final_action,
        bucket,
        consecutive_failures: 0,
        error: None,
        outcome,
        decided: None,
    };
    let failure = match called {
        Called::Answer(o @ CallOutcome::Charged) => {
            return answer(RetryStatus::Recovered, None, None, None, format!("{o:?}"));
        }
        Called::Answer(o @ (CallOutcome::Accepted | CallOutcome::InProgress)) => {
            return answer(RetryStatus::InFlight, None, None, None, format!("{o:?}"));
        }
        Called::Answer(o @ CallOutcome::RequiresAction) => {
            let status = RetryStatus::AwaitingCustomer;
            return answer(status, None, None, None, format!("{o:?}"));
        }
        Called::Answer(o @ CallOutcome::NotEligible(_)) => {
            return answer(RetryStatus::Completed, None, None, None, format!("{o:?}"));
        }
        Called::Answer(o @ CallOutcome::Declined { code, .. }) => {
            let bucket = decline::classify(code.as_deref(), "declined");
            let code = code.as_deref().unwrap_or("declined");
            let (status, due_at, action, why, decided) = decide(bucket, code);
            let outcome = format!("{o:?}: {why}");
            let update = answer(status, due_at, action, Some(bucket.as_str()), outcome);
            return Update { decided, ..update };
        }
        // The provider refused the request itself (not the payment): the policy's
        // provider-error path, the retry number spent, and a failure all the same.
        Called::Error(e @ ProviderApiError::Rejected { .. }) => {
            let (status, due_at, action, _, decided) =
                decide(DeclineBucket::ProviderError, "rejected");
            let update = failed(cx, (status, due_at, n, action), e.to_string());
            Update { decided, ..update }
        }
        // Not an answer: the same retry number (and key) again later.
        Called::Error(ProviderApiError::RateLimited { retry_after }) => {
            let (wait, text) = rate_limit_wait(*retry_after, cx.waits.max_rate_limit);
            let due_at = Some(after(cx.now, wait));
            failed(cx, (RetryStatus::Scheduled, due_at, n - 1, None), text)
        }
        Called::Error(e) => again_later(cx, e.to_string()),
        Called::NoClient => again_later(cx, "no retry client for this source".to_owned()),
        Called::Panicked(message) => {
            again_later(cx, format!("the provider client panicked: {message}"))
        }
    };
    park_if_due(cx, failure)
}

/// The same retry number (and key: the request may have reached the provider) after
/// the failure wait.
fn again_later(cx: &Context<'_>, text: String) -> Update {
    let due_at = Some(after(cx.now, cx.waits.failure));
    failed(
        cx,
        (RetryStatus::Scheduled, due_at, cx.retry_number - 1, None),
        text,
    )
}

type Row = (
    RetryStatus,
    Option<DateTime<Utc>>,
    i32,
    Option<&'static str>,
);

fn failed(
    cx: &Context<'_>,
    (status, due_at, retries_done, final_action): Row,
    text: String,
) -> Update {
    let error = truncate(&text);
    Update {
        status,
        due_at,
        expires_at: None,
        retries_done,
        final_action,
        bucket: None,
        consecutive_failures: cx.prior_failures.max(0).saturating_add(1),
        outcome: error.clone(),
        error: Some(error),
        decided: None,
    }
}

/// Parks the retry once its failures in a row reach `park_after`, whatever the policy
/// said: a final action (cancel, pause) must not follow from subsync's own failures.
fn park_if_due(cx: &Context<'_>, mut update: Update) -> Update {
    let count = update.consecutive_failures;
    if i64::from(count) < i64::from(cx.park_after.max(1)) {
        return update;
    }
    update.status = RetryStatus::Parked;
    update.due_at = None;
    update.final_action = None;
    let error = update.error.as_deref().unwrap_or_default();
    update.outcome = format!("parked after {count} consecutive failures: {error}");
    update
}

/// How long a rate limit makes the retry wait, with the failure's text.
fn rate_limit_wait(retry_after: Option<Duration>, max: Duration) -> (Duration, String) {
    let Some(asked) = retry_after else {
        let wait = RATE_LIMIT_WAIT.min(max);
        return (wait, "rate limited (no Retry-After)".to_owned());
    };
    if asked > max {
        let text = format!(
            "rate limited: Retry-After {} s clamped to {} s",
            asked.as_secs(),
            max.as_secs()
        );
        return (max, text);
    }
    let text = format!("rate limited: Retry-After {} s", asked.as_secs());
    (asked, text)
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests;
