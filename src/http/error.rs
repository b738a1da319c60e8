//! HTTP errors: JSON `{"error", "reason"}` bodies; internal causes are logged and never sent.

use crate::number_api::NumberApiError;
use crate::queue::QueueError;
use crate::store::StoreError;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::time::Duration;
use utoipa::ToSchema;

/// The body of every JSON error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable, machine-readable code, such as `queue_unavailable`.
    pub error: &'static str,
    /// What happened, for a person.
    pub reason: String,
}

/// Everything a handler can answer with besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The number API failed; the variant says how.
    #[error(transparent)]
    NumberApi(#[from] NumberApiError),
    /// The queue did not take the message, so no code is handed out.
    #[error("queue refused the message: {0}")]
    Queue(#[from] QueueError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request is malformed; the text says how.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No or wrong bearer key.
    #[error("missing or wrong bearer key")]
    Unauthorized,
    /// `VERIFY_API_KEY` is not set.
    #[error("verification API is off")]
    VerificationDisabled,
    /// The client sent too many requests; it may try again after the duration.
    #[error("rate limited")]
    RateLimited(Duration),
    /// The code is not valid (the reason is logged where it is known, never answered).
    #[error("code not valid")]
    NotValid,
    /// The request took longer than the listener's deadline.
    #[error("request took longer than {0:?}")]
    RequestTimeout(Duration),
    /// A handler failed unexpectedly (a panic); the cause is in the log.
    #[error("internal error")]
    Internal,
}

fn json(status: StatusCode, error: &'static str, reason: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error,
            reason: reason.into(),
        }),
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::NumberApi(e) = &self {
            metrics::counter!(crate::ops::metrics::NUMBER_API_ERRORS, "kind" => e.kind())
                .increment(1);
        }
        match &self {
            ApiError::NotValid => {
                return (
                    StatusCode::NOT_FOUND,
                    Json(serde_json::json!({ "valid": false })),
                )
                    .into_response();
            }
            ApiError::BadRequest(reason) => {
                return json(StatusCode::BAD_REQUEST, "bad_request", reason.clone());
            }
            ApiError::Unauthorized => {
                let mut response = json(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "Send Authorization: Bearer <VERIFY_API_KEY>.",
                );
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return response;
            }
            ApiError::VerificationDisabled => {
                return json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "verification_disabled",
                    "The verification API is off: start serve with VERIFY_API_KEY set.",
                );
            }
            ApiError::RateLimited(wait) => {
                let mut response = json(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "Too many requests; slow down.",
                );
                let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                return response;
            }
            // The sample's behaviour: its plain-text body with the API's own status.
            ApiError::NumberApi(NumberApiError::Status(code)) => {
                tracing::warn!(status = code, "number API refused");
                let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::BAD_GATEWAY);
                return (status, "Could not get you a code.").into_response();
            }
            _ => {}
        }
        tracing::warn!(error = %self, "request failed");
        match self {
            ApiError::NumberApi(NumberApiError::Timeout(_)) => json(
                StatusCode::GATEWAY_TIMEOUT,
                "number_api_timeout",
                "The random-number API did not answer in time.",
            ),
            ApiError::NumberApi(NumberApiError::Redirect(status)) => json(
                StatusCode::BAD_GATEWAY,
                "number_api_redirect",
                format!(
                    "The random-number API answered HTTP {status}, a redirect; it is not followed, so \
                     the function key goes only to THIRD_PARTY_API_ENDPOINT. Configure the final URL."
                ),
            ),
            ApiError::NumberApi(NumberApiError::TooLarge) => json(
                StatusCode::BAD_GATEWAY,
                "number_api_bad_response",
                "The random-number API's answer was larger than a number can be.",
            ),
            ApiError::NumberApi(NumberApiError::Unreachable) => json(
                StatusCode::BAD_GATEWAY,
                "number_api_unreachable",
                "The random-number API could not be reached.",
            ),
            ApiError::NumberApi(_) => json(
                StatusCode::BAD_GATEWAY,
                "number_api_bad_response",
                "The random-number API answered with something that is not a number.",
            ),
            ApiError::RequestTimeout(deadline) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                "request_timeout",
                format!(
                    "The request took longer than {} s and was abandoned; if it was getcode, no code \
                     was handed out. Try again.",
                    deadline.as_secs_f64()
                ),
            ),
            ApiError::Store(_) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "The codes database cannot be reached; try again shortly.",
            ),
            ApiError::Queue(_) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_unavailable",
                "The code could not be recorded; no code was issued. Try again.",
            ),
            _ => json(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error; see the service log.",
            ),
        }
    }
}
