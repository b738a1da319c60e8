//! The webhook channel: an HMAC-signed POST of the code to the sign-in service, which sends it on
//! through its own provider (SMS, push). Signed as Stripe signs its events: the header
//! `Codewatch-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, so the receiver can
//! refuse forgeries and replays older than its tolerance.

use super::{Channel, DeliveryError};
use crate::secret::Secret;
use crate::store::PendingDelivery;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;
use std::time::Duration;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "codewatch-signature";

/// The smallest secret accepted.
const MIN_SECRET_LEN: usize = 32;

/// What the receiver gets, as JSON.
#[derive(Debug, Serialize)]
pub struct WebhookBody<'a> {
    /// The issuance: the receiver may use it to drop a repeated delivery.
    pub issuance_id: &'a str,
    /// Where to send the code (as the sign-in service gave it when issuing).
    pub destination: &'a str,
    /// The code.
    pub code: &'a str,
    /// The user it is bound to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<&'a str>,
    /// When it stops being valid (RFC 3339, UTC).
    pub expires_at: DateTime<Utc>,
}

/// Why the webhook cannot be set up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    /// A secret shorter than 32 characters.
    #[error(
        "the webhook signing secret must be at least {MIN_SECRET_LEN} characters (e.g. `openssl rand -base64 32`)"
    )]
    WeakSecret,
    /// A URL that is neither http nor https.
    #[error("the webhook URL must be http:// or https://")]
    Scheme,
    /// The HTTP client could not be built.
    #[error("webhook client: {0}")]
    Client(String),
}

/// Posts codes to one URL.
pub struct WebhookChannel {
    url: url::Url,
    secret: Secret,
    http: reqwest::Client,
}

impl WebhookChannel {
    /// A channel posting to `url`, signing with `secret`, each call bounded by `timeout`.
    pub fn new(url: url::Url, secret: Secret, timeout: Duration) -> Result<Self, WebhookError> {
        if secret.expose().len() < MIN_SECRET_LEN {
            return Err(WebhookError::WeakSecret);
        }
        if !matches!(url.scheme(), "http" | "https") {
            return Err(WebhookError::Scheme);
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .timeout(timeout)
            .build()
            .map_err(|e| WebhookError::Client(e.to_string()))?;
        Ok(Self { url, secret, http })
    }
}

/// The `Codewatch-Signature` value for `body` sent at unix second `t`.
pub fn signature(secret: &Secret, t: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    format!(
        "t={t},v1={}",
        crate::hex::encode(&mac.finalize().into_bytes())
    )
}

#[async_trait]
impl Channel for WebhookChannel {
    fn name(&self) -> &'static str {
        "webhook"
    }

    async fn deliver(&self, delivery: &PendingDelivery) -> Result<(), DeliveryError> {
        let body = serde_json::to_vec(&WebhookBody {
            issuance_id: delivery.issuance_id.as_str(),
            destination: delivery.destination.as_str(),
            code: delivery.code.as_str(),
            subject: delivery.subject.as_ref().map(|s| s.as_str()),
            expires_at: delivery.expires_at,
        })
        .map_err(|e| DeliveryError::Permanent(format!("cannot write the body: {e}")))?;
        let signed = signature(&self.secret, Utc::now().timestamp(), &body);
        let answer = self
            .http
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signed)
            .header("idempotency-key", delivery.issuance_id.as_str())
            .body(body)
            .send()
            .await
            // Without the URL: it may carry a token in its query.
            .map_err(|e| {
                DeliveryError::Transient(format!("webhook unreachable: {}", e.without_url()))
            })?;
        let status = answer.status();
        match status.as_u16() {
            200..=299 => Ok(()),
            408 | 425 | 429 | 500..=599 => Err(DeliveryError::Transient(format!(
                "webhook answered {status}"
            ))),
            _ => Err(DeliveryError::Permanent(format!(
                "webhook answered {status}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_stripes_scheme_over_time_and_body() {
        let secret = Secret::new("s".repeat(32));
        let sig = signature(&secret, 1_700_000_000, b"{}");
        let mut mac = Hmac::<Sha256>::new_from_slice(&[b's'; 32]).unwrap();
        mac.update(b"1700000000.{}");
        let expected = crate::hex::encode(&mac.finalize().into_bytes());
        assert_eq!(sig, format!("t=1700000000,v1={expected}"));
    }

    #[test]
    fn a_weak_secret_or_another_scheme_is_refused() {
        let url = url::Url::parse("https://signin.example/hook").unwrap();
        let short = WebhookChannel::new(url, Secret::new("short"), Duration::from_secs(1));
        assert!(matches!(short, Err(WebhookError::WeakSecret)));
        let ftp = url::Url::parse("ftp://signin.example/hook").unwrap();
        let scheme = WebhookChannel::new(ftp, Secret::new("s".repeat(32)), Duration::from_secs(1));
        assert!(matches!(scheme, Err(WebhookError::Scheme)));
    }
}
