//! Azure Queue Storage through Microsoft's `azure_storage_queue` crate: the only file that imports it.

use super::connection_string::{Authorization, ConnectionString};
use super::sas::SasPolicy;
use super::{
    PeekedMessage, QueueAdmin, QueueConsumer, QueueError, QueueSender, Receipt, ReceivedMessage,
    clamp_visibility,
};
use crate::secret::redact_url_secrets;
use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::policies::Policy;
use azure_core::http::{ClientOptions, ExponentialRetryOptions, RetryOptions, StatusCode, Url};
use azure_storage_queue::models::{
    QueueClientGetPropertiesResultHeaders, QueueClientPeekMessagesOptions,
    QueueClientReceiveMessagesOptions, QueueClientSendMessageOptions,
    QueueClientUpdateMessageOptions, QueueMessage,
};
use azure_storage_queue::{QueueClient, QueueClientOptions};
use chrono::{DateTime, Utc};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How long one queue operation may take, retries included, before it counts as unavailable.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Where queues live and how requests are authorised; makes a [`AzureQueue`] per queue name.
#[derive(Clone)]
pub struct AzureQueueFactory {
    account_url: Url,
    default_queue: Option<String>,
    credential: Option<Arc<dyn TokenCredential>>,
    sas: Option<Arc<SasPolicy>>,
}

impl std::fmt::Debug for AzureQueueFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureQueueFactory")
            .field("account_url", &self.account_url.as_str())
            .finish_non_exhaustive()
    }
}

impl AzureQueueFactory {
    /// The account's queue endpoint, without any SAS, for error messages.
    pub fn endpoint(&self) -> &str {
        self.account_url.as_str()
    }

    /// From a connection string: account-key strings sign a short-lived account SAS per request.
    pub fn from_connection_string(cs: &ConnectionString) -> Result<Self, QueueError> {
        let account_url = Url::parse(&format!("{}/", cs.queue_endpoint))
            .map_err(|e| QueueError::Config(format!("queue endpoint is not a URL: {e}")))?;
        Ok(Self {
            account_url,
            default_queue: None,
            credential: None,
            sas: Some(SasPolicy::new(cs.account.clone(), cs.authorization.clone())),
        })
    }

    /// From `STORAGE_QUEUE_URL` (`https://<account>.queue.core.windows.net/<queue>`). A URL that carries a
    /// SAS (`sig=`) is used as is; otherwise requests carry Entra ID tokens from `credential`.
    pub fn from_queue_url(
        queue_url: &str,
        credential: impl FnOnce() -> Result<Arc<dyn TokenCredential>, QueueError>,
    ) -> Result<Self, QueueError> {
        let mut url = Url::parse(queue_url)
            .map_err(|_| QueueError::Config("STORAGE_QUEUE_URL is not a URL".into()))?;
        let sas = url
            .query()
            .filter(|q| q.contains("sig="))
            .map(str::to_owned);
        url.set_query(None);
        let mut segments: Vec<String> = url
            .path_segments()
            .map(|s| s.filter(|p| !p.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        let queue = segments.pop().ok_or_else(|| {
            QueueError::Config("STORAGE_QUEUE_URL has no queue name in its path".into())
        })?;
        url.set_path(&format!("{}/", segments.join("/")));
        let (credential, sas) = match sas {
            Some(token) => (
                None,
                Some(SasPolicy::new(
                    String::new(),
                    Authorization::Sas(crate::secret::Secret::new(token)),
                )),
            ),
            None => (Some(credential()?), None),
        };
        Ok(Self {
            account_url: url,
            default_queue: Some(queue),
            credential,
            sas,
        })
    }

    /// The queue named in the URL, if the factory came from one.
    pub fn default_queue(&self) -> Option<&str> {
        self.default_queue.as_deref()
    }

    /// A client for the queue `name` in this account.
    pub fn queue(&self, name: &str) -> Result<AzureQueue, QueueError> {
        let url = self
            .account_url
            .join(name)
            .map_err(|e| QueueError::Config(format!("bad queue name {name:?}: {e}")))?;
        let mut client_options = ClientOptions {
            retry: RetryOptions::exponential(ExponentialRetryOptions {
                initial_delay: azure_core::time::Duration::milliseconds(200),
                max_retries: 3,
                max_delay: azure_core::time::Duration::seconds(2),
                ..Default::default()
            }),
            ..Default::default()
        };
        // Per call, so before the retry policy: a retried request keeps the one SAS it got, instead of
        // carrying it twice (which the service reads as a bad signature: 403).
        if let Some(sas) = &self.sas {
            client_options
                .per_call_policies
                .push(sas.clone() as Arc<dyn Policy>);
        }
        let options = QueueClientOptions {
            client_options,
            ..Default::default()
        };
        let client = QueueClient::new(url, self.credential.clone(), Some(options))
            .map_err(|e| QueueError::Config(clean(&e)))?;
        Ok(AzureQueue {
            name: name.to_owned(),
            client,
            entra: self.credential.is_some(),
        })
    }
}

/// One Azure Storage queue.
pub struct AzureQueue {
    name: String,
    client: QueueClient,
    /// Whether requests carry Entra ID tokens (then 401/403 means the token or its role).
    entra: bool,
}

fn clean(e: &azure_core::Error) -> String {
    redact_url_secrets(&e.to_string())
}

/// Why the service refused, from an error body: `<AuthenticationErrorDetail>` (e.g. "Invalid token
/// audience.") when present, else the first line of `<Message>`. Neither holds a secret.
fn service_message(e: &azure_core::Error) -> Option<String> {
    let azure_core::error::ErrorKind::HttpResponse {
        raw_response: Some(raw),
        ..
    } = e.kind()
    else {
        return None;
    };
    let body = String::from_utf8_lossy(raw.body());
    let element = |name: &str| {
        let (open, close) = (format!("<{name}>"), format!("</{name}>"));
        let start = body.find(&open)? + open.len();
        let end = body[start..].find(&close)? + start;
        body[start..end].lines().next().map(|l| l.trim().to_owned())
    };
    element("AuthenticationErrorDetail").or_else(|| element("Message"))
}

fn map_error(e: azure_core::Error, entra: bool) -> QueueError {
    use azure_core::error::ErrorKind;
    match e.kind() {
        ErrorKind::HttpResponse {
            status, error_code, ..
        } => {
            // The service's texts are outside values: escaped and capped before they reach a log.
            let code = error_code.as_deref().map(crate::untrusted::escaped);
            let http = u16::from(*status);
            let gone = *status == StatusCode::NotFound
                && matches!(code.as_deref(), Some("MessageNotFound") | None)
                || matches!(code.as_deref(), Some("PopReceiptMismatch"));
            if gone {
                QueueError::MessageGone
            } else if http >= 500
                || *status == StatusCode::TooManyRequests
                || *status == StatusCode::RequestTimeout
            {
                QueueError::Unavailable(format!(
                    "HTTP {http}{}",
                    code.map(|c| format!(" ({c})")).unwrap_or_default()
                ))
            } else if entra && (http == 401 || http == 403) {
                QueueError::TokenRefused {
                    status: http,
                    code,
                    detail: service_message(&e).map(|d| crate::untrusted::escaped(&d)),
                }
            } else {
                QueueError::Refused { status: http, code }
            }
        }
        ErrorKind::Credential => QueueError::NoIdentity(clean(&e)),
        _ => QueueError::Unavailable(clean(&e)),
    }
}

async fn bounded<T>(
    entra: bool,
    op: impl Future<Output = azure_core::Result<T>>,
) -> Result<T, QueueError> {
    match tokio::time::timeout(OPERATION_TIMEOUT, op).await {
        Ok(result) => result.map_err(|e| map_error(e, entra)),
        Err(_) => Err(QueueError::Unavailable(format!(
            "no answer within {OPERATION_TIMEOUT:?}"
        ))),
    }
}

fn to_chrono(t: Option<azure_core::time::OffsetDateTime>) -> DateTime<Utc> {
    t.and_then(|t| DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond()))
        .unwrap_or_else(Utc::now)
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(clamp_visibility(d).as_secs()).unwrap_or(i32::MAX)
}

/// Whether the queue itself is missing (deleted under a running app).
fn queue_missing(e: &QueueError) -> bool {
    matches!(e, QueueError::Refused { status: 404, code: Some(code) } if code == "QueueNotFound")
}

/// A message whose queue was deleted is gone with it.
fn gone_with_its_queue(e: QueueError) -> QueueError {
    if queue_missing(&e) {
        QueueError::MessageGone
    } else {
        e
    }
}

impl AzureQueue {
    /// After a `QueueNotFound`: creates the queue again where this identity may (with a connection
    /// string or a contributor role), so that a queue deleted under a running app comes back without a
    /// restart. Whether the operation is worth trying again.
    async fn recreate(&self) -> bool {
        match bounded(self.entra, self.client.create(None)).await {
            Ok(_) => {
                tracing::warn!(queue = %self.name, "the queue was not found; created it again");
                true
            }
            // Another process created it first.
            Err(QueueError::Refused { status: 409, .. }) => true,
            Err(e) => {
                tracing::debug!(queue = %self.name, error = %e, "the queue was not found and could not be created");
                false
            }
        }
    }

    async fn send_once(&self, body: &str, visible_after: Duration) -> Result<(), QueueError> {
        let message = QueueMessage {
            message_text: Some(body.to_owned()),
        };
        let content = message
            .try_into()
            .map_err(|e: azure_core::Error| QueueError::Config(clean(&e)))?;
        let options = QueueClientSendMessageOptions {
            visibility_timeout: Some(seconds(visible_after)),
            // -1: never expire. The service default (7 days) would silently drop a backlog.
            message_time_to_live: Some(-1),
            ..Default::default()
        };
        bounded(self.entra, self.client.send_message(content, Some(options)))
            .await
            .map(|_| ())
    }

    async fn receive_once(
        &self,
        max: u32,
        lease: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let options = QueueClientReceiveMessagesOptions {
            number_of_messages: Some(max.clamp(1, super::MAX_BATCH) as i32),
            visibility_timeout: Some(seconds(lease).max(1)),
            ..Default::default()
        };
        let response = bounded(self.entra, self.client.receive_messages(Some(options))).await?;
        let model = response
            .into_model()
            .map_err(|e| QueueError::Unavailable(clean(&e)))?;
        Ok(model
            .items
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                Some(ReceivedMessage {
                    receipt: Receipt {
                        message_id: m.message_id?,
                        pop_receipt: m.pop_receipt?,
                    },
                    body: m.message_text.unwrap_or_default(),
                    dequeue_count: m.dequeue_count.unwrap_or(1).clamp(0, i64::from(u32::MAX))
                        as u32,
                    inserted_at: to_chrono(m.insertion_time),
                    expires_at: m
                        .expiration_time
                        .and_then(|t| DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond())),
                })
            })
            .collect())
    }
}

#[async_trait]
impl QueueSender for AzureQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, body: &str, visible_after: Duration) -> Result<(), QueueError> {
        match self.send_once(body, visible_after).await {
            Err(e) if queue_missing(&e) && self.recreate().await => {
                self.send_once(body, visible_after).await
            }
            result => result,
        }
    }
}

#[async_trait]
impl QueueConsumer for AzureQueue {
    async fn receive(&self, max: u32, lease: Duration) -> Result<Vec<ReceivedMessage>, QueueError> {
        match self.receive_once(max, lease).await {
            Err(e) if queue_missing(&e) && self.recreate().await => {
                self.receive_once(max, lease).await
            }
            result => result,
        }
    }

    async fn delete(&self, receipt: &Receipt) -> Result<(), QueueError> {
        bounded(
            self.entra,
            self.client
                .delete_message(&receipt.message_id, &receipt.pop_receipt, None),
        )
        .await
        .map(|_| ())
        .map_err(gone_with_its_queue)
    }

    async fn release(&self, receipt: &Receipt, visible_after: Duration) -> Result<(), QueueError> {
        self.update_message(receipt, None, visible_after).await
    }

    async fn update(
        &self,
        receipt: &Receipt,
        body: &str,
        visible_after: Duration,
    ) -> Result<(), QueueError> {
        self.update_message(receipt, Some(body), visible_after)
            .await
    }
}

impl AzureQueue {
    /// Update Message: a new visibility, and new text if `body` is given.
    async fn update_message(
        &self,
        receipt: &Receipt,
        body: Option<&str>,
        visible_after: Duration,
    ) -> Result<(), QueueError> {
        let queue_message = match body {
            Some(text) => Some(
                QueueMessage {
                    message_text: Some(text.to_owned()),
                }
                .try_into()
                .map_err(|e: azure_core::Error| QueueError::Config(clean(&e)))?,
            ),
            None => None,
        };
        let options = QueueClientUpdateMessageOptions {
            queue_message,
            ..Default::default()
        };
        let op = self.client.update_message(
            &receipt.message_id,
            &receipt.pop_receipt,
            seconds(visible_after),
            Some(options),
        );
        bounded(self.entra, op)
            .await
            .map(|_| ())
            .map_err(gone_with_its_queue)
    }
}

#[async_trait]
impl QueueAdmin for AzureQueue {
    async fn ensure_exists(&self) -> Result<(), QueueError> {
        match bounded(self.entra, self.client.create(None)).await {
            // With least privilege (Message Sender / Processor) the app may not create queues: the
            // deployment does. A missing queue then shows on the first send or receive.
            Err(QueueError::TokenRefused {
                code: Some(code), ..
            }) if code == "AuthorizationPermissionMismatch" => {
                tracing::debug!(queue = %self.name, "not allowed to create the queue; assuming it exists");
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(QueueError::Refused { status: 409, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn peek(&self, max: u32) -> Result<Vec<PeekedMessage>, QueueError> {
        let options = QueueClientPeekMessagesOptions {
            number_of_messages: Some(max.clamp(1, super::MAX_BATCH) as i32),
            ..Default::default()
        };
        let response = bounded(self.entra, self.client.peek_messages(Some(options))).await?;
        let model = response
            .into_model()
            .map_err(|e| QueueError::Unavailable(clean(&e)))?;
        Ok(model
            .items
            .unwrap_or_default()
            .into_iter()
            .map(|m| PeekedMessage {
                message_id: m.message_id.unwrap_or_default(),
                body: m.message_text.unwrap_or_default(),
                dequeue_count: m.dequeue_count.unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32,
                inserted_at: to_chrono(m.insertion_time),
            })
            .collect())
    }

    async fn approximate_len(&self) -> Result<u64, QueueError> {
        let response = bounded(self.entra, self.client.get_properties(None)).await?;
        let count = response
            .approximate_messages_count()
            .map_err(|e| QueueError::Unavailable(clean(&e)))?;
        Ok(count.unwrap_or(0).max(0) as u64)
    }

    async fn clear(&self) -> Result<(), QueueError> {
        bounded(self.entra, self.client.clear(None))
            .await
            .map(|_| ())
    }
}
