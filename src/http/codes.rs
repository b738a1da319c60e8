//! The sign-in service's calls: `POST /api/v1/codes` issues a code bound to a user, `POST
//! /api/v1/codes/check` and `POST /api/v1/codes/redeem` answer whether the code the user typed is
//! theirs. The code travels in the JSON body, never in a URL.

use super::body::JsonBody;
use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::config::DeliveryChannel;
use crate::domain::{Code, Destination, IdempotencyKey, Subject};
use crate::store::CodeRecord;
use crate::verify::{KeyedVerdict, Verdict};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoResponses, ToSchema};

/// The header a redeem may carry so that a retry after a lost answer gets the first answer again.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set on a redeem's answer that repeats the first answer given for its idempotency key.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Which user to issue a code for, and where codewatch delivers it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    /// The user signing in (1 to 256 characters, no control characters); checks and redeems must
    /// name the same subject.
    pub subject: String,
    /// Where the worker delivers the code: the user's mail address (DELIVERY=smtp), or what the
    /// webhook receiver understands, such as a phone number (DELIVERY=webhook). Required when the
    /// service delivers codes; refused when it does not.
    #[serde(default)]
    pub destination: Option<String>,
}

/// A code issued for a user. Without delivery, it carries the code: deliver it to the user (mail,
/// SMS), never show it to the browser that asked. With delivery, codewatch sends it and the answer
/// carries none.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedCode {
    /// The code, e.g. `ojE-161-pTv`; absent when codewatch delivers it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// `pending` when codewatch delivers the code (it is sent once the worker activated it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<String>,
    /// When it stops being valid (RFC 3339, UTC): issue time plus CODE_TTL_SECONDS.
    pub expires_at: DateTime<Utc>,
    /// The user it is bound to.
    pub subject: String,
    /// This issuance's id (the queue message's and the table row's).
    pub issuance_id: String,
    /// When it was issued (RFC 3339, UTC); it is valid for the worker's CODE_TTL_SECONDS from then.
    pub issued_at: DateTime<Utc>,
    /// The same moment in the sample's format `YYYY-MM-DD HH:MM:SS.ffffff`.
    pub timestamp: String,
}

/// The code a user typed, and who they say they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeAttempt {
    /// The code as the user typed it, e.g. `ojE-161-pTv` (case-sensitive).
    pub code: String,
    /// The user signing in, as the code was issued for. Required, unless the service runs with
    /// ALLOW_UNBOUND_CODES=true for the sample's unbound codes.
    #[serde(default)]
    pub subject: Option<String>,
}

/// A valid code. The answer names the issuance, never the code: the caller sent it, and no answer
/// of codewatch's carries a code once it delivers them.
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidCode {
    /// The issuance the code belongs to (as in the issuing answer and the delivery).
    pub issuance_id: String,
    /// Always `true`.
    pub valid: bool,
    /// The subject it is bound to (absent only for the sample's unbound codes).
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
            issuance_id: r.issuance_id.to_string(),
            valid: true,
            subject: r.subject.map(|s| s.to_string()),
            issued_at: r.issued_at,
            expires_at: r.expires_at,
            redeemed_at: r.redeemed_at,
        }
    }
}

/// The answers of an issue besides the shared errors (for the OpenAPI document).
#[derive(IntoResponses)]
#[allow(dead_code)]
enum IssueAnswers {
    /// A code was issued and will become valid within about a second.
    #[response(status = 201)]
    Issued(IssuedCode),
    /// The random-number API is unreachable or answered garbage.
    #[response(status = 502)]
    BadGateway(ErrorBody),
    /// The random-number API did not answer in time.
    #[response(status = 504)]
    Timeout(ErrorBody),
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
    /// The code was valid and is now consumed (or, with `Idempotent-Replayed: true`, this key's first answer again).
    #[response(status = 200, headers(("Idempotent-Replayed" = bool, description = "`true` when this repeats the first answer given for the Idempotency-Key")))]
    Redeemed(ValidCode),
    /// Not valid: wrong, expired, already redeemed, revoked or locked, one answer for all.
    #[response(status = 404, headers(("Idempotent-Replayed" = bool, description = "`true` when this repeats the first answer given for the Idempotency-Key")))]
    NotValid(NotValid),
    /// The Idempotency-Key was used before with another code or subject.
    #[response(status = 422)]
    KeyReused(ErrorBody),
}

/// The errors every sign-in call shares (for the OpenAPI document).
#[derive(IntoResponses)]
#[allow(dead_code)]
enum SigninErrors {
    /// Not a well-formed code, subject or Idempotency-Key, no subject, or not a JSON body of this form.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// Missing or wrong bearer key.
    #[response(status = 401, headers(("WWW-Authenticate" = String, description = "`Bearer`")))]
    Unauthorized(ErrorBody),
    /// Too many requests from this client.
    #[response(status = 429, headers(("Retry-After" = u64, description = "Seconds to wait before trying again")))]
    RateLimited(ErrorBody),
    /// The sign-in API is off (no VERIFY_API_KEY), its database cannot be reached, or (issuing) the
    /// queue refused the message and no code was issued.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// The verification settings, or 503 when the API is off.
fn verification(state: &AppState) -> Result<&super::Verification, ApiError> {
    state
        .verification
        .as_ref()
        .ok_or(ApiError::VerificationDisabled)
}

/// The attempt's code and subject; a missing subject is refused unless unbound codes are allowed.
fn parse_attempt(
    attempt: &CodeAttempt,
    allow_unbound: bool,
) -> Result<(Code, Option<Subject>), ApiError> {
    let code = Code::parse(&attempt.code).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let subject = super::parse_subject(attempt.subject.as_deref())?;
    if subject.is_none() && !allow_unbound {
        return Err(ApiError::BadRequest(
            "subject is required: name the user the code was issued for (unbound codes are the \
             sample's demonstration, accepted only with ALLOW_UNBOUND_CODES=true)"
                .into(),
        ));
    }
    Ok((code, subject))
}

fn answer(verdict: Verdict) -> Result<Json<ValidCode>, ApiError> {
    match verdict {
        Verdict::Valid(record) => Ok(Json(record.into())),
        Verdict::Invalid(_) => Err(ApiError::NotValid),
    }
}

/// Issues a code bound to a user. The sign-in service delivers it to the user (mail, SMS) and keeps it
/// from the browser; the user types it, and the service checks or redeems it.
#[utoipa::path(
    post,
    path = "/api/v1/codes",
    tag = "sign-in",
    request_body = IssueRequest,
    responses(IssueAnswers, SigninErrors),
    security(("bearer" = []))
)]
pub async fn issue(
    State(state): State<Arc<AppState>>,
    JsonBody(request): JsonBody<IssueRequest>,
) -> Result<Response, ApiError> {
    verification(&state)?;
    let subject =
        Subject::parse(&request.subject).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let delivery = state.issuing.delivery;
    let destination = destination(request.destination.as_deref(), delivery)?;
    let delivered = destination.is_some();
    let issuance = super::getcode::issue_code(&state, Some(subject), destination).await?;
    let ttl = chrono::Duration::from_std(state.issuing.code_ttl).unwrap_or_default();
    let body = IssuedCode {
        code: (!delivered).then(|| issuance.code.to_string()),
        delivery: delivered.then(|| "pending".to_owned()),
        expires_at: issuance.issued_at + ttl,
        subject: request.subject,
        issuance_id: issuance.id.as_str().to_owned(),
        issued_at: issuance.issued_at,
        timestamp: crate::timestamp::format(issuance.issued_at),
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// The destination an issue names, as the service's delivery wants it: required with a channel (a
/// mail address for `smtp`), refused without one.
fn destination(
    text: Option<&str>,
    delivery: DeliveryChannel,
) -> Result<Option<Destination>, ApiError> {
    let bad = |reason: &str| ApiError::BadRequest(reason.to_owned());
    match (text, delivery) {
        (None, DeliveryChannel::None) => Ok(None),
        (Some(_), DeliveryChannel::None) => Err(bad(
            "destination given, but this service does not deliver codes (DELIVERY is none): \
             deliver the code from the answer yourself",
        )),
        (None, _) => Err(bad(
            "destination required: this service delivers each code to its user (DELIVERY is set)",
        )),
        (Some(text), channel) => {
            let destination = Destination::parse(text).map_err(|e| bad(&e.to_string()))?;
            if channel == DeliveryChannel::Smtp
                && destination.as_str().parse::<lettre::Address>().is_err()
            {
                return Err(bad("destination must be a mail address (DELIVERY is smtp)"));
            }
            Ok(Some(destination))
        }
    }
}

/// Is this the user's valid code? Valid means issued for this subject, activated, before its expiry,
/// not redeemed, not revoked. Looks only (but counts a failure): to sign a user in, redeem.
#[utoipa::path(
    post,
    path = "/api/v1/codes/check",
    tag = "sign-in",
    request_body = CodeAttempt,
    responses(CheckAnswers, SigninErrors),
    security(("bearer" = []))
)]
pub async fn check(
    State(state): State<Arc<AppState>>,
    JsonBody(attempt): JsonBody<CodeAttempt>,
) -> Result<Json<ValidCode>, ApiError> {
    let verification = verification(&state)?;
    let (code, subject) = parse_attempt(&attempt, verification.allow_unbound)?;
    answer(
        verification
            .verifier
            .check(&code, subject.as_ref(), state.clock.now())
            .await?,
    )
}

/// Consumes the user's code: of any number of concurrent redeems, exactly one gets 200. With an
/// `Idempotency-Key`, a repeat of the same request gets the first answer again.
#[utoipa::path(
    post,
    path = "/api/v1/codes/redeem",
    tag = "sign-in",
    request_body = CodeAttempt,
    params(("Idempotency-Key" = Option<String>, Header, description = "A key of the client's (a UUID) for this redeem: a repeat with the same key, code and subject gets the first answer again without counting a failure, while the code lives; the same key with another code or subject is refused (422)")),
    responses(RedeemAnswers, SigninErrors),
    security(("bearer" = []))
)]
pub async fn redeem(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    JsonBody(attempt): JsonBody<CodeAttempt>,
) -> Result<Response, ApiError> {
    let verification = verification(&state)?;
    let (code, subject) = parse_attempt(&attempt, verification.allow_unbound)?;
    let now = state.clock.now();
    let Some(key) = idempotency_key(&headers)? else {
        return Ok(answer(
            verification
                .verifier
                .redeem(&code, subject.as_ref(), now)
                .await?,
        )
        .into_response());
    };
    match verification
        .verifier
        .redeem_keyed(&key, &code, subject.as_ref(), now)
        .await?
    {
        KeyedVerdict::Judged(verdict) => Ok(answer(verdict).into_response()),
        KeyedVerdict::Replayed(verdict) => {
            let mut response = answer(verdict).into_response();
            response
                .headers_mut()
                .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            Ok(response)
        }
        KeyedVerdict::KeyReused => Err(ApiError::IdempotencyKeyReused),
    }
}

/// The request's `Idempotency-Key`, if any; a malformed one is a 400.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    headers
        .get(IDEMPOTENCY_KEY)
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|text| IdempotencyKey::parse(text).ok())
                .ok_or_else(|| {
                    ApiError::BadRequest(crate::domain::InvalidIdempotencyKey.to_string())
                })
        })
        .transpose()
}
