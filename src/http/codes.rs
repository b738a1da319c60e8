//! `GET /api/v1/codes/{code}` and `POST /api/v1/codes/{code}/redeem`, for the sign-in service.

use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::domain::Code;
use crate::domain::Subject;
use crate::store::CodeRecord;
use crate::verify::Verdict;
use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, IntoResponses, ToSchema};

/// The subject a check is for. Without it, only codes issued without a subject match.
#[derive(Debug, Deserialize, IntoParams)]
pub struct SubjectQuery {
    /// The user signing in, as given to `getcode?subject=`.
    pub subject: Option<String>,
}

/// A valid code.
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidCode {
    /// The code, exactly as issued.
    pub code: String,
    /// Always `true`.
    pub valid: bool,
    /// The subject it is bound to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// When it was issued (RFC 3339, UTC).
    pub issued_at: DateTime<Utc>,
    /// When it stops being valid (RFC 3339, UTC).
    pub expires_at: DateTime<Utc>,
    /// When it was consumed, for a redeem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redeemed_at: Option<DateTime<Utc>>,
}

/// The one answer for a wrong, expired, redeemed, revoked or locked code.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotValid {
    /// Always `false`.
    pub valid: bool,
}

impl From<CodeRecord> for ValidCode {
    fn from(r: CodeRecord) -> Self {
        Self {
            code: r.code.to_string(),
            valid: true,
            subject: r.subject.map(|s| s.to_string()),
            issued_at: r.issued_at,
            expires_at: r.expires_at,
            redeemed_at: r.redeemed_at,
        }
    }
}

/// The answers of a check (for the OpenAPI document).
#[derive(IntoResponses)]
#[allow(dead_code)]
enum CheckAnswers {
    /// The code is valid.
    #[response(status = 200)]
    Valid(ValidCode),
    /// Not valid: wrong, expired, redeemed, revoked or locked, one answer for all.
    #[response(status = 404)]
    NotValid(NotValid),
}

/// The answers of a redeem (for the OpenAPI document).
#[derive(IntoResponses)]
#[allow(dead_code)]
enum RedeemAnswers {
    /// The code was valid and is now consumed.
    #[response(status = 200)]
    Redeemed(ValidCode),
    /// Not valid: wrong, expired, already redeemed, revoked or locked, one answer for all.
    #[response(status = 404)]
    NotValid(NotValid),
}

/// The errors both verification endpoints share (for the OpenAPI document).
#[derive(IntoResponses)]
#[allow(dead_code)]
enum VerifyErrors {
    /// Not a well-formed code or subject.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// Missing or wrong bearer key.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// Too many requests from this client.
    #[response(status = 429)]
    RateLimited(ErrorBody),
    /// The verification API is off (no VERIFY_API_KEY), or its database cannot be reached.
    #[response(status = 503)]
    Disabled(ErrorBody),
}

fn parse(code: &str, query: &SubjectQuery) -> Result<(Code, Option<Subject>), ApiError> {
    let code = Code::parse(code).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok((code, super::parse_subject(query.subject.as_deref())?))
}

fn answer(verdict: Verdict) -> Result<Json<ValidCode>, ApiError> {
    match verdict {
        Verdict::Valid(record) => Ok(Json(record.into())),
        Verdict::Invalid(_) => Err(ApiError::NotValid),
    }
}

fn verifier(state: &AppState) -> Result<&crate::verify::Verifier, ApiError> {
    state
        .verification
        .as_ref()
        .map(|v| &v.verifier)
        .ok_or(ApiError::VerificationDisabled)
}

/// Is this code valid? Valid means issued, activated, before its expiry, not redeemed, not revoked.
#[utoipa::path(
    get,
    path = "/api/v1/codes/{code}",
    params(("code" = String, Path, description = "The code, e.g. ojE-161-pTv (case-sensitive)"), SubjectQuery),
    responses(CheckAnswers, VerifyErrors),
    security(("bearer" = []))
)]
pub async fn check(
    State(state): State<Arc<AppState>>,
    Path(code): Path<String>,
    Query(query): Query<SubjectQuery>,
) -> Result<Json<ValidCode>, ApiError> {
    let (code, subject) = parse(&code, &query)?;
    answer(
        verifier(&state)?
            .check(&code, subject.as_ref(), state.clock.now())
            .await?,
    )
}

/// Consumes the code: of any number of concurrent redeems, exactly one gets 200.
#[utoipa::path(
    post,
    path = "/api/v1/codes/{code}/redeem",
    params(("code" = String, Path, description = "The code, e.g. ojE-161-pTv (case-sensitive)"), SubjectQuery),
    responses(RedeemAnswers, VerifyErrors),
    security(("bearer" = []))
)]
pub async fn redeem(
    State(state): State<Arc<AppState>>,
    Path(code): Path<String>,
    Query(query): Query<SubjectQuery>,
) -> Result<Json<ValidCode>, ApiError> {
    let (code, subject) = parse(&code, &query)?;
    answer(
        verifier(&state)?
            .redeem(&code, subject.as_ref(), state.clock.now())
            .await?,
    )
}
