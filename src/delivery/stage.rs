//! The worker's delivery stage: claim the due deliveries, send each through the channel, record what
//! happened. Each claim holds a delivery for a lease; a worker that dies between sending and recording
//! leaves it to be claimed, and sent, once more after the lease: the only way a code is sent twice.

use super::{Channel, DeliveryError};
use crate::clock::Clock;
use crate::ops::metrics as m;
use crate::store::{DeliveryOutcome, DeliveryStore, PendingDelivery, StoreError};
use crate::untrusted::escaped;
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The least time a code must have left for an attempt to start: a code that arrives with less is
/// of no use, and a slow answer must not carry it past its expiry.
const MIN_LEFT: Duration = Duration::from_secs(1);

/// How the delivery stage behaves; every field is a CLI flag (`config::DeliveryArgs`).
#[derive(Clone, Debug)]
pub struct DeliverySettings {
    /// How long one attempt may take (connect, send, answer).
    pub timeout: Duration,
    /// The wait before the second attempt; it doubles with each failure, up to `retry_max`.
    pub retry_min: Duration,
    /// The longest wait between attempts.
    pub retry_max: Duration,
    /// Deliveries claimed per round.
    pub batch: u32,
    /// Attempts in flight at once.
    pub concurrency: usize,
    /// The longest wait between rounds when nothing wakes the stage.
    pub interval: Duration,
    /// How long a claim holds a delivery: longer than any attempt, so that only a worker that died
    /// lets it go to another ([`DeliverySettings::lease_for`] a timeout).
    pub lease: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            retry_min: Duration::from_secs(2),
            retry_max: Duration::from_secs(60),
            batch: 32,
            concurrency: 8,
            interval: Duration::from_secs(1),
            lease: Self::lease_for(Duration::from_secs(10)),
        }
    }
}

impl DeliverySettings {
    /// The lease for attempts of at most `timeout`: twice it, and 5 s more.
    pub fn lease_for(timeout: Duration) -> Duration {
        timeout * 2 + Duration::from_secs(5)
    }

    /// The wait after failed attempt number `attempt` (1 for the first).
    pub fn retry_after(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(20);
        self.retry_min
            .saturating_mul(1 << doublings)
            .min(self.retry_max)
    }
}

/// What one round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Accepted by the channel.
    pub delivered: usize,
    /// Failed for now, to be tried again.
    pub retried: usize,
    /// Given up: refused for good, or no time left before the code expires.
    pub failed: usize,
    /// Pending deliveries ended because their code expired, was redeemed or revoked first.
    pub ended: u64,
}

/// The delivery stage of a worker.
pub struct Deliverer {
    store: Arc<dyn DeliveryStore>,
    channel: Arc<dyn Channel>,
    settings: DeliverySettings,
    /// What "now" is for each step: when a claim starts, how much time a code has left before an
    /// attempt, when a retry is due.
    clock: Clock,
    wake: tokio::sync::Notify,
}

impl Deliverer {
    /// A stage delivering through `channel` what `store` holds.
    pub fn new(
        store: Arc<dyn DeliveryStore>,
        channel: Arc<dyn Channel>,
        settings: DeliverySettings,
    ) -> Self {
        Self {
            store,
            channel,
            settings,
            clock: Clock::system(),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// The same stage reading the time from `clock` (a test's stopped clock).
    pub fn with_clock(self, clock: Clock) -> Self {
        Self { clock, ..self }
    }

    /// Starts a round now (the worker activated codes).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs rounds until `cancel` fires: after each activation, and at least every interval.
    pub async fn run(&self, cancel: CancellationToken) {
        let mut failing = false;
        while !cancel.is_cancelled() {
            match self.deliver_due(self.clock.now()).await {
                Ok(report) => {
                    failing = false;
                    // A full batch: more may be due at once.
                    if report.delivered + report.retried + report.failed
                        >= self.settings.batch as usize
                    {
                        continue;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "delivery round failed; trying again");
                    }
                    failing = true;
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.settings.interval) => {}
            }
        }
    }

    /// One round at `now`: ends the deliveries of codes that can no longer be used, claims those due,
    /// sends them (a few at a time), and records each outcome.
    pub async fn deliver_due(&self, now: DateTime<Utc>) -> Result<DeliveryReport, StoreError> {
        let mut report = DeliveryReport {
            ended: self.end_undeliverable(now).await?,
            ..DeliveryReport::default()
        };
        let lease_until = now + chrono::Duration::from_std(self.settings.lease).unwrap_or_default();
        let claimed = self
            .store
            .claim_deliveries(now, lease_until, self.settings.batch)
            .await?;
        let outcomes: Vec<Result<Option<DeliveryOutcome>, StoreError>> =
            futures::stream::iter(claimed)
                .map(|delivery| {
                    // One span per delivery sent (never its destination or code); an empty round
                    // makes none.
                    let span = tracing::info_span!(
                        "deliver",
                        otel.name = "deliver",
                        otel.kind = "client",
                    );
                    tracing::Instrument::instrument(self.attempt(delivery), span)
                })
                .buffer_unordered(self.settings.concurrency)
                .collect()
                .await;
        let mut skipped = false;
        for outcome in outcomes {
            match outcome? {
                Some(DeliveryOutcome::Delivered) => report.delivered += 1,
                Some(DeliveryOutcome::RetryAt(..)) => report.retried += 1,
                Some(DeliveryOutcome::Failed(_)) => report.failed += 1,
                None => skipped = true,
            }
        }
        if skipped {
            report.ended += self.end_undeliverable(self.clock.now()).await?;
        }
        Ok(report)
    }

    /// Ends, with their reason, the pending deliveries of codes that can no longer be used.
    async fn end_undeliverable(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let ended = self.store.end_undeliverable(now).await?;
        if ended > 0 {
            metrics::counter!(m::DELIVERIES, "outcome" => "failed").increment(ended);
            tracing::warn!(
                ended,
                "deliveries given up: their code expired, was redeemed or revoked first"
            );
        }
        Ok(ended)
    }

    /// Sends one claimed delivery (unless its code expired meanwhile) and records the outcome; `None`
    /// when the code was redeemed or revoked since the claim (a claim may wait behind others' sends),
    /// which [`Self::end_undeliverable`] then records.
    async fn attempt(
        &self,
        delivery: PendingDelivery,
    ) -> Result<Option<DeliveryOutcome>, StoreError> {
        if !self
            .store
            .still_deliverable(&delivery.issuance_id, self.clock.now())
            .await?
        {
            return Ok(None);
        }
        let left = (delivery.expires_at - self.clock.now())
            .to_std()
            .unwrap_or_default();
        // An attempt must end half of MIN_LEFT before the expiry; with less left, none starts.
        let time_for_attempt = left.saturating_sub(MIN_LEFT / 2);
        let outcome = if time_for_attempt.is_zero() {
            DeliveryOutcome::Failed("expired before delivery".into())
        } else {
            let sent = tokio::time::timeout(
                self.settings.timeout.min(time_for_attempt),
                self.channel.deliver(&delivery),
            )
            .await
            .unwrap_or_else(|_| Err(DeliveryError::Transient("no answer in time".into())));
            let now = self.clock.now();
            match sent {
                Ok(()) => DeliveryOutcome::Delivered,
                Err(DeliveryError::Permanent(reason)) => {
                    DeliveryOutcome::Failed(self.safe(&delivery, &reason))
                }
                Err(DeliveryError::Transient(reason)) => {
                    let reason = self.safe(&delivery, &reason);
                    let wait =
                        chrono::Duration::from_std(self.settings.retry_after(delivery.attempt))
                            .unwrap_or_default();
                    let last_start = delivery.expires_at
                        - chrono::Duration::from_std(MIN_LEFT).unwrap_or_default();
                    if now + wait >= last_start {
                        DeliveryOutcome::Failed(format!(
                            "no attempt left before the code expires; last: {reason}"
                        ))
                    } else {
                        DeliveryOutcome::RetryAt(now + wait, reason)
                    }
                }
            }
        };
        self.store
            .record_delivery(&delivery.issuance_id, &outcome, self.clock.now())
            .await?;
        self.report(&delivery, &outcome);
        Ok(Some(outcome))
    }

    /// A reason from outside, fit to log and store: the destination masked, the code hidden, escaped
    /// and capped.
    fn safe(&self, delivery: &PendingDelivery, reason: &str) -> String {
        let masked = reason
            .replace(
                delivery.destination.as_str(),
                &delivery.destination.masked(),
            )
            .replace(delivery.code.as_str(), "[code]");
        format!("{}: {}", self.channel.name(), escaped(&masked))
    }

    fn report(&self, delivery: &PendingDelivery, outcome: &DeliveryOutcome) {
        let id = delivery.issuance_id.as_str();
        let to = delivery.destination.masked();
        let attempt = delivery.attempt;
        match outcome {
            DeliveryOutcome::Delivered => {
                metrics::counter!(m::DELIVERIES, "outcome" => "delivered").increment(1);
                tracing::info!(issuance_id = id, destination = %to, attempt, "code delivered");
            }
            DeliveryOutcome::RetryAt(at, reason) => {
                metrics::counter!(m::DELIVERIES, "outcome" => "retried").increment(1);
                tracing::warn!(issuance_id = id, destination = %to, attempt, %reason, retry_at = %at, "delivery failed; will retry");
            }
            DeliveryOutcome::Failed(reason) => {
                metrics::counter!(m::DELIVERIES, "outcome" => "failed").increment(1);
                tracing::error!(issuance_id = id, destination = %to, attempt, %reason, "delivery given up");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_up_to_the_longest_wait_and_the_lease_outlasts_an_attempt() {
        let s = DeliverySettings::default();
        let waits: Vec<u64> = (1..=7).map(|a| s.retry_after(a).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(s.retry_after(u32::MAX), s.retry_max);
        assert!(s.lease > s.timeout);
    }
}
