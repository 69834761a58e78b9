//! The public ingress: `POST /webhooks/{source_id}`. Reads the raw body (bounded), verifies
//! it over the exact bytes, publishes it and answers 2xx only after the broker confirmed.

mod error;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum::{
    Json, Router,
    extract::{ConnectInfo, DefaultBodyLimit, Path, Request, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::post,
};
use bytes::Bytes;

pub use error::ApiError;

use crate::providers::{Sources, Unverified};
use crate::queue::Broker;

struct IngressState {
    sources: Arc<Sources>,
    broker: Broker,
}

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
        .with_state(Arc::new(IngressState { sources, broker }))
}

/// A request that takes longer than `timeout` (slow body, stuck broker) gets 503 so the
/// provider redelivers; whatever it had not yet published is not queued.
async fn deadline(timeout: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable("request timed out").into_response(),
    }
}

async fn receive(
    State(state): State<Arc<IngressState>>,
    Path(source_id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let source = state.sources.get(&source_id);
    let label = source
        .map(|s| s.id().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let result = async {
        let source = source.ok_or(ApiError::UnknownSource)?;
        let body = body.map_err(|rejection| match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
            _ => ApiError::BadRequest(rejection.body_text()),
        })?;
        let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let verified = source
            .verify(Unverified { headers: &headers, body: &body, peer: Some(peer.ip()) }, content_type, SystemTime::now())
            .inspect_err(|error| {
                tracing::info!(source = %source.id(), %error, "webhook rejected");
                metrics::counter!("subsync_verification_failures_total", "source" => source.id().to_owned(), "reason" => error.kind())
                    .increment(1);
            })?;
        state.broker.publish(verified.envelope()).await.inspect_err(|error| {
            tracing::warn!(source = %source.id(), event_id = %verified.event_id(), %error, "webhook not queued");
        })?;
        Ok::<_, ApiError>((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "status": "queued", "event_id": verified.event_id() })),
        ))
    }
    .await;
    let outcome = match &result {
        Ok(_) => "queued",
        Err(e) => e.outcome(),
    };
    metrics::counter!("subsync_ingress_requests_total", "source" => label, "outcome" => outcome)
        .increment(1);
    result
}
