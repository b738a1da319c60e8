//! Calls the random-number API with its function key, with a timeout.

use super::KEY_HEADER;
use crate::function_key::FunctionKey;
use reqwest::StatusCode;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// The largest number accepted from the API, so a code stays within the code format.
const MAX_NUMBER: u64 = 999_999;

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
    /// A client for `endpoint` that sends `key` in `x-functions-key` and waits at most `timeout`.
    pub fn new(endpoint: url::Url, key: Arc<FunctionKey>, timeout: Duration) -> Self {
        Self {
            http: reqwest::Client::new(),
            endpoint,
            key,
            timeout,
        }
    }

    /// Asks for one random number, as the sample does: `GET` with the key and `Content-Type: application/json`.
    /// A 401 or 403 means the key may have been rotated: the key is read again (at most once per its
    /// interval) and, if it changed, the request is tried once more.
    pub async fn random_number(&self) -> Result<u32, NumberApiError> {
        let mut response = self.call().await?;
        if matches!(
            response.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) && self.key.reread_after_refusal().await
        {
            response = self.call().await?;
        }
        if response.status() != StatusCode::OK {
            return Err(NumberApiError::Status(response.status().as_u16()));
        }
        let body: NumberBody = response.json().await.map_err(|e| {
            if e.is_timeout() {
                NumberApiError::Timeout(self.timeout)
            } else {
                NumberApiError::Garbage
            }
        })?;
        body.value
            .as_u64()
            .filter(|n| *n <= MAX_NUMBER)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(NumberApiError::Garbage)
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
        } else {
            NumberApiError::Unreachable
        }
    }
}
