//! The scaffolding every provider's pull-sync test shares: the fake list API mounted on
//! its route, the app with one source pointed at it (small pages, no pause between them,
//! sync only when the test runs it, dunning idle), deliveries of signed webhooks, and the
//! waits on the archive that tell when what was queued has been reconciled.

use std::time::Duration;

use chrono::{DateTime, Utc};
use subsync::app::Role;
use wiremock::{MockBuilder, MockServer, Respond};

use crate::common::{TestApp, TestConfig, eventually, spawn_app};

/// A server answering `route` (the provider's real method, path, credential header and
/// required parameters) with `fake`; anything else gets wiremock's 404.
pub(super) async fn serve(route: MockBuilder, fake: impl Respond + 'static) -> MockServer {
    let server = MockServer::start().await;
    route.respond_with(fake).mount(&server).await;
    server
}

/// The app with one source: `source` is its `[[sources]]` keys (id, provider, credentials,
/// `api`); pages of 2 with no pause, 3 retries of a page, sync re-reading `lookback_secs`
/// before its watermark and running only when the test runs it, retries without jitter,
/// the scheduler idle.
pub(super) async fn app_with(source: &str, lookback_secs: u64) -> (TestConfig, TestApp) {
    app_with_sources(&[source], lookback_secs).await
}

/// [`app_with`] with several sources, each set up alike.
pub(super) async fn app_with_sources(
    sources: &[&str],
    lookback_secs: u64,
) -> (TestConfig, TestApp) {
    let mut config = TestConfig::new().await;
    for source in sources {
        // A source that names its own retry policy keeps it.
        let retry = match source.contains("\nretry = ") {
            true => "",
            false => "retry = { jitter = false }",
        };
        config.extra += &format!(
            r#"
[[sources]]
{source}
sync = {{ page_size = 2, min_interval_ms = 1, max_page_retries = 3, lookback_secs = {lookback_secs}, interval_secs = 0 }}
{retry}
"#
        );
    }
    config.extra += "[dunning]\ninterval_ms = 3600000\n";
    let app = spawn_app(&config, Role::All).await;
    (config, app)
}

/// Posts `body` signed as `source` would sign it; the ingress must accept it.
pub(super) async fn deliver(app: &TestApp, source: &str, event_id: &str, body: &[u8]) {
    let response = app.post_signed(source, event_id, body).await;
    assert_eq!(response.status(), 202, "{event_id}");
}

/// Posts `ignored`, an event the normalizer archives without changing the ledger, and
/// waits until it is archived: everything queued before it has been reconciled by then.
/// Returns the source's archived events.
pub(super) async fn barrier(app: &TestApp, source: &str, event_id: &str, ignored: &[u8]) -> i64 {
    let before = app.db.count_events(Some(source)).await.unwrap();
    deliver(app, source, event_id, ignored).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.db.count_events(Some(source)).await.unwrap() > before
        })
        .await,
        "barrier {event_id} archived"
    );
    app.db.count_events(Some(source)).await.unwrap()
}

/// Waits until exactly `n` events of `source` are archived.
pub(super) async fn archived(app: &TestApp, source: &str, n: i64) {
    assert!(
        eventually(Duration::from_secs(15), || async {
            app.db.count_events(Some(source)).await.unwrap() == n
        })
        .await,
        "expected {n} archived events, got {}",
        app.db.count_events(Some(source)).await.unwrap()
    );
}

/// Each subscription's (status, provider status), `None` when the ledger does not know it.
pub(super) async fn subscription_states(
    app: &TestApp,
    source: &str,
    ids: &[&str],
) -> Vec<Option<(String, String)>> {
    let mut states = Vec::new();
    for id in ids {
        let view = app.db.subscription(source, id).await.unwrap();
        states.push(view.and_then(|v| Some((v.status?, v.provider_status?))));
    }
    states
}

/// A known subscription's expected (status, provider status).
pub(super) fn state(status: &str, provider: &str) -> Option<(String, String)> {
    Some((status.to_owned(), provider.to_owned()))
}

/// Pairs as owned strings (attempt states, requested pages).
pub(super) fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

pub(super) fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// The run after a webhook outage that began at `since`: incremental from there, waiting
/// up to 20 s for the worker to apply what it queued.
pub(super) fn after_outage(since: DateTime<Utc>) -> subsync::sync::RunOptions {
    subsync::sync::RunOptions {
        since: Some(since),
        wait: Some(Duration::from_secs(20)),
        ..Default::default()
    }
}
