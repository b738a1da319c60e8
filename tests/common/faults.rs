//! A fault-injecting wrapper around a real queue: it delivers every send two or three times, or dies
//! (as a process killed with -9 would) at its Nth receive, send or delete, and records every body sent.

use async_trait::async_trait;
use codewatch::queue::{
    PeekedMessage, QueueAdmin, QueueConsumer, QueueError, QueueSender, Receipt, ReceivedMessage,
    SharedQueue,
};
use rand::RngExt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// A queue operation a crash can be placed at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// After the service handed out the batch (its leases taken), before anything was done with it.
    Receive,
    /// Instead of a send: after the database write, before the follow-up message.
    Send,
    /// Instead of a delete: after the follow-up message, before the original is deleted.
    Delete,
}

/// The wrapper. Once it has crashed, every call fails, until the test starts a new one (a restart).
pub struct FaultQueue {
    inner: SharedQueue,
    copies: (u32, u32),
    crash_at: Option<(Op, usize)>,
    counts: [AtomicUsize; 3],
    dead: AtomicBool,
    sent: Mutex<Vec<String>>,
    /// Every receive call, empty ones included.
    receive_calls: AtomicUsize,
    /// The task that made each receive call (a worker's poll loops are tasks of their own).
    receivers: Mutex<Vec<Option<tokio::task::Id>>>,
}

fn index(op: Op) -> usize {
    match op {
        Op::Receive => 0,
        Op::Send => 1,
        Op::Delete => 2,
    }
}

impl FaultQueue {
    fn with(inner: SharedQueue, copies: (u32, u32), crash_at: Option<(Op, usize)>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            copies,
            crash_at,
            counts: Default::default(),
            dead: AtomicBool::new(false),
            sent: Mutex::new(Vec::new()),
            receive_calls: AtomicUsize::new(0),
            receivers: Mutex::new(Vec::new()),
        })
    }

    /// Passes everything through, recording sends.
    pub fn recording(inner: SharedQueue) -> Arc<Self> {
        Self::with(inner, (1, 1), None)
    }

    /// Puts every sent message on the queue between `min` and `max` times.
    pub fn duplicating(inner: SharedQueue, min: u32, max: u32) -> Arc<Self> {
        Self::with(inner, (min, max), None)
    }

    /// Dies at the `n`th (1-based) call of `op`: that call and every later one fail.
    pub fn crashing_at(inner: SharedQueue, op: Op, n: usize) -> Arc<Self> {
        Self::with(inner, (1, 1), Some((op, n)))
    }

    /// Whether the crash happened.
    pub fn crashed(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// How many receives were asked for, empty ones included.
    pub fn receive_calls(&self) -> usize {
        self.receive_calls.load(Ordering::SeqCst)
    }

    /// How many receive calls each task made, most first.
    pub fn receives_per_task(&self) -> Vec<usize> {
        let mut per_task = std::collections::HashMap::new();
        for id in self.receivers.lock().unwrap().iter() {
            *per_task.entry(*id).or_insert(0) += 1;
        }
        let mut counts: Vec<usize> = per_task.into_values().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        counts
    }

    /// Every body sent through this wrapper (once per send call).
    pub fn sent(&self) -> Vec<String> {
        self.sent.lock().unwrap().clone()
    }

    /// Counts a send or delete: `Err` if the process is (now) dead.
    fn enter(&self, op: Op) -> Result<(), QueueError> {
        if self.crashed() {
            return Err(QueueError::Unavailable("crashed".into()));
        }
        let n = self.counts[index(op)].fetch_add(1, Ordering::SeqCst) + 1;
        if self.crash_at == Some((op, n)) {
            self.dead.store(true, Ordering::SeqCst);
            return Err(QueueError::Unavailable(format!("crashed at {op:?} {n}")));
        }
        Ok(())
    }
}

#[async_trait]
impl QueueSender for FaultQueue {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn send(&self, body: &str, visible_after: Duration) -> Result<(), QueueError> {
        self.enter(Op::Send)?;
        let (min, max) = self.copies;
        let copies = rand::rng().random_range(min..=max);
        for _ in 0..copies {
            self.inner.send(body, visible_after).await?;
        }
        self.sent.lock().unwrap().push(body.to_owned());
        Ok(())
    }
}

#[async_trait]
impl QueueConsumer for FaultQueue {
    async fn receive(&self, max: u32, lease: Duration) -> Result<Vec<ReceivedMessage>, QueueError> {
        self.receive_calls.fetch_add(1, Ordering::SeqCst);
        self.receivers.lock().unwrap().push(tokio::task::try_id());
        if self.crashed() {
            return Err(QueueError::Unavailable("crashed".into()));
        }
        let batch = self.inner.receive(max, lease).await?;
        if batch.is_empty() {
            // Only receives that bring messages count.
            return Ok(batch);
        }
        let n = self.counts[index(Op::Receive)].fetch_add(1, Ordering::SeqCst) + 1;
        if self.crash_at == Some((Op::Receive, n)) || self.crashed() {
            // The leases are taken; the process dies before doing anything with the batch.
            self.dead.store(true, Ordering::SeqCst);
            return Err(QueueError::Unavailable("crashed after receive".into()));
        }
        Ok(batch)
    }

    async fn delete(&self, receipt: &Receipt) -> Result<(), QueueError> {
        self.enter(Op::Delete)?;
        self.inner.delete(receipt).await
    }

    async fn release(&self, receipt: &Receipt, visible_after: Duration) -> Result<(), QueueError> {
        if self.crashed() {
            return Err(QueueError::Unavailable("crashed".into()));
        }
        self.inner.release(receipt, visible_after).await
    }

    /// Counted as a [`Op::Send`]: in update mode it is the follow-up write after the database's.
    async fn update(
        &self,
        receipt: &Receipt,
        body: &str,
        visible_after: Duration,
    ) -> Result<(), QueueError> {
        self.enter(Op::Send)?;
        self.inner.update(receipt, body, visible_after).await
    }
}

#[async_trait]
impl QueueAdmin for FaultQueue {
    async fn ensure_exists(&self) -> Result<(), QueueError> {
        self.inner.ensure_exists().await
    }

    async fn peek(&self, max: u32) -> Result<Vec<PeekedMessage>, QueueError> {
        self.inner.peek(max).await
    }

    async fn approximate_len(&self) -> Result<u64, QueueError> {
        self.inner.approximate_len().await
    }

    async fn clear(&self) -> Result<(), QueueError> {
        self.inner.clear().await
    }
}
