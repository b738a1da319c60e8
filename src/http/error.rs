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
    /// The public getcode was asked to bind a code to a subject, which only the sign-in service may do.
    #[error("a subject named on the public getcode")]
    SubjectNeedsKey,
    /// The request body is larger than a listener accepts.
    #[error("request body too large")]
    BodyTooLarge,
    /// No endpoint at this path on this listener.
    #[error("no such endpoint")]
    NoSuchEndpoint,
    /// The path exists, for another method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A redeem's `Idempotency-Key` was used before with another code or subject.
    #[error("idempotency key reused for another request")]
    IdempotencyKeyReused,
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
        match &self {
            // One answer for every reason a code is not valid.
            ApiError::NotValid => {
                return (
                    StatusCode::NOT_FOUND,
                    Json(serde_json::json!({ "valid": false })),
                )
                    .into_response();
            }
            // The sample's behaviour: its plain-text body with the API's own status.
            ApiError::NumberApi(NumberApiError::Status(code)) => {
                tracing::warn!(status = code, "number API refused");
                let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::BAD_GATEWAY);
                return (status, "Could not get you a code.").into_response();
            }
            _ => {}
        }
        if self.is_ours() {
            tracing::warn!(error = %self, "request failed");
        }
        let (status, error, reason) = self.answer();
        let mut response = json(status, error, reason);
        self.add_headers(response.headers_mut());
        response
    }
}

impl ApiError {
    /// Whether the failure is on this side (or a dependency's), worth a log line; a client's mistakes
    /// are not.
    fn is_ours(&self) -> bool {
        !matches!(
            self,
            ApiError::BadRequest(_)
                | ApiError::Unauthorized
                | ApiError::SubjectNeedsKey
                | ApiError::IdempotencyKeyReused
                | ApiError::BodyTooLarge
                | ApiError::NoSuchEndpoint
                | ApiError::MethodNotAllowed
                | ApiError::VerificationDisabled
                | ApiError::RateLimited(_)
                | ApiError::NotValid
        )
    }

    /// The status, the stable error code and the reason for a person.
    fn answer(&self) -> (StatusCode, &'static str, String) {
        match self {
            ApiError::BadRequest(reason) => {
                (StatusCode::BAD_REQUEST, "bad_request", reason.clone())
            }
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Send Authorization: Bearer <VERIFY_API_KEY>.".into(),
            ),
            ApiError::SubjectNeedsKey => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "A code bound to a user is issued only to the sign-in service: POST /api/v1/codes \
                 {\"subject\": …} with Authorization: Bearer <VERIFY_API_KEY>, on the sign-in \
                 listener. The public getcode issues unbound codes only."
                    .into(),
            ),
            ApiError::BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "The request body is larger than 16 KiB; a code and a subject fit in far less.".into(),
            ),
            ApiError::NoSuchEndpoint => (
                StatusCode::NOT_FOUND,
                "not_found",
                "No such endpoint on this listener; GET /api/openapi.json lists what it serves.".into(),
            ),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "This endpoint does not take that method; GET /api/openapi.json says which it takes \
                 (codes are checked and redeemed by POST, with the code in the JSON body)."
                    .into(),
            ),
            ApiError::IdempotencyKeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "This Idempotency-Key was used for a redeem of another code or subject; use a new \
                 key for each redeem."
                    .into(),
            ),
            ApiError::VerificationDisabled => (
                StatusCode::SERVICE_UNAVAILABLE,
                "verification_disabled",
                "The verification API is off: start serve with VERIFY_API_KEY set.".into(),
            ),
            ApiError::RateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many requests; slow down.".into(),
            ),
            ApiError::NumberApi(e) => number_api_answer(e),
            ApiError::RequestTimeout(deadline) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "request_timeout",
                format!(
                    "The request took longer than {} s and was abandoned; if it was getcode, no code \
                     was handed out. Try again.",
                    deadline.as_secs_f64()
                ),
            ),
            ApiError::Store(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "The codes database cannot be reached; try again shortly.".into(),
            ),
            ApiError::Queue(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_unavailable",
                "The code could not be recorded; no code was issued. Try again.".into(),
            ),
            ApiError::NotValid | ApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error; see the service log.".into(),
            ),
        }
    }

    /// The headers an answer carries: how to authenticate, when to try again.
    fn add_headers(&self, headers: &mut axum::http::HeaderMap) {
        match self {
            ApiError::Unauthorized | ApiError::SubjectNeedsKey => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::RateLimited(wait) => {
                let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                    headers.insert(header::RETRY_AFTER, value);
                }
            }
            _ => {}
        }
    }
}

/// How a failure of the number API is answered (a refusal, `Status`, is answered as the sample did).
fn number_api_answer(e: &NumberApiError) -> (StatusCode, &'static str, String) {
    match e {
        NumberApiError::Timeout(_) => (
            StatusCode::GATEWAY_TIMEOUT,
            "number_api_timeout",
            "The random-number API did not answer in time.".into(),
        ),
        NumberApiError::Redirect(status) => (
            StatusCode::BAD_GATEWAY,
            "number_api_redirect",
            format!(
                "The random-number API answered HTTP {status}, a redirect; it is not followed, so \
                 the function key goes only to THIRD_PARTY_API_ENDPOINT. Configure the final URL."
            ),
        ),
        NumberApiError::TooLarge => (
            StatusCode::BAD_GATEWAY,
            "number_api_bad_response",
            "The random-number API's answer was larger than a number can be.".into(),
        ),
        NumberApiError::Unreachable => (
            StatusCode::BAD_GATEWAY,
            "number_api_unreachable",
            "The random-number API could not be reached.".into(),
        ),
        NumberApiError::Garbage | NumberApiError::Status(_) => (
            StatusCode::BAD_GATEWAY,
            "number_api_bad_response",
            "The random-number API answered with something that is not a number.".into(),
        ),
    }
}
