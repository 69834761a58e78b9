//! The events archive and its inbox dedupe on (source_id, provider_event_id).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::canonical::CanonicalEvent;
use crate::db::{Db, DbError};
use crate::envelope::{ENVELOPE_VERSION, Envelope};

/// An event ready to be archived, with what normalization found in it.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    pub envelope: &'a Envelope,
    pub event_type: &'a str,
    /// Empty for an event type subsync does not act on: archived as `ignored`.
    pub events: &'a [CanonicalEvent],
}

/// One archived event as operators see it (the body is returned as text where it is UTF-8).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct EventRow {
    pub id: i64,
    pub source_id: String,
    pub provider: String,
    pub provider_event_id: String,
    pub event_type: String,
    pub received_at: DateTime<Utc>,
    pub processed_at: DateTime<Utc>,
    pub outcome: String,
    /// The canonical events found in the payload.
    pub normalized: serde_json::Value,
}

#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    pub source_id: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// The outcome: `applied`, `stale`, `ignored`.
    pub status: Option<String>,
    pub limit: Option<i64>,
}

/// Inserts a batch into the archive inside `tx`: the inbox dedupe. Returns, per input, the
/// new row's id, or `None` for a duplicate (of an earlier delivery or of an earlier input
/// in this batch), which must change nothing.
pub(super) async fn insert(
    tx: &mut sqlx::PgConnection,
    events: &[NewEvent<'_>],
) -> Result<Vec<Option<i64>>, DbError> {
    let n = events.len();
    let (mut sources, mut providers, mut ids, mut types) =
        (vec_of(n), vec_of(n), vec_of(n), vec_of(n));
    let (mut received, mut content_types, mut headers, mut bodies) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut normalized, mut outcomes) = (Vec::with_capacity(n), vec_of(n));
    for e in events {
        let env = e.envelope;
        sources.push(env.source_id.as_str());
        providers.push(env.provider.as_str());
        ids.push(env.event_id.as_str());
        types.push(e.event_type);
        received.push(env.received_at);
        content_types.push(env.content_type.as_deref());
        headers.push(serde_json::Value::Object(
            env.headers
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
                .collect(),
        ));
        bodies.push(env.body.as_ref());
        normalized.push(serde_json::to_value(e.events).expect("canonical events serialize"));
        // Reconciliation marks the stale ones afterwards, in the same transaction.
        outcomes.push(if e.events.is_empty() {
            "ignored"
        } else {
            "applied"
        });
    }
    let inserted: Vec<(i64, String, String)> = sqlx::query_as(
        "INSERT INTO events (source_id, provider, provider_event_id, event_type, received_at,
                             content_type, headers, body, envelope_version, normalized, outcome)
         SELECT s, p, i, t, r, c, h, b, $9, n, o
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                     $6::text[], $7::jsonb[], $8::bytea[], $10::jsonb[], $11::text[])
              AS u(s, p, i, t, r, c, h, b, n, o)
         ON CONFLICT (source_id, provider_event_id) DO NOTHING
         RETURNING id, source_id, provider_event_id",
    )
    .bind(&sources)
    .bind(&providers)
    .bind(&ids)
    .bind(&types)
    .bind(&received)
    .bind(&content_types)
    .bind(&headers)
    .bind(&bodies)
    .bind(i16::from(ENVELOPE_VERSION))
    .bind(&normalized)
    .bind(&outcomes)
    .fetch_all(&mut *tx)
    .await?;

    // The first input with an inserted key is the one that archived it; any later one
    // with the same key in this batch is a duplicate.
    let mut fresh: HashMap<(String, String), i64> = inserted
        .into_iter()
        .map(|(id, s, e)| ((s, e), id))
        .collect();
    Ok(events
        .iter()
        .map(|e| fresh.remove(&(e.envelope.source_id.clone(), e.envelope.event_id.clone())))
        .collect())
}

/// Replaces the normalization of archived rows `ids` (one per event) with `events`' (a
/// replay after a mapping fix); reconciliation marks the stale ones afterwards.
pub(super) async fn renormalize(
    tx: &mut sqlx::PgConnection,
    events: &[NewEvent<'_>],
    ids: &[i64],
) -> Result<(), DbError> {
    assert_eq!(events.len(), ids.len(), "one archived row per event");
    let types: Vec<&str> = events.iter().map(|e| e.event_type).collect();
    let normalized: Vec<serde_json::Value> = events
        .iter()
        .map(|e| serde_json::to_value(e.events).expect("canonical events serialize"))
        .collect();
    let outcomes: Vec<&str> = events
        .iter()
        .map(|e| {
            if e.events.is_empty() {
                "ignored"
            } else {
                "applied"
            }
        })
        .collect();
    // Locked in id order first (an UPDATE locks in whatever order its plan reads): two
    // replays, or a replay and a correction, then wait for each other instead of
    // deadlocking.
    sqlx::query("SELECT 1 FROM events WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(ids)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE events e SET event_type = u.t, normalized = u.n, outcome = u.o
         FROM UNNEST($1::int8[], $2::text[], $3::jsonb[], $4::text[]) AS u(id, t, n, o)
         WHERE e.id = u.id",
    )
    .bind(ids)
    .bind(&types)
    .bind(&normalized)
    .bind(&outcomes)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// An archived event with its envelope rebuilt from the row, for replays.
#[derive(Debug, Clone)]
pub struct ArchivedEvent {
    pub id: i64,
    pub envelope: Envelope,
}

impl Db {
    /// Archived events of `source_id` received in [since, until), oldest first, after row
    /// `after_id` (keyset paging), at most `limit`.
    pub async fn archived(
        &self,
        source_id: &str,
        since: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<ArchivedEvent>, DbError> {
        let rows: Vec<ArchivedRow> = sqlx::query_as(
            "SELECT id, provider, provider_event_id, received_at, content_type, headers, body
             FROM events
             WHERE source_id = $1 AND received_at >= $2
               AND ($3::timestamptz IS NULL OR received_at < $3) AND id > $4
             ORDER BY id
             LIMIT $5",
        )
        .bind(source_id)
        .bind(since)
        .bind(until)
        .bind(after_id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| archived_event(source_id, row))
            .collect())
    }

    /// Archived events, newest first.
    pub async fn events(&self, q: &EventsQuery) -> Result<Vec<EventRow>, DbError> {
        let limit = q.limit.unwrap_or(100).clamp(1, 1000);
        let rows = sqlx::query_as(
            "SELECT id, source_id, provider, provider_event_id, event_type, received_at, processed_at,
                    outcome, normalized
             FROM events
             WHERE ($1::text IS NULL OR source_id = $1)
               AND ($2::timestamptz IS NULL OR received_at >= $2)
               AND ($3::timestamptz IS NULL OR received_at < $3)
               AND ($4::text IS NULL OR outcome = $4)
             ORDER BY id DESC
             LIMIT $5",
        )
        .bind(q.source_id.as_deref())
        .bind(q.since)
        .bind(q.until)
        .bind(q.status.as_deref())
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }

    /// How many events are archived, for one source or all.
    pub async fn count_events(&self, source_id: Option<&str>) -> Result<i64, DbError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM events WHERE ($1::text IS NULL OR source_id = $1)",
        )
        .bind(source_id)
        .fetch_one(self.pool())
        .await?;
        Ok(n)
    }

    /// Of `source_id`'s events `event_ids`, how many are archived and how many of those
    /// were applied (not stale, not ignored).
    pub async fn archived_outcomes(
        &self,
        source_id: &str,
        event_ids: &[String],
    ) -> Result<(u64, u64), DbError> {
        let (archived, applied): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE outcome = 'applied')
             FROM events WHERE source_id = $1 AND provider_event_id = ANY($2)",
        )
        .bind(source_id)
        .bind(event_ids)
        .fetch_one(self.pool())
        .await?;
        Ok((archived.max(0) as u64, applied.max(0) as u64))
    }

    /// How many times an event is archived (0 or 1, by the unique constraint).
    pub async fn archived_count(&self, source_id: &str, event_id: &str) -> Result<i64, DbError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM events WHERE source_id = $1 AND provider_event_id = $2",
        )
        .bind(source_id)
        .bind(event_id)
        .fetch_one(self.pool())
        .await?;
        Ok(n)
    }
}

/// The columns [`archived_event`] reads: `id, provider, provider_event_id, received_at,
/// content_type, headers, body`.
pub(super) type ArchivedRow = (
    i64,
    String,
    String,
    DateTime<Utc>,
    Option<String>,
    serde_json::Value,
    Vec<u8>,
);

/// An archived row with its envelope rebuilt (`None` for a provider this build no longer
/// knows).
pub(super) fn archived_event(source_id: &str, row: ArchivedRow) -> Option<ArchivedEvent> {
    let (id, provider, event_id, received_at, content_type, headers, body) = row;
    let provider = crate::config::ProviderKind::parse(&provider)?;
    let headers = match headers {
        serde_json::Value::Object(map) => map
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.as_str()?.to_owned())))
            .collect(),
        _ => Vec::new(),
    };
    Some(ArchivedEvent {
        id,
        envelope: Envelope {
            source_id: source_id.to_owned(),
            provider,
            event_id,
            received_at,
            content_type,
            headers,
            body: body.into(),
        },
    })
}

fn vec_of<'a>(n: usize) -> Vec<&'a str> {
    Vec::with_capacity(n)
}
