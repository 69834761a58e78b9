//! The OpenAPI document of the admin listener, generated from the handlers' annotations.

use serde::Serialize;
use utoipa::{
    Modify, OpenApi, ToResponse, ToSchema,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

/// Every error answer: `{"error": "..."}` (never a secret).
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(ToResponse)]
#[response(description = "Invalid parameters or body")]
pub struct BadRequest(#[allow(dead_code)] ErrorBody);

#[derive(ToResponse)]
#[response(description = "Missing or wrong bearer token",
    headers(("www-authenticate" = String, description = "Bearer")))]
pub struct Unauthorized(#[allow(dead_code)] ErrorBody);

#[derive(ToResponse)]
#[response(description = "Nothing with that id")]
pub struct NotFound(#[allow(dead_code)] ErrorBody);

#[derive(ToResponse)]
#[response(description = "Internal error (details only in the log)")]
pub struct Internal(#[allow(dead_code)] ErrorBody);

#[derive(ToResponse)]
#[response(description = "The broker or the database is unavailable",
    headers(("retry-after" = String, description = "Seconds")))]
pub struct Unavailable(#[allow(dead_code)] ErrorBody);

#[derive(OpenApi)]
#[openapi(
    info(title = "subsync admin API", description = "Health, metrics, ledger views, payment retries, dead-letter operations and replays. Every `/admin/*` operation needs `Authorization: Bearer <admin token>`."),
    components(responses(BadRequest, Unauthorized, NotFound, Internal, Unavailable)),
    modifiers(&Bearer),
)]
struct AdminApi;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document's info, security scheme and shared responses; the router adds the paths.
pub fn base() -> utoipa::openapi::OpenApi {
    AdminApi::openapi()
}
