//! The one place where errors become HTTP responses, for the ingress and the admin API.
//! Bodies are small JSON objects `{"error": "..."}` that never carry a secret.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::db::DbError;
use crate::ops::OpsError;
use crate::providers::VerifyError;
use crate::queue::PublishError;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("unknown source")]
    UnknownSource,
    #[error("not found")]
    NotFound,
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("unauthorized: {0}")]
    Verify(#[from] VerifyError),
    #[error("unauthorized")]
    Unauthorized,
    #[error("service unavailable: {0}")]
    Publish(#[from] PublishError),
    #[error("service unavailable: {0}")]
    Unavailable(&'static str),
    /// `/readyz`: the cause, and the supervised tasks down now.
    #[error("service unavailable: {cause}")]
    NotReady {
        cause: &'static str,
        down: Vec<String>,
    },
    #[error("internal error")]
    Database(#[from] DbError),
    #[error("{0}")]
    Ops(OpsError),
}

impl From<OpsError> for HttpError {
    fn from(error: OpsError) -> Self {
        match error {
            OpsError::Db(e) => HttpError::Database(e),
            other => HttpError::Ops(other),
        }
    }
}

impl HttpError {
    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::UnknownSource | HttpError::NotFound => StatusCode::NOT_FOUND,
            HttpError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HttpError::Verify(_) | HttpError::Unauthorized => StatusCode::UNAUTHORIZED,
            HttpError::Publish(_) | HttpError::Unavailable(_) | HttpError::NotReady { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            HttpError::Database(e) if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
            HttpError::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
            HttpError::Ops(OpsError::UnknownSource(_)) => StatusCode::NOT_FOUND,
            HttpError::Ops(OpsError::NotConfirmed | OpsError::Invalid(_)) => {
                StatusCode::BAD_REQUEST
            }
            HttpError::Ops(OpsError::Queue(_)) => StatusCode::SERVICE_UNAVAILABLE,
            HttpError::Ops(OpsError::Db(e)) if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
            HttpError::Ops(OpsError::Db(_) | OpsError::Ledger(_)) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// A short label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            HttpError::UnknownSource | HttpError::NotFound => "not_found",
            HttpError::PayloadTooLarge => "too_large",
            HttpError::BadRequest(_) => "bad_request",
            HttpError::Verify(_) | HttpError::Unauthorized => "unauthorized",
            HttpError::Publish(_) | HttpError::Unavailable(_) | HttpError::NotReady { .. } => {
                "unavailable"
            }
            HttpError::Database(_) => "error",
            HttpError::Ops(_) => "ops_error",
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let HttpError::Database(error) = &self {
            tracing::error!(%error, "database error behind an HTTP request");
        }
        let message = match &self {
            // The database's own message may name tables or values: keep it in the log.
            HttpError::Database(_) => status.canonical_reason().unwrap_or("error").to_lowercase(),
            other => other.to_string(),
        };
        let body = match &self {
            HttpError::NotReady { down, .. } => {
                serde_json::json!({ "error": message, "down": down })
            }
            _ => serde_json::json!({ "error": message }),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Standard Webhooks senders honour Retry-After.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if status == StatusCode::UNAUTHORIZED && matches!(self, HttpError::Unauthorized) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
