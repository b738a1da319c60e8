//! In front of the verification endpoints: off without a key, then rate limit per client, then the
//! bearer key, compared in constant time.

use super::{ApiError, AppState};
use crate::secret::constant_time_eq;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

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
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    verification
        .limiter
        .check(client, Instant::now())
        .map_err(ApiError::RateLimited)?;
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !constant_time_eq(
        presented.as_bytes(),
        verification.api_key.expose().as_bytes(),
    ) {
        return Err(ApiError::Unauthorized);
    }
    Ok(next.run(request).await)
}
