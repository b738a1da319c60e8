//! The batch's first stage: decode each message and sort it by what is to be done with it.

use super::WorkerSettings;
use crate::domain::Issuance;
use crate::message::{CodeMessage, TraceContext};
use crate::queue::ReceivedMessage;
use crate::store::Activation;
use chrono::{DateTime, Utc};

/// A received batch, sorted by the stage that handles each message.
#[derive(Default)]
pub(super) struct Sorted {
    /// Messages that cannot be handled, with the reason: they go to the poison queue.
    pub poison: Vec<(ReceivedMessage, String)>,
    /// Live activations (and stale ones: the store tells them apart by `now`).
    pub activations: Vec<(ReceivedMessage, Activation)>,
    /// Expiry messages whose time has come.
    pub due: Vec<(ReceivedMessage, Issuance)>,
    /// Expiry messages that came back before their code's expiry, with their issuance and that expiry.
    pub early: Vec<(ReceivedMessage, (Issuance, DateTime<Utc>))>,
    /// The trace contexts the decoded messages carried, for the batch span's links.
    pub traces: Vec<TraceContext>,
}

/// The latest expiry a message inserted at `inserted_at` can carry: insertion + allowance + TTL.
fn latest_expiry(inserted_at: DateTime<Utc>, settings: &WorkerSettings) -> DateTime<Utc> {
    let span = chrono::Duration::from_std(settings.clock_allowance + settings.code_ttl)
        .unwrap_or(chrono::Duration::MAX);
    inserted_at
        .checked_add_signed(span)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Decodes (and, with keys, verifies) each message and sorts it. Nothing here touches the queue or
/// the database.
pub(super) fn sort(
    batch: Vec<ReceivedMessage>,
    now: DateTime<Utc>,
    settings: &WorkerSettings,
) -> Sorted {
    let mut sorted = Sorted::default();
    for message in batch {
        let overdue = message.dequeue_count > settings.max_dequeue_count;
        let decoded = CodeMessage::decode_traced(
            &message.body,
            message.inserted_at,
            settings.signing.as_ref(),
        )
        .map(|(decoded, trace)| {
            sorted.traces.extend(trace);
            decoded
        });
        match decoded {
            Err(e) => sorted.poison.push((message, e.to_string())),
            Ok(CodeMessage::Activate(issuance)) => match issuance.expiry(
                settings.code_ttl,
                message.inserted_at,
                settings.clock_allowance,
            ) {
                Err(e) => sorted.poison.push((message, e.to_string())),
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
                    let activation = Activation {
                        issuance,
                        expires_at,
                        announced_at,
                    };
                    sorted.activations.push((message, activation));
                }
            },
            // An expiry that keeps failing is set aside: that is harmless, since validity comes
            // from `expires_at`, not from this message.
            Ok(CodeMessage::Expire { .. }) if overdue => {
                let reason = format!("received {} times without success", message.dequeue_count);
                sorted.poison.push((message, reason));
            }
            // No code lives past its insertion + the allowance + the TTL: an expiry dated later is
            // forged or foreign, and would otherwise be re-sent (with a fresh count) until then.
            Ok(CodeMessage::Expire { expires_at, .. })
                if expires_at > latest_expiry(message.inserted_at, settings) =>
            {
                let reason = format!(
                    "expiry dated {expires_at}, past its insertion time + the clock allowance + \
                     CODE_TTL_SECONDS: no code of this queue lives that long"
                );
                sorted.poison.push((message, reason));
            }
            Ok(CodeMessage::Expire {
                issuance,
                expires_at,
            }) if expires_at <= now => sorted.due.push((message, issuance)),
            Ok(CodeMessage::Expire {
                issuance,
                expires_at,
            }) => {
                sorted.early.push((message, (issuance, expires_at)));
            }
        }
    }
    sorted
}
