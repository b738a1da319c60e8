//! The OpenAPI document, generated from the handlers, served at `GET /api/openapi.json`.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// codewatch's HTTP API.
#[derive(OpenApi)]
#[openapi(
    info(title = "codewatch", description = "Short-lived two-factor codes: issue, check, redeem."),
    paths(super::getcode::get_code, super::codes::check, super::codes::redeem),
    components(schemas(super::codes::ValidCode, super::codes::NotValid, super::error::ErrorBody)),
    modifiers(&BearerKey)
)]
pub struct ApiDoc;

struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// `GET /api/openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
