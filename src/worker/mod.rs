//! The queue watcher: activates codes, re-arms each as an expiry message, and expires it when it returns.

//!
//! A batch goes through its stages in one order, stated once in [`Worker::process_batch`]: sort
//! (`sort.rs`: decode, verify, bound the expiry) → set aside the malformed → activate (database) and
//! re-arm (queue send) → expire (database) → put early expiries back; each message is deleted only
//! after its stage's writes (`stages.rs`). `supervise.rs` runs the loops; `report.rs` counts the outcome.

mod backoff;
mod report;
mod sort;
mod stages;
mod supervise;

pub use backoff::{Backoff, InvalidBackoff};
pub use report::{BatchReport, PollOutcome};

use crate::message::MessageEncoding;
use crate::ops::Heartbeat;
use crate::ops::metrics as m;
use crate::queue::shards::Shard;
use crate::queue::{QueueError, ReceivedMessage, SharedQueue};
use crate::store::{ActivationStore, StoreError};
use chrono::{DateTime, Utc};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// How long a poll loop may go without going round before liveness fails.
const LIVENESS_SILENCE: Duration = Duration::from_secs(120);

/// How the worker behaves; every field is a CLI flag (`config::WorkerTuning`), and its `Default`
/// is built from those flags' defaults.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// How long a code stays valid after it was issued.
    pub code_ttl: Duration,
    /// Messages asked for per receive (1–32).
    pub batch_size: u32,
    /// How long a received message stays invisible to other workers while this one handles it.
    pub lease: Duration,
    /// Receives after which an expiry message that still failed goes to the poison queue (live
    /// activations are always tried again).
    pub max_dequeue_count: u32,
    /// Poll loops running at once (each handles one batch at a time).
    pub pollers: NonZeroUsize,
    /// Queue operations in flight at once within one batch.
    pub max_in_flight: NonZeroUsize,
    /// The waits after empty receives: from the first to the longest between receives of an idle queue.
    pub poll_backoff: Backoff,
    /// How expiry messages are written.
    pub encoding: MessageEncoding,
    /// How an activation becomes its expiry message.
    pub rearm: Rearm,
    /// How often rows past their retention are deleted; `None` never.
    pub sweep_interval: Option<Duration>,
    /// How long a row is kept after its expiry, for inspection (at least `code_ttl` is kept anyway).
    pub retention: Duration,
    /// How far an activation's timestamp may lie after the queue's insertion time (clock skew); one
    /// dated later is poisoned, so no sender can make a code valid past insertion + allowance + TTL.
    pub clock_allowance: Duration,
    /// With keys, activations must be signed by one of them (others are poisoned), and the expiry
    /// messages the worker writes are signed with the current one.
    pub signing: Option<crate::signing::SigningKeys>,
}

/// How an activation is re-armed as its expiry message, after the database write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Rearm {
    /// Send the expiry message, then delete the activation: two calls, and the roles Storage Queue
    /// Data Message Sender and Processor suffice.
    #[default]
    Send,
    /// One Update Message call turns the activation into the expiry message (same message id; its
    /// dequeue count carries on, so only a first delivery is updated: an activation that came back is
    /// re-sent). Needs Storage Queue Data Contributor.
    Update,
}

/// A worker failure that stops one poll (the loop backs off and tries again).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The queue watcher. Cheap to share; run several with [`Worker::run`] or drive it with [`Worker::poll_once`].
pub struct Worker {
    /// Received from and re-armed on, each poll loop going round them in turn; a message is re-armed
    /// and set aside on the shard it came from.
    shards: Vec<Shard>,
    store: Arc<dyn ActivationStore>,
    settings: WorkerSettings,
    heartbeat: Arc<Heartbeat>,
    store_failing: AtomicBool,
    /// Wakes the resting poll loops when one of them found messages.
    work_seen: tokio::sync::Notify,
    /// The delivery stage, when codes are delivered by this worker.
    deliverer: Option<Arc<crate::delivery::Deliverer>>,
}

impl Worker {
    /// A worker on `queue`, setting poison messages aside on `poison`, keeping codes in `store`.
    pub fn new(
        queue: SharedQueue,
        poison: SharedQueue,
        store: Arc<dyn ActivationStore>,
        settings: WorkerSettings,
    ) -> Self {
        Self::with_shards(vec![Shard::new(queue, poison)], store, settings)
    }

    /// A worker polling every one of `shards` (at least one: with none it polls nothing).
    pub fn with_shards(
        shards: Vec<Shard>,
        store: Arc<dyn ActivationStore>,
        settings: WorkerSettings,
    ) -> Self {
        let heartbeat = Heartbeat::new(LIVENESS_SILENCE, settings.pollers);
        Self {
            shards,
            store,
            settings,
            heartbeat,
            store_failing: AtomicBool::new(false),
            work_seen: tokio::sync::Notify::new(),
            deliverer: None,
        }
    }

    /// This worker with a delivery stage: [`Worker::run`] runs it beside the poll loops, and each
    /// activation wakes it.
    pub fn with_delivery(mut self, deliverer: Arc<crate::delivery::Deliverer>) -> Self {
        self.deliverer = Some(deliverer);
        self
    }

    /// The poll loops' heartbeat, for `/healthz`.
    pub fn heartbeat(&self) -> Arc<Heartbeat> {
        self.heartbeat.clone()
    }

    /// Receives one batch from the first shard and handles it to the end. Never leaves a message
    /// half-handled.
    pub async fn poll_once(&self) -> Result<PollOutcome, WorkerError> {
        match self.shards.first() {
            Some(shard) => self.poll_until(shard, &CancellationToken::new()).await,
            None => Ok(PollOutcome::Empty),
        }
    }

    /// [`Worker::poll_once`] on `shard`, releasing the batch's not yet started messages at once if
    /// `cancel` fires.
    async fn poll_until(
        &self,
        shard: &Shard,
        cancel: &CancellationToken,
    ) -> Result<PollOutcome, WorkerError> {
        let batch = shard
            .main
            .receive(self.settings.batch_size, self.settings.lease)
            .await?;
        metrics::counter!(m::POLLS).increment(1);
        if batch.is_empty() {
            return Ok(PollOutcome::Empty);
        }
        let started = Instant::now();
        metrics::counter!(m::RECEIVED).increment(batch.len() as u64);
        metrics::histogram!(m::BATCH_SIZE).record(batch.len() as f64);
        // A consumer span of OpenTelemetry's messaging conventions, for the whole batch.
        let span = tracing::info_span!(
            "process batch",
            otel.name = %format_args!("process {}", shard.main.name()),
            otel.kind = "consumer",
            messaging.system = "azure_queue_storage",
            messaging.operation.type = "process",
            messaging.destination.name = %shard.main.name(),
            messaging.batch.message_count = batch.len() as i64,
        );
        let report = self
            .process_batch_until(shard, batch, Utc::now(), cancel)
            .instrument(span)
            .await;
        metrics::histogram!(m::BATCH_SECONDS).record(started.elapsed().as_secs_f64());
        report.record();
        Ok(PollOutcome::Processed(report))
    }

    /// Handles messages received from the first shard. The order that loses nothing, for each message: write the database,
    /// send the follow-up message, then delete the original. A crash anywhere redelivers the original,
    /// and every step is idempotent.
    pub async fn process_batch(
        &self,
        batch: Vec<ReceivedMessage>,
        now: DateTime<Utc>,
    ) -> BatchReport {
        match self.shards.first() {
            Some(shard) => {
                self.process_batch_until(shard, batch, now, &CancellationToken::new())
                    .await
            }
            None => BatchReport::failed(batch.len()),
        }
    }

    /// [`Worker::process_batch`]; a stage not yet started when `cancel` fires releases its messages
    /// instead (they count as failed: they will be handled again).
    async fn process_batch_until(
        &self,
        shard: &Shard,
        batch: Vec<ReceivedMessage>,
        now: DateTime<Utc>,
        cancel: &CancellationToken,
    ) -> BatchReport {
        let mut report = BatchReport {
            received: batch.len(),
            ..BatchReport::default()
        };
        // The stages, in their order.
        let sorted = sort::sort(batch, now, &self.settings);
        let span = tracing::Span::current();
        for trace in &sorted.traces {
            crate::telemetry::link(&span, trace);
        }
        report += self.set_aside(shard, sorted.poison).await;
        report += self
            .stage(shard, sorted.activations, cancel, |a| {
                self.activate(shard, a, now)
                    .instrument(crate::telemetry::table_span(
                        "activate",
                        self.store.db_system(),
                    ))
            })
            .await;
        report += self
            .stage(shard, sorted.due, cancel, |due| {
                self.expire(shard, due, now)
                    .instrument(crate::telemetry::table_span(
                        "expire",
                        self.store.db_system(),
                    ))
            })
            .await;
        report += self
            .stage(shard, sorted.early, cancel, |early| {
                self.put_back(shard, early, now)
                    .instrument(crate::telemetry::table_span(
                        "put back",
                        self.store.db_system(),
                    ))
            })
            .await;
        report
    }

    /// Runs one stage on its messages, unless there are none, or shutdown began before it started:
    /// then its messages are released for another worker instead.
    async fn stage<T, F, Fut>(
        &self,
        shard: &Shard,
        items: Vec<(ReceivedMessage, T)>,
        cancel: &CancellationToken,
        run: F,
    ) -> BatchReport
    where
        F: FnOnce(Vec<(ReceivedMessage, T)>) -> Fut,
        Fut: std::future::Future<Output = BatchReport>,
    {
        if items.is_empty() {
            BatchReport::default()
        } else if cancel.is_cancelled() {
            self.release_unstarted(shard, items.into_iter().map(|(m, _)| m).collect())
                .await
        } else {
            run(items).await
        }
    }
}
