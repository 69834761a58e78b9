//! Read side of the ledger: what people and tools look at, and the invariant check.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::db::{Db, DbError};

/// One billing attempt as shown to people and tools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AttemptView {
    pub source_id: String,
    pub attempt_id: String,
    pub subscription_id: Option<String>,
    pub cycle_id: Option<String>,
    pub status: String,
    pub provider_status: String,
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub decline_bucket: Option<String>,
    pub attempted_at: Option<DateTime<Utc>>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// A subscription with its attempts, balances and scheduled retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SubscriptionView {
    pub source_id: String,
    pub subscription_id: String,
    /// `null` while only attempts are known (they can arrive before the "created" event).
    pub status: Option<String>,
    pub provider_status: Option<String>,
    pub currency: Option<String>,
    pub attempts: Vec<AttemptView>,
    /// account → currency → balance in minor units.
    pub balances: BTreeMap<String, BTreeMap<String, i64>>,
    /// The open payment retry (dunning); `null` when none is open.
    pub retry: Option<crate::dunning::views::RetryView>,
    /// The latest final action of its dunning (mark unpaid, pause, cancel): when it was
    /// carried out and the provider's answer; `null` when none was due.
    pub final_action: Option<crate::dunning::views::FinalActionView>,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AttemptsQuery {
    pub source_id: Option<String>,
    pub subscription_id: Option<String>,
    pub status: Option<String>,
    pub limit: Option<i64>,
}

const ATTEMPT_COLUMNS: &str = "source_id, attempt_id, subscription_id, cycle_id, status, provider_status,
    amount_minor, currency, error_code, error_message, decline_bucket, attempted_at, next_attempt_at";

impl Db {
    /// The subscription's view, or `None` when nothing at all is known about it.
    pub async fn subscription(
        &self,
        source_id: &str,
        subscription_id: &str,
    ) -> Result<Option<SubscriptionView>, DbError> {
        let header: Option<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT status, provider_status, currency FROM subscriptions WHERE source_id = $1 AND subscription_id = $2",
        )
        .bind(source_id)
        .bind(subscription_id)
        .fetch_optional(self.pool())
        .await?;
        let attempts = self
            .billing_attempts(&AttemptsQuery {
                source_id: Some(source_id.into()),
                subscription_id: Some(subscription_id.into()),
                limit: Some(1000),
                ..Default::default()
            })
            .await?;
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT account, currency, sum(amount_minor)::int8 FROM postings
             WHERE source_id = $1 AND subscription_id = $2 GROUP BY account, currency ORDER BY 1, 2",
        )
        .bind(source_id)
        .bind(subscription_id)
        .fetch_all(self.pool())
        .await?;
        if header.is_none() && attempts.is_empty() && rows.is_empty() {
            return Ok(None);
        }
        let mut balances: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        for (account, currency, sum) in rows {
            balances.entry(account).or_default().insert(currency, sum);
        }
        let (status, provider_status, currency) = match header {
            Some((s, p, c)) => (Some(s), Some(p), c),
            None => (None, None, None),
        };
        Ok(Some(SubscriptionView {
            source_id: source_id.into(),
            subscription_id: subscription_id.into(),
            status,
            provider_status,
            currency,
            attempts,
            balances,
            retry: crate::dunning::views::open_for(self, source_id, subscription_id).await?,
            final_action: crate::dunning::views::final_action_of(self, source_id, subscription_id)
                .await?,
        }))
    }

    /// Billing attempts matching the filters, newest attempt first.
    pub async fn billing_attempts(&self, q: &AttemptsQuery) -> Result<Vec<AttemptView>, DbError> {
        let sql = format!(
            "SELECT {ATTEMPT_COLUMNS} FROM billing_attempts
             WHERE ($1::text IS NULL OR source_id = $1)
               AND ($2::text IS NULL OR subscription_id = $2)
               AND ($3::text IS NULL OR status = $3)
             ORDER BY attempted_at DESC NULLS LAST, source_id, attempt_id
             LIMIT $4"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(q.source_id.as_deref())
            .bind(q.subscription_id.as_deref())
            .bind(q.status.as_deref())
            .bind(q.limit.unwrap_or(100).clamp(1, 1000))
            .fetch_all(self.pool())
            .await?)
    }

    /// Checks every journal invariant; returns one line per breach (empty when sound).
    ///
    /// An entry that a later `correction` of its subscription (or, without one, of its
    /// attempt) compensated is not held to its attempt's current status and amount: the
    /// correction moved the balances to those of the recomputed history (`subsync replay
    /// --correct`), and the entry itself is never changed.
    pub async fn verify_ledger(&self) -> Result<Vec<String>, DbError> {
        // No `OR` inside an anti-join: it forces a nested loop (quadratic; hours at 200k
        // attempts), where two `NOT EXISTS` are two hash anti-joins.
        let checks: [(&str, &str); 8] = [
            (
                "entry does not balance per currency",
                "SELECT entry_id::text FROM postings GROUP BY entry_id, currency HAVING sum(amount_minor) <> 0",
            ),
            (
                "entry does not have exactly two postings (a correction: at least two)",
                "SELECT e.id::text FROM journal_entries e LEFT JOIN postings p ON p.entry_id = e.id
                 GROUP BY e.id, e.kind
                 HAVING count(p.id) <> 2 AND NOT (e.kind = 'correction' AND count(p.id) > 2)",
            ),
            (
                "succeeded or refunded attempt with an amount has no collection",
                "SELECT a.source_id || '/' || a.attempt_id FROM billing_attempts a
                 WHERE a.status IN ('succeeded', 'refunded') AND a.amount_minor IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM journal_entries e WHERE e.source_id = a.source_id
                                   AND e.attempt_id = a.attempt_id AND e.kind = 'collection')
                   AND NOT EXISTS (SELECT 1 FROM journal_entries e WHERE e.source_id = a.source_id
                                   AND e.cycle_id = a.cycle_id AND e.kind = 'collection')",
            ),
            (
                "refunded attempt has no refund entry",
                "SELECT a.source_id || '/' || a.attempt_id FROM billing_attempts a
                 WHERE a.status = 'refunded' AND a.amount_minor IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM journal_entries e WHERE e.source_id = a.source_id
                                   AND e.attempt_id = a.attempt_id AND e.kind = 'refund')
                   AND NOT EXISTS (SELECT 1 FROM journal_entries e WHERE e.source_id = a.source_id
                                   AND e.cycle_id = a.cycle_id AND e.kind = 'refund')",
            ),
            (
                "entry for an attempt that never succeeded",
                "SELECT e.id::text FROM journal_entries e JOIN billing_attempts a
                   ON a.source_id = e.source_id AND a.attempt_id = e.attempt_id
                 WHERE e.kind <> 'correction'
                   AND (a.status NOT IN ('succeeded', 'refunded')
                        OR (e.kind = 'refund' AND e.refund_id IS NULL AND a.status <> 'refunded'))
                   AND NOT EXISTS (SELECT 1 FROM journal_entries c WHERE c.kind = 'correction'
                                   AND c.source_id = e.source_id AND c.subscription_id = a.subscription_id
                                   AND c.id > e.id)
                   AND NOT EXISTS (SELECT 1 FROM journal_entries c WHERE c.kind = 'correction'
                                   AND c.source_id = e.source_id AND c.attempt_id = e.attempt_id
                                   AND c.id > e.id)",
            ),
            (
                "posting amount differs from its attempt's amount",
                "SELECT p.id::text FROM postings p JOIN journal_entries e ON e.id = p.entry_id
                 JOIN billing_attempts a ON a.source_id = e.source_id AND a.attempt_id = e.attempt_id
                 WHERE e.kind <> 'correction'
                   AND ((e.kind = 'collection' AND abs(p.amount_minor) <> a.amount_minor)
                        OR abs(p.amount_minor) > a.amount_minor OR p.currency <> a.currency)
                   AND NOT EXISTS (SELECT 1 FROM journal_entries c WHERE c.kind = 'correction'
                                   AND c.source_id = e.source_id AND c.subscription_id = a.subscription_id
                                   AND c.id > e.id)
                   AND NOT EXISTS (SELECT 1 FROM journal_entries c WHERE c.kind = 'correction'
                                   AND c.source_id = e.source_id AND c.attempt_id = e.attempt_id
                                   AND c.id > e.id)",
            ),
            (
                "refund entry without a succeeded refund",
                "SELECT e.id::text FROM journal_entries e
                 WHERE e.refund_id IS NOT NULL AND NOT EXISTS (
                     SELECT 1 FROM refunds r WHERE r.source_id = e.source_id
                       AND r.refund_id = e.refund_id AND r.status = 'succeeded'
                       AND r.amount_minor >= (SELECT max(abs(p.amount_minor)) FROM postings p
                                              WHERE p.entry_id = e.id))",
            ),
            (
                "more refunded than collected",
                "SELECT source_id || '/' || subscription_id || ' ' || currency FROM postings
                 WHERE account = 'collected'
                 GROUP BY source_id, subscription_id, currency HAVING sum(amount_minor) < 0",
            ),
        ];
        let mut breaches = Vec::new();
        for (what, sql) in checks {
            let rows: Vec<(String,)> = sqlx::query_as(sql).fetch_all(self.pool()).await?;
            breaches.extend(rows.into_iter().map(|(id,)| format!("{what}: {id}")));
        }
        Ok(breaches)
    }
}
