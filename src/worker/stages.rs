//! The batch stages after sorting, each a small step on the queue and the store: set aside, activate
//! and re-arm, expire, put back. [`Worker::process_batch`](super::Worker::process_batch) runs them in
//! their order; every step is idempotent, so a crash between two of them only redelivers.

use super::{BatchReport, Rearm, Worker};
use crate::domain::Issuance;
use crate::message::CodeMessage;
use crate::ops::metrics as m;
use crate::queue::shards::Shard;
use crate::queue::{QueueError, ReceivedMessage, clamp_visibility};
use crate::store::{Activation, StoreError};
use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How long past its code's expiry a message re-armed by update must still be kept by the queue.
const UPDATE_MARGIN: chrono::Duration = chrono::Duration::minutes(5);

/// How one message's last step ended.
enum Outcome {
    Done,
    Failed,
}

/// Seconds until `at`, rounded up so that a message made visible then never arrives before it.
pub(super) fn until(at: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    let ms = (at - now).num_milliseconds().max(0) as u64;
    clamp_visibility(Duration::from_secs(ms.div_ceil(1000)))
}

impl Worker {
    /// Copies each message to the poison queue as it was, then deletes it.
    pub(super) async fn set_aside(
        &self,
        shard: &Shard,
        messages: Vec<(ReceivedMessage, String)>,
    ) -> BatchReport {
        let count = messages.len();
        let failed = self
            .bounded(messages, |(message, reason)| async move {
                let id = &message.receipt.message_id;
                if let Err(e) = shard.poison.send(&message.body, Duration::ZERO).await {
                    tracing::warn!(error = %e, message_id = %id, "poison queue refused; will retry");
                    return Outcome::Failed;
                }
                tracing::warn!(message_id = %id, %reason, poison_queue = shard.poison.name(), "message set aside");
                self.delete_one(shard, &message).await
            })
            .await;
        BatchReport {
            poisoned: count - failed,
            failed,
            ..BatchReport::default()
        }
    }

    /// Writes the activations to the store in one transaction; sets aside those whose id is recorded
    /// for another code; re-arms the rest (stale ones are only deleted).
    pub(super) async fn activate(
        &self,
        shard: &Shard,
        activations: Vec<(ReceivedMessage, Activation)>,
        now: DateTime<Utc>,
    ) -> BatchReport {
        let rows: Vec<Activation> = activations.iter().map(|(_, a)| a.clone()).collect();
        let result = self.store.activate(&rows, now).await;
        self.note_store(&result);
        let db = match result {
            Ok(db) => db,
            Err(_) => return BatchReport::failed(activations.len()),
        };
        // Only the losers: the activation whose code was recorded under a contested id is re-armed.
        let (activations, conflicting): (Vec<_>, Vec<_>) =
            activations.into_iter().partition(|(_, a)| {
                !db.conflicts
                    .iter()
                    .any(|(id, code)| *id == a.issuance.id && *code == a.issuance.code)
            });
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
        let mut report = self.set_aside(shard, conflicting).await;
        for a in rows.iter().filter(|a| a.expires_at > now) {
            let lag = (now - a.issuance.issued_at).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::histogram!(m::ACTIVATION_LAG).record(lag);
        }
        report.activated = db.inserted as usize;
        if db.inserted > 0
            && let Some(deliverer) = &self.deliverer
        {
            deliverer.wake();
        }
        report.duplicates = db.duplicates as usize;
        report.stale = db.stale as usize;
        report.failed += self.rearm(shard, activations, now).await;
        report
    }

    /// Sends each live activation's expiry message, then deletes the activation (or, with
    /// [`Rearm::Update`], turns it into its expiry message in one call). Returns how many failed.
    async fn rearm(
        &self,
        shard: &Shard,
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
                // The expiry leg keeps the activation's trace context, so its processing links back too.
                let trace = crate::telemetry::is_on()
                    .then(|| CodeMessage::decode_traced(&message.body, message.inserted_at, None).ok())
                    .flatten()
                    .and_then(|(_, trace)| trace);
                let body = match follow_up.encode_traced(
                    self.settings.encoding,
                    self.settings.signing.as_ref(),
                    trace.as_ref(),
                ) {
                    Ok(body) => body,
                    Err(e) => {
                        tracing::error!(error = %e, issuance = %id, "expiry message not written; will retry");
                        return Outcome::Failed;
                    }
                };
                // Only a first delivery is updated: the expiry message keeps the activation's dequeue
                // count, so one that came back after crashes is re-sent instead (a fresh count), and
                // an expiry message is never set aside for its activation's tries.
                // And only a message the queue keeps past the code's expiry: an update keeps the
                // sender's time-to-live, and a foreign one may drop the message before it comes back.
                let outlives = message
                    .expires_at
                    .is_none_or(|dropped| dropped >= activation.expires_at + UPDATE_MARGIN);
                if self.settings.rearm == Rearm::Update && message.dequeue_count <= 1 && outlives {
                    // One call: the activation becomes the expiry message, so there is nothing to delete.
                    return match shard.main.update(&message.receipt, &body, delay).await {
                        Ok(()) => {
                            tracing::debug!(issuance = %id, expires_in_s = delay.as_secs(), "code activated; re-armed in place");
                            Outcome::Done
                        }
                        // Another receive holds it now: it is activated again (idempotently) and re-armed.
                        Err(QueueError::MessageGone) => Outcome::Done,
                        Err(e) => {
                            tracing::warn!(error = %e, issuance = %id, "activation not re-armed; will retry");
                            Outcome::Failed
                        }
                    };
                }
                if let Err(e) = shard.main.send(&body, delay).await {
                    tracing::warn!(error = %e, issuance = %id, "expiry message not sent; will retry");
                    return Outcome::Failed;
                }
                tracing::debug!(issuance = %id, expires_in_s = delay.as_secs(), "code activated");
            } else {
                tracing::debug!(issuance = %id, "activation arrived after expiry; nothing made valid");
            }
            self.delete_one(shard, &message).await
        })
        .await
    }

    /// Marks the issuances of expiry messages whose time has come expired, then deletes the messages.
    pub(super) async fn expire(
        &self,
        shard: &Shard,
        due: Vec<(ReceivedMessage, Issuance)>,
        now: DateTime<Utc>,
    ) -> BatchReport {
        let ids: Vec<_> = due.iter().map(|(_, i)| i.id.clone()).collect();
        let result = self.store.expire(&ids, now).await;
        self.note_store(&result);
        let removed = match result {
            Ok(removed) => removed,
            Err(_) => return BatchReport::failed(due.len()),
        };
        for id in &ids {
            tracing::debug!(issuance = %id, "code expired");
        }
        tracing::debug!(removed, messages = due.len(), "expiries stored");
        let failed = self
            .bounded(
                due,
                |(m, _)| async move { self.delete_one(shard, &m).await },
            )
            .await;
        BatchReport {
            expired: ids.len() - failed,
            failed,
            ..BatchReport::default()
        }
    }

    /// Re-sends early expiry messages to become visible when their code expires, then deletes them:
    /// send and delete only, so the worker needs no right to update messages. One for an issuance the
    /// table never recorded is set aside instead (forged: re-sending it would keep it forever).
    pub(super) async fn put_back(
        &self,
        shard: &Shard,
        early: Vec<(ReceivedMessage, (Issuance, DateTime<Utc>))>,
        now: DateTime<Utc>,
    ) -> BatchReport {
        let mut known = Vec::with_capacity(early.len());
        let mut unknown = Vec::new();
        let mut report = BatchReport::default();
        for (message, (issuance, expires_at)) in early {
            match self.store.recorded(&issuance.id).await {
                Ok(true) => known.push((message, expires_at)),
                Ok(false) => unknown.push((
                    message,
                    format!(
                        "expiry message for issuance {:?}, which was never activated here",
                        issuance.id.as_str()
                    ),
                )),
                Err(e) => {
                    tracing::warn!(error = %e, "could not look up an early expiry's issuance; it returns after its lease");
                    report.failed += 1;
                }
            }
        }
        report += self.set_aside(shard, unknown).await;
        let count = known.len();
        let failed = self
            .bounded(known, |(message, expires_at)| async move {
                let delay = until(expires_at, now).max(Duration::from_secs(1));
                tracing::debug!(message_id = %message.receipt.message_id, wait_s = delay.as_secs(), "expiry message came early; re-sent");
                if let Err(e) = shard.main.send(&message.body, delay).await {
                    tracing::warn!(error = %e, "early expiry message not re-sent; it returns after its lease");
                    return Outcome::Failed;
                }
                self.delete_one(shard, &message).await
            })
            .await;
        report += BatchReport {
            early: count - failed,
            failed,
            ..BatchReport::default()
        };
        report
    }

    /// Makes messages whose handling never started visible again at once (shutdown). If the identity
    /// may not update messages, they come back when their lease ends instead; nothing is lost either
    /// way. They count as failed: they will be handled again.
    pub(super) async fn release_unstarted(
        &self,
        shard: &Shard,
        messages: Vec<ReceivedMessage>,
    ) -> BatchReport {
        let count = messages.len();
        for message in messages {
            if let Err(e) = shard.main.release(&message.receipt, Duration::ZERO).await {
                tracing::debug!(error = %e, "message not released; it returns when its lease ends");
            }
        }
        BatchReport::failed(count)
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

    async fn delete_one(&self, shard: &Shard, message: &ReceivedMessage) -> Outcome {
        match shard.main.delete(&message.receipt).await {
            Ok(()) => Outcome::Done,
            // Another receive took it over after our lease ended; it will be handled again, idempotently.
            Err(QueueError::MessageGone) => Outcome::Done,
            Err(e) => {
                tracing::warn!(error = %e, message_id = %message.receipt.message_id, "delete failed; message will be seen again");
                Outcome::Failed
            }
        }
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
