//! Several queues as one: codes are spread over shards by issuance id, each shard with its own
//! poison queue, so that throughput is not capped by one queue's rate (about 2,000 messages/s on Azure).

use super::{QueueAdmin, QueueConsumer, QueueError, QueueSender, SharedQueue};
use std::sync::Arc;
use std::time::Duration;

/// The most shards one deployment may name.
pub const MAX_SHARDS: usize = 64;

/// One shard as the worker takes it: a queue it consumes and re-arms on, the poison queue it sets
/// malformed messages aside on (sending only), and both as its sampler reads their depths.
#[derive(Clone)]
pub struct Shard {
    /// Where codes are received from and re-armed on.
    pub main: Arc<dyn QueueConsumer>,
    /// Where unusable messages from `main` are set aside.
    pub poison: Arc<dyn QueueSender>,
    /// `main` and `poison`, for the sampler's depth and age gauges.
    pub depths: [Arc<dyn QueueAdmin>; 2],
}

impl Shard {
    /// The shard of `main` and its `poison` queue.
    pub fn new(main: SharedQueue, poison: SharedQueue) -> Self {
        Self {
            main: main.clone(),
            poison: poison.clone(),
            depths: [main, poison],
        }
    }
}

/// The queue names of `count` shards of `base`: `base` itself first (so a deployment that grows from
/// one queue keeps draining it), then `base-1`, `base-2`, …
pub fn shard_names(base: &str, count: usize) -> Vec<String> {
    (0..count.max(1))
        .map(|i| match i {
            0 => base.to_owned(),
            i => format!("{base}-{i}"),
        })
        .collect()
}

/// The name of the shard after `count` of them: `<base>-<count>`.
pub fn next_shard(base: &str, count: usize) -> String {
    format!("{base}-{}", count.max(1))
}

/// Which of `count` shards a key belongs to: FNV-1a of its bytes, so every process agrees.
pub fn shard_of(key: &str, count: usize) -> usize {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % count.max(1) as u64) as usize
}

/// The producer's side of the shards: each message goes to the shard its key (the issuance id) picks.
#[derive(Clone)]
pub struct Spread {
    senders: Arc<[Arc<dyn QueueSender>]>,
}

impl Spread {
    /// Spreads over `first` and `rest`, in shard order (so never over none).
    pub fn new(
        first: Arc<dyn QueueSender>,
        rest: impl IntoIterator<Item = Arc<dyn QueueSender>>,
    ) -> Self {
        Self {
            senders: std::iter::once(first).chain(rest).collect(),
        }
    }

    /// The queue `key`'s messages go to.
    pub fn for_key(&self, key: &str) -> &Arc<dyn QueueSender> {
        &self.senders[shard_of(key, self.senders.len())]
    }

    /// Sends `body` on `key`'s shard, in a span of OpenTelemetry's messaging conventions (a producer
    /// span named after the queue).
    pub async fn send(
        &self,
        key: &str,
        body: &str,
        visible_after: Duration,
    ) -> Result<(), QueueError> {
        use tracing::Instrument as _;
        let queue = self.for_key(key);
        let span = tracing::info_span!(
            "queue send",
            otel.name = %format_args!("send {}", queue.name()),
            otel.kind = "producer",
            messaging.system = "azure_queue_storage",
            messaging.operation.type = "send",
            messaging.destination.name = %queue.name(),
        );
        queue.send(body, visible_after).instrument(span).await
    }

    /// How many shards.
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    /// Never true: a spread has at least one shard.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl From<SharedQueue> for Spread {
    /// One queue, no sharding.
    fn from(queue: SharedQueue) -> Self {
        Self::new(queue, [])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_shard_keeps_the_queues_own_name() {
        assert_eq!(shard_names("code-requests", 1), ["code-requests"]);
        assert_eq!(
            shard_names("code-requests", 3),
            ["code-requests", "code-requests-1", "code-requests-2"]
        );
    }

    #[test]
    fn keys_spread_evenly_and_always_to_the_same_shard() {
        let mut counts = [0usize; 3];
        for _ in 0..3_000 {
            let key = uuid::Uuid::new_v4().to_string();
            let shard = shard_of(&key, 3);
            assert_eq!(shard, shard_of(&key, 3), "stable");
            counts[shard] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(shard_of("anything", 1), 0);
    }
}
