//! One test per rule family: each breach is refused, and the error names the key.

use super::super::{ApiSettings, Settings, SyncSettings};

const MINIMAL: &str = r#"
    [database]
    url = "postgres://u:p@127.0.0.1/db"
    [amqp]
    url = "amqp://127.0.0.1:5672/%2f"
    [http]
    ingress_addr = "127.0.0.1:0"
    admin_addr = "127.0.0.1:0"
    [admin]
    token = "a-long-enough-token"
    [[sources]]
    id = "st"
    provider = "stripe"
    secrets = ["whsec_literal"]
    api = { base_url = "http://127.0.0.1:9", token = "sk_test_x" }
    sync = {}
"#;

/// The minimal settings (one Stripe source with `api` and `sync`), valid as they are.
fn settings() -> Settings {
    let raw = config::Config::builder()
        .add_source(config::File::from_str(MINIMAL, config::FileFormat::Toml))
        .build()
        .unwrap();
    let settings: Settings = raw.try_deserialize().unwrap();
    settings.validate().expect("the minimal settings are valid");
    settings
}

/// Each edit must be refused with an error naming `key`.
fn refused(key: &str, edits: &[&dyn Fn(&mut Settings)]) {
    for (i, edit) in edits.iter().enumerate() {
        let mut s = settings();
        edit(&mut s);
        let err = s.validate().expect_err(&format!("{key} edit {i} refused"));
        let err = err.to_string();
        assert!(err.contains(key), "edit {i}: {err:?} names {key}");
    }
}

fn api(s: &mut Settings) -> &mut ApiSettings {
    s.sources[0].api.as_mut().unwrap()
}

fn sync(s: &mut Settings) -> &mut SyncSettings {
    s.sources[0].sync.as_mut().unwrap()
}

#[test]
fn dunning_tick_and_timeouts_are_bounded() {
    refused(
        "dunning.interval_ms",
        &[&|s| s.dunning.interval_ms = 0, &|s| {
            s.dunning.interval_ms = u64::MAX
        }],
    );
    refused(
        "dunning.accepted_timeout_secs",
        &[
            &|s| s.dunning.accepted_timeout_secs = 0,
            // Past chrono's range: `now - timeout` would overflow.
            &|s| s.dunning.accepted_timeout_secs = u64::MAX,
            &|s| s.dunning.accepted_timeout_secs = 10_000_000_000_000,
        ],
    );
    refused(
        "dunning.in_flight_timeout_secs",
        &[&|s| s.dunning.in_flight_timeout_secs = 0, &|s| {
            s.dunning.in_flight_timeout_secs = u64::MAX
        }],
    );
    refused(
        "dunning.park_after_failures",
        &[&|s| s.dunning.park_after_failures = 0, &|s| {
            s.dunning.park_after_failures = u32::MAX
        }],
    );
    let mut s = settings();
    s.dunning.in_flight_timeout_secs = 1;
    s.dunning.interval_ms = 86_400_000;
    s.dunning.park_after_failures = 1;
    s.validate().expect("the bounds themselves are allowed");
}

#[test]
fn retry_policy_spans_are_bounded() {
    refused(
        "sources[\"st\"].retry.base_secs",
        &[&|s| s.sources[0].retry.base_secs = 0, &|s| {
            s.sources[0].retry.base_secs = u64::MAX
        }],
    );
    refused(
        "sources[\"st\"].retry.cap_secs",
        &[&|s| s.sources[0].retry.cap_secs = 0],
    );
    refused(
        "sources[\"st\"].retry.max_age_secs",
        &[&|s| s.sources[0].retry.max_age_secs = i64::MAX as u64],
    );
    refused(
        "sources[\"st\"].retry.provider_error_base_secs",
        &[&|s| s.sources[0].retry.provider_error_base_secs = 0],
    );
    refused(
        "sources[\"st\"].retry.provider_error_cap_secs",
        &[&|s| s.sources[0].retry.provider_error_cap_secs = u64::MAX],
    );
    refused(
        "sources[\"st\"].retry.inventory_base_secs",
        &[&|s| s.sources[0].retry.inventory_base_secs = u64::MAX],
    );
}

#[test]
fn retry_factor_must_be_finite_and_at_least_one() {
    refused(
        "sources[\"st\"].retry.factor",
        &[
            &|s| s.sources[0].retry.factor = f32::NAN,
            &|s| s.sources[0].retry.factor = f32::INFINITY,
            &|s| s.sources[0].retry.factor = 0.5,
            &|s| s.sources[0].retry.factor = -2.0,
        ],
    );
    let mut s = settings();
    s.sources[0].retry.factor = 1.0;
    s.validate().expect("a constant backoff is fine");
}

#[test]
fn retry_schedule_entries_are_bounded_and_increasing() {
    refused(
        "sources[\"st\"].retry.schedule_secs[1]",
        &[
            &|s| s.sources[0].retry.schedule_secs = Some(vec![60, u64::MAX]),
            &|s| s.sources[0].retry.schedule_secs = Some(vec![60, 0]),
        ],
    );
    refused(
        "sources[\"st\"].retry.schedule_secs",
        &[
            &|s| s.sources[0].retry.schedule_secs = Some(vec![600, 60]),
            &|s| s.sources[0].retry.schedule_secs = Some(vec![60, 60]),
        ],
    );
    let mut s = settings();
    s.sources[0].retry.schedule_secs = Some(vec![172_800, 604_800, 1_209_600, 1_814_400]);
    s.validate().expect("Polar-like schedule");
    s.sources[0].retry.schedule_secs = Some(vec![]);
    s.validate()
        .expect("an empty schedule (never retry soft declines) is allowed");
}

#[test]
fn sync_spans_and_pacing_are_bounded() {
    refused(
        "sources[\"st\"].sync.interval_secs",
        &[&|s| sync(s).interval_secs = u64::MAX],
    );
    refused(
        "sources[\"st\"].sync.lookback_secs",
        &[
            // `as i64` of this used to wrap negative, and chrono's seconds() panics past range.
            &|s| sync(s).lookback_secs = u64::MAX,
            &|s| sync(s).lookback_secs = i64::MAX as u64 / 1000 + 1,
        ],
    );
    refused(
        "sources[\"st\"].sync.page_size",
        &[&|s| sync(s).page_size = 0],
    );
    refused(
        "sources[\"st\"].sync.min_interval_ms",
        &[&|s| sync(s).min_interval_ms = u64::MAX],
    );
    let mut s = settings();
    sync(&mut s).interval_secs = 0;
    s.validate().expect("0: only on demand");
}

#[test]
fn request_publish_pool_and_api_timeouts_are_positive_and_bounded() {
    refused(
        "http.request_timeout_ms",
        &[&|s| s.http.request_timeout_ms = 0, &|s| {
            s.http.request_timeout_ms = u64::MAX
        }],
    );
    refused(
        "amqp.confirm_timeout_ms",
        &[&|s| s.amqp.confirm_timeout_ms = 0, &|s| {
            s.amqp.confirm_timeout_ms = u64::MAX
        }],
    );
    refused(
        "database.acquire_timeout_ms",
        &[
            &|s| s.database.acquire_timeout_ms = 0,
            // sqlx adds it to an `Instant`: past range that panics.
            &|s| s.database.acquire_timeout_ms = u64::MAX,
        ],
    );
    refused(
        "sources[\"st\"].api.timeout_ms",
        &[&|s| api(s).timeout_ms = 0, &|s| {
            api(s).timeout_ms = u64::MAX
        }],
    );
}

#[test]
fn worker_settings_are_bounded() {
    refused(
        "worker.batch_wait_ms",
        &[&|s| s.worker.batch_wait_ms = u64::MAX],
    );
    refused("worker.batch_size", &[&|s| s.worker.batch_size = 0]);
    refused("worker.consumers", &[&|s| s.worker.consumers = 0]);
    refused(
        "worker.prefetch",
        &[&|s| {
            s.worker.batch_size = 300;
            s.worker.prefetch = 299;
        }],
    );
}

#[test]
fn money_lookup_tick_and_waits_are_bounded() {
    refused(
        "lookups.interval_ms",
        &[&|s| s.lookups.interval_ms = 0, &|s| {
            s.lookups.interval_ms = u64::MAX
        }],
    );
    refused(
        "lookups.failure_wait_secs",
        &[&|s| s.lookups.failure_wait_secs = 0, &|s| {
            s.lookups.failure_wait_secs = u64::MAX
        }],
    );
    refused(
        "lookups.max_rate_limit_wait_secs",
        &[&|s| s.lookups.max_rate_limit_wait_secs = 0],
    );
    refused(
        "lookups.failure_wait_secs must not exceed",
        &[&|s| {
            s.lookups.failure_wait_secs = 7200;
            s.lookups.max_failure_wait_secs = 3600;
        }],
    );
    assert!(settings().validate().is_ok(), "the defaults are valid");
}
