//! Request extractors whose rejections are the admin API's JSON errors (400), so every
//! answer matches the OpenAPI document. Text containing NUL is refused here: Postgres
//! cannot store it, and it is never a valid id or filter. So are times before the first
//! one Postgres stores ([`storable_time`]).

use axum::{
    extract::{FromRequest, FromRequestParts, Request},
    http::request::Parts,
};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;

use crate::http_error::HttpError;

/// `axum::extract::Query`, answering 400 with a JSON error.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if parts
            .uri
            .query()
            .is_some_and(|q| q.to_ascii_lowercase().contains("%00"))
        {
            return Err(nul());
        }
        axum::extract::Query::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|e| HttpError::BadRequest(e.body_text()))
    }
}

/// `axum::extract::Path`, answering 400 with a JSON error.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if parts.uri.path().to_ascii_lowercase().contains("%00") {
            return Err(nul());
        }
        axum::extract::Path::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Path(v))
            .map_err(|e| HttpError::BadRequest(e.body_text()))
    }
}

/// `axum::Json`, answering 400 with a JSON error.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = HttpError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|e| HttpError::BadRequest(e.body_text()))?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| HttpError::BadRequest(format!("invalid JSON body: {e}")))?;
        if contains_nul(&value) {
            return Err(nul());
        }
        serde_json::from_value(value)
            .map(Json)
            .map_err(|e| HttpError::BadRequest(format!("invalid request: {e}")))
    }
}

/// The earliest instant a Postgres `timestamptz` holds, 4714-11-24 00:00:00 UTC BC, in Unix
/// seconds (its latest, 294276 AD, is past anything chrono parses).
const EARLIEST_STORED_SECS: i64 = -210_866_803_200;

/// Refuses a time filter the database cannot compare with (it would fail the query: 500).
pub fn storable_time(name: &str, at: Option<DateTime<Utc>>) -> Result<(), HttpError> {
    match at {
        Some(at) if at.timestamp() < EARLIEST_STORED_SECS => Err(HttpError::BadRequest(format!(
            "{name}: before -4713-11-24T00:00:00Z, the earliest time the database stores"
        ))),
        _ => Ok(()),
    }
}

fn nul() -> HttpError {
    HttpError::BadRequest("text must not contain NUL characters".to_owned())
}

fn contains_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(contains_nul),
        serde_json::Value::Object(map) => {
            map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_stored_time_is_postgres_lower_bound() {
        let earliest = DateTime::from_timestamp(EARLIEST_STORED_SECS, 0).unwrap();
        assert_eq!(earliest.to_rfc3339(), "-4713-11-24T00:00:00+00:00");
        assert!(storable_time("since", Some(earliest)).is_ok());
        assert!(storable_time("since", None).is_ok());
        let before = earliest - chrono::Duration::microseconds(1);
        assert!(matches!(
            storable_time("since", Some(before)),
            Err(HttpError::BadRequest(message)) if message.starts_with("since: ")
        ));
    }
}
