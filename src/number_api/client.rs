//! Calls the random-number API with its function key, with a timeout.

use super::KEY_HEADER;
use crate::domain::CodeNumber;
use crate::function_key::FunctionKey;
use reqwest::StatusCode;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// The largest answer read from the API; `{"value": 161}` is a dozen bytes.
pub const MAX_BODY_BYTES: usize = 4096;

/// Why no number came back. Texts never include the key or the endpoint's query.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NumberApiError {
    /// The API answered with a status other than 200.
    #[error("number API answered HTTP {0}")]
    Status(u16),
    /// The API could not be reached.
    #[error("number API unreachable")]
    Unreachable,
    /// The API did not answer within the timeout.
    #[error("number API did not answer within {0:?}")]
    Timeout(Duration),
    /// The API answered 200 with something other than `{"value": <number>}`.
    #[error("number API answered with something other than {{\"value\": <number>}}")]
    Garbage,
    /// The API answered with a redirect, which is not followed: the key goes only to the configured origin.
    #[error("number API answered HTTP {0} (a redirect, not followed)")]
    Redirect(u16),
    /// The API's answer was larger than [`MAX_BODY_BYTES`].
    #[error("number API answer larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
}

impl NumberApiError {
    /// A short name for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Status(_) => "status",
            Self::Unreachable => "unreachable",
            Self::Timeout(_) => "timeout",
            Self::Garbage => "garbage",
            Self::Redirect(_) => "redirect",
            Self::TooLarge => "too_large",
        }
    }
}

#[derive(Deserialize)]
struct NumberBody {
    value: serde_json::Value,
}

/// A client for `THIRD_PARTY_API_ENDPOINT`.
#[derive(Clone, Debug)]
pub struct NumberApiClient {
    http: reqwest::Client,
    endpoint: url::Url,
    key: Arc<FunctionKey>,
    timeout: Duration,
}

impl NumberApiClient {
    /// A client for `endpoint` that sends `key` in `x-functions-key` and waits at most `timeout` for the
    /// whole answer. It follows no redirect, so the key never leaves the endpoint's origin, and reads at
    /// most [`MAX_BODY_BYTES`].
    pub fn new(endpoint: url::Url, key: Arc<FunctionKey>, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            http,
            endpoint,
            key,
            timeout,
        }
    }

    /// The endpoint it calls (its path and query are not secret; the key travels in a header).
    pub fn endpoint(&self) -> &url::Url {
        &self.endpoint
    }

    /// Asks for one random number, as the sample does: `GET` with the key and `Content-Type: application/json`.
    /// A 401 or 403 means the key may have been rotated: the key is read again (at most once per its
    /// interval) and, if it changed, the request is tried once more.
    pub async fn random_number(&self) -> Result<CodeNumber, NumberApiError> {
        use tracing::Instrument as _;
        // A client span of OpenTelemetry's HTTP conventions; never the URL (a query may hold a key).
        let span = tracing::info_span!(
            "number API",
            otel.name = "GET",
            otel.kind = "client",
            http.request.method = "GET",
            server.address = self.endpoint.host_str().unwrap_or_default(),
            server.port = i64::from(self.endpoint.port_or_known_default().unwrap_or_default()),
        );
        let result = self.ask().instrument(span).await;
        if let Err(e) = &result {
            metrics::counter!(crate::ops::metrics::NUMBER_API_ERRORS, "kind" => e.kind())
                .increment(1);
        }
        result
    }

    /// [`NumberApiClient::random_number`], uncounted.
    async fn ask(&self) -> Result<CodeNumber, NumberApiError> {
        let mut response = self.call().await?;
        if matches!(
            response.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) && self.key.reread_after_refusal().await
        {
            response = self.call().await?;
        }
        let status = response.status();
        if status.is_redirection() {
            return Err(NumberApiError::Redirect(status.as_u16()));
        }
        if status != StatusCode::OK {
            return Err(NumberApiError::Status(status.as_u16()));
        }
        let bytes = self.read_capped(response).await?;
        let body: NumberBody =
            serde_json::from_slice(&bytes).map_err(|_| NumberApiError::Garbage)?;
        // Only a number a code can hold: larger ones, negatives and fractions are refused.
        body.value
            .as_u64()
            .and_then(CodeNumber::new)
            .ok_or(NumberApiError::Garbage)
    }

    /// Reads the body, refusing it once it passes [`MAX_BODY_BYTES`]; the request's timeout covers it.
    async fn read_capped(
        &self,
        mut response: reqwest::Response,
    ) -> Result<Vec<u8>, NumberApiError> {
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BODY_BYTES as u64)
        {
            return Err(NumberApiError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.classify(&e))? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(NumberApiError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    async fn call(&self) -> Result<reqwest::Response, NumberApiError> {
        self.http
            .get(self.endpoint.clone())
            .header(KEY_HEADER, self.key.current().expose())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| self.classify(&e))
    }

    fn classify(&self, e: &reqwest::Error) -> NumberApiError {
        if e.is_timeout() {
            NumberApiError::Timeout(self.timeout)
        } else if e.is_body() || e.is_decode() {
            NumberApiError::Garbage
        } else {
            NumberApiError::Unreachable
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_one_the_metrics_start_at_zero() {
        for e in [
            NumberApiError::Status(500),
            NumberApiError::Unreachable,
            NumberApiError::Timeout(Duration::from_secs(1)),
            NumberApiError::Garbage,
            NumberApiError::Redirect(302),
            NumberApiError::TooLarge,
        ] {
            assert!(
                crate::ops::metrics::NUMBER_API_ERROR_KINDS.contains(&e.kind()),
                "{e:?}"
            );
        }
    }
}
