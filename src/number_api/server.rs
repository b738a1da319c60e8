//! The stand-in for the sample's `RandomNumber` Azure Function.

use super::KEY_HEADER;
use crate::secret::Secret;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rand::RngExt;
use std::sync::Arc;

/// `GET`/`POST /api/RandomNumber` → `{"value": n}`, n uniform in 1..=1000; 401 without the right key.
/// `GET /healthz` answers 200 for container health checks.
pub fn router(key: Secret) -> Router {
    Router::new()
        .route("/api/RandomNumber", get(random_number).post(random_number))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Arc::new(key))
}

async fn random_number(State(key): State<Arc<Secret>>, headers: HeaderMap) -> Response {
    let given = headers
        .get(KEY_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !key.matches(given) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let value: u32 = rand::rng().random_range(1..=1000);
    Json(serde_json::json!({ "value": value })).into_response()
}
