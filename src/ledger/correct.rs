//! Corrections: a subscription (or an attempt without one) recomputed from its whole
//! archived history, normalized with the current code, and the ledger brought to that
//! state. The one place where an attempt's or a subscription's status may go down.
//!
//! The recomputation is the reconcile itself, unchanged: inside the transaction, every
//! table the reconcile writes ([`SHADOWED`]) gets an empty scratch copy (`CREATE TEMP
//! TABLE x (LIKE x INCLUDING ALL) ON COMMIT DROP`); `pg_temp` comes first on the search
//! path, so the reconcile's unqualified statements write into the copies. The events are
//! reconciled one at a time in archive order; the copies are read and dropped, and the
//! real tables compared with them:
//! - attempt and subscription rows are state: set to the recomputed rows (inserted,
//!   updated, or deleted when no archived event gives them a state any more);
//! - the journal is append-only: the entries the recomputation posted and the journal
//!   lacks are appended as they are (so the reconcile never posts them again), then each
//!   balance per (subscription, account, currency) that still differs is moved by one
//!   `correction` entry per (subscription, currency), which balances. Nothing is updated
//!   or deleted.
//!
//! The connection is one of its own, closed afterwards, and its statement cache is
//! emptied when the copies appear and when they go: a statement prepared while the names
//! resolved to the real tables must never run against the copies, or the other way round
//! (PostgreSQL re-plans a cached statement when a table it uses is dropped, not when a new
//! table comes to shadow it). `REPEATABLE READ` and row locks keep a concurrent worker's event
//! either wholly before the snapshot (in the history) or after the commit (applied on
//! top, as a forward merge); a conflict is retried.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;
use sqlx::{Connection, PgConnection};

use super::archive::NewEvent;
use super::preview::Change;
use super::reconcile::{Inbox, reconcile_in};
use crate::canonical::CanonicalEvent;
use crate::db::{Db, DbError};
use crate::dunning::schedule::Dunning;
use crate::envelope::Envelope;

mod apply;
mod diff;
mod history;
mod journal;

use diff::{Units, correction, diff};

/// Every table the reconcile writes, in the order the scratch copies are created. A table
/// the reconcile starts writing is one more line here. Not shadowed: `events` (the
/// history itself, read as it is; its normalization and outcomes are updated to the
/// current code's, as a replay does), `retry_calls` (only read, to link Shopify's
/// retry attempts to their cycles: the copy would have lost the links) and
/// `payment_links` (read, to give a refund its payment's attempt, for the same reason; a
/// refund still unlinked is held there by the correction as the worker would hold it).
pub const SHADOWED: &[&str] = &[
    "billing_attempts",
    "subscriptions",
    "journal_entries",
    "postings",
    "refunds",
    // Dunning writes the retries of the failures it reconciles. Recomputed retries are
    // not applied: they are call history (calls made, keys sent), not a function of the
    // events.
    "retries",
    // Reconciliation asks for the money of an attempt stored without it. Not applied: a
    // lookup is work for the provider's API, which the real rows already track.
    "money_lookups",
];

/// The state tables that are set to their recomputed rows: (entity, table, id column, the
/// column that scopes a row to a unit: its subscription, or its attempt).
const STATE: [(&str, &str, &str, &str); 3] = [
    (
        "billing_attempt",
        "billing_attempts",
        "attempt_id",
        "attempt_id",
    ),
    (
        "subscription",
        "subscriptions",
        "subscription_id",
        "subscription_id",
    ),
    ("refund", "refunds", "refund_id", "attempt_id"),
];

/// Columns that say which event set a row and when, not what the state is.
const BOOKKEEPING: [&str; 2] = ["last_event_id", "updated_at"];

/// Normalizes an archived event with the current code: its event type and canonical
/// events, or why it cannot.
pub type Normalizer<'a> =
    dyn Fn(&Envelope) -> Result<(String, Vec<CanonicalEvent>), String> + Send + Sync + 'a;

/// What to recompute: subscriptions and attempts of one source, and archived rows that
/// belong to their history whatever their archived normalization says (the window's).
#[derive(Debug, Clone, Copy)]
pub struct CorrectionScope<'a> {
    pub source_id: &'a str,
    pub subscriptions: &'a [String],
    pub attempts: &'a [String],
    pub event_ids: &'a [i64],
}

#[derive(Debug, thiserror::Error)]
pub enum CorrectError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("archived event {event_id} no longer normalizes: {error}")]
    Unnormalizable { event_id: String, error: String },
    #[error("the recomputed balances of {0} do not sum to zero per currency")]
    Unbalanced(String),
    #[error("the scratch copies do not shadow the ledger tables")]
    NotShadowed,
}

impl From<sqlx::Error> for CorrectError {
    fn from(error: sqlx::Error) -> Self {
        CorrectError::Db(DbError::Sqlx(error))
    }
}

/// One account's balance in one currency: as the journal has it, and recomputed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BalanceChange {
    pub account: String,
    pub currency: String,
    pub before: i64,
    pub after: i64,
}

/// What differs for one subscription (or one attempt without a subscription).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Correction {
    /// `null` for an attempt without a subscription (then `attempt_id` names it).
    pub subscription_id: Option<String>,
    pub attempt_id: Option<String>,
    /// Attempt and subscription rows: before → after (bookkeeping columns left out).
    pub changes: Vec<Change>,
    /// The balances that differ: before → after.
    pub balances: Vec<BalanceChange>,
    /// Journal entries appended (a dry run: that would be): entries the recomputation
    /// posted and the journal lacked, and the `correction` entries.
    pub appended: u64,
    /// Their ids (empty for a dry run).
    pub entry_ids: Vec<i64>,
}

/// The outcome of one recomputation.
#[derive(Debug, Clone, Default)]
pub struct CorrectionOutcome {
    /// Archived events reconciled into the scratch copies.
    pub events: u64,
    /// Every subscription and attempt the history reached (for callers that recompute
    /// in several calls: these are done).
    pub subscriptions: Vec<String>,
    pub attempts: Vec<String>,
    /// Subscriptions plus attempts without a subscription that were compared.
    pub examined: u64,
    /// Those that differed.
    pub corrections: Vec<Correction>,
}

impl Db {
    /// Recomputes `scope` and brings the ledger to the recomputed state; `dry_run` rolls
    /// everything back and only reports. `audit_id` is the audited run the corrections
    /// are posted under.
    pub async fn correct(
        &self,
        scope: CorrectionScope<'_>,
        normalize: &Normalizer<'_>,
        dunning: &Dunning,
        dry_run: bool,
        audit_id: Option<i64>,
    ) -> Result<CorrectionOutcome, CorrectError> {
        let mut conn = PgConnection::connect_with(&self.pool().connect_options()).await?;
        // One correction of a source at a time (two would post the same difference twice).
        // Taken before the transaction, whose snapshot must not predate the other's commit;
        // closing the connection releases it.
        sqlx::query("SELECT pg_advisory_lock(hashtext('subsync.correct'), hashtext($1))")
            .bind(scope.source_id)
            .execute(&mut conn)
            .await?;
        let mut tries = 0;
        let result = loop {
            let run = Run {
                scope,
                normalize,
                dunning,
                audit_id,
            };
            match run.on(&mut conn, dry_run).await {
                Err(CorrectError::Db(DbError::Sqlx(sqlx::Error::Database(e))))
                    if tries < 5 && matches!(e.code().as_deref(), Some("40001" | "40P01")) =>
                {
                    tries += 1;
                }
                other => break other,
            }
        };
        // The connection had the scratch copies: it is closed, never pooled.
        let _ = conn.close().await;
        result
    }
}

struct Run<'a, 'n> {
    scope: CorrectionScope<'a>,
    normalize: &'a Normalizer<'n>,
    dunning: &'a Dunning,
    audit_id: Option<i64>,
}

/// Rows of the state tables by (entity, id): whole rows as JSON.
type Rows = BTreeMap<(&'static str, String), Value>;

impl Run<'_, '_> {
    async fn on(
        &self,
        conn: &mut PgConnection,
        dry_run: bool,
    ) -> Result<CorrectionOutcome, CorrectError> {
        let source = self.scope.source_id;
        let mut tx = conn.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *tx)
            .await?;
        let history = history::gather(&mut tx, self.scope, self.normalize).await?;
        let (subs, atts) = (&history.subscriptions, &history.attempts);
        history::lock(&mut tx, &history, source).await?;
        let real = read_state(&mut tx, "", source, subs, atts).await?;

        create_scratch(&mut tx).await?;
        for event in &history.events {
            let new = [NewEvent {
                envelope: &event.envelope,
                event_type: &event.event_type,
                events: &event.events,
            }];
            reconcile_in(&mut tx, &new, Inbox::Archived(&[event.id]), self.dunning).await?;
        }
        let scratch = read_state(&mut tx, "pg_temp.", source, subs, atts).await?;
        let scratch_balances = journal::balances(&mut tx, "pg_temp.", source, subs, atts).await?;
        let scratch_entries = journal::entries(&mut tx, "pg_temp.", source, subs, atts).await?;
        drop_scratch(&mut tx).await?;

        let units = Units::new(&real, &scratch);
        let real_balances = journal::balances(&mut tx, "", source, subs, atts).await?;
        let mut corrections = diff(
            &units,
            &real,
            &scratch,
            &journal::per_unit(&units, &real_balances),
            &journal::per_unit(&units, &scratch_balances),
        );
        apply::rows(&mut tx, source, &real, &scratch).await?;
        let appended = journal::append(
            &mut tx,
            &journal::Target {
                source,
                subscriptions: subs,
                attempts: atts,
                audit_id: self.audit_id,
                latest_event: history.events.last().map_or(0, |e| e.id),
            },
            &units,
            &scratch_entries,
            &scratch_balances,
        )
        .await?;
        for (unit, ids) in appended {
            let c = correction(&mut corrections, unit);
            c.appended = ids.len() as u64;
            if !dry_run {
                c.entry_ids = ids;
            }
        }
        if dry_run {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
        Ok(CorrectionOutcome {
            events: history.events.len() as u64,
            examined: units.all(subs).len() as u64,
            subscriptions: subs.iter().cloned().collect(),
            attempts: atts.iter().cloned().collect(),
            corrections: corrections.into_values().collect(),
        })
    }
}

/// The rows of the state tables for these keys, from the real tables (`prefix` "") or
/// the scratch copies (`"pg_temp."`).
async fn read_state(
    tx: &mut PgConnection,
    prefix: &str,
    source: &str,
    subscriptions: &BTreeSet<String>,
    attempts: &BTreeSet<String>,
) -> Result<Rows, CorrectError> {
    let mut rows = Rows::new();
    for (entity, table, id_column, scope) in STATE {
        let ids: Vec<&str> = if scope == "subscription_id" {
            subscriptions.iter().map(String::as_str).collect()
        } else {
            attempts.iter().map(String::as_str).collect()
        };
        let sql = format!(
            "SELECT t.{id_column}, to_jsonb(t) FROM {prefix}{table} t
             WHERE t.source_id = $1 AND t.{scope} = ANY($2)"
        );
        let found: Vec<(String, Value)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(source)
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
        rows.extend(found.into_iter().map(|(id, row)| ((entity, id), row)));
    }
    Ok(rows)
}

/// Empty scratch copies of [`SHADOWED`], checked to be what the unqualified names now
/// resolve to; no statement prepared before runs on them.
async fn create_scratch(tx: &mut PgConnection) -> Result<(), CorrectError> {
    tx.clear_cached_statements().await?;
    for table in SHADOWED {
        // Identity columns get sequences of their own; indexes (the unique keys the
        // reconcile's `ON CONFLICT` relies on), defaults and checks come along; foreign
        // keys and triggers do not (the copies only ever hold the reconcile's writes).
        let sql = format!("CREATE TEMP TABLE {table} (LIKE {table} INCLUDING ALL) ON COMMIT DROP");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await?;
    }
    let names: Vec<&str> = SHADOWED.to_vec();
    let (shadowed,): (bool,) = sqlx::query_as(
        "SELECT bool_and(to_regclass(t) = to_regclass('pg_temp.' || t)) FROM UNNEST($1::text[]) AS t",
    )
    .bind(&names)
    .fetch_one(&mut *tx)
    .await?;
    if shadowed {
        Ok(())
    } else {
        Err(CorrectError::NotShadowed)
    }
}

/// Drops the copies; no statement prepared on them runs again.
async fn drop_scratch(tx: &mut PgConnection) -> Result<(), CorrectError> {
    let sql = format!(
        "DROP TABLE {}",
        SHADOWED
            .iter()
            .map(|t| format!("pg_temp.{t}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut *tx)
        .await?;
    tx.clear_cached_statements().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::SHADOWED;

    /// The code the recomputation runs names its tables without a schema: a qualified name
    /// would write into the real table instead of its scratch copy.
    #[test]
    fn the_reconcile_path_never_qualifies_a_table() {
        let sources = [
            ("reconcile.rs", include_str!("reconcile.rs")),
            ("archive.rs", include_str!("archive.rs")),
            (
                "dunning/schedule.rs",
                include_str!("../dunning/schedule.rs"),
            ),
        ];
        for (file, text) in sources {
            let text = text.to_lowercase();
            assert!(!text.contains("public."), "{file} qualifies a table");
            for table in SHADOWED {
                assert!(
                    !text.contains(&format!(".{table} ")),
                    "{file} qualifies {table}"
                );
            }
        }
    }
}
