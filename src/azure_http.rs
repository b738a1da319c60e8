//! The HTTP transport of the Azure clients that a process needs before it can start (the Entra ID
//! token endpoint, Key Vault): a connect timeout, a deadline for each whole answer, and caps on its
//! headers and body, so that an endpoint that never answers, drips a byte a second, or sends thousands
//! of headers or hundreds of megabytes can neither hang the start nor exhaust memory.

use azure_core::error::{Error, ErrorKind};
use azure_core::http::{AsyncRawResponse, ClientOptions, HttpClient, Request, Transport};
use futures::StreamExt as _;
use std::sync::Arc;
use std::time::Duration;

/// How long a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one whole answer (headers and body) may take: reqwest's total timeout.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// The most headers an answer may carry (a token or a secret answer has a dozen).
const MAX_HEADERS: usize = 64;
/// The largest answer body read (a token or a secret answer is a few kilobytes).
const MAX_BODY_BYTES: usize = 256 * 1024;

/// Client options whose transport is [`Bounded`].
pub fn client_options() -> ClientOptions {
    ClientOptions {
        transport: Some(Transport::new(Arc::new(Bounded::new()))),
        ..ClientOptions::default()
    }
}

/// The bounded transport.
#[derive(Debug)]
pub struct Bounded {
    client: reqwest::Client,
}

impl Default for Bounded {
    fn default() -> Self {
        Self::new()
    }
}

impl Bounded {
    /// A transport with the limits above (no redirects, as the SDK's own).
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(ANSWER_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self { client }
    }
}

fn refused(what: String) -> Error {
    Error::with_message(ErrorKind::Io, what)
}

#[async_trait::async_trait]
impl HttpClient for Bounded {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let host = request.url().host_str().unwrap_or("?").to_owned();
        // The client's total timeout covers the headers and the body's stream alike.
        let answer = self.client.execute_request(request).await?;
        let headers = answer.headers().iter().count();
        if headers > MAX_HEADERS {
            return Err(refused(format!(
                "{host} answered with {headers} headers (more than {MAX_HEADERS})"
            )));
        }
        let (status, headers, mut body) = answer.deconstruct();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            if bytes.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(refused(format!(
                    "{host}'s answer is larger than {MAX_BODY_BYTES} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(AsyncRawResponse::from_bytes(status, headers, bytes))
    }
}
