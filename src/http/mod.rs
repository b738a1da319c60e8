//! The producer's HTTP API, by audience: the public's (the sample's getcode, the home page) and the
//! sign-in service's (issue a code for a user, check, redeem), each with the OpenAPI document of what
//! it serves.

mod body;
mod client_ip;
mod codes;
mod error;
mod getcode;
mod guard;
mod home;
mod metrics;
mod openapi;
pub mod rate_limit;
mod request_id;
pub mod server;

pub use client_ip::{ForwardHeader, TrustedProxies};
pub use error::ApiError;
pub use request_id::X_REQUEST_ID;
pub use server::HttpLimits;

use crate::message::MessageEncoding;
use crate::number_api::NumberApiClient;
use crate::queue::shards::Spread;
use crate::secret::Secret;
use crate::verify::Verifier;
use axum::Router;
use axum::http::HeaderValue;
use axum::http::header::CACHE_CONTROL;
use axum::middleware;
use axum::routing::{get, post};
use rate_limit::RateLimiter;
use std::sync::Arc;
use tower_http::set_header::SetResponseHeaderLayer;

/// The verification endpoints' settings; without them those endpoints answer that they are off.
pub struct Verification {
    /// Answers checks and redeems.
    pub verifier: Verifier,
    /// The bearer key the sign-in service sends.
    pub api_key: Secret,
    /// Requests per client.
    pub limiter: RateLimiter,
    /// Whether checks and redeems without a subject are answered (the sample's unbound codes);
    /// otherwise they are refused, so a forgotten subject cannot pass with a publicly minted code.
    pub allow_unbound: bool,
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
    /// Whether the sample's unauthenticated `GET /api/v1/getcode` is served.
    pub public_getcode: bool,
    /// How long codes live, and whether the worker delivers them.
    pub issuing: Issuing,
}

/// What the sign-in API says of the codes it issues.
#[derive(Clone, Copy, Debug)]
pub struct Issuing {
    /// How long a code stays valid (the worker's CODE_TTL_SECONDS): the answer's `expires_at`.
    pub code_ttl: std::time::Duration,
    /// How the worker delivers codes; with a channel, an issue needs a destination and its answer
    /// carries no code.
    pub delivery: crate::config::DeliveryChannel,
}

impl Default for Issuing {
    fn default() -> Self {
        Self {
            code_ttl: crate::worker::WorkerSettings::default().code_ttl,
            delivery: crate::config::DeliveryChannel::None,
        }
    }
}

/// Reads an optional subject; a malformed one is a 400 with the reason.
fn parse_subject(subject: Option<&str>) -> Result<Option<crate::domain::Subject>, ApiError> {
    subject
        .map(crate::domain::Subject::parse)
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// The producer's routes, by audience; each listener also serves the OpenAPI document of what it
/// serves ([`Routers::apart`], [`Routers::together`]).
pub struct Routers {
    /// `GET /`, and `GET /api/v1/getcode` unless it is turned off.
    pub public: Router,
    /// `POST /api/v1/codes`, `POST /api/v1/codes/check`, `POST /api/v1/codes/redeem`, behind the
    /// bearer key.
    pub signin: Router,
    public_getcode: bool,
}

impl Routers {
    /// The public and the sign-in routes for listeners of their own, each with its document.
    pub fn apart(self) -> (Router, Router) {
        (
            with_fallbacks(
                self.public
                    .merge(openapi::route(openapi::public(self.public_getcode))),
            ),
            with_fallbacks(self.signin.merge(openapi::route(openapi::signin()))),
        )
    }

    /// Every route on one listener, with one document of both.
    pub fn together(self) -> Router {
        let document = openapi::both(self.public_getcode);
        with_fallbacks(
            self.public
                .merge(self.signin)
                .merge(openapi::route(document)),
        )
    }
}

/// JSON answers, with a reason, for a path this listener does not serve and for a wrong method.
fn with_fallbacks(router: Router) -> Router {
    router
        .fallback(|| async { ApiError::NoSuchEndpoint })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
}

/// `Cache-Control: no-store`, on every answer of the API: an answer may carry a live code.
fn no_store() -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::overriding(CACHE_CONTROL, HeaderValue::from_static("no-store"))
}

/// The producer's routes, split by audience so each can have its own listener.
pub fn routers(state: AppState) -> Routers {
    let public_getcode = state.public_getcode;
    let state = Arc::new(state);
    let signin = Router::new()
        .route("/api/v1/codes", post(codes::issue))
        .route("/api/v1/codes/check", post(codes::check))
        .route("/api/v1/codes/redeem", post(codes::redeem))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            guard::verification_guard,
        ))
        .route_layer(no_store())
        .route_layer(middleware::from_fn(metrics::record_http))
        .with_state(state.clone());
    let mut public = Router::new().route("/", get(home::home));
    if public_getcode {
        public = public.merge(
            Router::new()
                .route("/api/v1/getcode", get(getcode::get_code))
                .route_layer(middleware::from_fn_with_state(
                    state.clone(),
                    guard::getcode_guard,
                ))
                .route_layer(no_store()),
        );
    }
    let public = public
        .route_layer(middleware::from_fn(metrics::record_http))
        .with_state(state);
    Routers {
        public,
        signin,
        public_getcode,
    }
}

/// All the producer's routes on one router, with the document of both.
pub fn router(state: AppState) -> Router {
    routers(state).together()
}
