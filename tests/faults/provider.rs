//! Scenario 10: a hostile provider API. One Stripe source's API ([`crate::hostile_api`])
//! answers with `Retry-After: 1e20`, `Retry-After: 10000000000000`, a 2 GiB streamed body,
//! a redirect to another host that records any credential it receives, a 30 s stall, and
//! a list whose cursor cycles forever. Meanwhile a second Stripe source keeps working
//! against a well-behaved fake Stripe: its webhooks are reconciled and its retries called.
//! The process never exits, no credential reaches the redirect target, the hostile
//! source's retries end parked with a clear error, and its sync run ends with an error
//! and keeps its watermark.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::harness::{Env, Options, STRIPE_SECRET, webhooks};
use crate::hostile_api::{Hostile, Mode};
use crate::load::{Load, Webhook, invoice_event};
use crate::{assert_only_2xx_or_503, common, failures, figure, finish, print_settled, settle};

const HOSTILE_TOKEN: &str = "sk_test_hostile_canary_0042";
/// Hostile invoices per misbehaviour.
const PER_MODE: usize = 2;
const WAIT: Duration = Duration::from_secs(300);

/// Failed invoices of the hostile source: invoice `n` misbehaves as `Mode::ALL[n % 5]`.
fn hostile_failures() -> crate::load::Maker {
    let created = chrono::Utc::now().timestamp();
    Arc::new(move |n| {
        let mode = Mode::ALL[n % Mode::ALL.len()];
        let invoice = format!("in_{}_{}", mode.tag(), n / Mode::ALL.len());
        let id = format!("evt_h_{n}_f");
        Webhook {
            body: invoice_event(&id, false, &invoice, &format!("sub_h_{n}"), "usd", created),
            id,
        }
    })
}

#[tokio::test]
#[ignore = "fault injection: run by scripts/faults.sh"]
async fn s10_hostile_provider_api_costs_only_its_own_calls() {
    let name = "10 hostile provider API";
    let started = Instant::now();
    let n = webhooks();
    let fake = crate::stripe::FakeStripe::new(Vec::<usize>::new(), Duration::ZERO);
    let good = fake.serve().await;
    let hostile = Hostile::new(HOSTILE_TOKEN);
    let hostile_base = hostile.serve().await;
    let options = Options {
        // The fake Stripe limits no rate: its account's request budget is set above what
        // the scenario calls (Stripe's test mode would allow 25 requests per second).
        stripe_extra: format!(
            "api = {{ base_url = \"{}\", token = \"{}\", requests_per_second = 1000 }}\nretry = {{ base_secs = 1, jitter = false }}",
            good.uri(),
            crate::stripe::TOKEN
        ),
        // Short waits and park limit so the hostile retries settle within the scenario.
        extra: format!(
            r#"
[[sources]]
id = "hostile"
provider = "stripe"
secrets = ["{STRIPE_SECRET}"]
api = {{ base_url = "{hostile_base}", token = "{HOSTILE_TOKEN}", timeout_ms = 3000 }}
retry = {{ base_secs = 1, jitter = false, provider_error_base_secs = 1, provider_error_cap_secs = 2 }}
sync = {{ interval_secs = 5, max_pages = 100 }}
[dunning]
interval_ms = 200
failure_wait_secs = 1
max_rate_limit_wait_secs = 1
park_after_failures = 3
"#
        ),
        ..Options::default()
    };
    let env = Env::new(name, options).await;
    let mut service = env.service("all", "all", &common::amqp_url()).await;
    let count = PER_MODE * Mode::ALL.len();
    let bad = Load::new(
        &env,
        service.ingress_url(),
        "hostile",
        hostile_failures(),
        count,
    );
    let good_load = Load::new(&env, service.ingress_url(), "stripe", failures("g"), n);
    let (bad_report, report) = tokio::join!(bad.run(Arc::default()), good_load.run(Arc::default()));
    assert_only_2xx_or_503(name, &report, false);
    assert_eq!(
        bad_report.accepted().len(),
        count,
        "{}",
        bad_report.summary()
    );
    let settled = settle(&env, &good_load, &report, &HashSet::new()).await;

    // Every retry of the good source recovered (charged once); every hostile one ended:
    // the misbehaving calls parked, the invoices healed from the cycling list (old, and
    // unknown to the provider: 404) exhausted by the policy's age limit.
    let t = Instant::now();
    let (good_open, hostile_open) = loop {
        assert!(
            service.is_running(),
            "{name}: subsync exited\n{}",
            service.log_tail()
        );
        let (good_open, hostile_open): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE source_id = 'stripe' AND status <> 'recovered'),
                    count(*) FILTER (WHERE source_id = 'hostile'
                        AND status NOT IN ('parked', 'exhausted'))
             FROM retries",
        )
        .fetch_one(&env.sql)
        .await
        .unwrap();
        if (good_open, hostile_open) == (0, 0) || t.elapsed() > WAIT {
            break (good_open, hostile_open);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let settled_in = t.elapsed();
    let errors: Vec<(String, i32, String)> = sqlx::query_as(
        "SELECT cycle_key, consecutive_failures, COALESCE(last_error, '') FROM retries
         WHERE source_id = 'hostile' AND status = 'parked' ORDER BY cycle_key",
    )
    .fetch_all(&env.sql)
    .await
    .unwrap();
    assert_eq!(
        (good_open, hostile_open),
        (0, 0),
        "{name}: good retries not recovered / hostile retries still open; parked: {errors:#?}"
    );
    let good_retries: i64 =
        sqlx::query_scalar("SELECT count(*) FROM retries WHERE source_id = 'stripe'")
            .fetch_one(&env.sql)
            .await
            .unwrap();
    assert_eq!(
        good_retries as usize,
        fake.charges(),
        "one charge per good retry"
    );

    // Each misbehaviour is named in its retry's error.
    for mode in Mode::ALL {
        let expected = match mode {
            Mode::RetryAfterFloat => "rate limited",
            Mode::RetryAfterHuge => "clamped",
            Mode::HugeBody => "max_answer_bytes",
            Mode::Redirect => "redirect",
            Mode::Stall => "timeout",
        };
        let prefix = format!("in_{}_", mode.tag());
        let of_mode: Vec<_> = errors
            .iter()
            .filter(|(k, ..)| k.starts_with(&prefix))
            .collect();
        assert_eq!(of_mode.len(), PER_MODE, "{mode:?}: {errors:#?}");
        for (cycle, failures, error) in of_mode {
            assert!(*failures >= 3, "{cycle}: parked after {failures}");
            assert!(error.contains(expected), "{cycle} ({mode:?}): {error}");
            assert!(!error.contains(HOSTILE_TOKEN), "the token leaked: {error}");
        }
    }
    // No request, and so no credential, ever reached the redirect target.
    let redirected = hostile.redirected.lock().unwrap().clone();
    assert!(
        redirected.is_empty(),
        "requests followed the redirect: {redirected:?}"
    );
    let streamed = hostile
        .huge_bytes_sent
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        streamed < 256 << 20,
        "{streamed} bytes of the 2 GiB body were read"
    );

    // The cycling list: each periodic run ends with an error and keeps the watermark.
    let sync: (Option<chrono::DateTime<chrono::Utc>>, Option<String>) =
        sqlx::query_as("SELECT watermark, last_error FROM sync_state WHERE source_id = 'hostile'")
            .fetch_one(&env.sql)
            .await
            .unwrap();
    let sync_error = sync.1.clone().unwrap_or_default();
    assert!(sync.0.is_none(), "the watermark moved: {sync:?}");
    assert!(sync_error.contains("cursor"), "{sync_error}");
    let (list_pages, charges, unknown_invoice_charges) = {
        let seen = hostile.seen.lock().unwrap();
        assert!(seen.list_pages >= 4, "list pages {}", seen.list_pages);
        assert!(
            seen.malformed.is_empty(),
            "requests off Stripe's definition: {:?}",
            seen.malformed
        );
        (
            seen.list_pages,
            seen.charges.clone(),
            seen.unknown_invoice_charges,
        )
    };
    let parked = service
        .metric("subsync_retries_parked_total", &["source=\"hostile\""])
        .await
        .unwrap_or(0.0);
    assert!(parked >= count as f64, "parked metric {parked}");
    assert_eq!(service.readyz().await, Some(200), "a task is down");
    assert!(service.is_running());

    print_settled(name, &report, &settled);
    figure!(
        name,
        "hostile source: {} retries parked {:.1}s after the drain ({} charge requests by mode {:?}; {} unknown-invoice charges from the healed cycle); {} bytes of a 2 GiB body read; 0 requests at the redirect target; sync: {} list pages, last error {:?}, watermark kept",
        errors.len(),
        settled_in.as_secs_f64(),
        charges.values().sum::<usize>(),
        charges,
        unknown_invoice_charges,
        streamed,
        list_pages,
        sync_error,
    );
    figure!(
        name,
        "good source: {} retries recovered, {} charges; process up throughout; {:.0}s",
        good_retries,
        fake.charges(),
        started.elapsed().as_secs_f64()
    );
    finish(env, vec![service]).await;
}
