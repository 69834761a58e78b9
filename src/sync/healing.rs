//! The healing report of a run: what the missed webhooks were (the records that changed
//! the ledger), by kind and by age, and, with a wait, what the worker applied of them.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use crate::canonical::CanonicalEvent;
use crate::ledger::Change;

/// The outcomes a run found missed by the webhooks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Missed {
    /// `{entity}:{its status after the record}` → rows changed: `billing_attempt:failed`,
    /// `billing_attempt:succeeded`, `subscription:cancelled`, `refund:succeeded`,
    /// `payment_link:pending` (a refund held for its payment's link), ...
    pub by_kind: BTreeMap<String, u64>,
    /// How old the outcome was when the run found it (the record's own time: an attempt's
    /// `attempted_at`, a subscription's update time, a refund's time) → records:
    /// `under_1h`, `1h_to_1d`, `1d_to_7d`, `over_7d`, or `unknown` (no time given).
    pub by_age: BTreeMap<&'static str, u64>,
}

impl Missed {
    /// Notes one changing record; returns the kinds of its changes (for the metric).
    pub(super) fn note(
        &mut self,
        changes: &[Change],
        events: &[CanonicalEvent],
        now: DateTime<Utc>,
    ) -> Vec<String> {
        let kinds: Vec<String> = changes.iter().map(kind).collect();
        for kind in &kinds {
            *self.by_kind.entry(kind.clone()).or_default() += 1;
        }
        *self.by_age.entry(age(events, now)).or_default() += 1;
        kinds
    }
}

/// What the worker did with a run's queued records, when the run waited for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Waited {
    /// Records queued because they changed the ledger (malformed ones are dead-lettered
    /// instead, and not waited for).
    pub queued: u64,
    /// Of those, archived by the worker before the wait ended.
    pub archived: u64,
    /// Of those, applied (the rest found a newer state already: stale).
    pub applied: u64,
    /// The wait ended before every queued record was archived.
    pub timed_out: bool,
}

fn kind(change: &Change) -> String {
    let status = (change.after.as_ref())
        .and_then(|after| after.get("status")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "removed".to_owned());
    format!("{}:{status}", change.entity)
}

/// The age bucket of the latest time the record's events give.
fn age(events: &[CanonicalEvent], now: DateTime<Utc>) -> &'static str {
    let at = events
        .iter()
        .filter_map(|event| match event {
            CanonicalEvent::BillingAttempt(a) => a.attempted_at,
            CanonicalEvent::Subscription(c) => c.updated_at,
            CanonicalEvent::Refund(r) => r.refunded_at,
        })
        .max();
    let Some(at) = at else { return "unknown" };
    let age = now - at;
    if age < TimeDelta::hours(1) {
        "under_1h"
    } else if age < TimeDelta::days(1) {
        "1h_to_1d"
    } else if age < TimeDelta::days(7) {
        "1d_to_7d"
    } else {
        "over_7d"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::{AttemptStatus, BillingAttempt};

    fn attempt(at: Option<DateTime<Utc>>) -> CanonicalEvent {
        CanonicalEvent::BillingAttempt(BillingAttempt {
            attempt_id: "in_1:1".into(),
            subscription_id: None,
            cycle_id: None,
            status: AttemptStatus::Failed,
            provider_status: "invoice.payment_failed".into(),
            amount: None,
            error_code: None,
            error_message: None,
            attempted_at: at,
            next_attempt_at: None,
            attempt_count: None,
            idempotency_key: None,
        })
    }

    #[test]
    fn kinds_and_ages_are_counted() {
        let now = Utc::now();
        let change = |entity, after: Option<serde_json::Value>| Change {
            entity,
            id: "x".into(),
            before: None,
            after,
        };
        let mut missed = Missed::default();
        let failed = change(
            "billing_attempt",
            Some(serde_json::json!({"status": "failed"})),
        );
        let kinds = missed.note(
            &[failed],
            &[attempt(Some(now - TimeDelta::minutes(5)))],
            now,
        );
        assert_eq!(kinds, ["billing_attempt:failed"]);
        let gone = change("subscription", None);
        missed.note(&[gone], &[attempt(Some(now - TimeDelta::days(3)))], now);
        let old = change(
            "billing_attempt",
            Some(serde_json::json!({"status": "failed"})),
        );
        missed.note(&[old], &[attempt(None)], now);
        assert_eq!(
            missed.by_kind,
            BTreeMap::from([
                ("billing_attempt:failed".to_owned(), 2),
                ("subscription:removed".to_owned(), 1)
            ])
        );
        assert_eq!(
            missed.by_age,
            BTreeMap::from([("under_1h", 1), ("1d_to_7d", 1), ("unknown", 1)])
        );
        let at = |days| age(&[attempt(Some(now - TimeDelta::days(days)))], now);
        assert_eq!((at(0), at(1), at(8)), ("under_1h", "1d_to_7d", "over_7d"));
        assert_eq!(
            age(&[attempt(Some(now - TimeDelta::hours(2)))], now),
            "1h_to_1d"
        );
    }
}
