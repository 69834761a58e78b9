//! The internal admin listener: health, readiness, Prometheus metrics, and `/admin/*`
//! operations behind a bearer token.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, Query, Request, State},
    http::header,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use crate::ingress::ApiError;
use crate::ledger::{AttemptsQuery, Db, EventsQuery, SubscriptionView};
use crate::queue::Broker;

pub struct AdminState {
    pub db: Db,
    pub broker: Broker,
    pub token: SecretString,
    /// Whether this process's role uses the database (an ingress-only one does not).
    pub uses_database: bool,
    /// Whether it uses the broker (a scheduler-only one does not).
    pub uses_broker: bool,
}

pub fn router(state: AdminState) -> Router {
    let state = Arc::new(state);
    let admin = Router::new()
        .route("/admin/events", get(events))
        .route(
            "/admin/subscriptions/{source_id}/{subscription_id}",
            get(subscription),
        )
        .route("/admin/billing-attempts", get(billing_attempts))
        .route("/admin/retries", get(retries))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .merge(admin)
        .with_state(state)
}

async fn require_token(
    State(state): State<Arc<AdminState>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let expected = state.token.expose_secret().as_bytes();
    if presented.is_empty() || !bool::from(presented.as_bytes().ct_eq(expected)) {
        metrics::counter!("subsync_admin_auth_failures_total").increment(1);
        return ApiError::Unauthorized.into_response();
    }
    next.run(request).await
}

async fn ready(State(state): State<Arc<AdminState>>) -> Result<Json<serde_json::Value>, ApiError> {
    if state.uses_broker && !state.broker.is_connected() {
        return Err(ApiError::Unavailable("broker not connected"));
    }
    if state.uses_database && state.db.ping().await.is_err() {
        return Err(ApiError::Unavailable("database not reachable"));
    }
    Ok(Json(serde_json::json!({ "status": "ready" })))
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::telemetry::metrics().render(),
    )
}

async fn events(
    State(state): State<Arc<AdminState>>,
    Query(query): Query<EventsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let rows = state.db.events(&query).await?;
    Ok(Json(serde_json::json!({ "events": rows })))
}

async fn subscription(
    State(state): State<Arc<AdminState>>,
    Path((source_id, subscription_id)): Path<(String, String)>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let view = state.db.subscription(&source_id, &subscription_id).await?;
    view.map(Json).ok_or(ApiError::NotFound)
}

async fn billing_attempts(
    State(state): State<Arc<AdminState>>,
    Query(query): Query<AttemptsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let attempts = state.db.billing_attempts(&query).await?;
    Ok(Json(serde_json::json!({ "billing_attempts": attempts })))
}

async fn retries(
    State(state): State<Arc<AdminState>>,
    Query(query): Query<crate::dunning::views::RetriesQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let retries = crate::dunning::views::list(&state.db, &query).await?;
    Ok(Json(serde_json::json!({ "retries": retries })))
}
