//! Ranges of the numeric settings, refused at load with the key's name. A zero tick panics
//! tokio's interval, a zero timeout fails every request, and a huge span overflows the
//! time arithmetic downstream (chrono's dates, tokio's and sqlx's `Instant + Duration`,
//! Postgres intervals): none of them may reach a running service.

use super::{
    ConfigError, DunningSettings, LookupSettings, RetryPolicySettings, Settings, SourceSettings,
};

const DAY: u64 = 86_400;
/// Longest span of any duration setting in seconds (10 years): far past any sane policy,
/// far inside chrono's and Postgres's ranges.
pub const MAX_SPAN_SECS: u64 = 3_650 * DAY;
/// Longest timeout of one request, publish, pool acquire or provider call (1 h, ms).
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// Longest scheduler tick (a day, ms).
pub const MAX_TICK_MS: u64 = DAY * 1_000;
/// Longest periodic sync interval (30 days).
pub const MAX_SYNC_INTERVAL_SECS: u64 = 30 * DAY;
/// Longest wait for a worker batch to fill (1 min, ms).
pub const MAX_BATCH_WAIT_MS: u64 = 60_000;
/// Most consecutive failures before a retry is parked.
pub const MAX_PARK_AFTER: u32 = 1_000;

/// Every range rule; the first breach is the error.
pub(super) fn check(s: &Settings) -> Result<(), ConfigError> {
    within(
        "database.acquire_timeout_ms",
        s.database.acquire_timeout_ms,
        1,
        MAX_TIMEOUT_MS,
    )?;
    within(
        "http.request_timeout_ms",
        s.http.request_timeout_ms,
        1,
        MAX_TIMEOUT_MS,
    )?;
    within(
        "amqp.confirm_timeout_ms",
        s.amqp.confirm_timeout_ms,
        1,
        MAX_TIMEOUT_MS,
    )?;
    within(
        "worker.batch_wait_ms",
        s.worker.batch_wait_ms,
        0,
        MAX_BATCH_WAIT_MS,
    )?;
    dunning(&s.dunning)?;
    lookups(&s.lookups)?;
    for source in &s.sources {
        retry_policy(source)?;
        source_api_and_sync(source)?;
    }
    Ok(())
}

fn within(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(ConfigError::Invalid(format!(
        "{key} must be between {min} and {max} (got {value})"
    )))
}

/// `sources["id"].key`, the way an error names a source's setting.
fn key(source: &SourceSettings, key: &str) -> String {
    format!("sources[{:?}].{key}", source.id)
}

fn dunning(d: &DunningSettings) -> Result<(), ConfigError> {
    within("dunning.interval_ms", d.interval_ms, 1, MAX_TICK_MS)?;
    within(
        "dunning.accepted_timeout_secs",
        d.accepted_timeout_secs,
        1,
        MAX_SPAN_SECS,
    )?;
    let in_flight = d.in_flight_timeout_secs;
    within(
        "dunning.in_flight_timeout_secs",
        in_flight,
        1,
        MAX_SPAN_SECS,
    )?;
    within(
        "dunning.failure_wait_secs",
        d.failure_wait_secs,
        1,
        MAX_SPAN_SECS,
    )?;
    within(
        "dunning.max_rate_limit_wait_secs",
        d.max_rate_limit_wait_secs,
        1,
        MAX_SPAN_SECS,
    )?;
    let park = u64::from(d.park_after_failures);
    within(
        "dunning.park_after_failures",
        park,
        1,
        u64::from(MAX_PARK_AFTER),
    )?;
    Ok(())
}

fn lookups(l: &LookupSettings) -> Result<(), ConfigError> {
    within("lookups.interval_ms", l.interval_ms, 1, MAX_TICK_MS)?;
    for (key, value) in [
        ("lookups.failure_wait_secs", l.failure_wait_secs),
        ("lookups.max_failure_wait_secs", l.max_failure_wait_secs),
        (
            "lookups.max_rate_limit_wait_secs",
            l.max_rate_limit_wait_secs,
        ),
    ] {
        within(key, value, 1, MAX_SPAN_SECS)?;
    }
    if l.failure_wait_secs > l.max_failure_wait_secs {
        return Err(ConfigError::Invalid(
            "lookups.failure_wait_secs must not exceed lookups.max_failure_wait_secs".to_owned(),
        ));
    }
    Ok(())
}

fn retry_policy(source: &SourceSettings) -> Result<(), ConfigError> {
    policy(&source.retry, &key(source, "retry."))
}

/// Checks a retry policy; `prefix` says where it came from in errors (`sources["s"].retry.`,
/// or nothing for a policy file of its own).
pub fn policy(r: &RetryPolicySettings, prefix: &str) -> Result<(), ConfigError> {
    for (name, value) in [
        ("base_secs", r.base_secs),
        ("cap_secs", r.cap_secs),
        ("max_age_secs", r.max_age_secs),
        ("provider_error_base_secs", r.provider_error_base_secs),
        ("provider_error_cap_secs", r.provider_error_cap_secs),
        ("inventory_base_secs", r.inventory_base_secs),
        ("awaiting_customer_secs", r.awaiting_customer_secs),
        ("provider_managed_secs", r.provider_managed_secs),
    ] {
        within(&format!("{prefix}{name}"), value, 1, MAX_SPAN_SECS)?;
    }
    if !r.factor.is_finite() || r.factor < 1.0 {
        return Err(ConfigError::Invalid(format!(
            "{prefix}factor must be a finite number of at least 1 (got {})",
            r.factor
        )));
    }
    let mut previous = 0;
    for (i, &offset) in r.schedule_secs.iter().flatten().enumerate() {
        within(
            &format!("{prefix}schedule_secs[{i}]"),
            offset,
            1,
            MAX_SPAN_SECS,
        )?;
        if offset <= previous {
            return Err(ConfigError::Invalid(format!(
                "{prefix}schedule_secs must be increasing: entry {i} ({offset}) is not after the one before ({previous})"
            )));
        }
        previous = offset;
    }
    Ok(())
}

fn source_api_and_sync(source: &SourceSettings) -> Result<(), ConfigError> {
    if let Some(api) = &source.api {
        within(
            &key(source, "api.timeout_ms"),
            api.timeout_ms,
            1,
            MAX_TIMEOUT_MS,
        )?;
        if let Some(rate) = api.requests_per_second
            && !(rate.is_finite() && (0.001..=100_000.0).contains(&rate))
        {
            return Err(ConfigError::Invalid(format!(
                "{} must be between 0.001 and 100000 (requests per second), got {rate}",
                key(source, "api.requests_per_second")
            )));
        }
    }
    let Some(sync) = &source.sync else {
        return Ok(());
    };
    let interval = key(source, "sync.interval_secs");
    within(&interval, sync.interval_secs, 0, MAX_SYNC_INTERVAL_SECS)?;
    within(
        &key(source, "sync.lookback_secs"),
        sync.lookback_secs,
        0,
        MAX_SPAN_SECS,
    )?;
    let page_size = u64::from(sync.page_size);
    within(
        &key(source, "sync.page_size"),
        page_size,
        1,
        u64::from(u32::MAX),
    )?;
    let min_interval = key(source, "sync.min_interval_ms");
    within(&min_interval, sync.min_interval_ms, 0, MAX_TIMEOUT_MS)
}

#[cfg(test)]
mod tests;
