use super::*;
use crate::config::RetryPolicySettings;

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000, 0).unwrap()
}

fn policy() -> RetryPolicy {
    RetryPolicy::new(&RetryPolicySettings {
        jitter: false,
        ..Default::default()
    })
}

fn cx(policy: &RetryPolicy, prior_failures: i32) -> Context<'_> {
    Context {
        source_id: "s",
        cycle_key: "c",
        policy: Some(policy),
        retry_number: 3,
        first_failed_at: t0(),
        prior_failures,
        park_after: 5,
        waits: Waits::default(),
        now: t0(),
    }
}

fn limited(secs: u64) -> Called {
    Called::Error(ProviderApiError::RateLimited {
        retry_after: Some(Duration::from_secs(secs)),
    })
}

#[test]
fn answers_reset_the_failure_count() {
    let p = policy();
    let declined = Called::Answer(CallOutcome::Declined {
        code: Some("insufficient_funds".into()),
        message: None,
    });
    let cases = [
        (Called::Answer(CallOutcome::Charged), RetryStatus::Recovered),
        (Called::Answer(CallOutcome::Accepted), RetryStatus::InFlight),
        (
            Called::Answer(CallOutcome::InProgress),
            RetryStatus::InFlight,
        ),
        (
            Called::Answer(CallOutcome::RequiresAction),
            RetryStatus::AwaitingCustomer,
        ),
        (
            Called::Answer(CallOutcome::NotEligible("paid".into())),
            RetryStatus::Completed,
        ),
        (declined, RetryStatus::Scheduled),
    ];
    for (called, status) in cases {
        let u = update_for(&called, &cx(&p, 4));
        assert_eq!(u.status, status, "{called:?}");
        assert_eq!((u.consecutive_failures, u.error), (0, None), "{called:?}");
        assert_eq!(u.retries_done, 3, "the call's number is spent");
    }
}

#[test]
fn failures_count_and_keep_the_retry_number_until_parked() {
    let p = policy();
    let transient = Called::Error(ProviderApiError::Transient(
        "503 Service Unavailable".into(),
    ));
    for called in [
        transient,
        Called::NoClient,
        Called::Panicked("boom".into()),
        limited(30),
    ] {
        let u = update_for(&called, &cx(&p, 0));
        assert_eq!(u.status, RetryStatus::Scheduled, "{called:?}");
        assert_eq!(u.retries_done, 2, "same number and key again: {called:?}");
        assert_eq!(u.consecutive_failures, 1);
        assert!(u.due_at.unwrap() > t0());
        assert_eq!(u.error.as_deref(), Some(u.outcome.as_str()));
    }
    // The fifth failure in a row parks it, with the error text, and no due time.
    let u = update_for(&Called::Panicked("boom".into()), &cx(&p, 4));
    assert_eq!(
        (u.status, u.due_at, u.consecutive_failures),
        (RetryStatus::Parked, None, 5)
    );
    assert_eq!(
        u.error.as_deref(),
        Some("the provider client panicked: boom")
    );
    assert_eq!(
        u.outcome,
        "parked after 5 consecutive failures: the provider client panicked: boom"
    );
}

#[test]
fn a_rejected_request_follows_the_policy_and_still_counts() {
    let p = policy();
    let rejected = Called::Error(ProviderApiError::Rejected {
        status: 0,
        message: "missing cycle id".into(),
    });
    let u = update_for(&rejected, &cx(&p, 0));
    assert_eq!((u.status, u.retries_done), (RetryStatus::Scheduled, 3));
    assert_eq!(
        u.due_at,
        Some(t0() + TimeDelta::hours(2)),
        "provider_error backoff"
    );
    assert_eq!(u.consecutive_failures, 1);
    // Out of attempts, yet parked: subsync's own failures never trigger the final action.
    let mut c = cx(&p, 4);
    c.retry_number = 8;
    let u = update_for(&rejected, &c);
    assert_eq!((u.status, u.final_action), (RetryStatus::Parked, None));
    c.prior_failures = 0;
    let u = update_for(&rejected, &c);
    assert_eq!(
        (u.status, u.final_action),
        (RetryStatus::Exhausted, Some("mark_unpaid"))
    );
}

#[test]
fn a_huge_retry_after_is_clamped_and_never_overflows() {
    let p = policy();
    let u = update_for(&limited(10_000_000_000_000), &cx(&p, 0));
    assert_eq!(u.due_at, Some(t0() + TimeDelta::hours(1)));
    assert!(u.outcome.contains("clamped"), "{}", u.outcome);
    let u = update_for(&limited(u64::MAX), &cx(&p, 0));
    assert_eq!(u.due_at, Some(t0() + TimeDelta::hours(1)));
    // The clamp is the configured one (`dunning.max_rate_limit_wait_secs`).
    let mut short = cx(&p, 0);
    short.waits.max_rate_limit = std::time::Duration::from_secs(2);
    let u = update_for(&limited(10_000_000_000_000), &short);
    assert_eq!(u.due_at, Some(t0() + TimeDelta::seconds(2)));
    // At the end of time the due time saturates instead of panicking.
    let mut c = cx(&p, 0);
    c.now = DateTime::<Utc>::MAX_UTC;
    for called in [limited(60), Called::NoClient, limited(u64::MAX)] {
        let u = update_for(&called, &c);
        assert_eq!(u.due_at, Some(DateTime::<Utc>::MAX_UTC), "{called:?}");
    }
    let none = Called::Error(ProviderApiError::RateLimited { retry_after: None });
    let u = update_for(&none, &cx(&p, 0));
    assert_eq!(u.due_at, Some(t0() + TimeDelta::minutes(1)));
    assert_eq!(after(t0(), Duration::MAX), DateTime::<Utc>::MAX_UTC);
}

#[test]
fn park_after_of_one_parks_at_once_and_odd_counts_do_not_overflow() {
    let p = policy();
    let mut c = cx(&p, 0);
    c.park_after = 1;
    let u = update_for(&Called::NoClient, &c);
    assert_eq!(u.status, RetryStatus::Parked);
    c.park_after = 0; // treated as 1
    assert_eq!(
        update_for(&Called::NoClient, &c).status,
        RetryStatus::Parked
    );
    c.park_after = u32::MAX;
    c.prior_failures = i32::MAX;
    let u = update_for(&Called::NoClient, &c);
    assert_eq!(
        (u.status, u.consecutive_failures),
        (RetryStatus::Scheduled, i32::MAX)
    );
    // Without a plan (the source lost its policy) a decline exhausts, as before.
    c.policy = None;
    let declined = Called::Answer(CallOutcome::Declined {
        code: None,
        message: None,
    });
    assert_eq!(update_for(&declined, &c).status, RetryStatus::Exhausted);
}

#[test]
fn long_error_texts_are_cut() {
    let p = policy();
    let long = Called::Panicked("é".repeat(1_000));
    let u = update_for(&long, &cx(&p, 0));
    let error = u.error.unwrap();
    assert!(
        error.chars().count() <= MAX_ERROR_CHARS + 1,
        "{}",
        error.len()
    );
    assert!(error.ends_with('…'));
}
