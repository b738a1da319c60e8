//! In front of the verification endpoints: off without a key, then the bearer key (compared in
//! constant time), then the rate limit per client, so an unauthenticated caller never spends the
//! sign-in service's budget.

use super::{ApiError, AppState};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// Lets a request through to a verification endpoint, or answers 503 / 429 / 401.
pub async fn verification_guard(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let verification = state
        .verification
        .as_ref()
        .ok_or(ApiError::VerificationDisabled)?;
    let client = client_of(&state, &request);
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .unwrap_or_default();
    if !verification.api_key.matches(presented.as_bytes()) {
        return Err(ApiError::Unauthorized);
    }
    verification
        .limiter
        .check(client)
        .map_err(ApiError::RateLimited)?;
    Ok(next.run(request).await)
}

/// Lets a getcode request through unless its client is over `GETCODE_RATE_LIMIT_PER_SECOND`.
pub async fn getcode_guard(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(limiter) = &state.getcode_limiter {
        limiter
            .check(client_of(&state, &request))
            .map_err(ApiError::RateLimited)?;
    }
    Ok(next.run(request).await)
}

/// The client a request counts against: the TCP peer, or what a trusted ingress forwarded.
fn client_of(state: &AppState, request: &Request) -> IpAddr {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    state.trusted_proxies.client(peer, request.headers())
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is case-insensitive (RFC 9110).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer k", "bearer k", "BEARER  k"] {
            assert_eq!(super::bearer_token(value), Some("k"), "{value}");
        }
        assert_eq!(super::bearer_token("Basic k"), None);
        assert_eq!(super::bearer_token("Bearer"), None);
    }
}
