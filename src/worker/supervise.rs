//! Supervision: the poll loops, the retention sweeper, the metrics sampler and the delivery stage, each restarted after
//! a backoff if it ends unexpectedly (a panic), until shutdown.

use super::{Backoff, PollOutcome, Worker, WorkerError};
use crate::ops::metrics as m;
use chrono::Utc;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The longest a resting poll loop waits before it polls again on its own (well within the liveness
/// silence): while the queue is idle only the first loop polls it.
const REST_MAX: Duration = Duration::from_secs(30);

/// How often the queue length and the oldest visible message's age are sampled for metrics.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(15);

/// The first and the longest wait before a loop that ended unexpectedly is started again.
const RESTART: Backoff = match Backoff::new(Duration::from_millis(200), Duration::from_secs(30)) {
    Ok(backoff) => backoff,
    Err(_) => panic!("the restart backoff's minimum is above its maximum"),
};

/// The worker's long-running loops, for supervision.
#[derive(Clone, Copy, Debug)]
enum Loop {
    /// A poll loop, by index.
    Poll(usize),
    /// The retention sweeper, with its interval.
    Sweep(Duration),
    /// The queue metrics sampler.
    Sample,
    /// The delivery stage.
    Deliver,
}

impl Loop {
    fn name(self) -> &'static str {
        match self {
            Self::Poll(_) => "poll",
            Self::Sweep(_) => "sweep",
            Self::Sample => "sample",
            Self::Deliver => "deliver",
        }
    }
}

impl Worker {
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
            .chain(self.deliverer.as_ref().map(|_| Loop::Deliver))
            .collect();
        for (index, kind) in kinds.iter().enumerate() {
            let handle = tasks.spawn(self.clone().run_loop(*kind, Duration::ZERO, cancel.clone()));
            loops.insert(handle.id(), index);
            restarts.push(RESTART);
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
            Loop::Deliver => match &self.deliverer {
                Some(deliverer) => deliverer.run(cancel).await,
                None => cancel.cancelled().await,
            },
        }
    }

    /// Receives and handles batches until `cancel` fires, going round the shards: one batch from each
    /// in turn (poller `p` starts at shard `p`, so the loops spread), and waiting only after a whole
    /// round found nothing, so that a busy shard is never starved by idle ones. While the queue is idle
    /// only poller 0 keeps polling (with its backoff); the others rest until it finds messages, so an
    /// idle worker costs one receive per interval, however many loops it runs.
    async fn poll_loop(&self, poller: usize, cancel: CancellationToken) {
        let shards = self.shards.len();
        if shards == 0 {
            return cancel.cancelled().await;
        }
        let mut backoff = self.settings.poll_backoff.clone();
        let mut failing = false;
        let mut next = poller % shards;
        // Shards found empty in a row since the last batch.
        let mut idle = 0;
        while !cancel.is_cancelled() {
            self.heartbeat.beat(poller);
            let shard = &self.shards[next];
            next = (next + 1) % shards;
            let result = self.poll_until(shard, &cancel).await;
            if failing && result.is_ok() {
                tracing::info!(poller, "queue reachable again");
                failing = false;
            }
            let wait = match result {
                // Nothing of the batch succeeded (the database is down): do not spin on the next one.
                Ok(PollOutcome::Processed(r)) if r.failed == r.received => backoff.next_delay(),
                Ok(PollOutcome::Processed(_)) => {
                    backoff.reset();
                    idle = 0;
                    self.work_seen.notify_waiters();
                    Duration::ZERO
                }
                Ok(PollOutcome::Empty) => {
                    idle += 1;
                    if idle < shards {
                        // The rest of the round first.
                        Duration::ZERO
                    } else {
                        idle = 0;
                        backoff.next_delay()
                    }
                }
                Err(e) => {
                    let heals = match &e {
                        WorkerError::Queue(queue) => queue.is_retryable(),
                        WorkerError::Store(_) => true,
                    };
                    if !failing && heals {
                        tracing::warn!(poller, queue = shard.main.name(), error = %e, "receive failed; backing off");
                    } else if !failing {
                        // Polling goes on (the setting may be fixed while it runs), but say it will not heal alone.
                        tracing::error!(poller, queue = shard.main.name(), error = %e, "receive refused: a setting or a role must change; backing off");
                    }
                    failing = true;
                    backoff.next_delay()
                }
            };
            metrics::gauge!(m::POLL_BACKOFF, "poller" => poller.to_string())
                .set(wait.as_secs_f64());
            if !wait.is_zero() {
                let resting = poller != 0 && !failing;
                let sent_here = futures::future::select_all(
                    self.shards.iter().map(|s| Box::pin(s.main.sent_here())),
                );
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(if resting { REST_MAX } else { wait }) => {}
                    _ = sent_here, if !failing => {}
                    _ = self.work_seen.notified(), if resting => {}
                }
            }
        }
    }

    /// Samples each queue's length and each shard's oldest visible message's age into gauges.
    async fn sample_loop(&self, cancel: CancellationToken) {
        loop {
            for shard in &self.shards {
                let [main, poison] = &shard.depths;
                for queue in [main, poison] {
                    if let Ok(len) = queue.approximate_len().await {
                        metrics::gauge!(m::QUEUE_LENGTH, "queue" => queue.name().to_owned())
                            .set(len as f64);
                    }
                }
                if let Ok(peeked) = main.peek(1).await {
                    let age = peeked.first().map_or(0.0, |p| {
                        (Utc::now() - p.inserted_at).num_milliseconds().max(0) as f64 / 1000.0
                    });
                    metrics::gauge!(m::OLDEST_VISIBLE_AGE, "queue" => main.name().to_owned())
                        .set(age);
                }
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

    #[test]
    fn every_loop_is_one_the_metrics_start_at_zero() {
        for kind in [
            Loop::Poll(0),
            Loop::Sweep(Duration::from_secs(1)),
            Loop::Sample,
            Loop::Deliver,
        ] {
            assert!(
                crate::ops::metrics::LOOPS.contains(&kind.name()),
                "{kind:?}"
            );
        }
    }
}
