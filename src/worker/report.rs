//! What a batch came to, counted into metrics and one log line.

use crate::ops::metrics as m;

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

impl BatchReport {
    /// A report of `n` messages left on the queue for another try.
    pub(super) fn failed(n: usize) -> Self {
        Self {
            failed: n,
            ..Self::default()
        }
    }

    /// Counts the batch's outcomes into the messages metric and logs one line for it.
    pub(super) fn record(&self) {
        let counts = [
            self.activated,
            self.duplicates,
            self.stale,
            self.expired,
            self.early,
            self.poisoned,
            self.failed,
        ];
        for (outcome, n) in m::OUTCOMES.into_iter().zip(counts) {
            if n > 0 {
                metrics::counter!(m::MESSAGES, "outcome" => outcome).increment(n as u64);
            }
        }
        if self.failed > 0 {
            tracing::debug!(
                report = ?self,
                "batch done with failures; failed messages will be retried"
            );
        } else {
            tracing::info!(
                received = self.received,
                activated = self.activated,
                duplicates = self.duplicates,
                stale = self.stale,
                expired = self.expired,
                early = self.early,
                poisoned = self.poisoned,
                "batch done"
            );
        }
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
