//! The retry policy, as data: when (and whether) to retry a failed billing cycle, from its
//! decline bucket, the retries already made and the time of the first failure.
//!
//! Backoff delays come from `backon`'s [`ExponentialBuilder`]: retry n (0-based) waits
//! `d(n) = min(base * factor^n, cap)` after `now` (a base above the cap is clamped to it).
//! With jitter, backon 1.6 adds `d(n) * r` with `r` from `fastrand`'s `f32()` in `[0, 1)`,
//! computed in f32: the jittered delay lies in `[d(n), 2 * d(n)]` (the upper end is reachable
//! only through f32 rounding; for delays above 2^24 s, about 194 days, rounding may exceed it
//! by a relative 2^-24). Jitter is added after the cap, so a capped delay may reach `2 * cap`.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, TimeDelta, Utc};

use super::decline::DeclineBucket;
use super::status::RetryStatus;
use crate::config::{FinalAction, RetryPolicySettings};

/// What the policy decides for a failed cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Retry at this time.
    RetryAt(DateTime<Utc>),
    /// Wait for the customer (new payment method, completed challenge) before retrying.
    AwaitCustomer,
    /// Give up: never retry (hard decline) or exhausted (attempts or age).
    Stop {
        action: FinalAction,
        reason: &'static str,
    },
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    settings: RetryPolicySettings,
}

/// Most backoff steps walked to reach element n. The un-jittered sequence is a fixed
/// function of its previous element, so once two elements are equal (the cap is reached)
/// it stays there; realistic factors get there long before this. Past it, element
/// `MAX_STEPS` stands in for element n (it bounds the work for absurd settings).
const MAX_STEPS: usize = 16_384;

impl RetryPolicy {
    pub fn new(settings: &RetryPolicySettings) -> Self {
        Self {
            settings: settings.clone(),
        }
    }

    /// `retries_done`: retries already made for this cycle (0 right after the first
    /// failure); `now`: when the latest failure was recorded.
    ///
    /// - `never_retry`: stop at once (`never_retry`); `needs_customer_action`: await customer.
    /// - `retry_soon` / `provider_error`: the backoff (`provider_error` with its own base and
    ///   cap) from `now`; or, when `schedule_secs` is set, `first_failed_at + schedule[n]`
    ///   (at least `now`), exhausted past the schedule's end.
    /// - `inventory`: the backoff from `inventory_base_secs`, limited by
    ///   `inventory_max_attempts` instead of `max_attempts`; never the schedule.
    /// - Stops with `max_attempts` when `retries_done` reaches the limit, with `max_age` when
    ///   the retry would fall after `first_failed_at + max_age_secs` (or is unrepresentable).
    pub fn decide(
        &self,
        bucket: DeclineBucket,
        retries_done: u32,
        first_failed_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Decision {
        let s = &self.settings;
        let stop = |reason| Decision::Stop {
            action: s.final_action,
            reason,
        };
        let (base, cap, limit) = match bucket {
            DeclineBucket::NeverRetry => return stop("never_retry"),
            DeclineBucket::NeedsCustomerAction => return Decision::AwaitCustomer,
            DeclineBucket::RetrySoon => (s.base_secs, s.cap_secs, s.max_attempts),
            DeclineBucket::ProviderError => (
                s.provider_error_base_secs,
                s.provider_error_cap_secs,
                s.max_attempts,
            ),
            DeclineBucket::Inventory => {
                (s.inventory_base_secs, s.cap_secs, s.inventory_max_attempts)
            }
        };
        if retries_done >= limit {
            return stop("max_attempts");
        }
        let at = match (&s.schedule_secs, bucket) {
            (Some(schedule), DeclineBucket::RetrySoon | DeclineBucket::ProviderError) => {
                let slot = usize::try_from(retries_done)
                    .ok()
                    .and_then(|n| schedule.get(n));
                let Some(&offset) = slot else {
                    return stop("max_attempts");
                };
                add_secs(first_failed_at, offset).map(|at| at.max(now))
            }
            _ => {
                let delay = backoff_delay(base, s.factor, cap, s.jitter, retries_done);
                TimeDelta::from_std(delay)
                    .ok()
                    .and_then(|delay| now.checked_add_signed(delay))
            }
        };
        // An unrepresentable deadline is no deadline; an unrepresentable retry is too late.
        let deadline = add_secs(first_failed_at, s.max_age_secs);
        match at {
            Some(at) if deadline.is_none_or(|end| at <= end) => Decision::RetryAt(at),
            _ => stop("max_age"),
        }
    }

    /// When a wait that began at `since` ends: the customer's (`awaiting_customer`, from
    /// the decline that asked for them) or the provider's own retries' (`provider_managed`,
    /// from the first failure). `None` for other statuses, or past the end of time.
    pub fn deadline(&self, status: RetryStatus, since: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let s = &self.settings;
        match status {
            RetryStatus::AwaitingCustomer => add_secs(since, s.awaiting_customer_secs),
            RetryStatus::ProviderManaged => add_secs(since, s.provider_managed_secs),
            _ => None,
        }
    }

    /// What follows a wait whose deadline passed: the final action, with the reason.
    pub fn expire(&self, status: RetryStatus) -> Decision {
        let reason = match status {
            RetryStatus::AwaitingCustomer => "awaiting_customer_deadline",
            _ => "provider_managed_deadline",
        };
        Decision::Stop {
            action: self.settings.final_action,
            reason,
        }
    }

    /// The same policy without jitter: the lower bound of each jittered retry time.
    pub fn without_jitter(&self) -> Self {
        let mut settings = self.settings.clone();
        settings.jitter = false;
        Self { settings }
    }

    pub fn jittered(&self) -> bool {
        self.settings.jitter
    }

    /// Whether `cancel` waits for the end of the period.
    pub fn cancel_at_period_end(&self) -> bool {
        self.settings.cancel_at_period_end
    }

    /// The rule [`Self::decide`] applies to retry `retries_done + 1` of `bucket`, for the
    /// retry's timeline: `backoff 3 of 8: 6h x2^2 cap 4d, jittered, within 14d`,
    /// `schedule slot 2 of 4: +7d after the first failure`, `never_retry: stop`, ...
    pub fn rule(&self, bucket: DeclineBucket, retries_done: u32) -> String {
        let s = &self.settings;
        let n = retries_done + 1;
        let jitter = if s.jitter { ", jittered" } else { "" };
        let age = compact(s.max_age_secs);
        let backoff = |name: &str, base, cap, limit: u32| {
            format!(
                "{name} {n} of {limit}: {} x{}^{retries_done} cap {}{jitter}, within {age}",
                compact(base),
                s.factor,
                compact(cap),
            )
        };
        match (bucket, &s.schedule_secs) {
            (DeclineBucket::NeverRetry, _) => "never_retry: stop at once".to_owned(),
            (DeclineBucket::NeedsCustomerAction, _) => format!(
                "needs_customer_action: wait up to {} for the customer",
                compact(s.awaiting_customer_secs)
            ),
            (DeclineBucket::RetrySoon | DeclineBucket::ProviderError, Some(schedule)) => {
                match schedule.get(retries_done as usize) {
                    Some(&offset) => format!(
                        "schedule slot {n} of {}: +{} after the first failure, within {age}",
                        schedule.len(),
                        compact(offset)
                    ),
                    None => format!("schedule of {} slots spent", schedule.len()),
                }
            }
            (DeclineBucket::RetrySoon, None) => {
                backoff("backoff", s.base_secs, s.cap_secs, s.max_attempts)
            }
            (DeclineBucket::ProviderError, None) => backoff(
                "provider_error backoff",
                s.provider_error_base_secs,
                s.provider_error_cap_secs,
                s.max_attempts,
            ),
            (DeclineBucket::Inventory, _) => backoff(
                "inventory backoff",
                s.inventory_base_secs,
                s.cap_secs,
                s.inventory_max_attempts,
            ),
        }
    }

    /// One line for operators, e.g. `exponential 6h x2 cap 4d with jitter, 8 tries within
    /// 14d, then mark_unpaid` or `schedule +2d +7d +14d +21d, then cancel` (a schedule cut
    /// short by `max_attempts` or `max_age_secs` says so).
    pub fn describe(&self) -> String {
        let s = &self.settings;
        let then = s.final_action.as_str();
        let Some(schedule) = &s.schedule_secs else {
            let jitter = if s.jitter { " with jitter" } else { "" };
            return format!(
                "exponential {} x{} cap {}{jitter}, {} tries within {}, then {then}",
                compact(s.base_secs),
                s.factor,
                compact(s.cap_secs),
                s.max_attempts,
                compact(s.max_age_secs),
            );
        };
        let mut line = String::from("schedule");
        if schedule.is_empty() {
            line.push_str(" (empty)");
        }
        for &offset in schedule {
            line.push_str(&format!(" +{}", compact(offset)));
        }
        let cut = schedule.len() as u64 > u64::from(s.max_attempts)
            || schedule.iter().any(|&offset| offset > s.max_age_secs);
        if cut {
            let age = compact(s.max_age_secs);
            line.push_str(&format!(", at most {} tries within {age}", s.max_attempts));
        }
        format!("{line}, then {then}")
    }
}

/// Delay n of backon's exponential backoff (`min(base * factor^n, cap)`, jittered when
/// asked); saturates instead of overflowing.
fn backoff_delay(base_secs: u64, factor: f32, cap_secs: u64, jitter: bool, n: u32) -> Duration {
    let cap = Duration::from_secs(cap_secs);
    let builder = ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(base_secs).min(cap))
        .with_factor(factor)
        .with_max_delay(cap)
        .without_max_times();
    let n = usize::try_from(n).unwrap_or(usize::MAX).min(MAX_STEPS);
    let mut plain = builder.build();
    let mut current = plain.next();
    let mut k = 0;
    while k < n {
        let next = plain.next();
        if next == current {
            break; // a fixed point: every later element is the same
        }
        current = next;
        k += 1;
    }
    if !jitter {
        return current.unwrap_or(cap);
    }
    // Jitter does not feed back into the sequence, so element k stands for element n.
    builder.with_jitter().build().nth(k).unwrap_or(cap)
}

fn add_secs(at: DateTime<Utc>, secs: u64) -> Option<DateTime<Utc>> {
    let delta = TimeDelta::try_seconds(i64::try_from(secs).ok()?)?;
    at.checked_add_signed(delta)
}

/// `90061` → `1d1h1m1s`, `21600` → `6h`, `0` → `0s`.
fn compact(secs: u64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let mut rest = secs;
    for (unit, suffix) in [(86_400, 'd'), (3_600, 'h'), (60, 'm'), (1, 's')] {
        if rest >= unit {
            out.push_str(&format!("{}{suffix}", rest / unit));
            rest %= unit;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::{AwaitCustomer, RetryAt};
    use DeclineBucket::*;
    use FinalAction::*;
    use proptest::prelude::*;

    const DAY: u64 = 86_400;
    const MAX_ATT: &str = "max_attempts";

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    fn days(n: i64) -> TimeDelta {
        TimeDelta::days(n)
    }

    /// Defaults without jitter, changed by `edit`.
    fn policy(edit: impl FnOnce(&mut RetryPolicySettings)) -> RetryPolicy {
        let mut s = RetryPolicySettings {
            jitter: false,
            ..Default::default()
        };
        edit(&mut s);
        RetryPolicy::new(&s)
    }

    fn polar(max_age_days: u64) -> RetryPolicy {
        policy(|s| {
            s.schedule_secs = Some(vec![2 * DAY, 7 * DAY, 14 * DAY, 21 * DAY]);
            s.max_age_secs = max_age_days * DAY;
            s.final_action = Cancel;
        })
    }

    fn stop(action: FinalAction, reason: &'static str) -> Decision {
        Decision::Stop { action, reason }
    }

    /// Delay of retry n when the first failure is `now` (`t0`).
    fn delay(p: &RetryPolicy, bucket: DeclineBucket, n: u32) -> TimeDelta {
        match p.decide(bucket, n, t0(), t0()) {
            RetryAt(at) => at - t0(),
            other => panic!("{bucket:?} n={n}: {other:?}"),
        }
    }

    #[test]
    fn backoff_without_jitter_for_each_bucket() {
        let p = policy(|_| {});
        let (h, m) = (TimeDelta::hours, TimeDelta::minutes);
        let seq = |b, len| (0..len).map(|n| delay(&p, b, n)).collect::<Vec<_>>();
        let cap = h(96);
        assert_eq!(
            seq(RetrySoon, 8),
            [h(6), h(12), h(24), h(48), cap, cap, cap, cap]
        );
        let provider = [m(15), m(30), h(1), h(2), h(4), h(6), h(6), h(6)];
        assert_eq!(seq(ProviderError, 8), provider);
        assert_eq!(seq(Inventory, 3), [h(24), h(48), h(96)]);
        // The backoff counts from `now`, not from the first failure.
        let first = t0() - h(30);
        assert_eq!(p.decide(RetrySoon, 1, first, t0()), RetryAt(t0() + h(12)));
        // A base above the cap is clamped to it.
        let p = policy(|s| s.base_secs = 10 * DAY);
        assert_eq!(delay(&p, RetrySoon, 0), h(96));
    }

    #[test]
    fn jitter_stays_within_d_and_2d_and_varies() {
        let p = RetryPolicy::new(&RetryPolicySettings::default());
        for (bucket, n, secs) in [
            (RetrySoon, 0, 6 * 3600),
            (RetrySoon, 2, 24 * 3600),
            (RetrySoon, 7, 4 * DAY),
            (ProviderError, 0, 15 * 60),
            (ProviderError, 6, 6 * 3600),
            (Inventory, 1, 2 * DAY),
        ] {
            let d = TimeDelta::seconds(secs as i64);
            let samples: Vec<_> = (0..200).map(|_| delay(&p, bucket, n)).collect();
            for s in &samples {
                assert!(d <= *s && *s <= d * 2, "{bucket:?} n={n}: {s} vs {d}");
            }
            let distinct: std::collections::HashSet<_> = samples.iter().collect();
            assert!(distinct.len() > 100, "{bucket:?} n={n}: {distinct:?}");
            assert!(samples.iter().any(|s| *s > d * 3 / 2), "upper half unused");
        }
    }

    #[test]
    fn exhaustion_by_attempts_and_age_and_immediate_outcomes() {
        let p = policy(|_| {});
        let now = t0();
        let at = |b, n, first| p.decide(b, n, first, now);
        assert!(matches!(at(RetrySoon, 7, now), RetryAt(_)));
        assert_eq!(at(RetrySoon, 8, now), stop(MarkUnpaid, MAX_ATT));
        assert_eq!(at(ProviderError, 8, now), stop(MarkUnpaid, MAX_ATT));
        // Max age is inclusive: a retry exactly at first + 14d is still made.
        let first = now - days(14) + TimeDelta::hours(6);
        assert_eq!(at(RetrySoon, 0, first), RetryAt(now + TimeDelta::hours(6)));
        let first = first - TimeDelta::seconds(1);
        assert_eq!(at(RetrySoon, 0, first), stop(MarkUnpaid, "max_age"));
        let long_ago = now - days(30);
        assert_eq!(at(Inventory, 0, long_ago), stop(MarkUnpaid, "max_age"));
        // Inventory has its own limit, in both directions.
        assert_eq!(at(Inventory, 3, now), stop(MarkUnpaid, MAX_ATT));
        let roomy = policy(|s| s.inventory_max_attempts = 12);
        assert!(matches!(roomy.decide(Inventory, 9, now, now), RetryAt(_)));
        assert_eq!(at(NeverRetry, 0, now), stop(MarkUnpaid, "never_retry"));
        assert_eq!(at(NeedsCustomerAction, 0, now), AwaitCustomer);
        assert_eq!(at(NeedsCustomerAction, 50, long_ago), AwaitCustomer);
    }

    #[test]
    fn explicit_schedule_counts_from_first_failure() {
        let p = polar(30);
        let first = t0();
        let offsets = [2, 7, 14, 21].map(days);
        for (n, offset) in offsets.into_iter().enumerate() {
            // `now` is a minute after the previous slot (the first failure for n = 0).
            let prev = if n == 0 {
                TimeDelta::zero()
            } else {
                offsets[n - 1]
            };
            let now = first + prev + TimeDelta::minutes(1);
            for bucket in [RetrySoon, ProviderError] {
                let d = p.decide(bucket, n as u32, first, now);
                assert_eq!(d, RetryAt(first + offset), "{bucket:?} n={n}");
            }
        }
        let at = |p: &RetryPolicy, n, now| p.decide(RetrySoon, n, first, now);
        assert_eq!(at(&p, 4, first + days(21)), stop(Cancel, MAX_ATT));
        // A slot already past retries now.
        let late = first + days(8);
        assert_eq!(at(&p, 1, late), RetryAt(late));
        // Inventory keeps its own backoff.
        assert_eq!(delay(&p, Inventory, 0), days(1));
        // Max age and max attempts still cut the schedule.
        assert_eq!(at(&polar(14), 2, first), RetryAt(first + days(14)));
        assert_eq!(at(&polar(14), 3, first), stop(Cancel, "max_age"));
        let mut s = polar(30).settings;
        s.max_attempts = 2;
        assert_eq!(at(&RetryPolicy::new(&s), 2, first), stop(Cancel, MAX_ATT));
    }

    #[test]
    fn final_action_is_carried_into_stop() {
        for action in [Cancel, Pause, Leave] {
            let p = policy(|s| s.final_action = action);
            let at = |b, n, first| p.decide(b, n, first, t0());
            assert_eq!(at(NeverRetry, 0, t0()), stop(action, "never_retry"));
            assert_eq!(at(RetrySoon, 8, t0()), stop(action, MAX_ATT));
            assert_eq!(at(RetrySoon, 0, t0() - days(20)), stop(action, "max_age"));
        }
    }

    #[test]
    fn describe_backoff_and_schedule() {
        let default = RetryPolicy::new(&RetryPolicySettings::default()).describe();
        let expected = "exponential 6h x2 cap 4d with jitter, 8 tries within 14d, then mark_unpaid";
        assert_eq!(default, expected);
        let odd = policy(|s| (s.base_secs, s.factor, s.cap_secs) = (90_061, 1.5, 10));
        let expected = "exponential 1d1h1m1s x1.5 cap 10s, 8 tries within 14d, then mark_unpaid";
        assert_eq!(odd.describe(), expected);
        assert_eq!(
            polar(30).describe(),
            "schedule +2d +7d +14d +21d, then cancel"
        );
        let expected = "schedule +2d +7d +14d +21d, at most 8 tries within 14d, then cancel";
        assert_eq!(polar(14).describe(), expected);
        assert_eq!((compact(0), compact(3_660)), ("0s".into(), "1h1m".into()));
    }

    #[test]
    fn huge_values_saturate_instead_of_panicking() {
        let p = policy(|s| {
            (s.base_secs, s.factor, s.cap_secs) = (u64::MAX, f32::MAX, u64::MAX);
            (s.max_attempts, s.max_age_secs, s.jitter) = (u32::MAX, u64::MAX, true);
        });
        let d = p.decide(RetrySoon, u32::MAX - 1, t0(), t0());
        assert_eq!(d, stop(MarkUnpaid, "max_age"));
        let end = DateTime::<Utc>::MAX_UTC;
        let d = policy(|_| {}).decide(RetrySoon, 0, end, end);
        assert_eq!(d, stop(MarkUnpaid, "max_age"));
        // An unrepresentable deadline bounds nothing.
        let p = policy(|s| s.max_age_secs = u64::MAX);
        assert_eq!(delay(&p, RetrySoon, 1), TimeDelta::hours(12));
    }

    fn secs() -> impl Strategy<Value = u64> {
        prop_oneof![any::<u64>(), 0..60 * DAY]
    }

    fn count() -> impl Strategy<Value = u32> {
        prop_oneof![any::<u32>(), 0..20u32]
    }

    fn time() -> impl Strategy<Value = DateTime<Utc>> {
        prop_oneof![
            8 => (-100_000_000_000i64..100_000_000_000)
                .prop_map(|s| DateTime::from_timestamp(s, 0).unwrap()),
            1 => Just(DateTime::<Utc>::MAX_UTC),
            1 => Just(DateTime::<Utc>::MIN_UTC),
        ]
    }

    fn settings() -> impl Strategy<Value = RetryPolicySettings> {
        let factor = prop_oneof![prop::num::f32::ANY, 0.0f32..8.0];
        let schedule = prop::option::of(prop::collection::vec(secs(), 0..6));
        let action = prop_oneof![Just(MarkUnpaid), Just(Pause), Just(Cancel), Just(Leave)];
        let backoff = (secs(), factor, secs(), any::<bool>(), count(), secs());
        let others = (schedule, action, secs(), secs(), secs(), count());
        (backoff, others).prop_map(|(b, o)| RetryPolicySettings {
            base_secs: b.0,
            factor: b.1,
            cap_secs: b.2,
            jitter: b.3,
            max_attempts: b.4,
            max_age_secs: b.5,
            schedule_secs: o.0,
            final_action: o.1,
            provider_error_base_secs: o.2,
            provider_error_cap_secs: o.3,
            inventory_base_secs: o.4,
            inventory_max_attempts: o.5,
            ..Default::default()
        })
    }

    proptest! {
        #[test]
        fn never_panics_and_never_retries_in_the_past(
            s in settings(), bucket in 0..5usize, n in count(), first in time(), now in time(),
        ) {
            let bucket = [RetrySoon, NeedsCustomerAction, NeverRetry, ProviderError, Inventory][bucket];
            let p = RetryPolicy::new(&s);
            prop_assert!(!p.describe().is_empty());
            match p.decide(bucket, n, first, now) {
                RetryAt(at) => {
                    prop_assert!(at >= now, "{at} before {now}");
                    if let Some(end) = add_secs(first, s.max_age_secs) {
                        prop_assert!(at <= end, "{at} after deadline {end}");
                    }
                    prop_assert!(matches!(bucket, RetrySoon | ProviderError | Inventory));
                }
                AwaitCustomer => prop_assert_eq!(bucket, NeedsCustomerAction),
                Decision::Stop { action, reason } => {
                    prop_assert_eq!(action, s.final_action);
                    prop_assert!(["never_retry", MAX_ATT, "max_age"].contains(&reason));
                }
            }
        }
    }
}
