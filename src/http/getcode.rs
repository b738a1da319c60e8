//! `GET /api/v1/getcode`: a number from the API, a code around it, a queue message, then the answer.

use super::{ApiError, AppState};
use crate::domain::Code;
use crate::domain::{Issuance, IssuanceId};
use crate::message::CodeMessage;
use crate::timestamp;
use axum::Json;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};

/// Optional binding of the code to the user signing in.
#[derive(Debug, Deserialize, IntoParams)]
pub struct GetCodeQuery {
    /// The user the code is for; checks and redeems must then name the same subject.
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

/// Issues a code. It is answered only after the queue accepted the message, so every code handed out
/// will become valid.
#[utoipa::path(
    get,
    path = "/api/v1/getcode",
    params(GetCodeQuery),
    responses(
        (status = 200, description = "A code was issued and will become valid within about a second", body = CodeResponse),
        (status = 400, description = "Not a valid subject", body = super::error::ErrorBody),
        (status = 429, description = "Too many codes asked for by this client (GETCODE_RATE_LIMIT_PER_SECOND)", body = super::error::ErrorBody),
        (status = 502, description = "The random-number API is unreachable or answered garbage", body = super::error::ErrorBody),
        (status = 503, description = "The queue refused the message, or the request passed HTTP_REQUEST_TIMEOUT_SECONDS; no code was issued", body = super::error::ErrorBody),
        (status = 504, description = "The random-number API did not answer in time", body = super::error::ErrorBody),
        (status = "4XX", description = "The random-number API's own status, body `Could not get you a code.` (as the sample)"),
    )
)]
pub async fn get_code(
    State(state): State<Arc<AppState>>,
    Query(query): Query<GetCodeQuery>,
) -> Result<Json<CodeResponse>, ApiError> {
    let subject = super::parse_subject(query.subject.as_deref())?;
    let number = state.number_api.random_number().await?;
    let issuance = Issuance {
        id: IssuanceId::random(),
        code: Code::generate(number, &mut rand::rng()),
        issued_at: state.clock.now(),
        subject,
    };
    let message = CodeMessage::Activate(issuance.clone());
    state
        .queue
        .send(
            issuance.id.as_str(),
            &message.encode_signed(state.encoding, state.signing.as_ref()),
            Duration::ZERO,
        )
        .await?;
    tracing::debug!(issuance = %issuance.id, "code issued");
    Ok(Json(CodeResponse {
        code: issuance.code.to_string(),
        timestamp: timestamp::format(issuance.issued_at),
    }))
}
