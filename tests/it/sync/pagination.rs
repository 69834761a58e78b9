//! A hostile list API against the sync engine: cursors that cycle (A→B→C→A) and a listing
//! longer than `sync.max_pages`. Each run ends with a pagination error after a bounded
//! number of pages, and the watermark does not move.

use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::{Connection, Row};
use subsync::sync::PaginationError;

use super::*;

/// Stripe's invoice list serving one invoice per page, `in_c`, `in_b`, `in_a` in that
/// order; when `cycle` is set, the last page still says `has_more` and the page after
/// `in_a` starts over with `in_c`: the cursors cycle forever.
#[derive(Clone, Default)]
struct CyclingInvoices {
    cycle: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Respond for CyclingInvoices {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let after = (request.url.query_pairs())
            .find(|(k, _)| k == "starting_after")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        self.requests.lock().unwrap().push(after.clone());
        let cycle = self.cycle.load(Ordering::SeqCst);
        let (id, has_more) = match after.as_str() {
            "" => ("in_c", true),
            "in_c" => ("in_b", true),
            "in_b" => ("in_a", cycle),
            _ => ("in_c", true),
        };
        let listed = match id {
            "in_b" => invoice(id, "open", 1),
            _ => invoice(id, "paid", 1),
        };
        ResponseTemplate::new(200).set_body_json(json!({
            "object": "list", "url": "/v1/invoices", "has_more": has_more, "data": [listed],
        }))
    }
}

/// The stored watermark and last error of `source`.
async fn stored_state(
    config: &TestConfig,
    source: &str,
) -> (Option<chrono::DateTime<chrono::Utc>>, Option<String>) {
    let mut conn = sqlx::PgConnection::connect(&config.database_url)
        .await
        .unwrap();
    let row = sqlx::query("SELECT watermark, last_error FROM sync_state WHERE source_id = $1")
        .bind(source)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    (row.get("watermark"), row.get("last_error"))
}

#[tokio::test]
async fn cursors_that_cycle_end_the_run_and_keep_the_watermark() {
    let fake = CyclingInvoices::default();
    let server = stripe_api_with(fake.clone()).await;
    let (config, app) = app_with(&server, "interval_secs = 0").await;
    let first = sync(&app, "stripe", RunOptions::default()).await.unwrap();
    assert_eq!(first.pages, 3);
    let watermark = first.watermark.expect("a complete run sets the watermark");

    fake.cycle.store(true, Ordering::SeqCst);
    fake.requests.lock().unwrap().clear();
    // From further back than Stripe's events go: the invoice sweep again.
    let long_ago = RunOptions {
        since: chrono::DateTime::from_timestamp(1_600_000_000, 0),
        dry_run: false,
        ..RunOptions::default()
    };
    let error = sync(&app, "stripe", long_ago).await.unwrap_err();
    assert!(
        matches!(
            &error,
            SyncError::Pagination {
                page: 4,
                error: PaginationError::Cycle
            }
        ),
        "{error}"
    );
    assert_eq!(
        *fake.requests.lock().unwrap(),
        ["", "in_c", "in_b", "in_a"],
        "stopped at the first cursor seen twice"
    );
    let (stored, last_error) = stored_state(&config, "stripe").await;
    assert_eq!(stored, Some(watermark), "the watermark did not move");
    assert!(last_error.unwrap().contains("pagination cycle"));
    app.stop().await;
}

#[tokio::test]
async fn a_listing_past_max_pages_ends_the_run_and_the_next_run_resumes() {
    let fake = FakeInvoices::new(invoices());
    let server = stripe_api(fake.clone()).await;
    let (config, app) = app_with(&server, "interval_secs = 0, max_pages = 2").await;

    let error = sync(&app, "stripe", RunOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            SyncError::Pagination {
                page: 2,
                error: PaginationError::TooManyPages(2)
            }
        ),
        "{error}"
    );
    assert_eq!(fake.requests(), ["", "in_4"], "no third page was asked for");
    let (stored, last_error) = stored_state(&config, "stripe").await;
    assert_eq!(stored, None, "no watermark before a complete run");
    assert!(last_error.unwrap().contains("sync.max_pages"));

    // The pages read stay read: the next run resumes after page 2 and completes.
    let resumed = sync(&app, "stripe", RunOptions::default()).await.unwrap();
    assert!(resumed.resumed && resumed.watermark.is_some());
    assert_eq!(fake.requests(), ["", "in_4", "in_2"]);
    assert!(healed(&app).await);
    app.stop().await;
}
