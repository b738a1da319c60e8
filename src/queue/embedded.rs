//! A queue inside the SQLite database with Azure's semantics (visibility timeout, dequeue count, pop
//! receipts), so that `codewatch up` needs no other service.

use super::{
    PeekedMessage, QueueAdmin, QueueConsumer, QueueError, QueueSender, Receipt, ReceivedMessage,
    clamp_visibility,
};
use crate::store::sqlite::SqlitePools;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// One named queue in the `queue_messages` table.
#[derive(Clone, Debug)]
pub struct EmbeddedQueue {
    /// Receives, sends, deletes and updates write (on the one write connection); peeks read.
    pools: SqlitePools,
    name: String,
    sent: Arc<Notify>,
}

impl EmbeddedQueue {
    /// The queue `name` in a migrated database.
    pub fn new(pools: SqlitePools, name: impl Into<String>) -> Self {
        Self {
            pools,
            name: name.into(),
            sent: Arc::new(Notify::new()),
        }
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(clamp_visibility(d).as_millis()).unwrap_or(i64::MAX)
}

fn unavailable(e: sqlx::Error) -> QueueError {
    QueueError::Unavailable(format!("embedded queue: {e}"))
}

fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_else(Utc::now)
}

#[async_trait]
impl QueueSender for EmbeddedQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, body: &str, visible_after: Duration) -> Result<(), QueueError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO queue_messages (queue_name, message_id, body, inserted_at, visible_at) \
             VALUES (?, lower(hex(randomblob(16))), ?, ?, ?)",
        )
        .bind(&self.name)
        .bind(body)
        .bind(now)
        .bind(now + millis(visible_after))
        .execute(&self.pools.write)
        .await
        .map_err(unavailable)?;
        self.sent.notify_waiters();
        Ok(())
    }
}

#[async_trait]
impl QueueConsumer for EmbeddedQueue {
    async fn receive(&self, max: u32, lease: Duration) -> Result<Vec<ReceivedMessage>, QueueError> {
        let now = now_ms();
        // One statement, so two receivers never take the same message; each gets a new pop receipt.
        let rows = sqlx::query(
            "UPDATE queue_messages \
             SET visible_at = ?, dequeue_count = dequeue_count + 1, pop_receipt = lower(hex(randomblob(16))) \
             WHERE seq IN (SELECT seq FROM queue_messages WHERE queue_name = ? AND visible_at <= ? \
                           ORDER BY visible_at, seq LIMIT ?) \
             RETURNING message_id, pop_receipt, body, dequeue_count, inserted_at",
        )
        .bind(now + millis(lease).max(1000))
        .bind(&self.name)
        .bind(now)
        .bind(i64::from(max.clamp(1, super::MAX_BATCH)))
        .fetch_all(&self.pools.write)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                Ok(ReceivedMessage {
                    receipt: Receipt {
                        message_id: r.try_get("message_id")?,
                        pop_receipt: r.try_get("pop_receipt")?,
                    },
                    body: r.try_get("body")?,
                    dequeue_count: r
                        .try_get::<i64, _>("dequeue_count")?
                        .clamp(0, i64::from(u32::MAX)) as u32,
                    inserted_at: time(r.try_get("inserted_at")?),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(unavailable)
    }

    async fn delete(&self, receipt: &Receipt) -> Result<(), QueueError> {
        let result = sqlx::query("DELETE FROM queue_messages WHERE queue_name = ? AND message_id = ? AND pop_receipt = ?")
            .bind(&self.name)
            .bind(&receipt.message_id)
            .bind(&receipt.pop_receipt)
            .execute(&self.pools.write)
            .await
            .map_err(unavailable)?;
        if result.rows_affected() == 0 {
            Err(QueueError::MessageGone)
        } else {
            Ok(())
        }
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

    async fn sent_here(&self) {
        self.sent.notified().await
    }
}

impl EmbeddedQueue {
    /// A new visibility (and new text if `body` is given) for a received message, by its receipt.
    async fn update_message(
        &self,
        receipt: &Receipt,
        body: Option<&str>,
        visible_after: Duration,
    ) -> Result<(), QueueError> {
        let result = sqlx::query(
            "UPDATE queue_messages SET visible_at = ?, body = coalesce(?, body), \
             pop_receipt = lower(hex(randomblob(16))) \
             WHERE queue_name = ? AND message_id = ? AND pop_receipt = ?",
        )
        .bind(now_ms() + millis(visible_after))
        .bind(body)
        .bind(&self.name)
        .bind(&receipt.message_id)
        .bind(&receipt.pop_receipt)
        .execute(&self.pools.write)
        .await
        .map_err(unavailable)?;
        if result.rows_affected() == 0 {
            Err(QueueError::MessageGone)
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl QueueAdmin for EmbeddedQueue {
    async fn ensure_exists(&self) -> Result<(), QueueError> {
        Ok(())
    }

    async fn peek(&self, max: u32) -> Result<Vec<PeekedMessage>, QueueError> {
        let rows = sqlx::query(
            "SELECT message_id, body, dequeue_count, inserted_at FROM queue_messages \
             WHERE queue_name = ? AND visible_at <= ? ORDER BY visible_at, seq LIMIT ?",
        )
        .bind(&self.name)
        .bind(now_ms())
        .bind(i64::from(max.clamp(1, super::MAX_BATCH)))
        .fetch_all(&self.pools.read)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                Ok(PeekedMessage {
                    message_id: r.try_get("message_id")?,
                    body: r.try_get("body")?,
                    dequeue_count: r
                        .try_get::<i64, _>("dequeue_count")?
                        .clamp(0, i64::from(u32::MAX)) as u32,
                    inserted_at: time(r.try_get("inserted_at")?),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(unavailable)
    }

    async fn approximate_len(&self) -> Result<u64, QueueError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM queue_messages WHERE queue_name = ?")
            .bind(&self.name)
            .fetch_one(&self.pools.read)
            .await
            .map_err(unavailable)?;
        Ok(n.max(0) as u64)
    }

    async fn clear(&self) -> Result<(), QueueError> {
        sqlx::query("DELETE FROM queue_messages WHERE queue_name = ?")
            .bind(&self.name)
            .execute(&self.pools.write)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
