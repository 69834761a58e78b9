//! The internal admin listener: health, readiness, Prometheus metrics, and `/admin/*`
//! operations behind a bearer token, described by the OpenAPI document served at
//! `/admin/openapi.json` (generated from these handlers: the routes and the document
//! cannot drift apart).

mod extract;
mod health;
mod openapi;

use std::sync::Arc;

use axum::{
    Extension, Router,
    extract::{Request, State},
    http::header,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::config::NamedToken;
use crate::db::Db;
use crate::dunning::schedule::Dunning;
use crate::dunning::views::{RetriesQuery, RetryDetail, RetryView};
use crate::http_error::HttpError;
use crate::ledger::{
    AttemptView, AttemptsQuery, EventRow, EventsQuery, LookupView, SubscriptionView,
};
use crate::ops::{
    Actor, Quiet,
    audit::{self, AuditRow},
    correct::{self, CorrectionReport},
    dlq::{self, DeadLetterDetail, DlqFilter, PurgeReport, ReplayReport},
    replay::{self, ReplayArchiveReport, ReplayRequest},
};
use crate::providers::Sources;
use crate::queue::{Broker, DeadLetterSummary};
use crate::supervise::TaskHealth;
use extract::{Json, Path, Query, storable_time};

pub struct AdminState {
    pub db: Db,
    pub broker: Broker,
    pub tokens: Vec<NamedToken>,
    pub sources: Arc<Sources>,
    pub dunning: Dunning,
    /// Whether this process's role uses the database (an ingress-only one does not).
    pub uses_database: bool,
    /// Whether it uses the broker (a scheduler-only one does not).
    pub uses_broker: bool,
    /// The supervised tasks of this process; `/readyz` names those that are down.
    pub health: TaskHealth,
}

pub fn router(state: AdminState) -> Router {
    let state = Arc::new(state);
    // Routes and the OpenAPI document are built by the same calls: they cannot drift apart.
    let admin = OpenApiRouter::new()
        .routes(routes!(events))
        .routes(routes!(subscription))
        .routes(routes!(billing_attempts))
        .routes(routes!(retries))
        .routes(routes!(retry_show))
        .routes(routes!(retry_resume))
        .routes(routes!(money_lookups))
        .routes(routes!(dlq_list))
        .routes(routes!(dlq_replay))
        .routes(routes!(dlq_purge))
        .routes(routes!(dlq_show))
        .routes(routes!(replay_archived))
        .routes(routes!(replay_correct))
        .routes(routes!(audit_log))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    let (router, spec) = OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(healthz))
        .routes(routes!(ready))
        .routes(routes!(metrics))
        .merge(admin)
        .with_state(state)
        .split_for_parts();
    let spec = Arc::new(spec);
    router.route(
        "/admin/openapi.json",
        get(move || {
            let spec = spec.clone();
            async move { axum::Json(spec.as_ref().clone()) }
        }),
    )
}

/// Checks the bearer token against every configured one (constant time) and hands the
/// token's name on as the [`Actor`] for the audit log.
async fn require_token(
    State(state): State<Arc<AdminState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .as_bytes();
    let mut matched = None;
    for named in &state.tokens {
        let equal: bool = presented
            .ct_eq(named.token.expose_secret().as_bytes())
            .into();
        if equal && !presented.is_empty() {
            matched = Some(named.name.clone());
        }
    }
    let Some(name) = matched else {
        metrics::counter!("subsync_admin_auth_failures_total").increment(1);
        return HttpError::Unauthorized.into_response();
    };
    request.extensions_mut().insert(Actor(name));
    next.run(request).await
}

/// `{"status": "..."}`.
#[derive(Serialize, utoipa::ToSchema)]
struct Status {
    status: String,
}

#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process is alive", body = Status)))]
async fn healthz() -> axum::Json<Status> {
    axum::Json(Status {
        status: "ok".to_owned(),
    })
}

#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "What this role uses is reachable and every supervised task runs", body = Status),
    (status = 503, description = "The broker or the database is not reachable, or a supervised task is down (named in `down`)",
        body = health::NotReady, headers(("retry-after" = String, description = "Seconds"))),
))]
async fn ready(State(state): State<Arc<AdminState>>) -> Response {
    if let Some(not_ready) = health::not_ready(&state).await {
        return not_ready.into_response();
    }
    axum::Json(Status {
        status: "ready".to_owned(),
    })
    .into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "health", responses(
    (status = 200, description = "Prometheus text exposition", body = String,
        content_type = "text/plain; version=0.0.4; charset=utf-8"),
))]
async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    health::refresh_gauges(&state).await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::telemetry::metrics().render(),
    )
}

#[derive(Serialize, utoipa::ToSchema)]
struct Events {
    events: Vec<EventRow>,
}

#[utoipa::path(get, path = "/admin/events", tag = "ledger", params(EventsQuery),
    security(("bearer" = [])), responses(
    (status = 200, description = "Archived events, newest first", body = Events),
    (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized),
    (status = 500, response = openapi::Internal), (status = 503, response = openapi::Unavailable),
))]
async fn events(
    State(state): State<Arc<AdminState>>,
    Query(query): Query<EventsQuery>,
) -> Result<axum::Json<Events>, HttpError> {
    storable_time("since", query.since)?;
    storable_time("until", query.until)?;
    let events = state.db.events(&query).await?;
    Ok(axum::Json(Events { events }))
}

#[utoipa::path(get, path = "/admin/subscriptions/{source_id}/{subscription_id}", tag = "ledger",
    params(("source_id" = String, Path), ("subscription_id" = String, Path)),
    security(("bearer" = [])), responses(
    (status = 200, description = "The subscription: status, attempts, balances, retry", body = SubscriptionView),
    (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized),
    (status = 404, response = openapi::NotFound),
    (status = 500, response = openapi::Internal), (status = 503, response = openapi::Unavailable),
))]
async fn subscription(
    State(state): State<Arc<AdminState>>,
    Path((source_id, subscription_id)): Path<(String, String)>,
) -> Result<axum::Json<SubscriptionView>, HttpError> {
    let view = state.db.subscription(&source_id, &subscription_id).await?;
    view.map(axum::Json).ok_or(HttpError::NotFound)
}

#[derive(Serialize, utoipa::ToSchema)]
struct BillingAttempts {
    billing_attempts: Vec<AttemptView>,
}

#[utoipa::path(get, path = "/admin/billing-attempts", tag = "ledger", params(AttemptsQuery),
    security(("bearer" = [])), responses(
    (status = 200, description = "Billing attempts", body = BillingAttempts),
    (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized),
    (status = 500, response = openapi::Internal), (status = 503, response = openapi::Unavailable),
))]
async fn billing_attempts(
    State(state): State<Arc<AdminState>>,
    Query(query): Query<AttemptsQuery>,
) -> Result<axum::Json<BillingAttempts>, HttpError> {
    let billing_attempts = state.db.billing_attempts(&query).await?;
    Ok(axum::Json(BillingAttempts { billing_attempts }))
}

#[derive(Serialize, utoipa::ToSchema)]
struct Retries {
    retries: Vec<RetryView>,
}

#[utoipa::path(get, path = "/admin/retries", tag = "dunning", params(RetriesQuery),
    security(("bearer" = [])), responses(
    (status = 200, description = "Payment retries", body = Retries),
    (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized),
    (status = 500, response = openapi::Internal), (status = 503, response = openapi::Unavailable),
))]
async fn retries(
    State(state): State<Arc<AdminState>>,
    Query(query): Query<RetriesQuery>,
) -> Result<axum::Json<Retries>, HttpError> {
    let retries = crate::dunning::views::list(&state.db, &query).await?;
    Ok(axum::Json(Retries { retries }))
}

#[utoipa::path(get, path = "/admin/retries/{id}", tag = "dunning",
    params(("id" = String, Path, description = "`{source_id}:{cycle_key}` as listed (percent-encode a `/` of the cycle key)")),
    security(("bearer" = [])), responses(
    (status = 200, description = "The retry, its final action and its timeline (every decision with its reason)", body = RetryDetail),
    (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized),
    (status = 404, response = openapi::NotFound),
    (status = 500, response = openapi::Internal), (status = 503, response = openapi::Unavailable),
))]
async fn retry_show(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Result<axum::Json<RetryDetail>, HttpError> {
    let detail = crate::ops::retries::show(&state.db, &id).await?;
    detail.map(axum::Json).ok_or(HttpError::NotFound)
}

#[utoipa::path(post, path = "/admin/retries/{id}/resume", tag = "dunning",
    params(("id" = String, Path, description = "`{source_id}:{cycle_key}` as listed (percent-encode a `/` of the cycle key)")),
    security(("bearer" = [])), responses(
    (status = 200, description = "The parked retry, resumed: scheduled, due now, failure count 0 (audited)", body = RetryView),
    (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized),
    (status = 404, response = openapi::NotFound),
    (status = 500, response = openapi::Internal), (status = 503, response = openapi::Unavailable),
))]
async fn retry_resume(
    State(state): State<Arc<AdminState>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<axum::Json<RetryView>, HttpError> {
    let resumed = crate::ops::retries::resume(&state.db, &id, &actor).await?;
    resumed.map(axum::Json).ok_or(HttpError::NotFound)
}

/// Filters of `GET /admin/money-lookups`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct LookupsQuery {
    /// `pending`, `done`, `parked` or `not_applicable`; every row without it.
    status: Option<String>,
    /// At most this many rows (default 100).
    limit: Option<i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct MoneyLookups {
    money_lookups: Vec<LookupView>,
}

#[utoipa::path(get, path = "/admin/money-lookups", tag = "ledger", params(LookupsQuery),
    security(("bearer" = [])), responses(
    (status = 200, description = "Lookups, newest change first: money lookups (`kind` `money`: attempts whose money is read from the provider's API) and payment links (`payment`: refunded payments whose attempt is read from it)", body = MoneyLookups),
    (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized),
    (status = 500, response = openapi::Internal), (status = 503, response = openapi::Unavailable),
))]
async fn money_lookups(
    State(state): State<Arc<AdminState>>,
    Query(query): Query<LookupsQuery>,
) -> Result<axum::Json<MoneyLookups>, HttpError> {
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let money_lookups = state.db.lookups(query.status.as_deref(), limit).await?;
    Ok(axum::Json(MoneyLookups { money_lookups }))
}

/// Filters of `GET /admin/dlq` (replay and purge take the same, with `ids`, as JSON).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct DlqQuery {
    source: Option<String>,
    /// A case-insensitive part of the reason.
    reason: Option<String>,
    /// Last dead-lettered at or after.
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Last dead-lettered before.
    until: Option<chrono::DateTime<chrono::Utc>>,
    /// At most this many (default 100).
    #[param(minimum = 1)]
    limit: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct DeadLetters {
    dead_letters: Vec<DeadLetterSummary>,
}

#[utoipa::path(get, path = "/admin/dlq", tag = "dead letters", params(DlqQuery),
    security(("bearer" = [])), responses(
    (status = 200, description = "Dead letters: id, source, event id, reason, deaths, first/last death", body = DeadLetters),
    (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized),
    (status = 500, response = openapi::Internal), (status = 503, response = openapi::Unavailable),
))]
async fn dlq_list(
    State(state): State<Arc<AdminState>>,
    Query(q): Query<DlqQuery>,
) -> Result<axum::Json<DeadLetters>, HttpError> {
    let filter = DlqFilter {
        ids: Vec::new(),
        source: q.source,
        reason: q.reason,
        since: q.since,
        until: q.until,
        limit: q.limit,
    };
    let dead_letters = dlq::list(&state.broker, &filter).await?;
    Ok(axum::Json(DeadLetters { dead_letters }))
}

#[utoipa::path(get, path = "/admin/dlq/{id}", tag = "dead letters",
    params(("id" = String, Path, description = "`{source_id}:{event_id}`")),
    security(("bearer" = [])), responses(
    (status = 200, description = "One dead letter: headers, reason, raw payload", body = DeadLetterDetail),
    (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized),
    (status = 404, response = openapi::NotFound),
    (status = 500, response = openapi::Internal), (status = 503, response = openapi::Unavailable),
))]
async fn dlq_show(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Result<axum::Json<DeadLetterDetail>, HttpError> {
    let letter = dlq::show(&state.broker, &id).await?;
    letter.map(axum::Json).ok_or(HttpError::NotFound)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct DlqReplayRequest {
    #[serde(flatten)]
    filter: DlqFilter,
    /// Show what each message would change; move nothing.
    #[serde(default)]
    dry_run: bool,
}

#[utoipa::path(post, path = "/admin/dlq/replay", tag = "dead letters", request_body = DlqReplayRequest,
    security(("bearer" = [])), responses(
    (status = 200, description = "What was replayed (or, dry, what each would change)", body = ReplayReport),
    (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized),
    (status = 500, response = openapi::Internal), (status = 503, response = openapi::Unavailable),
))]
async fn dlq_replay(
    State(state): State<Arc<AdminState>>,
    Extension(actor): Extension<Actor>,
    Json(request): Json<DlqReplayRequest>,
) -> Result<axum::Json<ReplayReport>, HttpError> {
    let ctx = dlq::Context {
        broker: &state.broker,
        db: &state.db,
        sources: &state.sources,
        dunning: &state.dunning,
    };
    let report = dlq::replay(&ctx, &request.filter, request.dry_run, &actor, &Quiet).await?;
    Ok(axum::Json(report))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct DlqPurgeRequest {
    #[serde(flatten)]
    filter: DlqFilter,
    /// Must be `true`: a purge cannot be undone.
    #[serde(default)]
    confirm: bool,
}

#[utoipa::path(post, path = "/admin/dlq/purge", tag = "dead letters", request_body = DlqPurgeRequest,
    security(("bearer" = [])), responses(
    (status = 200, description = "What was deleted", body = PurgeReport),
    (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized),
    (status = 500, response = openapi::Internal), (status = 503, response = openapi::Unavailable),
))]
async fn dlq_purge(
    State(state): State<Arc<AdminState>>,
    Extension(actor): Extension<Actor>,
    Json(request): Json<DlqPurgeRequest>,
) -> Result<axum::Json<PurgeReport>, HttpError> {
    let report = dlq::purge(
        &state.broker,
        &state.db,
        &request.filter,
        request.confirm,
        &actor,
    )
    .await?;
    Ok(axum::Json(report))
}

#[utoipa::path(post, path = "/admin/replay", tag = "ledger", request_body = ReplayRequest,
    security(("bearer" = [])), responses(
    (status = 200, description = "Archived events reconciled again (or, dry, what would change)", body = ReplayArchiveReport),
    (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized),
    (status = 404, response = openapi::NotFound),
    (status = 500, response = openapi::Internal), (status = 503, response = openapi::Unavailable),
))]
async fn replay_archived(
    State(state): State<Arc<AdminState>>,
    Extension(actor): Extension<Actor>,
    Json(request): Json<ReplayRequest>,
) -> Result<axum::Json<ReplayArchiveReport>, HttpError> {
    storable_time("since", Some(request.since))?;
    storable_time("until", request.until)?;
    let report = replay::replay_archived(
        &state.db,
        &state.sources,
        &state.dunning,
        &request,
        &actor,
        &Quiet,
    )
    .await?;
    Ok(axum::Json(report))
}

/// The corrective replay (`subsync replay --correct`): same body as `/admin/replay`.
#[utoipa::path(post, path = "/admin/replay/correct", tag = "ledger", request_body = ReplayRequest,
    security(("bearer" = [])), responses(
    (status = 200, description = "Each subscription (or attempt without one) the window's events touch, recomputed from all its archived events: what differed and was corrected (or, dry, would be)", body = CorrectionReport),
    (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized),
    (status = 404, response = openapi::NotFound),
    (status = 500, response = openapi::Internal), (status = 503, response = openapi::Unavailable),
))]
async fn replay_correct(
    State(state): State<Arc<AdminState>>,
    Extension(actor): Extension<Actor>,
    Json(request): Json<ReplayRequest>,
) -> Result<axum::Json<CorrectionReport>, HttpError> {
    storable_time("since", Some(request.since))?;
    storable_time("until", request.until)?;
    let report = correct::correct_archived(
        &state.db,
        &state.sources,
        &state.dunning,
        &request,
        &actor,
        &Quiet,
    )
    .await?;
    Ok(axum::Json(report))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// At most this many entries (default 100).
    limit: Option<i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Audit {
    entries: Vec<AuditRow>,
}

#[utoipa::path(get, path = "/admin/audit", tag = "dead letters", params(AuditQuery),
    security(("bearer" = [])), responses(
    (status = 200, description = "Replays and purges: who, what, how many, when; newest first", body = Audit),
    (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized),
    (status = 500, response = openapi::Internal), (status = 503, response = openapi::Unavailable),
))]
async fn audit_log(
    State(state): State<Arc<AdminState>>,
    Query(q): Query<AuditQuery>,
) -> Result<axum::Json<Audit>, HttpError> {
    let entries = audit::recent(&state.db, q.limit.unwrap_or(100)).await?;
    Ok(axum::Json(Audit { entries }))
}
