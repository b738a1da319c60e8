//! A queue inside the SQLite database with Azure's semantics (visibility timeout, dequeue count, pop
//! receipts), so that `codewatch up` needs no other service.
//!
//! Sends and deletes are group-committed: each waits until it is in the database, but those that
//! arrive together (the producer's concurrent getcodes, the worker's re-arms and deletes of a batch)
//! share one transaction and one statement, written by one task per queue ([`GroupWriter`]).

use super::{
    PeekedMessage, QueueAdmin, QueueConsumer, QueueError, QueueSender, Receipt, ReceivedMessage,
    clamp_visibility,
};
use crate::sqlite::SqlitePools;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot};

/// A new message's id: the insertion time in hex, then random, so that ids grow with time and new
/// ones land at the end of the id index instead of all over it (a random id made each commit rewrite
/// pages across the whole index, and the cost per message grew with the queue).
fn message_id_prefix(inserted_at_ms: i64) -> String {
    format!("{inserted_at_ms:012x}")
}

/// A new message's id: [`message_id_prefix`], then 80 random bits in hex.
fn new_message_id(inserted_at_ms: i64) -> String {
    let random: u128 = rand::random::<u128>() >> 48;
    format!("{}{random:020x}", message_id_prefix(inserted_at_ms))
}

/// Writes taken into one group commit at most.
const MAX_GROUP: usize = 256;

/// Writes waiting for the group writer at most; a sender past it waits for room (back-pressure), and
/// one that gives up while waiting leaves nothing behind.
const INBOX: usize = 4 * MAX_GROUP;

/// Rows per statement within a group (at most four bound values each: far below SQLite's limit).
const ROWS_PER_STATEMENT: usize = 100;

/// One named queue in the `queue_messages` table.
#[derive(Clone, Debug)]
pub struct EmbeddedQueue {
    /// Receives, sends, deletes and updates write (on the one write connection); peeks read.
    pools: SqlitePools,
    name: String,
    sent: Arc<Notify>,
    /// The group writer's inbox, started at the first write and again if the writer has gone (its
    /// runtime shut down, or it panicked), so that one lost task never fails every later write.
    writer: Arc<Mutex<Option<mpsc::Sender<Write>>>>,
}

impl EmbeddedQueue {
    /// The queue `name` in a migrated database.
    pub fn new(pools: SqlitePools, name: impl Into<String>) -> Self {
        Self {
            pools,
            name: name.into(),
            sent: Arc::new(Notify::new()),
            writer: Arc::new(Mutex::new(None)),
        }
    }

    /// Hands `write` to the group writer and waits for its commit.
    async fn group(
        &self,
        write: impl FnOnce(oneshot::Sender<Result<(), QueueError>>) -> Write,
    ) -> Result<(), QueueError> {
        let inbox = {
            let mut slot = self
                .writer
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match slot.as_ref() {
                Some(inbox) if !inbox.is_closed() => inbox.clone(),
                _ => {
                    let (inbox, writes) = mpsc::channel(INBOX);
                    let writer = GroupWriter {
                        pools: self.pools.clone(),
                        name: self.name.clone(),
                        sent: self.sent.clone(),
                    };
                    tokio::spawn(writer.run(writes));
                    *slot = Some(inbox.clone());
                    inbox
                }
            }
        };
        let (done, result) = oneshot::channel();
        inbox
            .send(write(done))
            .await
            .map_err(|_| QueueError::Unavailable("embedded queue: its writer stopped".into()))?;
        result.await.unwrap_or_else(|_| {
            Err(QueueError::Unavailable(
                "embedded queue: its writer stopped".into(),
            ))
        })
    }
}

/// One write waiting for a group commit, and where its outcome goes.
#[derive(Debug)]
enum Write {
    /// A new message, visible from `visible_at` (ms).
    Send {
        message_id: String,
        body: String,
        inserted_at: i64,
        visible_at: i64,
        done: oneshot::Sender<Result<(), QueueError>>,
    },
    /// A received message, by its receipt.
    Delete {
        receipt: Receipt,
        done: oneshot::Sender<Result<(), QueueError>>,
    },
}

/// Writes one queue's sends and deletes in groups: whatever waits when it is free goes into one
/// transaction (sends as one multi-row INSERT, deletes as one DELETE … RETURNING), and every caller
/// hears its own outcome after the commit. It ends when the queue's last handle is dropped.
struct GroupWriter {
    pools: SqlitePools,
    name: String,
    sent: Arc<Notify>,
}

impl GroupWriter {
    async fn run(self, mut writes: mpsc::Receiver<Write>) {
        while let Some(first) = writes.recv().await {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match writes.try_recv() {
                    Ok(write) => group.push(write),
                    Err(_) => break,
                }
            }
            self.commit(group).await;
        }
    }

    async fn commit(&self, group: Vec<Write>) {
        let mut sends = Vec::new();
        let mut deletes = Vec::new();
        for write in group {
            match write {
                // Its sender gave up (a getcode past its deadline answered an error): no code may
                // come of it.
                Write::Send { done, .. } if done.is_closed() => {}
                Write::Send {
                    message_id,
                    body,
                    inserted_at,
                    visible_at,
                    done,
                } => sends.push(((message_id, body, inserted_at, visible_at), done)),
                Write::Delete { receipt, done } => deletes.push((receipt, done)),
            }
        }
        let rows: Vec<_> = sends.iter().map(|(row, _)| row).collect();
        let receipts: Vec<&Receipt> = deletes.iter().map(|(r, _)| r).collect();
        // Asked again inside the transaction, once it holds the write lock (which it may have waited
        // for): senders that gave up meanwhile have their rows taken back before the commit.
        let gone = || -> Vec<&str> {
            sends
                .iter()
                .filter(|(_, done)| done.is_closed())
                .map(|((id, ..), _)| id.as_str())
                .collect()
        };
        match self.write(&rows, &receipts, gone).await {
            Ok(deleted) => {
                let any_sent = !sends.is_empty();
                // A sender that gave up during the commit hears nothing: its message is voided.
                let mut unheard = Vec::new();
                for ((message_id, ..), done) in sends {
                    if done.send(Ok(())).is_err() {
                        unheard.push(message_id);
                    }
                }
                if !unheard.is_empty() {
                    self.void(&unheard).await;
                }
                for (receipt, done) in deletes {
                    let key = (receipt.message_id, receipt.pop_receipt);
                    let _ = done.send(if deleted.contains(&key) {
                        Ok(())
                    } else {
                        Err(QueueError::MessageGone)
                    });
                }
                if any_sent {
                    self.sent.notify_waiters();
                }
            }
            Err(e) => {
                let reason = e.to_string();
                for done in sends
                    .into_iter()
                    .map(|(_, d)| d)
                    .chain(deletes.into_iter().map(|(_, d)| d))
                {
                    let _ = done.send(Err(QueueError::Unavailable(format!(
                        "embedded queue: {reason}"
                    ))));
                }
            }
        }
    }

    /// Deletes messages whose senders gave up before hearing of their commit (best effort: one a worker
    /// took in that instant is activated, and logged here).
    async fn void(&self, message_ids: &[String]) {
        let mut delete =
            sqlx::QueryBuilder::new("DELETE FROM queue_messages WHERE message_id IN (");
        let mut ids = delete.separated(", ");
        for id in message_ids {
            ids.push_bind(id);
        }
        delete.push(") AND pop_receipt IS NULL");
        match delete.build().execute(&self.pools.write).await {
            Ok(done) if done.rows_affected() as usize == message_ids.len() => {}
            Ok(done) => tracing::warn!(
                voided = done.rows_affected(),
                gave_up = message_ids.len(),
                "embedded queue: some messages whose senders gave up were already received"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "embedded queue: could not void messages whose senders gave up")
            }
        }
    }

    /// Inserts `rows` and deletes `receipts` in one transaction, then takes back the rows of senders that
    /// are `gone` by then; the receipts that deleted a message.
    async fn write<'a>(
        &self,
        rows: &[&(String, String, i64, i64)],
        receipts: &[&Receipt],
        gone: impl Fn() -> Vec<&'a str>,
    ) -> Result<HashSet<(String, String)>, sqlx::Error> {
        let mut tx = self.pools.write.begin().await?;
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO queue_messages (queue_name, message_id, body, inserted_at, visible_at) ",
            );
            insert.push_values(
                chunk,
                |mut row, (message_id, body, inserted_at, visible_at)| {
                    row.push_bind(&self.name)
                        .push_bind(message_id)
                        .push_bind(body)
                        .push_bind(inserted_at)
                        .push_bind(visible_at);
                },
            );
            insert.build().execute(&mut *tx).await?;
        }
        let mut deleted = HashSet::new();
        for chunk in receipts.chunks(ROWS_PER_STATEMENT) {
            let ids: Vec<(String, String)> = delete_by_receipts(&self.name, chunk)
                .build_query_as()
                .fetch_all(&mut *tx)
                .await?;
            deleted.extend(ids);
        }
        let gone = gone();
        if !gone.is_empty() {
            let mut take_back =
                sqlx::QueryBuilder::new("DELETE FROM queue_messages WHERE message_id IN (");
            let mut ids = take_back.separated(", ");
            for id in gone {
                ids.push_bind(id);
            }
            take_back.push(")");
            take_back.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(deleted)
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
        self.group(|done| Write::Send {
            message_id: new_message_id(now),
            body: body.to_owned(),
            inserted_at: now,
            visible_at: now + millis(visible_after),
            done,
        })
        .await
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
                    // The embedded queue keeps every message until it is deleted.
                    expires_at: None,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(unavailable)
    }

    async fn delete(&self, receipt: &Receipt) -> Result<(), QueueError> {
        self.group(|done| Write::Delete {
            receipt: receipt.clone(),
            done,
        })
        .await
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

/// Deletes the messages of `queue` that `receipts` name with their current pop receipts, returning
/// each deleted one's id and receipt. SQLite must find them by the unique `message_id` index: with
/// several ids and no statistics its planner preferred `queue_messages_visible` on `queue_name`,
/// scanning every message of the queue (81 ms per delete with 300k pending expiry messages, against
/// 0.4 ms), so the `queue_name` test is written `+queue_name`, which no index serves.
fn delete_by_receipts<'q>(
    queue: &'q str,
    receipts: &'q [&Receipt],
) -> sqlx::QueryBuilder<sqlx::Sqlite> {
    let mut delete = sqlx::QueryBuilder::new("DELETE FROM queue_messages WHERE message_id IN (");
    let mut ids = delete.separated(", ");
    for receipt in receipts {
        ids.push_bind(&receipt.message_id);
    }
    delete
        .push(") AND +queue_name = ")
        .push_bind(queue)
        .push(" AND (message_id, pop_receipt) IN (VALUES ");
    let mut pairs = delete.separated(", ");
    for receipt in receipts {
        pairs
            .push("(")
            .push_bind_unseparated(&receipt.message_id)
            .push_unseparated(", ")
            .push_bind_unseparated(&receipt.pop_receipt)
            .push_unseparated(")");
    }
    delete.push(") RETURNING message_id, pop_receipt");
    delete
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A delete of a full chunk finds its rows by `message_id`, never by scanning the queue's index.
    #[tokio::test]
    async fn a_delete_by_receipts_finds_messages_by_their_id() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        crate::store::sqlite::MIGRATOR.run(&pool).await.unwrap();
        let receipts: Vec<Receipt> = (0..ROWS_PER_STATEMENT)
            .map(|i| Receipt {
                message_id: format!("m{i}"),
                pop_receipt: format!("r{i}"),
            })
            .collect();
        let refs: Vec<&Receipt> = receipts.iter().collect();
        let delete = delete_by_receipts("code-requests", &refs);
        let mut plan = sqlx::query(sqlx::AssertSqlSafe(format!(
            "EXPLAIN QUERY PLAN {}",
            delete.sql().as_str()
        )));
        for r in &receipts {
            plan = plan.bind(&r.message_id);
        }
        plan = plan.bind("code-requests");
        for r in &receipts {
            plan = plan.bind(&r.message_id).bind(&r.pop_receipt);
        }
        let steps: Vec<String> = plan
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<String, _>("detail"))
            .collect();
        assert!(
            steps
                .iter()
                .any(|s| s.contains("sqlite_autoindex_queue_messages_1 (message_id=?)")),
            "{steps:?}"
        );
        assert!(
            !steps.iter().any(|s| s.contains("queue_messages_visible")),
            "{steps:?}"
        );
    }

    #[test]
    fn message_ids_sort_by_insertion_time() {
        let prefixes: Vec<String> = [
            0,
            1,
            15,
            16,
            1_764_633_600_000,
            1_764_633_600_001,
            99_999_999_999_999,
        ]
        .into_iter()
        .map(super::message_id_prefix)
        .collect();
        assert!(prefixes.windows(2).all(|w| w[0] < w[1]), "{prefixes:?}");
        assert!(prefixes.iter().all(|p| p.len() == 12));
    }
}
