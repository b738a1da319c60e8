//! OpenTelemetry traces, off unless `OTEL_EXPORTER_OTLP_ENDPOINT` names an OTLP/HTTP receiver (an
//! OpenTelemetry Collector, Jaeger, or Azure Monitor through a collector): every `tracing` span is
//! then also an OpenTelemetry span, batched and sent as protobuf to `<endpoint>/v1/traces`. The
//! other standard variables apply as the SDK reads them: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_HEADERS` (never logged), `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_SERVICE_NAME`
//! (default `codewatch`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and `_ARG`, `OTEL_BSP_*`.

use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Whether spans are exported (set once, at start).
static ON: AtomicBool = AtomicBool::new(false);

/// The current span's W3C trace context, to send in a queue message; `None` when traces are off.
pub fn current_context() -> Option<crate::message::TraceContext> {
    if !ON.load(Ordering::Relaxed) {
        return None;
    }
    let mut carrier = std::collections::HashMap::new();
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut carrier));
    crate::message::TraceContext::parse(
        carrier.get("traceparent")?,
        carrier.get("tracestate").map(String::as_str),
    )
}

/// Links `span` to the trace a message came from (the messaging conventions' link from a batch's
/// processing to each message's creation), when traces are on.
pub fn link(span: &tracing::Span, trace: &crate::message::TraceContext) {
    if !ON.load(Ordering::Relaxed) {
        return;
    }
    let mut carrier = std::collections::HashMap::new();
    carrier.insert("traceparent".to_owned(), trace.traceparent().to_owned());
    if let Some(state) = trace.tracestate() {
        carrier.insert("tracestate".to_owned(), state.to_owned());
    }
    let remote = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    let linked = remote.span().span_context().clone();
    if linked.is_valid() {
        span.add_link(linked);
    }
}

/// The span of one operation on the valid-codes table of database `system`: a stage of the worker's
/// batch (activate and re-arm, expire, put back) or a check or redeem; never the code.
pub fn table_span(operation: &'static str, system: &'static str) -> tracing::Span {
    tracing::info_span!(
        "table",
        otel.name = operation,
        db.system.name = system,
        db.operation.name = operation,
        db.collection.name = "valid_codes",
    )
}

/// Whether spans are exported.
pub fn is_on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Renames `span`'s OpenTelemetry span to what `name` makes, when traces are on (a name known only
/// once the span has started, as an HTTP route is); nothing otherwise, not even the name.
pub fn rename(span: &tracing::Span, name: impl FnOnce() -> String) {
    if ON.load(Ordering::Relaxed) {
        span.context().span().update_name(name());
    }
}
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};

/// The exporter could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("the OTLP trace exporter cannot be set up: {0}")]
pub struct TelemetryError(String);

/// The trace pipeline while it runs; dropping it sends what is still batched (within the exporter's
/// timeout) and stops it.
pub struct Telemetry(Option<SdkTracerProvider>);

impl Telemetry {
    /// No traces.
    pub fn off() -> Self {
        Self(None)
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("the last traces could not be sent: {e}");
        }
    }
}

/// Starts exporting to the OTLP/HTTP receiver at `endpoint` (its base URL): the pipeline and the
/// tracer the `tracing` layer writes to.
pub fn start(endpoint: &url::Url) -> Result<(Telemetry, Tracer), TelemetryError> {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
    // A traces endpoint of its own is read by the SDK, as the standard says; otherwise the base's path.
    if std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none() {
        exporter = exporter.with_endpoint(format!(
            "{}/v1/traces",
            endpoint.as_str().trim_end_matches('/')
        ));
    }
    let exporter = exporter
        .build()
        .map_err(|e| TelemetryError(e.to_string()))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("codewatch");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let tracer = provider.tracer("codewatch");
    ON.store(true, Ordering::Relaxed);
    Ok((Telemetry(Some(provider)), tracer))
}
