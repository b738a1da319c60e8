//! Prometheus metrics through the `metrics` facade. Names are constants here so that code and docs agree.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Messages received, by outcome: `activated`, `duplicate`, `stale`, `expired`, `early`, `poisoned`, `failed`.
pub const MESSAGES: &str = "codewatch_messages_total";
/// Messages received from the queue.
pub const RECEIVED: &str = "codewatch_messages_received_total";
/// Messages per non-empty receive.
pub const BATCH_SIZE: &str = "codewatch_batch_size";
/// Seconds to handle one batch, from receive to the last delete.
pub const BATCH_SECONDS: &str = "codewatch_batch_duration_seconds";
/// Seconds from a code's issue to its activation.
pub const ACTIVATION_LAG: &str = "codewatch_activation_lag_seconds";
/// Approximate messages in the queue (visible or not), by queue.
pub const QUEUE_LENGTH: &str = "codewatch_queue_length";
/// Age of the oldest visible message, in seconds (0 when none is visible).
pub const OLDEST_VISIBLE_AGE: &str = "codewatch_queue_oldest_visible_age_seconds";
/// The wait before the next receive of an idle or failing poll loop, in seconds.
pub const POLL_BACKOFF: &str = "codewatch_poll_backoff_seconds";
/// Receives a worker made, empty or not: a flat line means no poll loop is going round.
pub const POLLS: &str = "codewatch_polls_total";
/// 1 while the last `/readyz` found every part reachable, else 0.
pub const READY: &str = "codewatch_ready";
/// Worker loops restarted after they ended unexpectedly (a panic), by loop.
pub const LOOP_RESTARTS: &str = "codewatch_worker_loop_restarts_total";
/// HTTP requests by route and status.
pub const HTTP_REQUESTS: &str = "codewatch_http_requests_total";
/// HTTP request duration by route and status, in seconds.
pub const HTTP_SECONDS: &str = "codewatch_http_request_duration_seconds";
/// Failed calls to the third-party number API, by kind (`status`, `unreachable`, `timeout`, `garbage`).
pub const NUMBER_API_ERRORS: &str = "codewatch_number_api_errors_total";

/// Deliveries by outcome: `delivered`, `retried` (failed for now), `failed` (given up).
pub const DELIVERIES: &str = "codewatch_deliveries_total";

/// Messages waiting on the queue one past a worker's shards, which no worker of its shard count polls.
pub const UNPOLLED_SHARD_MESSAGES: &str = "codewatch_unpolled_shard_messages";

/// Every metric the binary exports, for the dashboards and alerts to be checked against.
pub const ALL: &[&str] = &[
    MESSAGES,
    RECEIVED,
    BATCH_SIZE,
    BATCH_SECONDS,
    ACTIVATION_LAG,
    QUEUE_LENGTH,
    OLDEST_VISIBLE_AGE,
    POLL_BACKOFF,
    POLLS,
    READY,
    LOOP_RESTARTS,
    HTTP_REQUESTS,
    HTTP_SECONDS,
    NUMBER_API_ERRORS,
    UNPOLLED_SHARD_MESSAGES,
    DELIVERIES,
];

/// The outcomes [`DELIVERIES`] counts.
pub const DELIVERY_OUTCOMES: [&str; 3] = ["delivered", "retried", "failed"];

/// The outcomes [`MESSAGES`] counts.
pub const OUTCOMES: [&str; 7] = [
    "activated",
    "duplicate",
    "stale",
    "expired",
    "early",
    "poisoned",
    "failed",
];
/// The worker loops [`LOOP_RESTARTS`] counts.
pub const LOOPS: [&str; 4] = ["poll", "sweep", "sample", "deliver"];
/// The kinds of failure [`NUMBER_API_ERRORS`] counts.
pub const NUMBER_API_ERROR_KINDS: [&str; 6] = [
    "status",
    "unreachable",
    "timeout",
    "garbage",
    "redirect",
    "too_large",
];

/// Which series a process exports from its start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `serve`: the number API's errors.
    Producer,
    /// `worker`: messages, receives, polls, loop restarts.
    Worker,
    /// `up`: both.
    Both,
}

/// Writes every counter the alerts and dashboards use at 0, with each label value it can take. A
/// counter that first appears at 1 has no increase to see, so without this `increase()` would miss the
/// first poisoned message or loop restart after a start. The gauges start at 0 too: `codewatch_ready`
/// is "not ready" until a check passes, and every scrape of `/metrics` runs one first.
pub fn start_at_zero(role: Role) {
    metrics::gauge!(READY).set(0.0);
    if role != Role::Worker {
        for kind in NUMBER_API_ERROR_KINDS {
            metrics::counter!(NUMBER_API_ERRORS, "kind" => kind).absolute(0);
        }
    }
    if role != Role::Producer {
        for outcome in OUTCOMES {
            metrics::counter!(MESSAGES, "outcome" => outcome).absolute(0);
        }
        for name in LOOPS {
            metrics::counter!(LOOP_RESTARTS, "loop" => name).absolute(0);
        }
        metrics::counter!(RECEIVED).absolute(0);
        metrics::counter!(POLLS).absolute(0);
        metrics::gauge!(UNPOLLED_SHARD_MESSAGES).set(0.0);
        for outcome in DELIVERY_OUTCOMES {
            metrics::counter!(DELIVERIES, "outcome" => outcome).absolute(0);
        }
    }
}

/// [`install`], then the series of `role` [at zero](start_at_zero).
pub fn install_for(role: Role) -> PrometheusHandle {
    let handle = install();
    start_at_zero(role);
    handle
}

/// Installs the Prometheus recorder once per process and returns the handle that renders `/metrics`.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .install_recorder()
                .unwrap_or_else(|_| {
                    // Another recorder is installed (a test harness): render an empty registry.
                    PrometheusBuilder::new().build_recorder().handle()
                });
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(MESSAGES, "Messages handled, by outcome.");
    describe_counter!(RECEIVED, "Messages received from the queue.");
    describe_histogram!(BATCH_SIZE, "Messages per non-empty receive.");
    describe_histogram!(BATCH_SECONDS, "Seconds to handle one batch.");
    describe_histogram!(
        ACTIVATION_LAG,
        "Seconds from a code's issue to its activation."
    );
    describe_gauge!(
        QUEUE_LENGTH,
        "Approximate messages in the queue, visible or not."
    );
    describe_gauge!(
        OLDEST_VISIBLE_AGE,
        "Age of the oldest visible message in seconds, by shard's queue."
    );
    describe_gauge!(
        POLL_BACKOFF,
        "Current wait of an idle or failing poll loop in seconds."
    );
    describe_counter!(
        POLLS,
        "Receives made by the worker's poll loops, empty or not."
    );
    describe_gauge!(READY, "1 while the last readiness check passed, else 0.");
    describe_counter!(
        LOOP_RESTARTS,
        "Worker loops restarted after they ended unexpectedly."
    );
    describe_counter!(HTTP_REQUESTS, "HTTP requests by route and status.");
    describe_counter!(
        DELIVERIES,
        "Deliveries by outcome: delivered, retried (failed for now), failed (given up)."
    );
    describe_histogram!(HTTP_SECONDS, "HTTP request duration by route and status.");
    describe_gauge!(
        UNPOLLED_SHARD_MESSAGES,
        "Messages on the queue one past this worker's shards, which it does not poll."
    );
    describe_counter!(
        NUMBER_API_ERRORS,
        "Failed calls to the random-number API, by kind."
    );
}
