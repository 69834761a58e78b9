//! One retry for the command line and the admin API alike: its history (`show`), and
//! resuming a parked one, audited like the other operator writes (who, which retry, what
//! came of it).

use super::{Actor, OpsError, audit};
use crate::db::Db;
use crate::dunning::views::{self, Resumed, RetryDetail, RetryView};

/// `{source_id}:{cycle_key}` split, or why it is not a retry id.
fn split_id(id: &str) -> Result<(&str, &str), OpsError> {
    id.split_once(':').ok_or_else(|| {
        OpsError::Invalid(format!(
            "retry id {id:?} must be SOURCE_ID:CYCLE_KEY (as `retries list` shows it)"
        ))
    })
}

/// The retry `id` with its final action and timeline. `Ok(None)`: no such retry.
pub async fn show(db: &Db, id: &str) -> Result<Option<RetryDetail>, OpsError> {
    let (source_id, cycle_key) = split_id(id)?;
    Ok(views::show(db, source_id, cycle_key).await?)
}

/// Resumes the parked retry `id` (`{source_id}:{cycle_key}`). `Ok(None)`: no such retry.
pub async fn resume(db: &Db, id: &str, actor: &Actor) -> Result<Option<RetryView>, OpsError> {
    let (source_id, cycle_key) = split_id(id)?;
    let filter = serde_json::json!({ "id": id });
    let entry = audit::start(db, actor, "retries.resume", &filter).await?;
    let result = views::resume(db, source_id, cycle_key, &actor.0).await;
    let (count, outcome) = match &result {
        Ok(Resumed::Resumed(_)) => (1, "ok".to_owned()),
        Ok(Resumed::NotParked(status)) => (0, format!("error: not parked ({status})")),
        Ok(Resumed::NotFound) => (0, "error: no such retry".to_owned()),
        Err(error) => (0, format!("error: {error}")),
    };
    entry.finish(db, count, &outcome).await?;
    match result? {
        Resumed::Resumed(view) => Ok(Some(*view)),
        Resumed::NotParked(status) => Err(OpsError::Invalid(format!(
            "retry {id:?} is {status}, not parked: only a parked retry can be resumed"
        ))),
        Resumed::NotFound => Ok(None),
    }
}
