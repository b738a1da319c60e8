//! The message queue behind one trait: Azure Queue Storage ([`azure`]) or an embedded SQLite queue
//! ([`embedded`]). Nothing outside this module imports the Azure SDK.

pub mod azure;
pub mod connection_string;
pub mod embedded;
pub mod sas;
pub mod shards;
pub mod urls;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;

/// The most messages one receive or peek may ask for: Azure Queue Storage's limit.
pub const MAX_BATCH: u32 = 32;

/// The longest visibility timeout Azure Queue Storage accepts: 7 days.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Proof of a receive: what [`QueueConsumer::delete`] and [`QueueConsumer::release`] need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The queue's id for the message.
    pub message_id: String,
    /// The receipt of the latest receive; a later receive by anyone makes it stale.
    pub pop_receipt: String,
}

/// A message received under a lease (invisible to others until the lease ends or it is deleted).
#[derive(Clone, Debug)]
pub struct ReceivedMessage {
    /// What deletes or releases it.
    pub receipt: Receipt,
    /// The message text exactly as stored.
    pub body: String,
    /// How many times it has been received, this time included.
    pub dequeue_count: u32,
    /// When it was first put on the queue.
    pub inserted_at: DateTime<Utc>,
    /// When the queue drops it (its sender's time-to-live); `None`: never. An update keeps it, so a
    /// message that dies before its code's expiry cannot carry that expiry.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A message seen without receiving it.
#[derive(Clone, Debug)]
pub struct PeekedMessage {
    /// The queue's id for the message.
    pub message_id: String,
    /// The message text exactly as stored.
    pub body: String,
    /// How many times it has been received.
    pub dequeue_count: u32,
    /// When it was first put on the queue.
    pub inserted_at: DateTime<Utc>,
}

/// What went wrong talking to a queue. Texts never hold a key or signature.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The message is gone or its receipt is stale (another receive took it over). Not retryable for that receipt.
    #[error("message not found or its pop receipt is stale")]
    MessageGone,
    /// The service answered, but refused (authentication, authorisation, bad request).
    #[error("queue service refused the request: HTTP {status}{}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The storage error code, such as `AuthenticationFailed`.
        code: Option<String>,
    },
    /// The service refused this app's Entra ID token: wrong audience, expired, or a missing role.
    #[error(
        "Azure Storage refused this app's Entra ID token (HTTP {status}{}{}): the token must be for \
         https://storage.azure.com, and the identity needs the role 'Storage Queue Data Message Sender' (serve) \
         or 'Storage Queue Data Message Processor' (worker) on the queue",
        code.as_deref().map(|c| format!(" {c}")).unwrap_or_default(),
        detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default()
    )]
    TokenRefused {
        /// The HTTP status (401 or 403).
        status: u16,
        /// The storage error code, such as `AuthenticationFailed` or `AuthorizationPermissionMismatch`.
        code: Option<String>,
        /// The service's explanation, such as `Invalid token audience.`.
        detail: Option<String>,
    },
    /// No Entra ID token could be had: no identity is available here.
    #[error(
        "no Entra ID token for Azure Storage ({0}). In Azure, enable a managed identity (Container Apps, App \
         Service) or AKS workload identity; on a developer machine run `az login`, or use \
         AZURE_STORAGE_CONNECTION_STRING"
    )]
    NoIdentity(String),
    /// The service could not be reached or failed; worth retrying later. The cause is kept as its
    /// text, with SAS signatures removed, rather than as a source error: the SDK's errors can carry
    /// the request's URL, and a source chain would print it wherever the error is shown.
    #[error("queue service unavailable: {0}")]
    Unavailable(String),
    /// The configuration cannot work (bad URL, bad connection string).
    #[error("queue configuration: {0}")]
    Config(String),
}

impl QueueError {
    /// Whether trying the same call again later may succeed: a service that could not be reached,
    /// failed (5xx) or throttled (408, 429). The others need something to change first: a receipt
    /// that is over, a refusal of the request or of this app's identity, a configuration.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unavailable(_) => true,
            Self::Refused { status, .. } => matches!(status, 408 | 429 | 500..=599),
            Self::MessageGone
            | Self::TokenRefused { .. }
            | Self::NoIdentity(_)
            | Self::Config(_) => false,
        }
    }
}

/// Sending: all the producer needs (Azure role: Storage Queue Data Message Sender).
#[async_trait]
pub trait QueueSender: Send + Sync + 'static {
    /// The queue's name.
    fn name(&self) -> &str;

    /// Puts a message on the queue, invisible for `visible_after` (clamped to 7 days). It never expires.
    async fn send(&self, body: &str, visible_after: Duration) -> Result<(), QueueError>;
}

/// Receiving under a lease, with sending to re-arm: what the worker's stages need (Azure role:
/// Storage Queue Data Message Processor, plus Sender). Delivery is at least once and unordered.
#[async_trait]
pub trait QueueConsumer: QueueSender {
    /// Receives up to `max` (1–[`MAX_BATCH`]) visible messages, each made invisible to others for `lease`.
    async fn receive(&self, max: u32, lease: Duration) -> Result<Vec<ReceivedMessage>, QueueError>;

    /// Deletes a received message. [`QueueError::MessageGone`] if the receipt is stale.
    async fn delete(&self, receipt: &Receipt) -> Result<(), QueueError>;

    /// Makes a received message visible again after `visible_after` (0 = at once).
    async fn release(&self, receipt: &Receipt, visible_after: Duration) -> Result<(), QueueError>;

    /// Replaces a received message's text and makes it visible again after `visible_after`, in one
    /// call (Azure's Update Message: the identity needs Storage Queue Data Contributor). The message
    /// keeps its id, insertion time and dequeue count. [`QueueError::MessageGone`] if the receipt is stale.
    async fn update(
        &self,
        receipt: &Receipt,
        body: &str,
        visible_after: Duration,
    ) -> Result<(), QueueError>;

    /// Resolves when this process may just have sent a message to this queue, so an idle poller can wake
    /// early. The default never resolves: another process's sends are seen by polling.
    async fn sent_here(&self) {
        std::future::pending::<()>().await
    }
}

/// Inspection and upkeep: operators' tools, readiness and the worker's metrics sampler.
#[async_trait]
pub trait QueueAdmin: QueueSender {
    /// Creates the queue if it does not exist.
    async fn ensure_exists(&self) -> Result<(), QueueError>;

    /// Up to `max` (1–[`MAX_BATCH`]) messages at the front of the queue, without receiving them.
    async fn peek(&self, max: u32) -> Result<Vec<PeekedMessage>, QueueError>;

    /// The approximate number of messages, visible or not.
    async fn approximate_len(&self) -> Result<u64, QueueError>;

    /// Deletes every message.
    async fn clear(&self) -> Result<(), QueueError>;
}

/// A whole queue with visibility timeouts, dequeue counts and pop receipts, as Azure Queue Storage
/// has them: every backend is one. Each caller takes only the part it needs ([`QueueSender`],
/// [`QueueConsumer`], [`QueueAdmin`]); a `SharedQueue` coerces to any of them.
pub trait MessageQueue: QueueConsumer + QueueAdmin {}

impl<T: QueueConsumer + QueueAdmin + ?Sized> MessageQueue for T {}

/// A shared queue handle.
pub type SharedQueue = Arc<dyn MessageQueue>;

/// The poison queue's name for a queue: `<queue>-poison`, as Azure Functions names it.
pub fn poison_name(queue: &str) -> String {
    format!("{queue}-poison")
}

/// Clamps a delay to what the service accepts (0 s to 7 days).
pub fn clamp_visibility(delay: Duration) -> Duration {
    delay.min(MAX_VISIBILITY)
}

#[cfg(test)]
mod tests {
    use super::QueueError;

    #[test]
    fn only_what_may_heal_alone_is_retryable() {
        let refused = |status| QueueError::Refused { status, code: None };
        for retryable in [
            QueueError::Unavailable("connection refused".into()),
            refused(408),
            refused(429),
            refused(500),
            refused(503),
        ] {
            assert!(retryable.is_retryable(), "{retryable}");
        }
        for fatal in [
            QueueError::MessageGone,
            refused(400),
            refused(403),
            refused(404),
            QueueError::TokenRefused {
                status: 403,
                code: Some("AuthorizationPermissionMismatch".into()),
                detail: None,
            },
            QueueError::NoIdentity("none".into()),
            QueueError::Config("bad URL".into()),
        ] {
            assert!(!fatal.is_retryable(), "{fatal}");
        }
    }
}
