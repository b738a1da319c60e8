//! A JSON request body whose rejections are answered like every other error: JSON with a reason.

use super::ApiError;
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;

/// `Json<T>`, but a missing content type, malformed JSON or a body of another shape is a 400, and one
/// past the listener's body limit a 413, each with the reason in the usual JSON error body, not axum's
/// plain-text rejection.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::BodyTooLarge)
            }
            Err(rejection) => Err(ApiError::BadRequest(format!(
                "expected a JSON body (Content-Type: application/json) of the documented form: {}",
                rejection.body_text()
            ))),
        }
    }
}
