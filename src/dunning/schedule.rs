//! Retry rows, written inside the ledger's reconcile transaction: a failed attempt
//! schedules (or re-decides) the retry of its cycle; a paid cycle recovers it; an active
//! subscription re-arms retries that were waiting for the customer.

use std::{collections::HashMap, sync::Arc};

use chrono::{DateTime, Utc};

use super::decline::{self, DeclineBucket};
use super::policy::{Decision, RetryPolicy};
use crate::canonical::AttemptStatus;
use crate::config::{ProviderKind, SourceSettings};

/// How a source's failed payments are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// subsync calls the provider's retry API.
    Call,
    /// The provider retries on its own (PayNow, Rebilly): subsync tracks its schedule.
    ProviderManaged,
}

#[derive(Debug, Clone)]
pub struct SourcePlan {
    pub policy: RetryPolicy,
    pub mode: Mode,
}

/// The retry plans of every configured source that has one.
#[derive(Debug, Clone, Default)]
pub struct Dunning {
    plans: Arc<HashMap<String, SourcePlan>>,
}

impl Dunning {
    /// Sources with a retry API get `Call` (when `api` is configured), PayNow and Rebilly
    /// get `ProviderManaged`; the generic schemes have no dunning.
    pub fn from_settings(sources: &[SourceSettings]) -> Self {
        let plans = sources
            .iter()
            .filter_map(|s| {
                let mode = match s.provider {
                    ProviderKind::Stripe
                    | ProviderKind::Shopify
                    | ProviderKind::Appstle
                    | ProviderKind::Polar
                        if s.api.is_some() =>
                    {
                        Mode::Call
                    }
                    ProviderKind::Paynow | ProviderKind::Rebilly => Mode::ProviderManaged,
                    _ => return None,
                };
                Some((
                    s.id.clone(),
                    SourcePlan {
                        policy: RetryPolicy::new(&s.retry),
                        mode,
                    },
                ))
            })
            .collect();
        Self {
            plans: Arc::new(plans),
        }
    }

    pub fn plan(&self, source_id: &str) -> Option<&SourcePlan> {
        self.plans.get(source_id)
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

/// The row a decision leads to.
pub(crate) fn row_for(
    decision: &Decision,
) -> (&'static str, Option<DateTime<Utc>>, Option<&'static str>) {
    match decision {
        Decision::RetryAt(at) => ("scheduled", Some(*at), None),
        Decision::AwaitCustomer => ("awaiting_customer", None, None),
        Decision::Stop { action, reason } => {
            let status = if *reason == "never_retry" {
                "stopped"
            } else {
                "exhausted"
            };
            (status, None, Some(action.as_str()))
        }
    }
}

/// Writes the retry consequences of a reconciled batch. Runs in the caller's transaction.
pub async fn on_attempts(
    tx: &mut sqlx::PgConnection,
    dunning: &Dunning,
    facts: &[AttemptFact],
) -> Result<(), sqlx::Error> {
    for fact in facts {
        let Some(plan) = dunning.plan(&fact.source_id) else {
            continue;
        };
        match fact.status {
            AttemptStatus::Succeeded | AttemptStatus::Refunded => recover(tx, fact).await?,
            AttemptStatus::Failed => schedule_failure(tx, plan, fact).await?,
            _ => {}
        }
    }
    Ok(())
}

/// A paid cycle needs no more retries; without a cycle id (Shopify), a later success of
/// the same subscription recovers the failures before it.
async fn recover(tx: &mut sqlx::PgConnection, fact: &AttemptFact) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE retries SET status = 'recovered', due_at = NULL, last_outcome = 'paid: ' || $3,
                updated_at = now()
         WHERE source_id = $1
           AND status IN ('scheduled', 'in_flight', 'awaiting_customer', 'provider_managed')
           AND (cycle_key = $2
                OR (cycle_id IS NULL AND $4::text IS NOT NULL AND subscription_id = $4
                    AND first_failed_at <= COALESCE($5, now())))",
    )
    .bind(&fact.source_id)
    .bind(fact.cycle_key())
    .bind(&fact.attempt_id)
    .bind(&fact.subscription_id)
    .bind(fact.attempted_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn schedule_failure(
    tx: &mut sqlx::PgConnection,
    plan: &SourcePlan,
    fact: &AttemptFact,
) -> Result<(), sqlx::Error> {
    let existing: Option<(String, i32, DateTime<Utc>)> = sqlx::query_as(
        "SELECT status, retries_done, first_failed_at FROM retries
         WHERE source_id = $1 AND cycle_key = $2 FOR UPDATE",
    )
    .bind(&fact.source_id)
    .bind(fact.cycle_key())
    .fetch_optional(&mut *tx)
    .await?;
    let now = fact.attempted_at.unwrap_or_else(Utc::now);
    let (retries_done, first_failed_at) = match &existing {
        // Settled cycles stay settled; a failure while our call is in flight is its answer.
        Some((status, ..))
            if matches!(
                status.as_str(),
                "recovered" | "completed" | "exhausted" | "stopped"
            ) =>
        {
            return Ok(());
        }
        Some((_, done, first)) => (u32::try_from(*done).unwrap_or(0), (*first).min(now)),
        None => (0, now),
    };
    let bucket: DeclineBucket =
        decline::classify(fact.error_code.as_deref(), &fact.provider_status);
    let (status, due_at, final_action) = match plan.mode {
        Mode::ProviderManaged => ("provider_managed", fact.next_attempt_at, None),
        Mode::Call => row_for(
            &plan
                .policy
                .decide(bucket, retries_done, first_failed_at, now),
        ),
    };
    let outcome = format!(
        "failed: {}",
        fact.error_code.as_deref().unwrap_or(&fact.provider_status)
    );
    sqlx::query(
        "INSERT INTO retries (source_id, cycle_key, subscription_id, attempt_id, cycle_id, status, bucket,
                              retries_done, first_failed_at, due_at, policy, final_action, last_outcome)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (source_id, cycle_key) DO UPDATE SET
             subscription_id = COALESCE(excluded.subscription_id, retries.subscription_id),
             attempt_id = excluded.attempt_id, status = excluded.status, bucket = excluded.bucket,
             first_failed_at = excluded.first_failed_at, due_at = excluded.due_at,
             final_action = excluded.final_action, last_outcome = excluded.last_outcome,
             updated_at = now()",
    )
    .bind(&fact.source_id)
    .bind(fact.cycle_key())
    .bind(&fact.subscription_id)
    .bind(&fact.attempt_id)
    .bind(&fact.cycle_id)
    .bind(status)
    .bind(bucket.as_str())
    .bind(i32::try_from(retries_done).unwrap_or(i32::MAX))
    .bind(first_failed_at)
    .bind(due_at)
    .bind(plan.policy.describe())
    .bind(final_action)
    .bind(outcome)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A subscription that became active again (new payment method, completed challenge)
/// re-arms the retries that were waiting for its customer: due at once.
pub async fn on_subscription_active(
    tx: &mut sqlx::PgConnection,
    dunning: &Dunning,
    source_id: &str,
    subscription_id: &str,
) -> Result<(), sqlx::Error> {
    if dunning.plan(source_id).is_none_or(|p| p.mode != Mode::Call) {
        return Ok(());
    }
    sqlx::query(
        "UPDATE retries SET status = 'scheduled', due_at = now(), last_outcome = 're-armed: subscription active',
                updated_at = now()
         WHERE source_id = $1 AND subscription_id = $2 AND status = 'awaiting_customer'",
    )
    .bind(source_id)
    .bind(subscription_id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
