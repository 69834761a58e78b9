//! Histories recorded by running a policy over scripted outcomes, then replayed.

use super::*;
use crate::config::RetryPolicySettings;
use DeclineBucket::*;

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_790_000_000, 0).unwrap()
}

fn policy(edit: impl FnOnce(&mut RetryPolicySettings)) -> RetryPolicy {
    let mut s = RetryPolicySettings {
        jitter: false,
        ..Default::default()
    };
    edit(&mut s);
    RetryPolicy::new(&s)
}

/// How a scripted retry ends.
#[derive(Clone, Copy)]
enum Then {
    Declined(DeclineBucket),
    Charged,
}

/// Records what `policy` decides for a cycle failing first with `bucket` at `first`, its
/// retries ending as `script` says (declined with the last bucket past its end); each
/// retry is made at its due time, its failure decided at once.
fn record(
    policy: &RetryPolicy,
    first: DateTime<Utc>,
    bucket: DeclineBucket,
    script: &[Then],
) -> Cycle {
    let (mut decisions, mut now, mut bucket, mut recovered) = (Vec::new(), first, bucket, None);
    for n in 0.. {
        let decision = policy.decide(bucket, n, first, now);
        let (status, due_at, action) = row_for(&decision);
        decisions.push(Recorded {
            decided_at: now,
            bucket,
            retries_done: n,
            status: status.as_str().to_owned(),
            due_at,
            final_action: action.map(str::to_owned),
        });
        let Decision::RetryAt(at) = decision else {
            break;
        };
        match script
            .get(n as usize)
            .copied()
            .unwrap_or(Then::Declined(bucket))
        {
            Then::Charged => {
                recovered = Some((at, n + 1));
                break;
            }
            Then::Declined(next) => (now, bucket) = (at, next),
        }
    }
    let retries = decisions.iter().filter(|d| d.due_at.is_some()).count() as u32;
    Cycle {
        first_failed_at: first,
        decisions,
        retries,
        recovered,
    }
}

/// Twelve cycles over the buckets: some recovered at retry 1, 2 or 3, some never.
fn history(recorded_with: &RetryPolicy) -> Vec<Cycle> {
    use Then::*;
    let scripts: [(DeclineBucket, &[Then]); 6] = [
        (RetrySoon, &[Charged]),
        (RetrySoon, &[Declined(RetrySoon), Charged]),
        (
            RetrySoon,
            &[Declined(ProviderError), Declined(RetrySoon), Charged],
        ),
        (RetrySoon, &[]),
        (ProviderError, &[Declined(RetrySoon), Charged]),
        (Inventory, &[Declined(Inventory)]),
    ];
    (0..12)
        .map(|i| {
            let (bucket, script) = scripts[i % scripts.len()];
            let first = t0() + TimeDelta::hours(i as i64 * 7);
            record(recorded_with, first, bucket, script)
        })
        .chain([record(recorded_with, t0(), NeverRetry, &[])])
        .collect()
}

fn bucket<'a>(report: &'a Report, name: &str) -> &'a BucketReport {
    report.buckets.iter().find(|b| b.bucket == name).unwrap()
}

#[test]
fn the_recorded_policy_reproduces_every_decision_and_retry() {
    for recorded_with in [policy(|_| {}), policy(|s| s.jitter = true)] {
        let cycles = history(&recorded_with);
        let report = simulate(&recorded_with, &cycles);
        assert_eq!(report.decisions_reproduced, report.decisions);
        assert_eq!(report.failures, 13);
        for b in &report.buckets {
            assert_eq!((b.retries_added, b.retries_dropped), (0, 0), "{b:?}");
            assert_eq!(b.retries_candidate, b.retries_recorded, "{b:?}");
            assert_eq!(
                b.first_retry_after_secs_candidate,
                b.first_retry_after_secs_recorded
            );
            assert_eq!(
                b.last_retry_after_secs_candidate,
                b.last_retry_after_secs_recorded
            );
            assert_eq!(b.recoveries_lost_with_dropped, 0);
        }
        let never = bucket(&report, "never_retry");
        assert_eq!(never.final_actions_candidate["mark_unpaid"], 1);
    }
}

#[test]
fn fewer_tries_drop_retries_and_the_recoveries_they_made() {
    let recorded_with = policy(|_| {});
    let cycles = history(&recorded_with);
    let report = simulate(&policy(|s| s.max_attempts = 2), &cycles);
    assert!(report.decisions_reproduced < report.decisions);
    let soon = bucket(&report, "retry_soon");
    // Of the 8 retry_soon cycles, 2 were recovered by their third retry: lost.
    assert_eq!(soon.failures, 8);
    assert_eq!(soon.recoveries_lost_with_dropped, 2);
    assert!(soon.retries_dropped > 0);
    assert_eq!(soon.retries_added, 0);
    // Observed: every retry_soon cycle was retried once, 2 of 8 recovered after it.
    assert_eq!(
        soon.by_retry[0],
        RetryOutcome {
            retry: 1,
            retried: 8,
            recovered: 2
        }
    );
}

#[test]
fn more_tries_add_retries_with_the_observed_rate_as_their_expected_recoveries() {
    let recorded_with = policy(|s| s.max_attempts = 3);
    let cycles = history(&recorded_with);
    let report = simulate(&policy(|s| s.max_attempts = 5), &cycles);
    let soon = bucket(&report, "retry_soon");
    // The 2 never-recovered retry_soon cycles get retries 4 and 5; no retry 4 was ever
    // observed, so the last observed rate (retry 3: 2 of 4 recovered) stands for them.
    assert_eq!(soon.retries_added, 4);
    assert_eq!(soon.by_retry[2].retried, 4);
    assert_eq!(soon.by_retry[2].recovered, 2);
    assert_eq!(soon.recoveries_expected_from_added, 2.0);
    assert_eq!(soon.retries_dropped, 0);
}

#[test]
fn a_cycle_paid_without_a_retry_gets_none_after_its_payment() {
    let recorded_with = policy(|_| {});
    let mut cycle = record(&recorded_with, t0(), RetrySoon, &[]);
    // Paid two hours after the failure, before the first retry (due at +6 h) was made.
    cycle.retries = 0;
    cycle.recovered = Some((t0() + TimeDelta::hours(2), 0));
    cycle.decisions.truncate(1);
    let report = simulate(&policy(|s| s.base_secs = 3600), &[cycle.clone()]);
    assert_eq!(
        bucket(&report, "retry_soon").retries_candidate,
        1,
        "+1 h, before the payment"
    );
    let report = simulate(&recorded_with, &[cycle]);
    assert_eq!(bucket(&report, "retry_soon").retries_candidate, 0);
}

#[test]
fn jittered_times_outside_their_range_are_not_reproduced() {
    let recorded_with = policy(|s| s.jitter = true);
    let mut cycles = history(&recorded_with);
    let first = cycles[0].decisions[0].clone();
    let due = first.due_at.unwrap();
    // A time past twice the delay is no jitter of this policy.
    cycles[0].decisions[0].due_at = Some(due + TimeDelta::days(2));
    let report = simulate(&recorded_with, &cycles);
    assert_eq!(report.decisions_reproduced + 1, report.decisions);
}
