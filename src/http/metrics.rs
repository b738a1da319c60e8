//! The HTTP metrics: every request counted, with its duration, by matched route and status; the
//! route is also recorded on the request's span (`http.route`; with traces, its name `METHOD route`).

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;

/// Middleware counting HTTP requests and their duration by matched route and status.
pub(super) async fn record_http(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let span = tracing::Span::current();
    span.record("http.route", route.as_str());
    crate::telemetry::rename(&span, || format!("{} {route}", request.method()));
    let started = Instant::now();
    let response = next.run(request).await;
    let labels = [
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!(crate::ops::metrics::HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(crate::ops::metrics::HTTP_SECONDS, &labels)
        .record(started.elapsed().as_secs_f64());
    response
}
