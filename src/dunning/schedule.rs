//! Retry rows, written inside the ledger's reconcile transaction: a failed attempt
//! schedules (or re-decides) the retry of its cycle; a paid cycle recovers it; an active
//! subscription re-arms retries that were waiting for the customer.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use chrono::{DateTime, Utc};

use super::decisions::{self, Failure};
use super::decline::{self, DeclineBucket};
use super::policy::{Decision, RetryPolicy};
use super::status::RetryStatus;
use crate::canonical::AttemptStatus;
use crate::config::SourceSettings;
use crate::providers::{Sources, contract::DunningMode};

#[derive(Debug, Clone)]
pub struct SourcePlan {
    pub policy: RetryPolicy,
    /// `CallsApi` or `ProviderManaged` (sources without dunning have no plan).
    pub mode: DunningMode,
}

/// The retry plans of every configured source that has one, and the sources whose
/// missing money is read from their API: the per-source rules of what reconciliation
/// writes beside the ledger in its transaction (retry rows, money lookups).
#[derive(Debug, Clone, Default)]
pub struct Dunning {
    plans: Arc<HashMap<String, SourcePlan>>,
    money_lookups: Arc<HashSet<String>>,
}

impl Dunning {
    /// The plan of every source with dunning: its mode comes from its provider (see
    /// `providers::Source::dunning_mode`), its policy from `[sources.retry]`.
    pub fn new(sources: &Sources, settings: &[SourceSettings]) -> Self {
        let plans = settings
            .iter()
            .filter_map(|s| {
                let mode = sources.get(&s.id)?.dunning_mode();
                let plan = SourcePlan {
                    policy: RetryPolicy::new(&s.retry),
                    mode,
                };
                (mode != DunningMode::None).then(|| (s.id.clone(), plan))
            })
            .collect();
        let money_lookups = settings
            .iter()
            .filter(|s| {
                sources
                    .get(&s.id)
                    .is_some_and(|source| source.money_client().is_some())
            })
            .map(|s| s.id.clone())
            .collect();
        Self {
            plans: Arc::new(plans),
            money_lookups: Arc::new(money_lookups),
        }
    }

    pub fn plan(&self, source_id: &str) -> Option<&SourcePlan> {
        self.plans.get(source_id)
    }

    /// Whether an attempt of `source_id` stored without its money gets a money lookup (the
    /// source has a money client: Shopify or Appstle with `[sources.api]`).
    pub fn looks_up_money(&self, source_id: &str) -> bool {
        self.money_lookups.contains(source_id)
    }
}

/// An attempt as reconciliation left it, with what dunning needs to know.
#[derive(Debug, Clone)]
pub struct AttemptFact {
    pub source_id: String,
    pub attempt_id: String,
    pub cycle_id: Option<String>,
    pub subscription_id: Option<String>,
    /// The stored status after this batch.
    pub status: AttemptStatus,
    /// The failure this batch brought, when the stored status is that failure.
    pub error_code: Option<String>,
    pub provider_status: String,
    pub attempted_at: Option<DateTime<Utc>>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

impl AttemptFact {
    pub fn cycle_key(&self) -> &str {
        self.cycle_id.as_deref().unwrap_or(&self.attempt_id)
    }
}

/// The cycles subsync's own retry calls were made for, by the idempotency key each call
/// sent: `(source, key)` → the `retry_calls` row's `cycle_key`, for the pairs that are
/// subsync's. One statement for the whole batch, in the caller's transaction.
///
/// A provider that echoes the key but names no cycle (Shopify) reports the attempt a
/// retry created as a new attempt; with this, reconciliation gives it the cycle of the
/// retry that created it, so its outcome lands on that cycle's retry row (counts add up,
/// exhaustion at `max_attempts`) instead of opening a row of its own. The call row is
/// committed before the call is made (see `scheduler::Scheduler::claim`), so an attempt
/// created by the call always finds it, whatever order its events come in.
pub async fn cycles_of_retry_keys(
    tx: &mut sqlx::PgConnection,
    keys: &[(&str, &str)],
) -> Result<HashMap<(String, String), String>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let sources: Vec<&str> = keys.iter().map(|k| k.0).collect();
    let idempotency_keys: Vec<&str> = keys.iter().map(|k| k.1).collect();
    // Keys are derived from (source, cycle, retry number), so a key names one cycle; the
    // re-sends of a call share its row.
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT DISTINCT ON (c.source_id, c.idempotency_key) c.source_id, c.idempotency_key, c.cycle_key
         FROM retry_calls c JOIN UNNEST($1::text[], $2::text[]) AS k(source_id, idempotency_key)
              USING (source_id, idempotency_key)
         ORDER BY c.source_id, c.idempotency_key, c.retry_number",
    )
    .persistent(false)
    .bind(&sources)
    .bind(&idempotency_keys)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(source, key, cycle)| ((source, key), cycle))
        .collect())
}

/// The row a decision leads to.
pub(crate) fn row_for(
    decision: &Decision,
) -> (RetryStatus, Option<DateTime<Utc>>, Option<&'static str>) {
    match decision {
        Decision::RetryAt(at) => (RetryStatus::Scheduled, Some(*at), None),
        Decision::AwaitCustomer => (RetryStatus::AwaitingCustomer, None, None),
        Decision::Stop { action, reason } => {
            let status = if *reason == "never_retry" {
                RetryStatus::Stopped
            } else {
                RetryStatus::Exhausted
            };
            (status, None, Some(action.as_str()))
        }
    }
}

/// Why a decision was made, for the retry's timeline: the code and the bucket it chose,
/// the policy's rule, and what follows (`insufficient_funds → retry_soon [backoff 2 of 8:
/// 6h x2^1 cap 4d, within 14d] → retry at 2026-12-05T18:00:00Z`).
pub(crate) fn explain(
    policy: &RetryPolicy,
    code: &str,
    bucket: DeclineBucket,
    retries_done: u32,
    decision: &Decision,
) -> String {
    let then = match decision {
        Decision::RetryAt(at) => format!("retry at {}", stamp(*at)),
        Decision::AwaitCustomer => "await the customer".to_owned(),
        Decision::Stop { action, reason } => format!("stop ({reason}), then {}", action.as_str()),
    };
    let rule = policy.rule(bucket, retries_done);
    format!("{code} → {} [{rule}] → {then}", bucket.as_str())
}

/// A time as the timeline prints it (RFC 3339, seconds, `Z`).
pub(crate) fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Writes the retry consequences of a reconciled batch in the caller's transaction, in a
/// fixed number of statements whatever the batch's size: failures first, then payments, so
/// that within a batch a paid cycle ends recovered whichever of its events came first.
pub async fn on_attempts(
    tx: &mut sqlx::PgConnection,
    dunning: &Dunning,
    facts: &[AttemptFact],
) -> Result<(), sqlx::Error> {
    let with_plan = |statuses: &[AttemptStatus]| -> Vec<(&AttemptFact, &SourcePlan)> {
        facts
            .iter()
            .filter(|f| statuses.contains(&f.status))
            .filter_map(|f| Some((f, dunning.plan(&f.source_id)?)))
            .collect()
    };
    schedule_failures(tx, &with_plan(&[AttemptStatus::Failed])).await?;
    let paid = with_plan(&[AttemptStatus::Succeeded, AttemptStatus::Refunded]);
    recover(tx, paid.iter().map(|(f, _)| *f)).await
}

/// Open retries of the cycles these payments paid are recovered; without a cycle id
/// (Shopify), a later success of the same subscription recovers the failures before it.
/// A row paid by several attempts of the batch names the first of them.
async fn recover<'a>(
    tx: &mut sqlx::PgConnection,
    paid: impl Iterator<Item = &'a AttemptFact>,
) -> Result<(), sqlx::Error> {
    let (mut source, mut cycle, mut attempt, mut subscription, mut at) =
        (vec![], vec![], vec![], vec![], vec![]);
    for fact in paid {
        source.push(fact.source_id.as_str());
        cycle.push(fact.cycle_key());
        attempt.push(fact.attempt_id.as_str());
        subscription.push(fact.subscription_id.as_deref());
        at.push(fact.attempted_at);
    }
    if source.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "WITH paid AS (
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
                 AS p(source_id, cycle_key, attempt_id, subscription_id, attempted_at)),
         hit AS (
             SELECT source_id, cycle_key, min(attempt_id) AS attempt_id, bool_or(pending) AS pending FROM (
                 SELECT r.source_id, r.cycle_key, p.attempt_id, false AS pending
                 FROM paid p JOIN retries r USING (source_id, cycle_key)
                 WHERE r.status IN ('scheduled', 'in_flight', 'awaiting_customer', 'provider_managed', 'parked')
                 UNION ALL
                 SELECT r.source_id, r.cycle_key, p.attempt_id, false
                 FROM paid p JOIN retries r USING (source_id, subscription_id)
                 WHERE r.status IN ('scheduled', 'in_flight', 'awaiting_customer', 'provider_managed', 'parked')
                   AND r.cycle_id IS NULL AND r.first_failed_at <= COALESCE(p.attempted_at, now())
                 UNION ALL
                 -- Exhausted with the final action still pending: the payment cancels it.
                 SELECT r.source_id, r.cycle_key, p.attempt_id, true
                 FROM paid p JOIN retries r ON r.source_id = p.source_id
                      AND (r.cycle_key = p.cycle_key
                           OR (r.cycle_id IS NULL AND r.subscription_id = p.subscription_id
                               AND r.first_failed_at <= COALESCE(p.attempted_at, now())))
                 WHERE r.status IN ('exhausted', 'stopped')
                   AND r.final_action IN ('mark_unpaid', 'pause', 'cancel') AND r.final_action_at IS NULL
             ) h GROUP BY source_id, cycle_key),
         recovered AS (
             UPDATE retries r SET status = 'recovered', due_at = NULL, expires_at = NULL,
                    final_action_at = CASE WHEN hit.pending THEN now() ELSE r.final_action_at END,
                    last_outcome = CASE WHEN hit.pending
                        THEN 'paid before the final action (' || r.final_action || '): ' || hit.attempt_id
                        ELSE 'paid: ' || hit.attempt_id END,
                    updated_at = now()
             FROM hit
             WHERE r.source_id = hit.source_id AND r.cycle_key = hit.cycle_key
               AND (r.status IN ('scheduled', 'in_flight', 'awaiting_customer', 'provider_managed', 'parked')
                    OR (hit.pending AND r.status IN ('exhausted', 'stopped') AND r.final_action_at IS NULL))
             RETURNING r.source_id, r.cycle_key, r.final_action, r.subscription_id, hit.pending, hit.attempt_id)
         -- A final action being sent right now finishes as it must; one not yet sent never is.
         INSERT INTO final_actions AS f (source_id, cycle_key, action, subscription_id, idempotency_key,
                                         finished_at, outcome, answer)
         SELECT source_id, cycle_key, final_action, subscription_id, '', now(), 'skipped',
                'paid before the final action: ' || attempt_id
         FROM recovered WHERE pending
         ON CONFLICT (source_id, cycle_key) DO NOTHING",
    )
    .persistent(false)
    .bind(&source)
    .bind(&cycle)
    .bind(&attempt)
    .bind(&subscription)
    .bind(&at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A cycle's retry row as this batch leaves it.
struct RetryRow<'a> {
    fact: &'a AttemptFact,
    plan: &'a SourcePlan,
    subscription_id: Option<&'a str>,
    status: &'static str,
    bucket: DeclineBucket,
    retries_done: i32,
    first_failed_at: DateTime<Utc>,
    due_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    final_action: Option<&'static str>,
    /// Why: the bucket and the code that chose it, the rule, what follows.
    reason: String,
}

/// Schedules (or re-decides) the retry of every failed cycle: the stored rows are locked
/// and read in one statement, each failure is decided in order against the state the
/// ones before it left, and the results are written in one statement.
async fn schedule_failures(
    tx: &mut sqlx::PgConnection,
    failed: &[(&AttemptFact, &SourcePlan)],
) -> Result<(), sqlx::Error> {
    if failed.is_empty() {
        return Ok(());
    }
    let sources: Vec<&str> = failed.iter().map(|(f, _)| f.source_id.as_str()).collect();
    let cycles: Vec<&str> = failed.iter().map(|(f, _)| f.cycle_key()).collect();
    let stored: Vec<(String, String, String, i32, DateTime<Utc>)> = sqlx::query_as(
        "SELECT r.source_id, r.cycle_key, r.status, r.retries_done, r.first_failed_at
         FROM retries r JOIN UNNEST($1::text[], $2::text[]) AS k(source_id, cycle_key)
              USING (source_id, cycle_key)
         ORDER BY r.source_id, r.cycle_key
         FOR UPDATE OF r",
    )
    // Planned with each call's values and the table's size now: a plan cached while the
    // table was small would keep scanning it whole.
    .persistent(false)
    .bind(&sources)
    .bind(&cycles)
    .fetch_all(&mut *tx)
    .await?;
    // Each cycle's (status, retries done, first failure) as the failures before left it.
    let mut state: HashMap<(&str, &str), (&str, i32, DateTime<Utc>)> = stored
        .iter()
        .map(|(source, cycle, status, done, first)| {
            (
                (source.as_str(), cycle.as_str()),
                (status.as_str(), *done, *first),
            )
        })
        .collect();
    let mut rows: BTreeMap<(&str, &str), RetryRow> = BTreeMap::new();
    let mut decided = Vec::new();
    for &(fact, plan) in failed {
        let key = (fact.source_id.as_str(), fact.cycle_key());
        let now = fact.attempted_at.unwrap_or_else(Utc::now);
        let (stored, retries_done, first_failed_at) = match state.get(&key) {
            // Settled cycles stay settled; a failure while our call is in flight is its answer.
            Some((status, ..))
                if matches!(*status, "recovered" | "completed" | "exhausted" | "stopped") =>
            {
                continue;
            }
            Some((status, done, first)) => (Some(*status), *done, (*first).min(now)),
            None => (None, 0, now),
        };
        let bucket = decline::classify(fact.error_code.as_deref(), &fact.provider_status);
        let code = fact.error_code.as_deref().unwrap_or(&fact.provider_status);
        let done = u32::try_from(retries_done).unwrap_or(0);
        let policy = &plan.policy;
        let (status, due_at, final_action, reason) = match plan.mode {
            // Sources without dunning have no plan (see `Dunning::new`).
            DunningMode::None => continue,
            DunningMode::ProviderManaged => {
                let deadline = policy.deadline(RetryStatus::ProviderManaged, first_failed_at);
                let reason = format!(
                    "failed: {code} → {}; the provider retries itself{}",
                    bucket.as_str(),
                    deadline
                        .map(|d| format!(", settled by {}", stamp(d)))
                        .unwrap_or_default()
                );
                (
                    RetryStatus::ProviderManaged,
                    fact.next_attempt_at,
                    None,
                    reason,
                )
            }
            DunningMode::CallsApi => {
                let failure = Failure {
                    source_id: &fact.source_id,
                    cycle_key: fact.cycle_key(),
                    code,
                    bucket,
                    retries_done: done,
                    first_failed_at,
                    now,
                };
                let (decision, logged) = failure.decide(policy);
                let (status, due_at, action) = row_for(&decision);
                let reason = explain(policy, code, bucket, done, &decision);
                // A parked retry waits for its operator (below): not the policy's decision.
                if !(status == RetryStatus::Scheduled && stored == Some("parked")) {
                    decided.push(logged);
                }
                (status, due_at, action, format!("failed: {reason}"))
            }
        };
        // A parked retry waits for its operator: a new failure does not make our calls
        // work again (a hard decline or exhaustion still settles it).
        let parked = RetryStatus::Parked.as_str();
        let (status, due_at) = match status {
            RetryStatus::Scheduled if stored == Some(parked) => (RetryStatus::Parked, None),
            other => (other, due_at),
        };
        let since = match status {
            RetryStatus::ProviderManaged => first_failed_at,
            _ => now,
        };
        let expires_at = policy.deadline(status, since);
        let status = status.as_str();
        state.insert(key, (status, retries_done, first_failed_at));
        let earlier = rows.remove(&key).and_then(|r| r.subscription_id);
        let row = RetryRow {
            fact,
            plan,
            subscription_id: fact.subscription_id.as_deref().or(earlier),
            status,
            bucket,
            retries_done,
            first_failed_at,
            due_at,
            expires_at,
            final_action,
            reason,
        };
        rows.insert(key, row);
    }
    if rows.is_empty() {
        return Ok(());
    }
    let rows: Vec<&RetryRow> = rows.values().collect();
    fn column<'r, T>(rows: &[&'r RetryRow<'r>], f: impl Fn(&'r RetryRow<'r>) -> T) -> Vec<T> {
        rows.iter().map(|r| f(r)).collect()
    }
    sqlx::query(
        "INSERT INTO retries (source_id, cycle_key, subscription_id, attempt_id, cycle_id, status, bucket,
                              retries_done, first_failed_at, due_at, policy, final_action, last_outcome,
                              expires_at)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                              $7::text[], $8::int4[], $9::timestamptz[], $10::timestamptz[],
                              $11::text[], $12::text[], $13::text[], $14::timestamptz[])
         ON CONFLICT (source_id, cycle_key) DO UPDATE SET
             subscription_id = COALESCE(excluded.subscription_id, retries.subscription_id),
             attempt_id = excluded.attempt_id, status = excluded.status, bucket = excluded.bucket,
             first_failed_at = excluded.first_failed_at, due_at = excluded.due_at,
             final_action = excluded.final_action, last_outcome = excluded.last_outcome,
             expires_at = excluded.expires_at, updated_at = now()",
    )
    .bind(column(&rows, |r| r.fact.source_id.as_str()))
    .bind(column(&rows, |r| r.fact.cycle_key()))
    .bind(column(&rows, |r| r.subscription_id))
    .bind(column(&rows, |r| r.fact.attempt_id.as_str()))
    .bind(column(&rows, |r| r.fact.cycle_id.as_deref()))
    .bind(column(&rows, |r| r.status))
    .bind(column(&rows, |r| r.bucket.as_str()))
    .bind(column(&rows, |r| r.retries_done))
    .bind(column(&rows, |r| r.first_failed_at))
    .bind(column(&rows, |r| r.due_at))
    .bind(column(&rows, |r| r.plan.policy.describe()))
    .bind(column(&rows, |r| r.final_action))
    .bind(column(&rows, |r| r.reason.as_str()))
    .bind(column(&rows, |r| r.expires_at))
    .execute(&mut *tx)
    .await?;
    decisions::log(tx, &decided).await
}

/// A subscription that became active again (new payment method, completed challenge)
/// re-arms the retries that were waiting for its customer: due at once.
pub async fn on_subscription_active(
    tx: &mut sqlx::PgConnection,
    dunning: &Dunning,
    source_id: &str,
    subscription_id: &str,
) -> Result<(), sqlx::Error> {
    if dunning
        .plan(source_id)
        .is_none_or(|p| p.mode != DunningMode::CallsApi)
    {
        return Ok(());
    }
    sqlx::query(
        "UPDATE retries SET status = 'scheduled', due_at = now(), expires_at = NULL,
                last_outcome = 're-armed: subscription active', updated_at = now()
         WHERE source_id = $1 AND subscription_id = $2 AND status = 'awaiting_customer'",
    )
    .bind(source_id)
    .bind(subscription_id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A provider that retries itself (PayNow, Rebilly) ends its dunning by cancelling,
/// pausing or failing the subscription: the open provider-managed retries of
/// `subscriptions` (`(source, subscription)`: those this batch changed or failed) whose
/// stored subscription has ended so end there, with the provider's final state recorded
/// as their final action, carried out by it. Read from the stored status, so it holds
/// whichever of the failure and the cancellation is reconciled first. One statement.
pub async fn follow_provider_ends(
    tx: &mut sqlx::PgConnection,
    dunning: &Dunning,
    subscriptions: &[(&str, &str)],
) -> Result<(), sqlx::Error> {
    let managed: Vec<&(&str, &str)> = subscriptions
        .iter()
        .filter(|(source, _)| {
            dunning
                .plan(source)
                .is_some_and(|p| p.mode == DunningMode::ProviderManaged)
        })
        .collect();
    if managed.is_empty() {
        return Ok(());
    }
    let sources: Vec<&str> = managed.iter().map(|k| k.0).collect();
    let ids: Vec<&str> = managed.iter().map(|k| k.1).collect();
    sqlx::query(
        "WITH ended AS (
             UPDATE retries r SET status = 'exhausted', due_at = NULL, expires_at = NULL,
                    final_action = a.action, final_action_at = now(), updated_at = now(),
                    last_outcome = 'final action ' || a.action || ' by the provider: its own dunning left the subscription ' || s.status
             FROM subscriptions s
                  JOIN (SELECT DISTINCT * FROM UNNEST($1::text[], $2::text[]) AS k(source_id, subscription_id)) k
                    USING (source_id, subscription_id)
                  CROSS JOIN LATERAL (SELECT CASE s.status WHEN 'paused' THEN 'pause'
                                                           WHEN 'failed' THEN 'mark_unpaid'
                                                           ELSE 'cancel' END AS action) a
             WHERE r.source_id = s.source_id AND r.subscription_id = s.subscription_id
               AND r.status = 'provider_managed' AND s.status IN ('cancelled', 'expired', 'paused', 'failed')
             RETURNING r.source_id, r.cycle_key, r.subscription_id, r.final_action, s.status)
         INSERT INTO final_actions (source_id, cycle_key, action, subscription_id, idempotency_key,
                                    finished_at, outcome, answer)
         SELECT source_id, cycle_key, final_action, subscription_id, '', now(), 'already_done',
                'the provider''s own dunning left the subscription ' || status
         FROM ended
         ON CONFLICT (source_id, cycle_key) DO NOTHING",
    )
    .persistent(false)
    .bind(&sources)
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
