//! The OpenAPI 3.1 documents, generated from the handlers: each listener serves, at
//! `GET /api/openapi.json`, the document of what it exposes, so that a client generated from it
//! calls only what is there.

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The public's API: the sample's getcode.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "codewatch",
        description = "Short-lived two-factor codes. The public listener: the walkthrough's unbound \
                       getcode, a demonstration (a sign-in binds every code to its user through the \
                       sign-in API).",
        license(name = "MIT", identifier = "MIT")
    ),
    servers((url = "/", description = "The listener that serves this document")),
    tags((name = "getcode", description = "The walkthrough's public, unauthenticated code issuing")),
    paths(super::getcode::get_code),
    components(schemas(super::error::ErrorBody))
)]
struct PublicApi;

/// The sign-in service's API: issue a code for a user, check, redeem.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "codewatch sign-in API",
        description = "Short-lived two-factor codes for a sign-in service: issue a code bound to a \
                       user, deliver it to them, then check or redeem what they type. Every call \
                       sends Authorization: Bearer <VERIFY_API_KEY>.",
        license(name = "MIT", identifier = "MIT")
    ),
    servers((url = "/", description = "The listener that serves this document")),
    tags((name = "sign-in", description = "Issue, check and redeem codes bound to a user")),
    paths(super::codes::issue, super::codes::check, super::codes::redeem),
    components(schemas(
        super::codes::ValidCode,
        super::codes::NotValid,
        super::codes::IssuedCode,
        super::error::ErrorBody
    )),
    modifiers(&BearerKey)
)]
struct SigninApi;

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

/// The public listener's document (without paths if getcode is turned off).
pub fn public(getcode: bool) -> utoipa::openapi::OpenApi {
    let mut doc = PublicApi::openapi();
    if !getcode {
        doc.paths.paths.clear();
        doc.tags = None;
    }
    doc
}

/// The sign-in listener's document.
pub fn signin() -> utoipa::openapi::OpenApi {
    SigninApi::openapi()
}

/// One listener serving both: the sign-in document with the public paths and tag added.
pub fn both(getcode: bool) -> utoipa::openapi::OpenApi {
    let mut doc = signin();
    doc.merge(public(getcode));
    doc
}

/// `GET /api/openapi.json`, serving `document` (serialised once).
pub fn route(document: utoipa::openapi::OpenApi) -> Router {
    let json = document.to_json().unwrap_or_else(|e| {
        tracing::error!(error = %e, "the OpenAPI document could not be serialised");
        "{}".to_owned()
    });
    Router::new().route(
        "/api/openapi.json",
        get(move || {
            let json = json.clone();
            async move { ([(CONTENT_TYPE, "application/json")], json) }
        }),
    )
}
