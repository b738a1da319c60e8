//! The queue watcher: activates codes, re-arms each as an expiry message, and expires it when it returns.

mod backoff;

pub use backoff::Backoff;

use crate::message::{CodeMessage, MessageEncoding};
use crate::ops::Heartbeat;
use crate::ops::metrics as m;
use crate::queue::{QueueError, ReceivedMessage, SharedQueue, clamp_visibility};
use crate::store::{Activation, SharedStore, StoreError};
use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a poll loop may go without going round before liveness fails.
const LIVENESS_SILENCE: Duration = Duration::from_secs(120);
/// How often the queue length and the oldest visible message's age are sampled for metrics.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(15);

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
    /// The first wait after an empty receive.
    pub min_poll_interval: Duration,
    /// The longest wait between receives of an idle queue.
    pub max_poll_interval: Duration,
    /// How expiry messages are written.
    pub encoding: MessageEncoding,
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

/// What one batch came to. `activated`, `duplicates` and `stale` say what the database did; `failed`
/// counts messages left on the queue for another try, whatever step failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Messages received.
    pub received: usize,
    /// Activations that made a code valid and re-armed it for expiry.
    pub activated: usize,
    /// Activations of a code already valid (a duplicate delivery), re-armed again.
    pub duplicates: usize,
    /// Activations that arrived after the code's expiry: nothing made valid.
    pub stale: usize,
    /// Expiry messages processed (the code is gone, or was already).
    pub expired: usize,
    /// Expiry messages that came back before their time and were put back until then.
    pub early: usize,
    /// Messages moved to the poison queue.
    pub poisoned: usize,
    /// Messages left on the queue after a failure; they come back when their lease ends.
    pub failed: usize,
}

impl std::ops::AddAssign for BatchReport {
    fn add_assign(&mut self, other: Self) {
        self.received += other.received;
        self.activated += other.activated;
        self.duplicates += other.duplicates;
        self.stale += other.stale;
        self.expired += other.expired;
        self.early += other.early;
        self.poisoned += other.poisoned;
        self.failed += other.failed;
    }
}

/// What one poll found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollOutcome {
    /// The queue had no visible message.
    Empty,
    /// A batch was received and handled.
    Processed(BatchReport),
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
    queue: SharedQueue,
    poison: SharedQueue,
    store: SharedStore,
    settings: WorkerSettings,
    heartbeat: Arc<Heartbeat>,
    store_failing: AtomicBool,
}

enum Outcome {
    Done,
    Failed,
}

/// The first and the longest wait before a loop that ended unexpectedly is started again.
const RESTART_MIN: Duration = Duration::from_millis(200);
const RESTART_MAX: Duration = Duration::from_secs(30);

/// The worker's long-running loops, for supervision.
#[derive(Clone, Copy, Debug)]
enum Loop {
    /// A poll loop, by index.
    Poll(usize),
    /// The retention sweeper, with its interval.
    Sweep(Duration),
    /// The queue metrics sampler.
    Sample,
}

impl Loop {
    fn name(self) -> &'static str {
        match self {
            Self::Poll(_) => "poll",
            Self::Sweep(_) => "sweep",
            Self::Sample => "sample",
        }
    }
}

/// Seconds until `at`, rounded up so that a message made visible then never arrives before it.
fn until(at: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    let ms = (at - now).num_milliseconds().max(0) as u64;
    clamp_visibility(Duration::from_secs(ms.div_ceil(1000)))
}

impl Worker {
    /// A worker on `queue`, setting poison messages aside on `poison`, keeping codes in `store`.
    pub fn new(
        queue: SharedQueue,
        poison: SharedQueue,
        store: SharedStore,
        settings: WorkerSettings,
    ) -> Self {
        let heartbeat = Heartbeat::new(LIVENESS_SILENCE, settings.pollers);
        Self {
            queue,
            poison,
            store,
            settings,
            heartbeat,
            store_failing: AtomicBool::new(false),
        }
    }

    /// The poll loops' heartbeat, for `/healthz`.
    pub fn heartbeat(&self) -> Arc<Heartbeat> {
        self.heartbeat.clone()
    }

    /// Logs the database's state once per change, not once per batch.
    fn note_store<T>(&self, result: &Result<T, StoreError>) {
        match result {
            Ok(_) if self.store_failing.swap(false, Ordering::Relaxed) => {
                tracing::info!("database reachable again");
            }
            Err(e) if !self.store_failing.swap(true, Ordering::Relaxed) => {
                tracing::warn!(error = %e, "database unavailable; messages stay on the queue and are retried");
            }
            Err(e) => tracing::debug!(error = %e, "database still unavailable"),
            Ok(_) => {}
        }
    }

    /// Receives one batch and handles it to the end. Never leaves a message half-handled.
    pub async fn poll_once(&self) -> Result<PollOutcome, WorkerError> {
        self.poll_until(&CancellationToken::new()).await
    }

    /// [`Worker::poll_once`], releasing the batch's not yet started messages at once if `cancel` fires.
    async fn poll_until(&self, cancel: &CancellationToken) -> Result<PollOutcome, WorkerError> {
        let batch = self
            .queue
            .receive(self.settings.batch_size, self.settings.lease)
            .await?;
        metrics::counter!(m::POLLS).increment(1);
        if batch.is_empty() {
            return Ok(PollOutcome::Empty);
        }
        let started = Instant::now();
        metrics::counter!(m::RECEIVED).increment(batch.len() as u64);
        metrics::histogram!(m::BATCH_SIZE).record(batch.len() as f64);
        let report = self.process_batch_until(batch, Utc::now(), cancel).await;
        metrics::histogram!(m::BATCH_SECONDS).record(started.elapsed().as_secs_f64());
        for (outcome, n) in [
            ("activated", report.activated),
            ("duplicate", report.duplicates),
            ("stale", report.stale),
            ("expired", report.expired),
            ("early", report.early),
            ("poisoned", report.poisoned),
            ("failed", report.failed),
        ] {
            if n > 0 {
                metrics::counter!(m::MESSAGES, "outcome" => outcome).increment(n as u64);
            }
        }
        if report.failed > 0 {
            tracing::debug!(
                ?report,
                "batch done with failures; failed messages will be retried"
            );
        } else {
            tracing::info!(
                received = report.received,
                activated = report.activated,
                duplicates = report.duplicates,
                stale = report.stale,
                expired = report.expired,
                early = report.early,
                poisoned = report.poisoned,
                "batch done"
            );
        }
        Ok(PollOutcome::Processed(report))
    }

    /// Makes messages whose handling never started visible again at once (shutdown). If the identity
    /// may not update messages, they come back when their lease ends instead; nothing is lost either way.
    async fn release_unstarted(&self, messages: Vec<ReceivedMessage>) -> usize {
        let count = messages.len();
        for message in messages {
            if let Err(e) = self.queue.release(&message.receipt, Duration::ZERO).await {
                tracing::debug!(error = %e, "message not released; it returns when its lease ends");
            }
        }
        count
    }

    /// Handles received messages. The order that loses nothing, for each message: write the database,
    /// send the follow-up message, then delete the original. A crash anywhere redelivers the original,
    /// and every step is idempotent.
    pub async fn process_batch(
        &self,
        batch: Vec<ReceivedMessage>,
        now: DateTime<Utc>,
    ) -> BatchReport {
        self.process_batch_until(batch, now, &CancellationToken::new())
            .await
    }

    /// [`Worker::process_batch`]; a stage not yet started when `cancel` fires releases its messages
    /// instead (they count as failed: they will be handled again).
    async fn process_batch_until(
        &self,
        batch: Vec<ReceivedMessage>,
        now: DateTime<Utc>,
        cancel: &CancellationToken,
    ) -> BatchReport {
        let mut report = BatchReport {
            received: batch.len(),
            ..Default::default()
        };
        let mut activations = Vec::new();
        let mut due = Vec::new();
        let mut early = Vec::new();
        let mut poison = Vec::new();
        for message in batch {
            let overdue = message.dequeue_count > self.settings.max_dequeue_count;
            match CodeMessage::decode_verified(
                &message.body,
                message.inserted_at,
                self.settings.signing.as_ref(),
            ) {
                Err(e) => poison.push((message, e.to_string())),
                Ok(CodeMessage::Activate(issuance)) => match issuance.expiry(
                    self.settings.code_ttl,
                    message.inserted_at,
                    self.settings.clock_allowance,
                ) {
                    Err(e) => poison.push((message, e.to_string())),
                    // However often it came back (crashed workers, a database outage), a live
                    // activation is tried again, never set aside: that would lose its code. It stops
                    // coming back once done, or once its code has expired (then it is stale).
                    Ok(expires_at) => {
                        if overdue {
                            tracing::warn!(
                                message_id = %message.receipt.message_id,
                                dequeue_count = message.dequeue_count,
                                "activation received more than MAX_DEQUEUE_COUNT times; trying it again"
                            );
                        }
                        let announced_at = issuance.announced_at(message.inserted_at);
                        activations.push((
                            message,
                            Activation {
                                issuance,
                                expires_at,
                                announced_at,
                            },
                        ));
                    }
                },
                // An expiry that keeps failing is set aside: that is harmless, since validity comes
                // from `expires_at`, not from this message.
                Ok(CodeMessage::Expire { .. }) if overdue => {
                    let reason =
                        format!("received {} times without success", message.dequeue_count);
                    poison.push((message, reason));
                }
                Ok(CodeMessage::Expire {
                    issuance,
                    expires_at,
                }) if expires_at <= now => due.push((message, issuance)),
                Ok(CodeMessage::Expire { expires_at, .. }) => early.push((message, expires_at)),
            }
        }

        let (poisoned, failed) = self.set_aside(poison).await;
        report.poisoned = poisoned;
        report.failed += failed;

        if !activations.is_empty() && cancel.is_cancelled() {
            report.failed += self
                .release_unstarted(activations.into_iter().map(|(m, _)| m).collect())
                .await;
        } else if !activations.is_empty() {
            let rows: Vec<Activation> = activations.iter().map(|(_, a)| a.clone()).collect();
            let result = self.store.activate(&rows, now).await;
            self.note_store(&result);
            match result {
                Ok(db) => {
                    let (activations, conflicting): (Vec<_>, Vec<_>) = activations
                        .into_iter()
                        .partition(|(_, a)| !db.conflicts.contains(&a.issuance.id));
                    let conflicting = conflicting
                        .into_iter()
                        .map(|(m, a)| {
                            let reason = format!(
                                "issuance id {:?} is already recorded for another code",
                                a.issuance.id.as_str()
                            );
                            (m, reason)
                        })
                        .collect();
                    let (poisoned, failed) = self.set_aside(conflicting).await;
                    report.poisoned += poisoned;
                    report.failed += failed;
                    for a in rows.iter().filter(|a| a.expires_at > now) {
                        let lag =
                            (now - a.issuance.issued_at).num_milliseconds().max(0) as f64 / 1000.0;
                        metrics::histogram!(m::ACTIVATION_LAG).record(lag);
                    }
                    report.activated = db.inserted as usize;
                    report.duplicates = db.duplicates as usize;
                    report.stale = db.stale as usize;
                    report.failed += self.rearm(activations, now).await;
                }
                Err(_) => report.failed += activations.len(),
            }
        }

        if !due.is_empty() && cancel.is_cancelled() {
            report.failed += self
                .release_unstarted(due.into_iter().map(|(m, _)| m).collect())
                .await;
        } else if !due.is_empty() {
            let ids: Vec<_> = due.iter().map(|(_, i)| i.id.clone()).collect();
            let result = self.store.expire(&ids, now).await;
            self.note_store(&result);
            match result {
                Ok(removed) => {
                    for id in &ids {
                        tracing::debug!(issuance = %id, "code expired");
                    }
                    tracing::debug!(removed, messages = due.len(), "expiries stored");
                    let failed = self
                        .delete_all(due.into_iter().map(|(m, _)| m).collect())
                        .await;
                    report.expired = ids.len() - failed;
                    report.failed += failed;
                }
                Err(_) => report.failed += due.len(),
            }
        }

        if !early.is_empty() && cancel.is_cancelled() {
            report.failed += self
                .release_unstarted(early.into_iter().map(|(m, _)| m).collect())
                .await;
        } else if !early.is_empty() {
            let count = early.len();
            let failed = self.put_back(early, now).await;
            report.early = count - failed;
            report.failed += failed;
        }
        report
    }

    /// Runs `step` on every item with at most `max_in_flight` at once; returns how many failed.
    async fn bounded<T, F, Fut>(&self, items: Vec<T>, step: F) -> usize
    where
        F: Fn(T) -> Fut,
        Fut: std::future::Future<Output = Outcome>,
    {
        stream::iter(items)
            .map(step)
            .buffer_unordered(self.settings.max_in_flight.get())
            .filter(|outcome| std::future::ready(matches!(outcome, Outcome::Failed)))
            .count()
            .await
    }

    /// Sends each live activation's expiry message, then deletes the activation. Returns how many failed.
    async fn rearm(
        &self,
        activations: Vec<(ReceivedMessage, Activation)>,
        now: DateTime<Utc>,
    ) -> usize {
        self.bounded(activations, |(message, activation)| async move {
            let id = &activation.issuance.id;
            if activation.expires_at > now {
                let delay = until(activation.expires_at, now);
                let follow_up = CodeMessage::Expire {
                    expires_at: activation.expires_at,
                    issuance: activation.issuance.clone(),
                };
                let body = follow_up.encode_signed(self.settings.encoding, self.settings.signing.as_ref());
                if let Err(e) = self.queue.send(&body, delay).await {
                    tracing::warn!(error = %e, issuance = %id, "expiry message not sent; will retry");
                    return Outcome::Failed;
                }
                tracing::debug!(issuance = %id, expires_in_s = delay.as_secs(), "code activated");
            } else {
                tracing::debug!(issuance = %id, "activation arrived after expiry; nothing made valid");
            }
            self.delete_one(&message).await
        })
        .await
    }

    /// Copies each message to the poison queue as it was, then deletes it. Returns (poisoned, failed).
    async fn set_aside(&self, messages: Vec<(ReceivedMessage, String)>) -> (usize, usize) {
        let count = messages.len();
        let failed = self
            .bounded(messages, |(message, reason)| async move {
                let id = &message.receipt.message_id;
                if let Err(e) = self.poison.send(&message.body, Duration::ZERO).await {
                    tracing::warn!(error = %e, message_id = %id, "poison queue refused; will retry");
                    return Outcome::Failed;
                }
                tracing::warn!(message_id = %id, %reason, poison_queue = self.poison.name(), "message set aside");
                self.delete_one(&message).await
            })
            .await;
        (count - failed, failed)
    }

    /// Re-sends early expiry messages to become visible when their code expires, then deletes them:
    /// send and delete only, so the worker needs no right to update messages. Returns how many failed.
    async fn put_back(
        &self,
        early: Vec<(ReceivedMessage, DateTime<Utc>)>,
        now: DateTime<Utc>,
    ) -> usize {
        self.bounded(early, |(message, expires_at)| async move {
            let delay = until(expires_at, now).max(Duration::from_secs(1));
            tracing::debug!(message_id = %message.receipt.message_id, wait_s = delay.as_secs(), "expiry message came early; re-sent");
            if let Err(e) = self.queue.send(&message.body, delay).await {
                tracing::warn!(error = %e, "early expiry message not re-sent; it returns after its lease");
                return Outcome::Failed;
            }
            self.delete_one(&message).await
        })
        .await
    }

    async fn delete_all(&self, messages: Vec<ReceivedMessage>) -> usize {
        self.bounded(messages, |m| async move { self.delete_one(&m).await })
            .await
    }

    async fn delete_one(&self, message: &ReceivedMessage) -> Outcome {
        match self.queue.delete(&message.receipt).await {
            Ok(()) => Outcome::Done,
            // Another receive took it over after our lease ended; it will be handled again, idempotently.
            Err(QueueError::MessageGone) => Outcome::Done,
            Err(e) => {
                tracing::warn!(error = %e, message_id = %message.receipt.message_id, "delete failed; message will be seen again");
                Outcome::Failed
            }
        }
    }

    /// Runs the poll loops, the sweeper and the metrics sampler until `cancel` fires; each poll loop
    /// finishes its batch first (releasing what it had not started). A loop that ends unexpectedly (a
    /// panic) is marked down for `/healthz` at once, counted, and restarted after a backoff.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        let mut loops = std::collections::HashMap::new();
        let mut restarts: Vec<Backoff> = Vec::new();
        let kinds: Vec<Loop> = (0..self.settings.pollers.get())
            .map(Loop::Poll)
            .chain(self.settings.sweep_interval.map(Loop::Sweep))
            .chain([Loop::Sample])
            .collect();
        for (index, kind) in kinds.iter().enumerate() {
            let handle = tasks.spawn(self.clone().run_loop(*kind, Duration::ZERO, cancel.clone()));
            loops.insert(handle.id(), index);
            restarts.push(Backoff::new(RESTART_MIN, RESTART_MAX));
        }
        while let Some(joined) = tasks.join_next_with_id().await {
            let (id, panic) = match joined {
                Ok((id, ())) => (id, None),
                Err(e) => (e.id(), e.try_into_panic().ok()),
            };
            let Some(index) = loops.remove(&id) else {
                continue;
            };
            if cancel.is_cancelled() {
                continue;
            }
            let kind = kinds[index];
            if let Loop::Poll(poller) = kind {
                self.heartbeat.mark_down(poller);
            }
            let message = panic
                .as_ref()
                .and_then(|p| {
                    p.downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                })
                .unwrap_or_else(|| "ended".to_owned());
            let wait = restarts[index].next_delay();
            metrics::counter!(m::LOOP_RESTARTS, "loop" => kind.name()).increment(1);
            tracing::error!(
                worker_loop = kind.name(),
                panic = %crate::untrusted::Untrusted::new(&message),
                restart_in_ms = wait.as_millis() as u64,
                "worker loop ended unexpectedly; restarting it"
            );
            let handle = tasks.spawn(self.clone().run_loop(kind, wait, cancel.clone()));
            loops.insert(handle.id(), index);
        }
    }

    /// Runs one loop after `delay` (the restart backoff), unless cancelled first.
    async fn run_loop(self: Arc<Self>, kind: Loop, delay: Duration, cancel: CancellationToken) {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        match kind {
            Loop::Poll(poller) => self.poll_loop(poller, cancel).await,
            Loop::Sweep(interval) => self.sweep_loop(interval, cancel).await,
            Loop::Sample => self.sample_loop(cancel).await,
        }
    }

    async fn poll_loop(&self, poller: usize, cancel: CancellationToken) {
        let mut backoff = Backoff::new(
            self.settings.min_poll_interval,
            self.settings.max_poll_interval,
        );
        let mut failing = false;
        while !cancel.is_cancelled() {
            self.heartbeat.beat(poller);
            let result = self.poll_until(&cancel).await;
            if failing && result.is_ok() {
                tracing::info!(poller, "queue reachable again");
                failing = false;
            }
            let wait = match result {
                // Nothing of the batch succeeded (the database is down): do not spin on the next one.
                Ok(PollOutcome::Processed(r)) if r.failed == r.received => backoff.next_delay(),
                Ok(PollOutcome::Processed(_)) => {
                    backoff.reset();
                    Duration::ZERO
                }
                Ok(PollOutcome::Empty) => backoff.next_delay(),
                Err(e) => {
                    if !failing {
                        tracing::warn!(poller, error = %e, "receive failed; backing off");
                    }
                    failing = true;
                    backoff.next_delay()
                }
            };
            metrics::gauge!(m::POLL_BACKOFF, "poller" => poller.to_string())
                .set(wait.as_secs_f64());
            if !wait.is_zero() {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.queue.sent_here(), if !failing => {}
                }
            }
        }
    }

    /// Samples the queue's length and the age of its oldest visible message into gauges.
    async fn sample_loop(&self, cancel: CancellationToken) {
        loop {
            for queue in [&self.queue, &self.poison] {
                if let Ok(len) = queue.approximate_len().await {
                    metrics::gauge!(m::QUEUE_LENGTH, "queue" => queue.name().to_owned())
                        .set(len as f64);
                }
            }
            if let Ok(peeked) = self.queue.peek(1).await {
                let age = peeked.first().map(|p| {
                    (Utc::now() - p.inserted_at).num_milliseconds().max(0) as f64 / 1000.0
                });
                metrics::gauge!(m::OLDEST_VISIBLE_AGE).set(age.unwrap_or(0.0));
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(SAMPLE_INTERVAL) => {}
            }
        }
    }

    async fn sweep_loop(&self, interval: Duration, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
            // Revocations must outlive every activation they may still meet: at least one TTL.
            let keep = self.settings.retention.max(self.settings.code_ttl);
            let cutoff =
                Utc::now() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
            match self.store.purge(cutoff).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "deleted rows past their retention"),
                Err(e) => tracing::warn!(error = %e, "purge failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_expiry_delay_rounds_up_and_stays_within_what_the_service_accepts() {
        let now = Utc.with_ymd_and_hms(2026, 11, 28, 9, 0, 0).unwrap();
        let at = |ms: i64| now + chrono::Duration::milliseconds(ms);
        assert_eq!(
            until(at(600_000), now),
            Duration::from_secs(600),
            "the sample's 600 s when processed at once"
        );
        assert_eq!(
            until(at(1), now),
            Duration::from_secs(1),
            "never visible before expires_at"
        );
        assert_eq!(
            until(at(-5_000), now),
            Duration::ZERO,
            "already past: visible at once"
        );
        assert_eq!(
            until(at(30 * 24 * 3600 * 1000), now),
            crate::queue::MAX_VISIBILITY,
            "clamped to 7 days"
        );
    }
}
