//! The journal side of a correction: balances per (unit, account, currency), and what is
//! appended. General over entry kinds: entries are copied and compared as rows and
//! balances, never by kind.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use sqlx::PgConnection;

use super::CorrectError;
use super::apply::columns;
use super::diff::{Balances, Unit, Units};

/// The postings of the scope's entries, summed per (subscription, attempt for entries
/// under '' , account, currency), from the real journal (`prefix` "") or the scratch copy.
type RawBalances = Vec<(String, Option<String>, String, String, i64)>;

/// The scope's entries: those of its subscriptions, and those of its attempts filed
/// under the subscription '' (posted before the attempt's subscription was known).
const SCOPE: &str = "e.source_id = $1
    AND (e.subscription_id = ANY($2) OR (e.subscription_id = '' AND e.attempt_id = ANY($3)))";

pub(super) async fn balances(
    tx: &mut PgConnection,
    prefix: &str,
    source: &str,
    subscriptions: &BTreeSet<String>,
    attempts: &BTreeSet<String>,
) -> Result<RawBalances, CorrectError> {
    let subs: Vec<&str> = subscriptions.iter().map(String::as_str).collect();
    let atts: Vec<&str> = attempts.iter().map(String::as_str).collect();
    let sql = format!(
        "SELECT e.subscription_id, CASE WHEN e.subscription_id = '' THEN e.attempt_id END,
                p.account, p.currency, sum(p.amount_minor)::int8
         FROM {prefix}journal_entries e JOIN {prefix}postings p ON p.entry_id = e.id
         WHERE {SCOPE}
         GROUP BY 1, 2, 3, 4"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(source)
        .bind(&subs)
        .bind(&atts)
        .fetch_all(&mut *tx)
        .await?)
}

/// Raw balances summed per unit.
pub(super) fn per_unit(units: &Units, raw: &RawBalances) -> Balances {
    let mut out = Balances::new();
    for (subscription, attempt, account, currency, sum) in raw {
        let unit = units.of_entry(subscription, attempt.as_deref());
        *out.entry((unit, account.clone(), currency.clone()))
            .or_default() += sum;
    }
    out.retain(|_, sum| *sum != 0);
    out
}

/// One scratch entry: the row and its postings, as JSON.
pub(super) struct Entry {
    row: Value,
    postings: Value,
}

/// The scope's entries in a scratch copy, in the order they were posted.
pub(super) async fn entries(
    tx: &mut PgConnection,
    prefix: &str,
    source: &str,
    subscriptions: &BTreeSet<String>,
    attempts: &BTreeSet<String>,
) -> Result<Vec<Entry>, CorrectError> {
    let subs: Vec<&str> = subscriptions.iter().map(String::as_str).collect();
    let atts: Vec<&str> = attempts.iter().map(String::as_str).collect();
    let sql = format!(
        "SELECT to_jsonb(e),
                (SELECT jsonb_agg(to_jsonb(p) ORDER BY p.id) FROM {prefix}postings p WHERE p.entry_id = e.id)
         FROM {prefix}journal_entries e WHERE {SCOPE} ORDER BY e.id"
    );
    let rows: Vec<(Value, Option<Value>)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(source)
        .bind(&subs)
        .bind(&atts)
        .fetch_all(&mut *tx)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(row, postings)| Entry {
            row,
            postings: postings.unwrap_or(Value::Array(Vec::new())),
        })
        .collect())
}

/// Where the appended entries go.
pub(super) struct Target<'a> {
    pub source: &'a str,
    pub subscriptions: &'a BTreeSet<String>,
    pub attempts: &'a BTreeSet<String>,
    pub audit_id: Option<i64>,
    /// The event a correction is dated by when its unit has no row naming a later one.
    pub latest_event: i64,
}

/// Appends, first, every recomputed entry the journal lacks (inserted as it is, with its
/// postings; one the journal already has, by any of its unique keys, is skipped): the
/// entries the reconcile itself would post for the corrected state, so it never posts
/// them again. Then one `correction` entry per (unit, currency) whose balances still
/// differ from the recomputed ones. Returns the appended entry ids per unit.
pub(super) async fn append(
    tx: &mut PgConnection,
    target: &Target<'_>,
    units: &Units,
    scratch: &[Entry],
    scratch_balances: &RawBalances,
) -> Result<BTreeMap<Unit, Vec<i64>>, CorrectError> {
    let mut appended: BTreeMap<Unit, Vec<i64>> = BTreeMap::new();
    let entry_columns = columns(tx, "journal_entries", &[]).await?;
    let posting_columns = columns(tx, "postings", &["entry_id"]).await?;
    let (ec, pc) = (entry_columns.join(", "), posting_columns.join(", "));
    let insert_entry = format!(
        "INSERT INTO journal_entries ({ec})
         SELECT {ec} FROM jsonb_populate_record(NULL::journal_entries, $1)
         ON CONFLICT DO NOTHING RETURNING id"
    );
    let insert_postings = format!(
        "INSERT INTO postings (entry_id, {pc})
         SELECT $2, {pc} FROM jsonb_populate_recordset(NULL::postings, $1)"
    );
    for entry in scratch {
        let inserted: Option<(i64,)> = sqlx::query_as(sqlx::AssertSqlSafe(insert_entry.clone()))
            .bind(&entry.row)
            .fetch_optional(&mut *tx)
            .await?;
        let Some((id,)) = inserted else { continue };
        sqlx::query(sqlx::AssertSqlSafe(insert_postings.clone()))
            .bind(&entry.postings)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let text = |k: &str| entry.row.get(k).and_then(Value::as_str).map(str::to_owned);
        let unit = units.of_entry(
            &text("subscription_id").unwrap_or_default(),
            text("attempt_id").as_deref(),
        );
        appended.entry(unit).or_default().push(id);
    }

    // What still differs, per (unit, currency): the recomputed balance minus the real one.
    let real = balances(tx, "", target.source, target.subscriptions, target.attempts).await?;
    let (real, recomputed) = (per_unit(units, &real), per_unit(units, scratch_balances));
    let mut moves: BTreeMap<(Unit, String), Vec<(String, i64)>> = BTreeMap::new();
    let keys: BTreeSet<&(Unit, String, String)> = real.keys().chain(recomputed.keys()).collect();
    for key in keys {
        let by = recomputed.get(key).copied().unwrap_or(0) - real.get(key).copied().unwrap_or(0);
        if by != 0 {
            let (unit, account, currency) = key.clone();
            moves
                .entry((unit, currency))
                .or_default()
                .push((account, by));
        }
    }
    for ((unit, currency), postings) in moves {
        if postings.iter().map(|p| p.1).sum::<i64>() != 0 {
            return Err(CorrectError::Unbalanced(format!("{unit:?} in {currency}")));
        }
        let id = post_correction(tx, target, units, &unit, &currency, &postings).await?;
        appended.entry(unit).or_default().push(id);
    }
    Ok(appended)
}

/// One `correction` entry: the postings move each account by its difference.
async fn post_correction(
    tx: &mut PgConnection,
    target: &Target<'_>,
    units: &Units,
    unit: &Unit,
    currency: &str,
    postings: &[(String, i64)],
) -> Result<i64, CorrectError> {
    let (subscription_id, attempt_id) = match unit {
        Unit::Subscription(s) => (s.as_str(), None),
        Unit::Attempt(a) => ("", Some(a.as_str())),
    };
    let event_id = units.latest_event(unit).unwrap_or(target.latest_event);
    let accounts: Vec<&str> = postings.iter().map(|p| p.0.as_str()).collect();
    let amounts: Vec<i64> = postings.iter().map(|p| p.1).collect();
    // The postings are the statement itself (not a CTE), so the balance trigger sees them.
    let ids: Vec<(i64,)> = sqlx::query_as(
        "WITH entry AS (
             INSERT INTO journal_entries (source_id, subscription_id, attempt_id, kind, event_id, audit_id)
             VALUES ($1, $2, $3, 'correction', $4, $5) RETURNING id)
         INSERT INTO postings (entry_id, source_id, subscription_id, account, amount_minor, currency)
         SELECT entry.id, $1, $2, p.account, p.amount, $6
         FROM entry, UNNEST($7::text[], $8::int8[]) AS p(account, amount)
         RETURNING entry_id",
    )
    .bind(target.source)
    .bind(subscription_id)
    .bind(attempt_id)
    .bind(event_id)
    .bind(target.audit_id)
    .bind(currency)
    .bind(&accounts)
    .bind(&amounts)
    .fetch_all(&mut *tx)
    .await?;
    Ok(ids[0].0)
}
