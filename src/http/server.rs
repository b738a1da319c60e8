//! Serves a router on a listener with the limits every codewatch listener has: a header-read timeout
//! (which is also the keep-alive idle timeout), a total request deadline, a cap on open connections,
//! a small request body limit, panics answered as JSON 500s, `X-Content-Type-Options: nosniff` and
//! `x-request-id` on every answer, and an accept loop that backs off (and
//! logs once) when the process runs out of file descriptors.

use super::request_id::with_request_ids;
use super::{ApiError, TrustedProxies};
use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::http::HeaderValue;
use axum::http::header::X_CONTENT_TYPE_OPTIONS;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tower_http::set_header::SetResponseHeaderLayer;

/// The largest request body accepted; the largest body an endpoint takes is a code and a subject.
const MAX_BODY_BYTES: usize = 16 * 1024;
/// The waits of an accept loop that fails (no descriptors left), doubling up to the longest.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What a listener allows its clients, and which of them it believes. Its `Default` is built from the
/// flags' defaults (`config::HttpArgs`), trusting no proxy.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// How long a client may take to send a request's headers, and how long an idle keep-alive
    /// connection is kept.
    pub header_read_timeout: Duration,
    /// How long one request may take in all before it is answered 503.
    pub request_timeout: Duration,
    /// Connections open at once; further clients wait in the listen backlog.
    pub max_connections: std::num::NonZeroUsize,
    /// The ingress whose `x-request-id` is kept; anyone else's is replaced by a new id.
    pub trusted_proxies: TrustedProxies,
}

impl HttpLimits {
    /// These limits, keeping the request ids that `proxies` send.
    pub fn trusting(self, proxies: TrustedProxies) -> Self {
        Self {
            trusted_proxies: proxies,
            ..self
        }
    }
}

/// The limits that sit in the router: body size, deadline, panics.
fn with_limits(router: Router, limits: &HttpLimits) -> Router {
    let deadline = limits.request_timeout;
    router
        .layer(SetResponseHeaderLayer::overriding(
            X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(axum::middleware::from_fn(
            move |request: Request, next: Next| within(deadline, request, next),
        ))
        // Enforced where a body is read (the JSON extractor), so a body past it is answered as
        // every error is: JSON with a reason.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                tracing::error!("a request handler panicked");
                ApiError::Internal.into_response()
            },
        ))
}

async fn within(deadline: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::RequestTimeout(deadline).into_response(),
    }
}

/// Serves `router` on `listener` (each request carries the client's address as [`ConnectInfo`]) until
/// `cancel` fires; then stops accepting, lets requests in flight finish and closes idle connections.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let router = with_request_ids(with_limits(router, &limits), limits.trusted_proxies.clone());
    // HTTP/1.1 only: HTTP/2's version sniffing would wait for a first byte with no timeout, and every
    // ingress in front of codewatch speaks HTTP/1.1 to it.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(limits.max_connections.get()));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut failing = false;
    loop {
        let slot = tokio::select! {
            _ = cancel.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "accepting connections failed (out of file descriptors?); backing off");
                        failing = true;
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            },
        };
        if failing {
            tracing::info!("accepting connections again");
            failing = false;
        }
        backoff = ACCEPT_BACKOFF_MIN;
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                router.clone().oneshot(request)
            });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
