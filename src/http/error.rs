//! HTTP errors: JSON `{"error", "reason"}` bodies, internal causes logged and never sent.

use crate::number_api::NumberApiError;
use crate::queue::QueueError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Everything a handler can answer with besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The number API failed; the variant says how.
    #[error(transparent)]
    NumberApi(#[from] NumberApiError),
    /// The queue did not take the message, so no code is handed out.
    #[error("queue refused the message: {0}")]
    Queue(#[from] QueueError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error, reason) = match &self {
            // The sample's behaviour: its plain-text body with the API's own status.
            ApiError::NumberApi(NumberApiError::Status(code)) => {
                tracing::warn!(status = code, "number API refused");
                let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::BAD_GATEWAY);
                return (status, "Could not get you a code.").into_response();
            }
            ApiError::NumberApi(NumberApiError::Timeout(_)) => (
                StatusCode::GATEWAY_TIMEOUT,
                "number_api_timeout",
                "The random-number API did not answer in time.",
            ),
            ApiError::NumberApi(NumberApiError::Unreachable) => (
                StatusCode::BAD_GATEWAY,
                "number_api_unreachable",
                "The random-number API could not be reached.",
            ),
            ApiError::NumberApi(NumberApiError::Garbage) => (
                StatusCode::BAD_GATEWAY,
                "number_api_bad_response",
                "The random-number API answered with something that is not a number.",
            ),
            ApiError::Queue(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_unavailable",
                "The code could not be recorded; no code was issued. Try again.",
            ),
        };
        tracing::warn!(error = %self, "request failed");
        (
            status,
            Json(serde_json::json!({ "error": error, "reason": reason })),
        )
            .into_response()
    }
}
