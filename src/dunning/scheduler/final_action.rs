//! Final actions: an exhausted or stopped retry's `final_action` (`mark_unpaid`, `pause`,
//! `cancel`) carried out through the provider's API, with the crash safety of retry calls.
//!
//! - Claimed with `FOR UPDATE SKIP LOCKED`, so one instance carries each out.
//! - Re-checked against the ledger in the claiming transaction: a cycle paid meanwhile is
//!   recovered instead; a subscription already cancelled (or paused, for `pause`), or one
//!   another cycle's action already cancelled or paused, is skipped. The client then reads
//!   the provider's state where that is one cheap call.
//! - Recorded before the call (`final_actions`, with the deterministic idempotency key
//!   of (source, cycle, action)) and completed after. A call left unfinished by a crash is
//!   re-sent after `in_flight_timeout` with the same key (and `resend` set, so a client
//!   whose API has no key reads the state first); never a second action.
//! - A call without a usable answer is tried again after the failure wait, and after
//!   `park_after` failures in a row the action is settled as `failed` for an operator to
//!   look at; a refusal (4xx) is settled as `refused` with the provider's words.

use std::panic::AssertUnwindSafe;

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use sha2::Digest;

use super::{Lane, Scheduler, panic_message};
use crate::config::FinalAction;
use crate::db::DbError;
use crate::dunning::outcome::after;
use crate::providers::contract::{FinalCall, FinalOutcome};
use crate::providers::http::ProviderApiError;

/// The idempotency key of a cycle's final action: the same on every re-send.
pub fn final_action_key(source_id: &str, cycle_key: &str, action: FinalAction) -> String {
    let digest = sha2::Sha256::digest(format!(
        "{source_id}\n{cycle_key}\nfinal:{}",
        action.as_str()
    ));
    format!("subsync-final-{}", hex::encode(&digest[..16]))
}

/// A final action this scheduler claimed and must send.
struct Claimed {
    source_id: String,
    cycle_key: String,
    call: FinalCall,
    failures: i32,
}

/// How a final action ended (or did not yet).
enum Settled {
    /// `final_actions.outcome` and the answer.
    Outcome(&'static str, String),
    /// No usable answer: send again at this time.
    Again(DateTime<Utc>, String),
}

impl Scheduler {
    /// Claims the pending final actions of `lane`, sends them, records what came back;
    /// returns how many were sent.
    pub(super) async fn final_actions(
        &self,
        now: DateTime<Utc>,
        lane: Lane<'_>,
    ) -> Result<usize, DbError> {
        let claimed = self.claim_final(now, lane).await?;
        for action in &claimed {
            if self.finals.contains_key(&action.source_id) {
                (self.budgets)
                    .take(&action.source_id, crate::budget::Priority::Dunning)
                    .await?;
            }
            let settled = self.send_final(action, now).await;
            self.record_final(action, &settled).await?;
        }
        Ok(claimed.len())
    }

    async fn claim_final(
        &self,
        now: DateTime<Utc>,
        lane: Lane<'_>,
    ) -> Result<Vec<Claimed>, DbError> {
        let (only, except) = lane.filter();
        let timeout_ms = i64::try_from(self.in_flight_timeout.as_millis()).unwrap_or(i64::MAX);
        let mut tx = self.db.pool().begin().await?;
        type Pending = (
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            String,
            i32,
        );
        let pending: Vec<Pending> = sqlx::query_as(
            "SELECT r.source_id, r.cycle_key, r.attempt_id, r.cycle_id, r.subscription_id, r.final_action,
                    COALESCE(f.consecutive_failures, 0)
             FROM retries r LEFT JOIN final_actions f USING (source_id, cycle_key)
             WHERE r.status IN ('exhausted', 'stopped')
               AND r.final_action IN ('mark_unpaid', 'pause', 'cancel') AND r.final_action_at IS NULL
               AND ($1::text IS NULL OR r.source_id = $1) AND NOT (r.source_id = ANY($2))
               AND (f.source_id IS NULL
                    OR (f.finished_at IS NULL AND f.next_at <= $3)
                    OR (f.finished_at IS NULL AND f.next_at IS NULL
                        AND f.started_at < now() - make_interval(secs => $4::float8 / 1000)))
             ORDER BY r.updated_at LIMIT $5
             FOR UPDATE OF r SKIP LOCKED",
        )
        .bind(only)
        .bind(except)
        .bind(now)
        .bind(timeout_ms as f64)
        .bind(self.batch)
        .fetch_all(&mut *tx)
        .await?;
        let mut claimed = Vec::new();
        for (source_id, cycle_key, attempt_id, cycle_id, subscription_id, action, failures) in
            pending
        {
            let Some(action) = FinalAction::parse(&action) else {
                continue; // the WHERE names only the three actions
            };
            let skip = skip_reason(
                &mut tx,
                &source_id,
                &cycle_key,
                subscription_id.as_deref(),
                action,
            )
            .await?;
            if let Some((paid, why)) = skip {
                settle_skipped(
                    &mut tx,
                    &source_id,
                    &cycle_key,
                    subscription_id.as_deref(),
                    action,
                    paid,
                    &why,
                )
                .await?;
                continue;
            }
            let key = final_action_key(&source_id, &cycle_key, action);
            let (sends,): (i32,) = sqlx::query_as(
                "INSERT INTO final_actions AS f (source_id, cycle_key, action, subscription_id, idempotency_key, sends)
                 VALUES ($1, $2, $3, $4, $5, 1)
                 ON CONFLICT (source_id, cycle_key) DO UPDATE
                 SET sends = f.sends + 1, started_at = now(), next_at = NULL
                 RETURNING sends",
            )
            .bind(&source_id)
            .bind(&cycle_key)
            .bind(action.as_str())
            .bind(subscription_id.as_deref())
            .bind(&key)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE retries SET last_outcome = $3, updated_at = now()
                 WHERE source_id = $1 AND cycle_key = $2",
            )
            .bind(&source_id)
            .bind(&cycle_key)
            .bind(format!(
                "final action {}: sending (send {sends}, key {key})",
                action.as_str()
            ))
            .execute(&mut *tx)
            .await?;
            let at_period_end = self
                .dunning
                .plan(&source_id)
                .is_some_and(|p| p.policy.cancel_at_period_end());
            claimed.push(Claimed {
                call: FinalCall {
                    action,
                    attempt_id,
                    cycle_id,
                    subscription_id,
                    idempotency_key: key,
                    resend: sends > 1,
                    at_period_end,
                },
                source_id,
                cycle_key,
                failures,
            });
        }
        tx.commit().await?;
        Ok(claimed)
    }

    /// Sends one final action; a panic in the client is a failure like a transport error.
    async fn send_final(&self, claimed: &Claimed, now: DateTime<Utc>) -> Settled {
        let Some(client) = self.finals.get(&claimed.source_id) else {
            let unsupported = FinalOutcome::Unsupported(
                "no call for it: the provider's API takes none from subsync, or this source \
                 has no [sources.api]"
                    .to_owned(),
            );
            return settled(Ok(unsupported), claimed, self, now);
        };
        let sent = AssertUnwindSafe(client.final_action(&claimed.call))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                Err(ProviderApiError::Transient(format!(
                    "the provider client panicked: {}",
                    panic_message(panic.as_ref())
                )))
            });
        settled(sent, claimed, self, now)
    }

    async fn record_final(&self, claimed: &Claimed, settled: &Settled) -> Result<(), DbError> {
        let action = claimed.call.action.as_str();
        let mut tx = self.db.pool().begin().await?;
        match settled {
            Settled::Outcome(outcome, answer) => {
                sqlx::query(
                    "UPDATE final_actions SET finished_at = now(), outcome = $3, answer = $4, last_error = NULL,
                            next_at = NULL
                     WHERE source_id = $1 AND cycle_key = $2",
                )
                .bind(&claimed.source_id)
                .bind(&claimed.cycle_key)
                .bind(outcome)
                .bind(answer)
                .execute(&mut *tx)
                .await?;
                // A cycle the provider says is paid is recovered; a payment recorded
                // while the call was out already settled the row (and keeps its words).
                sqlx::query(
                    "UPDATE retries SET final_action_at = now(), updated_at = now(),
                            status = CASE WHEN $5 THEN 'recovered' ELSE status END,
                            last_outcome = 'final action ' || $3 || ': ' || $4
                     WHERE source_id = $1 AND cycle_key = $2 AND final_action_at IS NULL",
                )
                .bind(&claimed.source_id)
                .bind(&claimed.cycle_key)
                .bind(action)
                .bind(format!("{outcome}: {answer}"))
                .bind(*outcome == "skipped")
                .execute(&mut *tx)
                .await?;
                metrics::counter!("subsync_final_actions_total", "source" => claimed.source_id.clone(),
                    "action" => action, "outcome" => *outcome)
                .increment(1);
                tracing::info!(retry_id = %format_args!("{}:{}", claimed.source_id, claimed.cycle_key),
                    action, outcome, "final action settled");
            }
            Settled::Again(at, error) => {
                sqlx::query(
                    "UPDATE final_actions SET next_at = $3, consecutive_failures = consecutive_failures + 1,
                            last_error = $4
                     WHERE source_id = $1 AND cycle_key = $2",
                )
                .bind(&claimed.source_id)
                .bind(&claimed.cycle_key)
                .bind(at)
                .bind(error)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE retries SET last_outcome = $3, updated_at = now()
                     WHERE source_id = $1 AND cycle_key = $2 AND final_action_at IS NULL",
                )
                .bind(&claimed.source_id)
                .bind(&claimed.cycle_key)
                .bind(format!(
                    "final action {action}: {error}; again at {}",
                    crate::dunning::schedule::stamp(*at)
                ))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

/// What a send leads to: an outcome to record, or another send later (after
/// `park_after` failures in a row, the outcome `failed`).
fn settled(
    sent: Result<FinalOutcome, ProviderApiError>,
    claimed: &Claimed,
    scheduler: &Scheduler,
    now: DateTime<Utc>,
) -> Settled {
    let error = match sent {
        Ok(FinalOutcome::Done(state)) => return Settled::Outcome("done", state),
        Ok(FinalOutcome::AlreadyDone(state)) => return Settled::Outcome("already_done", state),
        Ok(FinalOutcome::Paid(state)) => {
            return Settled::Outcome("skipped", format!("the provider reports it paid: {state}"));
        }
        Ok(FinalOutcome::Unsupported(why)) => return Settled::Outcome("unsupported", why),
        Err(e @ ProviderApiError::Rejected { .. }) => {
            return Settled::Outcome("refused", e.to_string());
        }
        Err(e) => e,
    };
    let failures = claimed.failures.saturating_add(1);
    let text = error.to_string();
    if i64::from(failures) >= i64::from(scheduler.park_after) {
        return Settled::Outcome(
            "failed",
            format!("{failures} sends in a row without a usable answer; the last: {text}"),
        );
    }
    let wait = match error {
        ProviderApiError::RateLimited {
            retry_after: Some(wait),
        } => wait.min(scheduler.waits.max_rate_limit),
        _ => scheduler.waits.failure,
    };
    Settled::Again(after(now, wait), text)
}

/// Why a pending final action must not be sent: `(paid, why)`. Read in the claiming
/// transaction, the row locked.
async fn skip_reason(
    tx: &mut sqlx::PgConnection,
    source_id: &str,
    cycle_key: &str,
    subscription_id: Option<&str>,
    action: FinalAction,
) -> Result<Option<(bool, String)>, sqlx::Error> {
    let paid: Option<(String,)> = sqlx::query_as(
        "SELECT attempt_id FROM billing_attempts
         WHERE source_id = $1 AND (cycle_id = $2 OR attempt_id = $2) AND status IN ('succeeded', 'refunded')
         LIMIT 1",
    )
    .bind(source_id)
    .bind(cycle_key)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((attempt,)) = paid {
        return Ok(Some((
            true,
            format!("paid before the final action: {attempt}"),
        )));
    }
    let Some(subscription_id) = subscription_id else {
        return Ok(None);
    };
    let status = super::subscription_status(tx, source_id, subscription_id).await?;
    let ended = matches!(status.as_deref(), Some("cancelled" | "expired"));
    let paused = status.as_deref() == Some("paused");
    if action != FinalAction::MarkUnpaid && (ended || (paused && action == FinalAction::Pause)) {
        let status = status.unwrap_or_default();
        return Ok(Some((
            false,
            format!("the subscription is already {status}"),
        )));
    }
    if action == FinalAction::MarkUnpaid {
        return Ok(None);
    }
    // Pause and cancel act on the subscription: once is enough for all its cycles.
    let earlier: Option<(String,)> = sqlx::query_as(
        "SELECT cycle_key FROM final_actions
         WHERE source_id = $1 AND subscription_id = $2 AND action = $3 AND cycle_key <> $4
           AND outcome IN ('done', 'already_done')
         LIMIT 1",
    )
    .bind(source_id)
    .bind(subscription_id)
    .bind(action.as_str())
    .bind(cycle_key)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(earlier.map(|(cycle,)| (false, format!("already carried out for cycle {cycle}"))))
}

async fn settle_skipped(
    tx: &mut sqlx::PgConnection,
    source_id: &str,
    cycle_key: &str,
    subscription_id: Option<&str>,
    action: FinalAction,
    paid: bool,
    why: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO final_actions AS f (source_id, cycle_key, action, subscription_id, idempotency_key,
                                         finished_at, outcome, answer)
         VALUES ($1, $2, $3, $4, '', now(), 'skipped', $5)
         ON CONFLICT (source_id, cycle_key) DO UPDATE
         SET finished_at = now(), outcome = 'skipped', answer = $5, next_at = NULL",
    )
    .bind(source_id)
    .bind(cycle_key)
    .bind(action.as_str())
    .bind(subscription_id)
    .bind(why)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE retries SET final_action_at = now(), updated_at = now(),
                status = CASE WHEN $4 THEN 'recovered' ELSE status END,
                last_outcome = 'final action ' || $3 || ' skipped: ' || $5
         WHERE source_id = $1 AND cycle_key = $2",
    )
    .bind(source_id)
    .bind(cycle_key)
    .bind(action.as_str())
    .bind(paid)
    .bind(why)
    .execute(&mut *tx)
    .await?;
    metrics::counter!("subsync_final_actions_total", "source" => source_id.to_owned(),
        "action" => action.as_str(), "outcome" => "skipped")
    .increment(1);
    Ok(())
}
