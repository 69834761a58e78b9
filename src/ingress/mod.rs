//! The public ingress: `POST /webhooks/{source_id}`. Reads the raw body (bounded), verifies
//! it over the exact bytes, publishes it and answers 2xx only after the broker confirmed.
//! An unknown source is answered before a byte of its body is read, so a client cannot
//! make the ingress wait for (or buffer) a body nobody will look at. Hostile connections
//! are bounded by the server (`server`, `conn`), rejection logs by `rejections`.

mod conn;
mod rejections;
pub mod server;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum::{
    Json, Router,
    extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Path, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::post,
};
use bytes::Bytes;

pub use conn::Deadlines;
pub use server::Limits;

use crate::http_error::HttpError;
use rejections::RejectionLog;

/// How often rejected webhooks are summarized in the log.
const REJECTION_SUMMARY_EVERY: Duration = Duration::from_secs(10);

use crate::providers::{Sources, Unverified};
use crate::queue::Broker;

struct IngressState {
    sources: Arc<Sources>,
    broker: Broker,
    rejections: Arc<RejectionLog>,
    body_limit: usize,
}

/// Must be called inside a Tokio runtime (the rejection summary is a task).
pub fn router(
    sources: Arc<Sources>,
    broker: Broker,
    body_limit: usize,
    timeout: Duration,
) -> Router {
    Router::new()
        .route("/webhooks/{source_id}", post(receive))
        .layer(DefaultBodyLimit::max(body_limit))
        // Outermost, so reading a slow body counts too.
        .layer(middleware::from_fn(move |request, next| {
            deadline(timeout, request, next)
        }))
        .with_state(Arc::new(IngressState {
            sources,
            broker,
            rejections: RejectionLog::start(REJECTION_SUMMARY_EVERY),
            body_limit,
        }))
}

/// A request that takes longer than `timeout` (slow body, stuck broker) gets 503 so the
/// provider redelivers; whatever it had not yet published is not queued.
async fn deadline(timeout: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => HttpError::Unavailable("request timed out").into_response(),
    }
}

async fn receive(
    State(state): State<Arc<IngressState>>,
    Path(source_id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    request: Request,
) -> Result<(StatusCode, Json<serde_json::Value>), HttpError> {
    let source = state.sources.get(&source_id);
    // The path is the client's: only a configured id becomes a label.
    let label = source.map_or("unknown", |s| s.id()).to_owned();
    let result = async {
        let source = source.ok_or(HttpError::UnknownSource)?;
        // Read only now, for a known source; an announced length past the limit is
        // refused without reading (a chunked body is still cut at the limit: 413).
        let announced = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if announced.is_some_and(|n| n > state.body_limit as u64) {
            return Err(HttpError::PayloadTooLarge);
        }
        let body = Bytes::from_request(request, &()).await.map_err(|rejection| {
            match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => HttpError::PayloadTooLarge,
                _ => HttpError::BadRequest(rejection.body_text()),
            }
        })?;
        let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let verified = source
            .verify(Unverified { headers: &headers, body: &body, peer: Some(peer.ip()) }, content_type, SystemTime::now())
            .inspect_err(|error| {
                tracing::debug!(source = %source.id(), %error, "webhook rejected");
                metrics::counter!("subsync_verification_failures_total", "source" => source.id().to_owned(), "reason" => error.kind())
                    .increment(1);
            })?;
        state.broker.publish(verified.envelope()).await.inspect_err(|error| {
            tracing::warn!(source = %source.id(), event_id = %verified.event_id(), %error, "webhook not queued");
        })?;
        Ok::<_, HttpError>((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "status": "queued", "event_id": verified.event_id() })),
        ))
    }
    .await;
    let outcome = match &result {
        Ok(_) => "queued",
        Err(e) => e.outcome(),
    };
    if let Err(error) = &result
        && let Some(reason) = rejection_reason(error)
    {
        state.rejections.record(&label, reason);
    }
    metrics::counter!("subsync_ingress_requests_total", "source" => label, "outcome" => outcome)
        .increment(1);
    result
}

/// The summary's reason for a refused webhook; None for failures on our side (503 and
/// the like), which are not the client's doing and are logged as they happen.
fn rejection_reason(error: &HttpError) -> Option<&'static str> {
    match error {
        HttpError::Verify(verify) => Some(verify.kind()),
        HttpError::UnknownSource => Some("unknown_source"),
        HttpError::PayloadTooLarge => Some("too_large"),
        HttpError::BadRequest(_) => Some("bad_request"),
        _ => None,
    }
}
