//! `GET /api/v1/getcode`, the sample's public endpoint: a number from the API, a code around it, a
//! queue message, then the answer. Its codes are unbound, a demonstration: binding a code to a user is
//! the sign-in service's authenticated call (`POST /api/v1/codes`), which shares [`issue_code`].

use super::{ApiError, AppState};
use crate::domain::{Code, Destination, Issuance, IssuanceId, Subject};
use crate::message::CodeMessage;
use crate::timestamp;
use axum::Json;
use axum::extract::{Query, State};
use chrono::SubsecRound as _;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use utoipa::ToSchema;

/// getcode takes no parameter; `subject` is read only to refuse it (401): a code for a named user is
/// issued only to the sign-in service, by `POST /api/v1/codes` with its bearer key.
#[derive(Debug, Deserialize)]
pub struct GetCodeQuery {
    /// The user a caller wished to bind the code to.
    pub subject: Option<String>,
}

/// The sample's response: `{"code": "ojE-161-pTv", "timestamp": "2020-04-15 16:54:48.816549"}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CodeResponse {
    /// The code.
    pub code: String,
    /// When it was issued, UTC, in the sample's format `YYYY-MM-DD HH:MM:SS.ffffff`.
    pub timestamp: String,
}

/// Issues an unbound code, as the walkthrough's sample does. It is answered only after the queue
/// accepted the message, so every code handed out will become valid.
#[utoipa::path(
    get,
    path = "/api/v1/getcode",
    tag = "getcode",
    responses(
        (status = 200, description = "A code was issued and will become valid within about a second", body = CodeResponse),
        (status = 401, description = "A subject was named: binding a code to a user needs the sign-in service's key (POST /api/v1/codes)", body = super::error::ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 429, description = "Too many codes asked for by this client (GETCODE_RATE_LIMIT_PER_SECOND)", body = super::error::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
        (status = 502, description = "The random-number API is unreachable or answered garbage", body = super::error::ErrorBody),
        (status = 503, description = "The queue refused the message, or the request passed HTTP_REQUEST_TIMEOUT_SECONDS; no code was issued", body = super::error::ErrorBody),
        (status = 504, description = "The random-number API did not answer in time", body = super::error::ErrorBody),
        (status = "4XX", description = "The random-number API refused: its own status, body `Could not get you a code.` (as the sample)", content_type = "text/plain", body = String),
        (status = "5XX", description = "The random-number API failed: its own status, body `Could not get you a code.` (as the sample)", content_type = "text/plain", body = String),
    )
)]
pub async fn get_code(
    State(state): State<Arc<AppState>>,
    Query(query): Query<GetCodeQuery>,
) -> Result<Json<CodeResponse>, ApiError> {
    if query.subject.is_some() {
        return Err(ApiError::SubjectNeedsKey);
    }
    let issuance = issue_code(&state, None, None).await?;
    Ok(Json(CodeResponse {
        code: issuance.code.to_string(),
        timestamp: timestamp::format(issuance.issued_at),
    }))
}

/// Issues a code (bound to `subject`, delivered to `destination`, if given): a number from the API,
/// the code, its message on the queue. Returns only after the queue accepted the message.
pub(super) async fn issue_code(
    state: &AppState,
    subject: Option<Subject>,
    destination: Option<Destination>,
) -> Result<Issuance, ApiError> {
    let number = state.number_api.random_number().await?;
    let issuance = Issuance {
        destination,
        id: IssuanceId::random(),
        code: Code::generate(number, &mut rand::rng()),
        // The precision the message, the table and the answers carry, so that all three agree.
        issued_at: state.clock.now().trunc_subsecs(6),
        subject,
    };
    let body = CodeMessage::Activate(issuance.clone())
        .encode_traced(
            state.encoding,
            state.signing.as_ref(),
            crate::telemetry::current_context().as_ref(),
        )
        .map_err(|e| {
            tracing::error!(error = %e, "activation message not written; no code issued");
            ApiError::Internal
        })?;
    state
        .queue
        .send(issuance.id.as_str(), &body, Duration::ZERO)
        .await?;
    tracing::debug!(issuance = %issuance.id, "code issued");
    Ok(issuance)
}
