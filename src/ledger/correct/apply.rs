//! Setting the state tables to their recomputed rows. Rows are copied whole (every column
//! the table has, read from the catalogue), so a column added later is corrected too.

use sqlx::PgConnection;

use super::diff::state_of;
use super::{CorrectError, Rows, STATE};

/// The table's writable columns (no identity or generated ones) in table order, quoted,
/// without `except`.
pub(super) async fn columns(
    tx: &mut PgConnection,
    table: &str,
    except: &[&str],
) -> Result<Vec<String>, CorrectError> {
    let names: Vec<(String,)> = sqlx::query_as(
        "SELECT attname::text FROM pg_attribute
         WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped
           AND attidentity = '' AND attgenerated = ''
         ORDER BY attnum",
    )
    .bind(table)
    .fetch_all(&mut *tx)
    .await?;
    Ok(names
        .into_iter()
        .filter(|(n,)| !except.contains(&n.as_str()))
        .map(|(n,)| format!("\"{}\"", n.replace('"', "\"\"")))
        .collect())
}

/// Updates, inserts or deletes each real row whose state differs from the recomputed one
/// (a row no archived event gives a state any more is deleted).
pub(super) async fn rows(
    tx: &mut PgConnection,
    source: &str,
    real: &Rows,
    scratch: &Rows,
) -> Result<(), CorrectError> {
    for (entity, table, id_column, _) in STATE {
        let cols = columns(tx, table, &[]).await?.join(", ");
        let update = format!(
            "UPDATE {table} t SET ({cols}) = (SELECT {cols} FROM jsonb_populate_record(NULL::{table}, $1))
             WHERE t.source_id = $2 AND t.{id_column} = $3"
        );
        let insert = format!(
            "INSERT INTO {table} ({cols}) SELECT {cols} FROM jsonb_populate_record(NULL::{table}, $1)"
        );
        let delete = format!("DELETE FROM {table} WHERE source_id = $1 AND {id_column} = $2");
        let keys = real
            .keys()
            .chain(scratch.keys())
            .filter(|k| k.0 == entity)
            .collect::<std::collections::BTreeSet<_>>();
        for key in keys {
            let (before, after) = (real.get(key), scratch.get(key));
            let query = match (before, after) {
                (Some(b), Some(a)) if state_of(entity, b) == state_of(entity, a) => continue,
                (Some(_), Some(a)) => sqlx::query(sqlx::AssertSqlSafe(update.clone()))
                    .bind(a)
                    .bind(source)
                    .bind(&key.1),
                (None, Some(a)) => sqlx::query(sqlx::AssertSqlSafe(insert.clone())).bind(a),
                (Some(_), None) => sqlx::query(sqlx::AssertSqlSafe(delete.clone()))
                    .bind(source)
                    .bind(&key.1),
                (None, None) => continue,
            };
            query.execute(&mut *tx).await?;
        }
    }
    Ok(())
}
