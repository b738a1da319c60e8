//! The producer's HTTP API: issuing codes, the sign-in service's verification endpoints, the OpenAPI
//! document and the home page.

mod client_ip;
mod codes;
mod error;
mod getcode;
mod guard;
mod home;
mod metrics;
mod openapi;
pub mod rate_limit;
pub mod server;

pub use client_ip::TrustedProxies;
pub use error::ApiError;
pub use openapi::ApiDoc;
pub use server::HttpLimits;

use crate::message::MessageEncoding;
use crate::number_api::NumberApiClient;
use crate::queue::shards::Spread;
use crate::secret::Secret;
use crate::verify::Verifier;
use axum::Router;
use axum::middleware;
use axum::routing::{get, post};
use rate_limit::RateLimiter;
use std::sync::Arc;

/// The verification endpoints' settings; without them those endpoints answer that they are off.
pub struct Verification {
    /// Answers checks and redeems.
    pub verifier: Verifier,
    /// The bearer key the sign-in service sends.
    pub api_key: Secret,
    /// Requests per client.
    pub limiter: RateLimiter,
}

/// What the handlers share.
pub struct AppState {
    /// The random-number API.
    pub number_api: NumberApiClient,
    /// The queues codes are announced on, one shard per issuance.
    pub queue: Spread,
    /// How message text is written.
    pub encoding: MessageEncoding,
    /// The verification API, if `VERIFY_API_KEY` is set.
    pub verification: Option<Verification>,
    /// getcode requests per client (each costs a third-party call); `None`: unlimited.
    pub getcode_limiter: Option<RateLimiter>,
    /// The ingress ranges whose `X-Forwarded-For` names the client.
    pub trusted_proxies: TrustedProxies,
    /// With keys, every activation is signed with the current one.
    pub signing: Option<crate::signing::SigningKeys>,
    /// The time codes are issued and checked at.
    pub clock: crate::clock::Clock,
}

/// Reads an optional `?subject=` parameter; a malformed one is a 400 with the reason.
fn parse_subject(subject: Option<&str>) -> Result<Option<crate::domain::Subject>, ApiError> {
    subject
        .map(crate::domain::Subject::parse)
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// The producer's routes, by audience: what the public may call (getcode, the OpenAPI document, the
/// home page), and the sign-in service's verification endpoints.
pub struct Routers {
    /// `GET /`, `GET /api/v1/getcode`, `GET /api/openapi.json`.
    pub public: Router,
    /// `GET /api/v1/codes/{code}`, `POST /api/v1/codes/{code}/redeem`, behind the bearer key.
    pub verification: Router,
}

/// The producer's routes, split by audience so each can have its own listener.
pub fn routers(state: AppState) -> Routers {
    let state = Arc::new(state);
    let verification = Router::new()
        .route("/api/v1/codes/{code}", get(codes::check))
        .route("/api/v1/codes/{code}/redeem", post(codes::redeem))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            guard::verification_guard,
        ))
        .route_layer(middleware::from_fn(metrics::record_http))
        .with_state(state.clone());
    let getcode = Router::new()
        .route("/api/v1/getcode", get(getcode::get_code))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            guard::getcode_guard,
        ));
    let public = Router::new()
        .route("/", get(home::home))
        .merge(getcode)
        .route("/api/openapi.json", get(openapi::document))
        .route_layer(middleware::from_fn(metrics::record_http))
        .with_state(state);
    Routers {
        public,
        verification,
    }
}

/// All the producer's routes on one router.
pub fn router(state: AppState) -> Router {
    let Routers {
        public,
        verification,
    } = routers(state);
    public.merge(verification)
}
