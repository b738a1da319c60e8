//! Request ids: every answer of every listener carries `x-request-id`, the one a trusted proxy sent
//! (when it is short and plain) or a new UUID, and every log line written while the request is
//! handled carries it in the request's span. A client outside the trusted ranges cannot choose its
//! id, so it cannot make its requests look like someone else's in the logs.

use super::TrustedProxies;
use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::http::HeaderName;
use std::net::SocketAddr;
use std::sync::Arc;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

/// The header a request id travels in, both ways.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest id kept from a proxy; a longer one is replaced.
const MAX_KEPT_LEN: usize = 128;

/// `router` with request ids, outermost, so that every answer has one (the deadline's 503 and the
/// panic catcher's 500 too): a sent id is dropped unless a trusted proxy sent it and it is plain,
/// a missing one is made, the request's span carries it, and the answer echoes it.
pub fn with_request_ids(router: Router, proxies: TrustedProxies) -> Router {
    let proxies = Arc::new(proxies);
    router
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(record_status)
                // Failures are answered and logged where they happen, with their reason.
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .layer(SetRequestIdLayer::new(X_REQUEST_ID, MakeRequestUuid))
        .layer(tower::util::MapRequestLayer::new(move |request| {
            drop_untrusted_id(&proxies, request)
        }))
}

/// Removes the request's id unless its TCP peer is a trusted proxy and the id is plain.
fn drop_untrusted_id(proxies: &TrustedProxies, mut request: Request) -> Request {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip());
    let trusted = peer.is_some_and(|ip| proxies.trusts(ip));
    let values = request.headers().get_all(&X_REQUEST_ID);
    let mut values = values.iter();
    let keep = trusted
        && matches!((values.next(), values.next()), (Some(id), None) if is_plain(id.as_bytes()));
    if !keep {
        request.headers_mut().remove(&X_REQUEST_ID);
    }
    request
}

/// 1 to [`MAX_KEPT_LEN`] characters a log line shows as they are: letters, digits and `-_.:/+=`
/// (UUIDs, ULIDs, W3C trace ids, base64).
fn is_plain(id: &[u8]) -> bool {
    (1..=MAX_KEPT_LEN).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(b))
}

/// The span every log line of a request is written in, and with traces on the server span of
/// OpenTelemetry's HTTP conventions: its method and id; its route once routed (the metrics layer
/// records it) and its status. Never the path itself: a client may put a code in it.
fn request_span<B>(request: &axum::http::Request<B>) -> tracing::Span {
    let id = request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|id| id.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!(
        "request",
        otel.name = %request.method(),
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = tracing::field::Empty,
        request_id = %id,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// Records the answer's status on the request's span; a 5xx marks it failed.
fn record_status<B>(
    response: &axum::http::Response<B>,
    _: std::time::Duration,
    span: &tracing::Span,
) {
    let status = response.status();
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_are_short_and_show_as_they_are() {
        assert!(is_plain(b"4bf92f3577b34da6a3ce929d0e0e4736"));
        assert!(is_plain(b"01J9Z8-abc_def.1:2/3+4="));
        assert!(is_plain(&[b'a'; MAX_KEPT_LEN]));
        assert!(!is_plain(&[b'a'; MAX_KEPT_LEN + 1]));
        assert!(!is_plain(b""));
        assert!(!is_plain(b"a b"));
        assert!(!is_plain(b"a\x1b[31m"));
        assert!(!is_plain("é".as_bytes()));
    }
}
