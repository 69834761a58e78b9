//! What `/readyz` and `/metrics` read. Both answer from state that is cheap to read and
//! never changes anything: the supervised tasks' health, the broker connection's state,
//! a database ping, passive queue declares (on one kept channel) and the dead-letter
//! index in Postgres. A scrape never fetches a message (a fetch counts as a delivery).

use std::sync::Once;

use serde::Serialize;

use super::AdminState;
use crate::http_error::HttpError;
use crate::ops::dead_letter_index;

/// `/readyz` when not ready, as [`HttpError::NotReady`] answers it (the OpenAPI schema).
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct NotReady {
    /// `service unavailable: <cause>`.
    error: String,
    /// Supervised tasks down now (between a failure and their restart), e.g. `scheduler`,
    /// `worker-0`, `sync:<source>`, `broker-connection`.
    down: Vec<String>,
}

/// Why this process is not ready, if it is not.
pub(super) async fn not_ready(state: &AdminState) -> Option<HttpError> {
    let down = state.health.down();
    let cause = if state.uses_broker && !state.broker.is_connected() {
        "broker not connected"
    } else if state.uses_database && state.db.ping().await.is_err() {
        "database not reachable"
    } else if !down.is_empty() {
        "tasks down"
    } else {
        return None;
    };
    Some(HttpError::NotReady { cause, down })
}

/// Gauges read at scrape time: queue depths (broker), the oldest dead letter's age (the
/// dead-letter index), retries per status and due now (database). A part that is
/// unreachable keeps its last values (and `/readyz` says why).
pub(super) async fn refresh_gauges(state: &AdminState) {
    describe();
    if state.uses_broker
        && let Ok((work, dead)) = state.broker.stats().await
    {
        for (queue, stats) in [("work", work), ("dead_letter", dead)] {
            metrics::gauge!("subsync_queue_messages", "queue" => queue).set(stats.messages as f64);
            metrics::gauge!("subsync_queue_consumers", "queue" => queue)
                .set(stats.consumers as f64);
        }
        if work.messages == 0 {
            metrics::gauge!("subsync_work_lag_seconds").set(0.0);
        }
    }
    if state.uses_database {
        if let Ok(index) = dead_letter_index::stats(&state.db).await {
            let age = index.oldest.map_or(0.0, |at| {
                (chrono::Utc::now() - at).as_seconds_f64().max(0.0)
            });
            metrics::gauge!("subsync_dead_letter_oldest_age_seconds").set(age);
            metrics::gauge!("subsync_dead_letters_indexed").set(index.letters as f64);
        }
        if let Ok((by_status, due)) = crate::dunning::views::counts(&state.db).await {
            for (status, n) in by_status {
                metrics::gauge!("subsync_retries", "status" => status).set(n as f64);
            }
            metrics::gauge!("subsync_retries_due").set(due as f64);
        }
        if let Ok(oldest) = crate::dunning::views::oldest_open(&state.db).await {
            for (status, age) in oldest {
                metrics::gauge!("subsync_retries_oldest_open_seconds", "status" => status).set(age);
            }
        }
    }
}

fn describe() {
    static DESCRIBED: Once = Once::new();
    DESCRIBED.call_once(|| {
        metrics::describe_gauge!(
            "subsync_retries_oldest_open_seconds",
            "Age (since its first failure) of the oldest retry still open, per open status \
             (0 when none): a wait that never ends shows here."
        );
        metrics::describe_gauge!(
            "subsync_dead_letter_oldest_age_seconds",
            "Age of the oldest dead letter, from the dead-letter index in Postgres (0 when \
             none). Exact for letters subsync dead-lettered with a reason; a letter the broker \
             dead-lettered on its own (delivery limit) counts only from the next index pass \
             (worker.dead_letter_index_secs), compare subsync_dead_letters_indexed with \
             subsync_queue_messages{queue=\"dead_letter\"}. Only where the role uses the database."
        );
        metrics::describe_gauge!(
            "subsync_dead_letters_indexed",
            "Letters in the dead-letter index (should equal the dead-letter queue's depth)."
        );
        metrics::describe_counter!(
            "subsync_task_restarts_total",
            "Restarts of a supervised task after a panic, a failure or an early return."
        );
    });
}
