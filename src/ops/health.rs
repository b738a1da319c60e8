//! Liveness (`/healthz`: the process loop is alive) and readiness (`/readyz`: database and queue
//! reachable), plus `/metrics` and the `/status` page, as one router: the admin listener's.

use crate::queue::{QueueAdmin, QueueError};
use crate::store::StoreStatus;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// How long a readiness check may take per part.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// When each of a process's loops last went round. Liveness fails when any loop is older than the
/// allowed silence, or is marked down (it ended and waits to be restarted).
#[derive(Debug)]
pub struct Heartbeat {
    last_ms: Vec<AtomicI64>,
    allowed: Duration,
    started: Instant,
}

/// The mark of a loop that is down.
const DOWN: i64 = -1;

impl Heartbeat {
    /// A heartbeat for `loops` loops, each alive for `allowed` after its [`Heartbeat::beat`].
    pub fn new(allowed: Duration, loops: std::num::NonZeroUsize) -> Arc<Self> {
        Arc::new(Self {
            last_ms: (0..loops.get()).map(|_| AtomicI64::new(0)).collect(),
            allowed,
            started: Instant::now(),
        })
    }

    /// Records that loop `index` went round.
    pub fn beat(&self, index: usize) {
        let ms = i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX);
        if let Some(slot) = self.last_ms.get(index) {
            slot.store(ms, Ordering::Relaxed);
        }
    }

    /// Records that loop `index` ended unexpectedly: liveness fails until it beats again.
    pub fn mark_down(&self, index: usize) {
        if let Some(slot) = self.last_ms.get(index) {
            slot.store(DOWN, Ordering::Relaxed);
        }
    }

    /// The loops that are down or silent for longer than allowed.
    pub fn stalled(&self) -> Vec<usize> {
        let now = self.started.elapsed();
        self.last_ms
            .iter()
            .enumerate()
            .filter(|(_, slot)| {
                let last = slot.load(Ordering::Relaxed);
                last == DOWN
                    || now.saturating_sub(Duration::from_millis(last as u64)) > self.allowed
            })
            .map(|(index, _)| index)
            .collect()
    }

    /// Whether every loop went round recently enough.
    pub fn is_alive(&self) -> bool {
        self.stalled().is_empty()
    }
}

/// What `/readyz` checks.
#[derive(Clone)]
pub struct Readiness {
    /// The database, if this process uses one.
    pub store: Option<Arc<dyn StoreStatus>>,
    /// The queues (one per shard).
    pub queues: Vec<Arc<dyn QueueAdmin>>,
    /// For a worker: the queue one past its shards; messages there are codes no worker of this shard
    /// count polls (a producer with more shards), and make it not ready.
    pub unpolled: Option<Arc<dyn QueueAdmin>>,
}

impl Readiness {
    /// [`Readiness::failures`], recorded in `codewatch_ready` (1 when none).
    pub async fn check(&self) -> Vec<(&'static str, String)> {
        let failing = self.failures().await;
        metrics::gauge!(super::metrics::READY).set(if failing.is_empty() { 1.0 } else { 0.0 });
        failing
    }

    /// The failing parts, each with a reason (never a secret); empty when ready. The parts are checked
    /// at once, each within [`CHECK_TIMEOUT`], so the answer comes within that.
    pub async fn failures(&self) -> Vec<(&'static str, String)> {
        let store = async {
            let store = self.store.as_ref()?;
            match tokio::time::timeout(CHECK_TIMEOUT, store.ping()).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(("database", e.to_string())),
                Err(_) => Some(("database", format!("no answer within {CHECK_TIMEOUT:?}"))),
            }
        };
        let queues = futures::future::join_all(self.queues.iter().map(|queue| async move {
            match tokio::time::timeout(CHECK_TIMEOUT, queue.peek(1)).await {
                Ok(Ok(_)) => None,
                // Reachable and authenticated; a sender-only identity may not read messages.
                Ok(Err(QueueError::TokenRefused {
                    code: Some(code), ..
                })) if code == "AuthorizationPermissionMismatch" => None,
                Ok(Err(e)) => Some(("queue", e.to_string())),
                Err(_) => Some(("queue", format!("no answer within {CHECK_TIMEOUT:?}"))),
            }
        }));
        let unpolled = async {
            let queue = self.unpolled.as_ref()?;
            // A queue that does not exist (the usual case) answers an error: nothing waits there.
            let waiting = match tokio::time::timeout(CHECK_TIMEOUT, queue.approximate_len()).await {
                Ok(Ok(n)) => n,
                _ => 0,
            };
            metrics::gauge!(super::metrics::UNPOLLED_SHARD_MESSAGES).set(waiting as f64);
            (waiting > 0).then(|| {
                let reason = format!(
                    "{waiting} message(s) wait on {}, which this worker does not poll: a producer has \
                     more shards than STORAGE_QUEUE_SHARDS here; raise it to the producer's count",
                    queue.name()
                );
                tracing::warn!(%reason, "codes are left unpolled");
                ("shards", reason)
            })
        };
        let (store, queues, unpolled) = tokio::join!(store, queues, unpolled);
        // One entry per failing part: the first failing shard's reason stands for the queue.
        store
            .into_iter()
            .chain(queues.into_iter().flatten().take(1))
            .chain(unpolled)
            .collect()
    }
}

struct OpsState {
    heartbeat: Option<Arc<Heartbeat>>,
    readiness: Readiness,
    metrics: PrometheusHandle,
    board: Arc<super::status::StatusBoard>,
}

/// `/healthz`, `/readyz`, `/metrics` and `/status`. Without a heartbeat, liveness is "the server
/// answers".
pub fn ops_router(
    heartbeat: Option<Arc<Heartbeat>>,
    readiness: Readiness,
    metrics: PrometheusHandle,
) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .route("/status", get(status_page))
        .with_state(Arc::new(OpsState {
            heartbeat,
            board: super::status::StatusBoard::start(metrics.clone(), readiness.clone()),
            readiness,
            metrics,
        }))
}

async fn status_page(State(state): State<Arc<OpsState>>) -> Response {
    (
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        axum::response::Html(state.board.page().await),
    )
        .into_response()
}

async fn healthz(State(state): State<Arc<OpsState>>) -> Response {
    let stalled = state
        .heartbeat
        .as_ref()
        .map(|h| h.stalled())
        .unwrap_or_default();
    if stalled.is_empty() {
        Json(serde_json::json!({ "status": "alive" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "stalled", "stalled_pollers": stalled })),
        )
            .into_response()
    }
}

async fn readyz(State(state): State<Arc<OpsState>>) -> Response {
    let failing = state.readiness.check().await;
    if failing.is_empty() {
        return Json(serde_json::json!({ "status": "ready" })).into_response();
    }
    let parts: serde_json::Map<String, serde_json::Value> = failing
        .into_iter()
        .map(|(part, reason)| (part.to_owned(), reason.into()))
        .collect();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({ "status": "not ready", "failing": parts })),
    )
        .into_response()
}

/// Renders the metrics after a fresh readiness check, so `codewatch_ready` and
/// `codewatch_unpolled_shard_messages` are current at every scrape, whether or not anything probes
/// `/readyz`.
async fn render_metrics(State(state): State<Arc<OpsState>>) -> String {
    state.readiness.check().await;
    state.metrics.render()
}
