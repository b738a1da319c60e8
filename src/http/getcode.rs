//! `GET /api/v1/getcode`: a number from the API, a code around it, a queue message, then the answer.

use super::{ApiError, AppState};
use crate::code::Code;
use crate::message::{CodeMessage, Issuance, IssuanceId};
use crate::timestamp;
use axum::Json;
use axum::extract::State;
use chrono::Utc;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// The sample's response: `{"code": "ojE-161-pTv", "timestamp": "2020-04-15 16:54:48.816549"}`.
#[derive(Debug, Serialize)]
pub struct CodeResponse {
    /// The code.
    pub code: String,
    /// When it was issued, UTC, in the sample's format.
    pub timestamp: String,
}

/// Issues a code. It is answered only after the queue accepted the message, so every code handed out
/// will become valid.
pub async fn get_code(State(state): State<Arc<AppState>>) -> Result<Json<CodeResponse>, ApiError> {
    let number = state.number_api.random_number().await?;
    let issuance = Issuance {
        id: IssuanceId::random(),
        code: Code::generate(number, &mut rand::rng()),
        issued_at: Utc::now(),
    };
    let message = CodeMessage::Activate(issuance.clone());
    state
        .queue
        .send(&message.encode(state.encoding), Duration::ZERO)
        .await?;
    tracing::debug!(issuance = %issuance.id, "code issued");
    Ok(Json(CodeResponse {
        code: issuance.code.to_string(),
        timestamp: timestamp::format(issuance.issued_at),
    }))
}
